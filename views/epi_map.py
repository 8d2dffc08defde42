"""Municipal map: any variable of the municipal panel as a choropleth, with its table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from views._frame import controls, data_dir, guarded, is_presentation, missing_data_message, style_figure
from pumamed.epi.geometry import MUNICIPALITY_RDATA
from pumamed.epi.io import epi_dir
from pumamed.epi.mapping import (PALETTES, SCHEMES, format_quantity, municipal_choropleth, source_years_note,
                                  state_choices)

GEOMETRY_FILE = "epi/geo_mxmaps_2020/raw/data/mxmunicipio.map.RData"  # as the message shows it
NUMERIC_KINDS = ("continuous", "count", "share")
GROUP_LABELS = {"socioeconomic": "Socioeconomic", "outcome": "Health outcomes", "pollutant": "Air pollution",
                "population": "Population", "geography": "Geography"}
DEFAULT_VARIABLE = "ses_marginalization_index"


# ---------------------------------------------------------------- cached data
@st.cache_data(show_spinner=False)
def _catalog() -> pd.DataFrame:
    from pumamed.epi.panel import variable_catalog

    return variable_catalog()


@st.cache_resource(show_spinner="Assembling the municipal panel (first time only)…")
def _panel(root: str) -> pd.DataFrame:
    # A resource, not data: the panel is large and read-only, so it is shared, never copied.
    from pumamed.epi.panel import load_panel

    return load_panel(root)


@st.cache_data(show_spinner=False)
def _years_with_data(root: str) -> pd.DataFrame:
    """Municipalities with a value, per year (rows) and variable (columns)."""
    panel = _panel(root)
    return panel.drop(columns=["CVEGEO"]).groupby("year").count()


@st.cache_data(show_spinner=False)
def _states(root: str) -> dict[str, str]:
    return state_choices(root)


@st.cache_resource(show_spinner="Drawing the map…", max_entries=24)
def _map(root: str, variable: str, year: int, states: tuple[str, ...], scheme: str, k: int, palette: str,
         reverse: bool, national_classes: bool, basemap: bool):
    catalog = _catalog().set_index("name")
    meta = catalog.loc[variable]
    panel = _panel(root)
    columns = ["CVEGEO", variable] + [c for c in _companions(variable) if c in panel.columns]
    data = panel.loc[panel["year"] == year, columns]
    unit = meta["unit"] if isinstance(meta["unit"], str) else ""
    result = municipal_choropleth(
        data[["CVEGEO", variable]], variable, label=meta["label"], unit=unit, scheme=scheme, k=k,
        palette=palette, reverse=reverse, states=list(states) or None,
        classify_within_selection=not national_classes, renderer="maplibre" if basemap else "geo",
        title=meta["label"] if str(year) in str(meta["label"]) else f"{meta['label']} ({year})", data_dir=root,
    )
    extra = data.drop(columns=[variable]).set_index("CVEGEO")
    table = result.table.join(extra, on="CVEGEO") if len(extra.columns) else result.table
    return result.figure, table, result.classification


def _companions(variable: str) -> list[str]:
    """Data-quality columns shown beside a variable (e.g. how a pollutant exposure was obtained)."""
    prefix = variable.split("_")[0]
    return [f"{prefix}_coverage", f"{prefix}_n_stations"]


# ---------------------------------------------------------------- page
st.title("Municipal map")
st.caption("Any variable of the municipal panel on the 2,469 municipalities of the 2020 census. "
           "Grey municipalities have no value for the chosen year.")

root = data_dir()
if not (epi_dir(root) / MUNICIPALITY_RDATA).is_file():
    missing_data_message("The municipal geometry (mxmaps)", GEOMETRY_FILE)
    st.stop()

with guarded("Loading the municipal panel"):
    catalog = _catalog()
    coverage = _years_with_data(str(root))
    numeric = catalog[catalog["kind"].isin(NUMERIC_KINDS) & catalog["name"].isin(coverage.columns)]
    numeric = numeric[numeric["name"].map(lambda n: coverage[n].sum() > 0)]
    if numeric.empty:
        st.info("The panel holds no numeric variable with data: check the data directory on the Home page.",
                icon=":material/info:")
        st.stop()
    groups = [g for g in GROUP_LABELS if g in set(numeric["group"])]

    with controls("Map controls"):
        default_group = "socioeconomic" if "socioeconomic" in groups else groups[0]
        group = st.selectbox("Theme", groups, index=groups.index(default_group),
                             format_func=lambda g: GROUP_LABELS.get(g, g), key="map_group")
        choices = numeric[numeric["group"] == group]
        labels = dict(zip(choices["name"], choices["label"]))
        names = list(labels)
        variable = st.selectbox("Variable", names, format_func=lambda n: labels[n], key="map_variable",
                                index=names.index(DEFAULT_VARIABLE) if DEFAULT_VARIABLE in names else 0)
        years = [int(y) for y in coverage.index[coverage[variable] > 0]]
        default_year = 2020 if 2020 in years else years[-1]
        year = st.selectbox("Year", years, index=years.index(default_year), key="map_year")
        state_names = _states(str(root))
        states = st.multiselect("States (empty = the whole country)", list(state_names),
                                format_func=lambda c: state_names[c], key="map_states",
                                help="Zooms to the chosen states; classes are computed over them.")
        scheme = st.selectbox("Classification", list(SCHEMES), format_func=SCHEMES.get, key="map_scheme")
        k = st.slider("Classes", 3, 9, 5, key="map_k", disabled=scheme == "unclassed")
        palette = st.selectbox("Palette (colour-blind safe)", list(PALETTES), key="map_palette")
        reverse = st.toggle("Reverse palette", False, key="map_reverse")
        national = st.toggle("National classes", False, key="map_national", disabled=not states,
                             help="Use classes computed over the whole country, so colours compare between states.")
        basemap = st.toggle("Street basemap (needs internet)", False, key="map_basemap",
                            help="Draws the map over Carto tiles (MapLibre); the default map works offline.")

    meta = catalog.set_index("name").loc[variable]
    figure, table, classification = _map(str(root), variable, int(year), tuple(states), scheme, int(k), palette,
                                         bool(reverse), bool(national), bool(basemap))
    values = table[variable].astype(float)
    unit = meta["unit"] if isinstance(meta["unit"], str) and meta["unit"] not in ("", "-", "index") else ""
    cols = st.columns(4)
    cols[0].metric("Municipalities with data", f"{int(values.notna().sum()):,} / {len(values):,}")
    if values.notna().any():
        cols[1].metric("Median", format_quantity(float(np.nanmedian(values)), unit))
        cols[2].metric("Minimum", f"{np.nanmin(values):,.3g}")
        cols[3].metric("Maximum", f"{np.nanmax(values):,.3g}")
    st.plotly_chart(style_figure(figure, base_height=560), width="stretch",
                    config={"scrollZoom": True, "displaylogo": False}, key="municipal_map")
    st.caption(f"**Source:** {meta['source']} ({source_years_note(meta['year'], year)}). "
               f"**Classes:** {SCHEMES[classification.scheme]}"
               + (f", {classification.k} classes" if classification.scheme != "unclassed" else "")
               + ". Hover a municipality for its name, state and value; scroll to zoom, drag to pan.")

    with st.expander("Table shown on the map", expanded=is_presentation() is False and bool(states)):
        st.dataframe(table, hide_index=True, width="stretch")
    where = "_".join(states) if states else "national"
    st.download_button(
        "Download the table (CSV)", table.to_csv(index=False).encode("utf-8"),
        file_name=f"pumamed_{variable}_{year}_{where}.csv", mime="text/csv", icon=":material/download:",
        key="map_download",
    )
