"""Air pollutants: monitoring stations, their time series, municipal exposure with its coverage,
and how strongly the pollutants move together (the multicollinearity the models must face)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from views._frame import controls, data_dir, guarded, missing_data_message, style_figure
from pumamed.epi.factors import correlation_table, vif_table
from pumamed.epi.geometry import MUNICIPALITY_RDATA, N_MUNICIPALITIES
from pumamed.epi.io import epi_dir
from pumamed.epi.mapping import municipal_choropleth, station_map
from pumamed.epi.pollutants import POLLUTANTS, RAMA_DIR, SINAICA_DIR, comparable_pollutants, has_rama_hourly

STATIONS_FILE = "epi/sinaica_stations_monthly/stations_sinaica_rsinaica.csv"
SERIES_COLOURS = ("#440154", "#31688e", "#35b779", "#fde725", "#b5367a", "#e55c30", "#21918c", "#90d743")
COVERAGE_LABELS = {"in_municipality": "station in the municipality", "idw": "inverse-distance within 50 km",
                   "none": "no station in range"}


# ---------------------------------------------------------------- cached data
@st.cache_data(show_spinner="Reading the station catalogues…")
def _stations(root: str) -> pd.DataFrame:
    from pumamed.epi.pollutants import load_stations

    return load_stations(root)


@st.cache_data(show_spinner="Computing annual station means…")
def _annual(root: str) -> pd.DataFrame:
    from pumamed.epi.pollutants import station_annual_means

    return station_annual_means(root)


@st.cache_data(show_spinner="Reading the station series…", max_entries=9)
def _series(root: str, key: str, network: str, resolution: str) -> pd.DataFrame:
    from pumamed.epi.pollutants import station_series

    return station_series(root, key, network=network, resolution=resolution)


@st.cache_data(show_spinner="Computing municipal exposure…")
def _exposure(root: str) -> pd.DataFrame:
    from pumamed.epi.pollutants import municipal_exposure

    return municipal_exposure(root)


@st.cache_data(show_spinner=False)
def _exposure_wide(root: str) -> pd.DataFrame:
    from pumamed.epi.pollutants import exposure_by_pollutant

    return exposure_by_pollutant(_exposure(root))


@st.cache_resource(show_spinner="Drawing the exposure map…", max_entries=16)
def _exposure_map(root: str, key: str, year: int):
    exposure = _exposure(root)
    block = exposure[(exposure["pollutant"] == key) & (exposure["year"] == year)]
    states = sorted(block["CVEGEO"].str[:2].unique())
    pollutant = POLLUTANTS[key]
    result = municipal_choropleth(
        block[["CVEGEO", "value"]], "value", label=f"{pollutant.label}", unit=pollutant.unit, scheme="quantiles",
        k=5, palette="viridis", states=states, title=f"{pollutant.label}, annual mean exposure {year}", data_dir=root,
    )
    details = block.set_index("CVEGEO")[["coverage", "n_stations", "nearest_km"]]
    table = result.table.rename(columns={"value": f"{key} ({pollutant.unit})"}).join(details, on="CVEGEO")
    table["coverage"] = table["coverage"].fillna("none")
    return result.figure, table


# ---------------------------------------------------------------- figures
def _series_figure(series: pd.DataFrame, names: dict[str, str], label: str, unit: str) -> go.Figure:
    fig = go.Figure()
    for i, (station, block) in enumerate(series.groupby("station_key", sort=False)):
        fig.add_trace(go.Scattergl(x=block["time"], y=block["value"], mode="lines", name=names.get(station, station),
                                   line=dict(width=1.4, color=SERIES_COLOURS[i % len(SERIES_COLOURS)])))
    fig.update_layout(title=f"{label} by station", yaxis_title=unit, hovermode="x unified",
                      legend=dict(orientation="h", y=-0.15))
    return fig


def _correlation_figure(corr: pd.DataFrame, n: pd.DataFrame, labels: dict[str, str]) -> go.Figure:
    names = [labels.get(c, c) for c in corr.columns]
    fig = go.Figure(go.Heatmap(
        z=corr.to_numpy(), x=names, y=names, zmin=-1, zmax=1, zmid=0, colorscale="RdBu_r",
        text=np.round(corr.to_numpy(), 2), texttemplate="%{text}",
        customdata=n.loc[corr.index, corr.columns].to_numpy(),
        hovertemplate="%{y} × %{x}<br>r = %{z:.3f}<br>n = %{customdata:,}<extra></extra>",
        colorbar=dict(title="r"),
    ))
    fig.update_layout(title="Correlation between pollutant exposures", yaxis=dict(autorange="reversed"))
    return fig


# ---------------------------------------------------------------- page
st.title("Air pollutants")
st.caption("RAMA (Mexico City, hourly 2024) and SINAICA (national network, monthly 2010-2021) stations, "
           "annual means with a completeness rule, and municipal exposure: the stations inside a municipality, "
           "else inverse-distance weighting within 50 km.")

root = data_dir()
epi = epi_dir(root)
if not ((epi / RAMA_DIR).is_dir() or (epi / SINAICA_DIR).is_dir()):
    missing_data_message("Air-quality station data (RAMA or SINAICA)", STATIONS_FILE)
    st.stop()

with guarded("Loading the air-quality data"):
    stations = _stations(str(root))
    annual = _annual(str(root))
    available = [k for k in POLLUTANTS if (annual["pollutant"] == k).any()]
    if not available:
        st.info("No station has an annual mean: the station files hold no usable measurement.", icon=":material/info:")
        st.stop()
    with controls("Pollutant controls"):
        key = st.selectbox("Pollutant", available, key="pol_pollutant",
                           format_func=lambda k: f"{POLLUTANTS[k].label} ({POLLUTANTS[k].unit})")
        valid = annual[(annual["pollutant"] == key) & annual["valid"]]
        years = sorted(annual.loc[annual["pollutant"] == key, "year"].unique().tolist())
        # Default: the year with the most valid stations (the widest map).
        busiest = int(valid["year"].value_counts().idxmax()) if len(valid) else years[-1]
        year = st.selectbox("Year", years, index=years.index(busiest), key="pol_year")
        basemap = st.toggle("Street basemap (needs internet)", False, key="pol_basemap",
                            help="Draws the station map over Carto tiles (MapLibre); the default works offline.")
    pollutant = POLLUTANTS[key]
    names = dict(zip(stations["station_key"], stations["station_name"].astype(str) + " (" + stations["network"] + ")"))

    # 1. Stations
    st.header(f"Stations measuring {pollutant.label}, {year}")
    block = annual[(annual["pollutant"] == key) & (annual["year"] == year)]
    shown = stations.merge(block[["station_key", "value", "completeness", "valid"]], on="station_key", how="left")
    shown.loc[~shown["valid"].fillna(False).astype(bool), "value"] = np.nan
    c1, c2, c3 = st.columns(3)
    c1.metric("Stations with a valid annual mean", f"{int(shown['value'].notna().sum())}")
    c2.metric("Failing completeness", f"{int((block['valid'] == False).sum())}",  # noqa: E712
              help="Station-years with too few valid days (RAMA) or months (SINAICA) for an annual mean.")
    c3.metric("Median of station means", f"{shown['value'].median():.3g} {pollutant.unit}"
              if shown["value"].notna().any() else "–")
    figure = station_map(shown, "value", label=f"{pollutant.label} annual mean", unit=pollutant.unit,
                         renderer="maplibre" if basemap else "geo", title=f"{pollutant.label}, {year}", data_dir=root)
    st.plotly_chart(style_figure(figure, base_height=520), width="stretch", key="pol_station_map")
    st.caption("Colour scale from the 2nd to the 98th percentile of the station means, so that a few extreme "
               "stations do not wash out the rest; stations beyond it take the end colours (exact value on hover).")

    # 2. Time series
    st.header("Time series per station")
    networks = []
    if pollutant.rama_file and (epi / RAMA_DIR).is_dir():
        networks.append("RAMA hourly 2024 (Mexico City)")
    if pollutant.sinaica_column and (epi / SINAICA_DIR / "monthly_pollution.csv").is_file():
        networks.append("SINAICA monthly (national)")
    if not networks:
        st.info(f"No station file holds a time series of {pollutant.label}.", icon=":material/info:")
    else:
        c1, c2 = st.columns([1, 2])
        # RAMA's hourly files cover 2024 only: for other years the national monthly series is the relevant one.
        preferred = 0 if year == 2024 or len(networks) == 1 else len(networks) - 1
        network = c1.radio("Network", networks, index=preferred, key="pol_network")
        if network.startswith("RAMA"):
            # The demo pack carries daily means only: offer hourly values where the hourly files are.
            resolutions = ["daily mean", "hourly"] if has_rama_hourly(str(root)) else ["daily mean"]
            resolution = c1.radio("Resolution", resolutions, horizontal=True, key="pol_resolution")
            series = _series(str(root), key, "rama", "hourly" if resolution == "hourly" else "daily")
        else:
            series = _series(str(root), key, "sinaica", "monthly")
        ranked = series.groupby("station_key")["value"].count().sort_values(ascending=False)
        choices = ranked.index.tolist()
        chosen = c2.multiselect("Stations", choices, default=choices[:3], format_func=lambda s: names.get(s, s),
                                key=f"pol_stations_{key}_{network[:4]}", max_selections=8)
        if chosen:
            fig = _series_figure(series[series["station_key"].isin(chosen)], names, pollutant.label, pollutant.unit)
            st.plotly_chart(style_figure(fig, base_height=400), width="stretch", key="pol_series")
        else:
            st.info("Choose at least one station.", icon=":material/info:")

    # 3. Municipal exposure
    st.header(f"Municipal exposure to {pollutant.label}, {year}")
    if not (epi / MUNICIPALITY_RDATA).is_file():
        missing_data_message("The municipal geometry (mxmaps)", "epi/geo_mxmaps_2020/raw/data/mxmunicipio.map.RData")
    else:
        exposure = _exposure(str(root))
        here = exposure[(exposure["pollutant"] == key) & (exposure["year"] == year)]
        if here.empty:
            st.info(f"No municipality has a station within 50 km with a valid {year} mean of {pollutant.label}.",
                    icon=":material/info:")
        else:
            figure, table = _exposure_map(str(root), key, int(year))
            counts = table["coverage"].value_counts()
            c1, c2, c3 = st.columns(3)
            c1.metric(COVERAGE_LABELS["in_municipality"].capitalize(), f"{int(counts.get('in_municipality', 0)):,}")
            c2.metric(COVERAGE_LABELS["idw"].capitalize(), f"{int(counts.get('idw', 0)):,}")
            c3.metric("No station in range", f"{int(counts.get('none', 0)):,}",
                      help="Municipalities of the states drawn that have no station within 50 km.")
            st.plotly_chart(style_figure(figure, base_height=520), width="stretch", key="pol_exposure_map")
            n_states = table["CVEGEO"].str[:2].nunique()
            not_drawn = N_MUNICIPALITIES - len(table)
            st.caption(f"The three counts add up to the {len(table):,} municipalities of the {n_states} states drawn "
                       "(those with at least one covered municipality); the other "
                       f"{not_drawn:,} of the {N_MUNICIPALITIES:,} municipalities lie in states with no station "
                       "within 50 km and are not drawn. Grey municipalities have no station in range. Exposure "
                       "estimates away from stations are interpolations, not measurements: read them with the "
                       "*coverage* column.")
            with st.expander("Exposure table with its coverage"):
                st.dataframe(table, hide_index=True, width="stretch")
            st.download_button("Download the exposure table (CSV)", table.to_csv(index=False).encode("utf-8"),
                               file_name=f"pumamed_exposure_{key}_{year}.csv", mime="text/csv",
                               icon=":material/download:", key="pol_download")

        # 4. Correlation between pollutants
        st.header("How the pollutants move together")
        c1, c2 = st.columns([1, 3])
        method = c1.radio("Correlation", ["pearson", "spearman"], format_func=str.capitalize, key="pol_method")
        level = c1.radio("Across", ["municipality-years", "municipalities, selected year"], key="pol_level")
        wide = _exposure_wide(str(root))
        if level != "municipality-years":
            wide = wide[wide["year"] == year]
        columns, common = comparable_pollutants(wide)
        if len(columns) < 2:
            st.info("Fewer than two pollutants have exposure values here.", icon=":material/info:")
        else:
            corr, n = correlation_table(wide[columns], method=method)
            labels = {k: POLLUTANTS[k].label for k in columns}
            c2.plotly_chart(style_figure(_correlation_figure(corr, n, labels), base_height=460), width="stretch",
                            key="pol_correlation")
            # VIF over the pollutants measured together most often (the national network's set).
            with guarded("Variance inflation"):
                if len(common) >= 2:
                    vif = vif_table(wide[common]).assign(variable=lambda t: t["variable"].map(labels))
                    c1.markdown("**Variance inflation** (complete rows)")
                    c1.dataframe(vif[["variable", "vif"]].round(2), hide_index=True, width="stretch")
            st.caption("Each cell uses the municipality-years where both pollutants have a value (*n* on hover). "
                       "Strongly correlated exposures (|r| > 0.7, VIF > 5) cannot be told apart by a regression: "
                       "combine them or keep one.")
