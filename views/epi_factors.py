"""Socioeconomic factors: exploratory factor analysis of municipal indicators, validated
against CONAPO's own marginalization index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from views._frame import controls, data_dir, guarded, is_presentation, missing_data_message, style_figure
from pumamed.epi.factors import (
    METHODS,
    VALIDATION_VARIABLE,
    SocioeconomicFactors,
    adequacy,
    conapo_2020_indicators,
    indicator_table,
    max_identified_factors,
    parallel_analysis,
    too_many_factors_message,
)
from pumamed.epi.io import epi_dir
from pumamed.epi.mapping import DIVERGING_PALETTES, municipal_choropleth, municipal_names

IMM_FILE = "epi/conapo_imm_2020/IMM_2020.csv"
GEOMETRY_FILE = "epi/geo_mxmaps_2020/raw/data/mxmunicipio.map.RData"
# CONAPO's composite indices are outputs, not indicators: factoring them with their own inputs
# would be circular.
NOT_INDICATORS = (VALIDATION_VARIABLE, "ses_marginalization_index_norm")
ROTATION_LABELS = {"varimax": "Varimax (orthogonal)", "promax": "Promax (oblique)", "oblimin": "Oblimin (oblique)",
                   "none": "None"}
METHOD_LABELS = {"minres": "Minimum residuals (minres)", "ml": "Maximum likelihood", "principal": "Principal factors"}
PARALLEL_ITER = 100


# ---------------------------------------------------------------- cached computation
@st.cache_data(show_spinner="Reading the socioeconomic indicators…")
def _indicators(root: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return indicator_table(root)


@st.cache_data(show_spinner=False)
def _names(root: str) -> pd.DataFrame:
    return municipal_names(root)[["CVEGEO", "NOMGEO", "NOM_ENT"]]


@st.cache_data(show_spinner="Testing sampling adequacy…")
def _adequacy(root: str, columns: tuple[str, ...]):
    table, _ = _indicators(root)
    return adequacy(table[list(columns)])


@st.cache_data(show_spinner="Running parallel analysis…")
def _parallel(root: str, columns: tuple[str, ...]):
    table, _ = _indicators(root)
    return parallel_analysis(table[list(columns)], n_iter=PARALLEL_ITER, seed=0)


@st.cache_resource(show_spinner="Extracting factors…", max_entries=32)
def _model(root: str, columns: tuple[str, ...], n_factors: int, method: str, rotation: str | None):
    table, _ = _indicators(root)
    return SocioeconomicFactors(n_factors=n_factors, method=method, rotation=rotation).fit(table[list(columns)])


@st.cache_data(show_spinner=False, max_entries=32)
def _scores(root: str, columns: tuple[str, ...], n_factors: int, method: str, rotation: str | None) -> pd.DataFrame:
    table, _ = _indicators(root)
    model = _model(root, columns, n_factors, method, rotation)
    scores = model.scores_frame(table[list(columns)], index=table.index)
    out = pd.concat([table[["CVEGEO"]], scores], axis=1)
    if VALIDATION_VARIABLE in table:
        out[VALIDATION_VARIABLE] = table[VALIDATION_VARIABLE]
    return out.merge(_names(root), on="CVEGEO", how="left")


@st.cache_resource(show_spinner="Drawing the map…", max_entries=16)
def _score_map(root: str, columns: tuple[str, ...], n_factors: int, method: str, rotation: str | None,
               factor: str, scheme: str, palette: str):
    scores = _scores(root, columns, n_factors, method, rotation)
    return municipal_choropleth(scores[["CVEGEO", factor]], factor, label=f"{factor} score", scheme=scheme, k=6,
                                palette=palette, reverse=True, title=f"{factor} score by municipality",
                                data_dir=root).figure


# ---------------------------------------------------------------- figures
def _scree_figure(result) -> go.Figure:
    table = result.table
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=table["number"], y=table["observed"], mode="lines+markers", name="observed",
                             line=dict(color="#31688e", width=3), marker=dict(size=9)))
    fig.add_trace(go.Scatter(x=table["number"], y=table["random_quantile"], mode="lines",
                             name=f"random data, {int(result.quantile * 100)}th percentile",
                             line=dict(color="#b5de2b", width=2, dash="dash")))
    fig.add_trace(go.Scatter(x=table["number"], y=table["random_mean"], mode="lines", name="random data, mean",
                             line=dict(color="#999999", width=1, dash="dot")))
    kept = table[table["retain"]]
    if len(kept):
        fig.add_trace(go.Scatter(x=kept["number"], y=kept["observed"], mode="markers", name="retained",
                                 marker=dict(size=15, color="rgba(0,0,0,0)", line=dict(color="#fde725", width=3))))
    fig.update_layout(title="Scree plot with parallel analysis", xaxis_title="Component",
                      yaxis_title="Eigenvalue", xaxis=dict(dtick=1), legend=dict(orientation="h", y=-0.2))
    return fig


def _loadings_figure(loadings: pd.DataFrame, labels: dict[str, str]) -> go.Figure:
    rows = [labels.get(i, i) for i in loadings.index]
    fig = go.Figure(go.Heatmap(
        z=loadings.to_numpy(), x=list(loadings.columns), y=rows, colorscale="RdBu", zmid=0, zmin=-1, zmax=1,
        text=np.round(loadings.to_numpy(), 2), texttemplate="%{text}", colorbar=dict(title="loading"),
        hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title="Loadings (pattern matrix)", yaxis=dict(autorange="reversed"))
    return fig


def _communalities_figure(communalities: pd.Series, labels: dict[str, str]) -> go.Figure:
    ordered = communalities.sort_values()
    fig = go.Figure(go.Bar(x=ordered.to_numpy(), y=[labels.get(i, i) for i in ordered.index], orientation="h",
                           marker_color="#35b779", hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title="Communalities (variance shared with the factors)", xaxis=dict(range=[0, 1]))
    return fig


def _validation_figure(scores: pd.DataFrame, factor: str) -> go.Figure:
    valid = scores.dropna(subset=[factor, VALIDATION_VARIABLE])
    fig = go.Figure(go.Scatter(  # SVG: 2,469 points draw fast and need no WebGL
        x=valid[factor], y=valid[VALIDATION_VARIABLE], mode="markers",
        marker=dict(size=5, color="#440154", opacity=0.45),
        customdata=np.column_stack([valid["NOMGEO"].fillna(""), valid["NOM_ENT"].fillna("")]),
        hovertemplate="<b>%{customdata[0]}</b>, %{customdata[1]}<br>score %{x:.2f}<br>IM_2020 %{y:.2f}<extra></extra>",
    ))
    fig.update_layout(title=f"{factor} score against CONAPO's IM_2020", xaxis_title=f"{factor} score",
                      yaxis_title="IM_2020 (higher = less marginalized)")
    return fig


# ---------------------------------------------------------------- page
st.title("Socioeconomic factors")
st.caption("Exploratory factor analysis of municipal indicators: is factoring sensible (KMO, Bartlett), how many "
           "factors (parallel analysis), what they mean (loadings), where they are (map), and whether they "
           "reproduce CONAPO's marginalization index.")

root = data_dir()
if not (epi_dir(root) / "conapo_imm_2020" / "IMM_2020.csv").is_file():
    missing_data_message("CONAPO's marginalization index 2020", IMM_FILE)
    st.stop()

with guarded("Reading the indicators"):
    table, catalog = _indicators(str(root))
    offered = catalog[catalog["available"] & ~catalog["name"].isin(NOT_INDICATORS)]
    labels = dict(zip(offered["name"], offered["label"]))
    default = [c for c in conapo_2020_indicators() if c in labels]

    with controls("Factor-analysis controls"):
        chosen = st.multiselect("Indicators", list(labels), default=default, format_func=labels.get,
                                key="fa_indicators",
                                help="Default: CONAPO's nine 2020 indicators of marginalization.")
        method = st.selectbox("Extraction", list(METHODS), format_func=METHOD_LABELS.get, key="fa_method")
        rotation_key = st.selectbox("Rotation", list(ROTATION_LABELS), format_func=ROTATION_LABELS.get,
                                    key="fa_rotation")
        follow = st.toggle("Number of factors from parallel analysis", True, key="fa_follow")
        if follow and len(chosen) >= 3:
            # Track the suggestion while it is followed, so switching it off starts from it, not from 1.
            st.session_state["fa_k"] = min(max(1, _parallel(str(root), tuple(chosen)).n_factors), len(chosen) - 1)
        manual_k = st.number_input("Number of factors", 1, max(1, len(chosen) - 1), key="fa_k",
                                   disabled=follow,
                                   help=f"at most {max_identified_factors(len(chosen))} can be identified from "
                                        f"{len(chosen)} indicators")

    if len(chosen) < 3:
        st.info("Choose at least three indicators.", icon=":material/info:")
        st.stop()
    columns = tuple(chosen)
    rotation = None if rotation_key == "none" else rotation_key

    # 1. Adequacy
    st.header("1 · Is factor analysis sensible here?")
    check = _adequacy(str(root), columns)
    c1, c2, c3 = st.columns(3)
    c1.metric("KMO (overall)", f"{check.kmo:.3f}", check.kmo_label, delta_color="off", delta_arrow="off")
    c2.metric("Bartlett χ²", f"{check.bartlett_chi2:,.0f}", f"df = {check.bartlett_df}", delta_color="off",
              delta_arrow="off")
    dropped = f"{check.n_dropped} dropped (missing values)" if check.n_dropped else "none dropped"
    c3.metric("Municipalities used", f"{check.n_rows:,}", dropped, delta_color="off", delta_arrow="off")
    (st.success if check.suitable else st.warning)(check.verdict)
    with st.expander("KMO per indicator", expanded=False):
        st.dataframe(check.table().assign(indicator=lambda t: t["indicator"].map(lambda n: labels.get(n, n))),
                     hide_index=True, width="stretch")

    # 2. Number of factors
    st.header("2 · How many factors?")
    suggestion = _parallel(str(root), columns)
    n_factors = max(1, suggestion.n_factors) if follow else int(manual_k)
    n_factors = min(n_factors, len(columns) - 1)
    too_many = too_many_factors_message(n_factors, len(columns))
    if too_many:
        st.warning(too_many, icon=":material/warning:")
    left, right = st.columns([3, 2])
    left.plotly_chart(style_figure(_scree_figure(suggestion), base_height=380), width="stretch", key="fa_scree")
    right.markdown(
        f"Parallel analysis ({PARALLEL_ITER} random data sets of the same size) keeps the components whose "
        f"eigenvalue beats the {int(suggestion.quantile * 100)}th percentile of chance: "
        f"**{suggestion.n_factors} factor{'s' if suggestion.n_factors != 1 else ''}** suggested."
        + ("" if follow else f" You chose **{n_factors}**.")
    )
    right.dataframe(suggestion.table.round(3), hide_index=True, width="stretch")

    # 3. Extraction
    st.header("3 · What the factors are")
    model = _model(str(root), columns, n_factors, method, rotation)
    if model.heywood_:
        st.warning("Heywood case: communality ≈ 1 for " + ", ".join(labels.get(c, c) for c in model.heywood_)
                   + ". The solution is unreliable; try fewer factors or another extraction.",
                   icon=":material/warning:")
    left, right = st.columns([3, 2])
    left.plotly_chart(style_figure(_loadings_figure(model.loadings_, labels), base_height=60 + 42 * len(columns)),
                      width="stretch", key="fa_loadings")
    right.plotly_chart(style_figure(_communalities_figure(model.communalities_, labels),
                                    base_height=60 + 42 * len(columns)), width="stretch", key="fa_communalities")
    variance = model.variance_.rename(columns={"ss_loadings": "SS loadings", "proportion": "share of variance",
                                               "cumulative": "cumulative share"})
    st.dataframe(variance.round(3), width="stretch")
    if rotation in ("promax", "oblimin") and n_factors > 1:
        st.caption("Oblique rotation: the factors correlate as follows (SS loadings then include shared variance).")
        st.dataframe(model.factor_correlation_.round(3), width="stretch")

    # 4. Map and validation
    st.header("4 · Where the factors are, and do they reproduce CONAPO's index?")
    scores = _scores(str(root), columns, n_factors, method, rotation)
    factors = list(model.get_feature_names_out())
    c1, c2, c3 = st.columns([1, 1, 2])
    factor = c1.selectbox("Factor", factors, key="fa_factor")
    palette = c2.selectbox("Palette", list(DIVERGING_PALETTES), key="fa_palette")
    c3.caption("Scores are standardised indicator combinations (regression method); positive = more of what "
               "the factor's indicators measure. Classes are sextiles.")
    if (epi_dir(root) / "geo_mxmaps_2020" / "raw" / "data" / "mxmunicipio.map.RData").is_file():
        figure = _score_map(str(root), columns, n_factors, method, rotation, factor, "quantiles", palette)
        st.plotly_chart(style_figure(figure, base_height=540), width="stretch", key="fa_map")
    else:
        missing_data_message("The municipal geometry (mxmaps)", GEOMETRY_FILE)

    if VALIDATION_VARIABLE in scores:
        valid = scores.dropna(subset=[VALIDATION_VARIABLE])
        validation = pd.DataFrame({
            "factor": factors,
            "r with IM_2020": [valid[f].corr(valid[VALIDATION_VARIABLE]) for f in factors],
            "Spearman ρ": [valid[f].corr(valid[VALIDATION_VARIABLE], method="spearman") for f in factors],
        })
        best = validation.loc[validation["r with IM_2020"].abs().idxmax()]
        # The reference a single general factor gives, whatever the settings above.
        single = _scores(str(root), columns, 1, method, None)
        single_r = single["F1"].corr(single[VALIDATION_VARIABLE])
        left, right = st.columns([2, 3])
        with left:
            m1, m2 = st.columns(2)
            m1.metric(f"r({best['factor']}, IM_2020)", f"{best['r with IM_2020']:+.3f}",
                      help="Pearson correlation of the factor most related to CONAPO's index.")
            m2.metric("r(one factor, IM_2020)", f"{single_r:+.3f}",
                      help=f"A single {METHOD_LABELS[method]} factor of the same indicators.")
            st.markdown(
                "CONAPO's index grows with *less* marginalization, so a deprivation factor correlates "
                "negatively. |r| ≥ 0.95 means the factor reproduces the official index."
            )
            st.dataframe(validation.round(3), hide_index=True, width="stretch")
        right.plotly_chart(style_figure(_validation_figure(scores, factor), base_height=420), width="stretch",
                           key="fa_validation")

    # 5. Downloads
    st.header("5 · Downloads")
    d1, d2, d3 = st.columns(3)
    summary = model.summary().rename_axis("indicator").reset_index()
    summary.insert(1, "label", summary["indicator"].map(lambda n: labels.get(n, n)))
    summary["kmo"] = summary["indicator"].map(check.kmo_per_variable)
    d1.download_button("Loadings, communalities, KMO (CSV)", summary.to_csv(index=False).encode("utf-8"),
                       file_name="pumamed_factor_loadings.csv", mime="text/csv", icon=":material/download:",
                       key="fa_dl_loadings")
    d2.download_button("Factor scores by municipality (CSV)", scores.to_csv(index=False).encode("utf-8"),
                       file_name="pumamed_factor_scores.csv", mime="text/csv", icon=":material/download:",
                       key="fa_dl_scores")
    d3.download_button("Parallel analysis (CSV)", suggestion.table.to_csv(index=False).encode("utf-8"),
                       file_name="pumamed_parallel_analysis.csv", mime="text/csv", icon=":material/download:",
                       key="fa_dl_parallel")
