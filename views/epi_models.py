"""Diabetes models: penalised count regression, boosting with explanations, spatial checks.

All computation is :func:`pumamed.epi.modeling.run_models`; this page chooses the inputs,
caches the result per input and draws it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from views._frame import controls, guarded, is_presentation, missing_data_message, show_error, style_figure
from pumamed.errors import MissingDataError, PumaMedError

OUTCOME_KINDS = ("Count (rate per population)", "Severity (proportion)", "Simulated (planted effects)",
                 "Upload a table")
LISA_COLOURS = {"high-high": "#b2182b", "low-low": "#2166ac", "high-low": "#f4a582", "low-high": "#92c5de",
                "not significant": "#e8e8e8"}


# ---------------------------------------------------------------- cached computation
@st.cache_data(show_spinner="Reading the municipal panel…", ttl=3600)
def _catalogue(data_dir: str):
    from pumamed.epi.modeling import candidate_covariates, count_outcomes, severity_pairs
    from pumamed.epi.panel import load_panel

    panel = load_panel(data_dir)  # builds (and caches) the panel; fails early if data are missing
    counts = count_outcomes()
    available = [n for n in counts["name"] if panel[n].notna().any()]
    counts = counts[counts["name"].isin(available)].reset_index(drop=True)
    covs = candidate_covariates()
    present = covs["name"].map(lambda n: n in panel.columns and panel[n].notna().mean() > 0)
    covs = covs[present].reset_index(drop=True)
    coverage = {n: float(panel.loc[panel["year"] == 2020, n].notna().mean()) for n in covs["name"]}
    pairs = [p for p in severity_pairs() if p[0] in available and p[1] in available]
    return counts, covs, coverage, pairs


@st.cache_data(show_spinner="Fitting the penalised GLM, boosting and spatial diagnostics…", max_entries=12)
def _fit(spec_items: tuple):
    from pumamed.epi.modeling import ModelSpec, run_models

    return run_models(ModelSpec.of(**dict(spec_items)))


# ---------------------------------------------------------------- figures
def _label(name: str) -> str:
    """The covariate's readable label (as in the sidebar), not its column name."""
    return labels.get(name, name)


def _wrap(text: str, width: int = 22) -> str:
    """Line breaks for plotly titles, which clip rather than wrap."""
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "<br>".join(lines + [line])


def _scale_name(result) -> str:
    """What the model's coefficients are on: log odds (binomial severity) or log rate (counts)."""
    return "log odds" if result.family == "binomial" else "log rate"


def _axis_title(result, name: str) -> str:
    return _label(name) + (" (log1p scale)" if name in result.transformed else "")


def _path_figure(result):
    from plotly.colors import qualitative

    # 24 dark then 24 light hues, and a dash style per round: no two covariates share a look.
    colours = qualitative.Dark24 + qualitative.Light24
    dashes = ("solid", "dash", "dot")
    fig = go.Figure()
    path = result.path
    for k, (name, rows) in enumerate(path.groupby("variable", sort=False)):
        fig.add_trace(go.Scatter(
            x=rows["log10_lambda"], y=rows["coefficient"], mode="lines", name=_label(name),
            line=dict(color=colours[k % len(colours)], dash=dashes[(k // len(colours)) % len(dashes)]),
            hovertemplate=f"{_label(name)}<br>log10 λ=%{{x:.2f}}<br>coef/SD=%{{y:.3f}}<extra></extra>"))
    _lambda_lines(fig, result)
    fig.update_layout(title=f"Coefficient path (per SD, {_scale_name(result)})", xaxis_title="log10 λ",
                      yaxis_title=f"coefficient per SD ({_scale_name(result)})", xaxis_autorange="reversed")
    return style_figure(fig)


def _lambda_lines(fig, result):
    cv = result.cv
    for value, label, dash in ((cv.lambda_min_, "min", "dot"), (cv.lambda_1se_, "1-SE", "dash")):
        fig.add_vline(x=float(np.log10(value)), line_dash=dash, line_color="grey",
                      annotation_text=label, annotation_position="top")


def _cv_figure(result):
    curve = result.cv_curve
    fig = go.Figure(go.Scatter(
        x=curve["log10_lambda"], y=curve["cv_deviance"], mode="markers+lines",
        error_y=dict(type="data", array=curve["cv_se"], visible=True), name="CV deviance",
        customdata=curve["n_selected"],
        hovertemplate="log10 λ=%{x:.2f}<br>deviance=%{y:.4g}<br>%{customdata} covariates<extra></extra>"))
    _lambda_lines(fig, result)
    fig.update_layout(title=f"{result.spec.penalty.n_folds}-fold cross-validated deviance (mean ± SE)",
                      xaxis_title="log10 λ", yaxis_title="mean held-out deviance", xaxis_autorange="reversed")
    return style_figure(fig)


def _forest_figure(table, ratio):
    table = table.sort_values("ratio_per_sd")
    fig = go.Figure(go.Scatter(
        x=table["ratio_per_sd"], y=[_label(v) for v in table["variable"]], mode="markers", marker=dict(size=10),
        error_x=dict(type="data", symmetric=False, array=table["ci_high"] - table["ratio_per_sd"],
                     arrayminus=table["ratio_per_sd"] - table["ci_low"]),
        hovertemplate=f"%{{y}}<br>{ratio} per SD=%{{x:.3f}}<extra></extra>"))
    fig.add_vline(x=1.0, line_color="grey", line_dash="dash")
    fig.update_layout(title=f"{ratio} per SD with 95% CI (unpenalised refit)", xaxis_type="log",
                      xaxis_title=f"{ratio} per SD (log scale)")
    return style_figure(fig, base_height=max(260, 60 + 34 * len(table)))


def _stability_figure(stability):
    data = stability.sort_values("selection_frequency")
    fig = go.Figure(go.Bar(x=data["selection_frequency"], y=[_label(v) for v in data["variable"]], orientation="h",
                           marker_color=np.where(data["selected"], "#1f77b4", "#bbbbbb")))
    fig.add_vline(x=0.6, line_dash="dash", line_color="grey", annotation_text="0.6")
    fig.update_layout(title="Stability selection: share of bootstrap resamples selecting each covariate",
                      xaxis_range=[0, 1.02], xaxis_title="selection frequency")
    return style_figure(fig, base_height=max(300, 60 + 22 * len(data)))


def _pdp_figure(result, feature):
    rows = result.pdp[result.pdp["feature"] == feature]
    ale = result.ale[result.ale["feature"] == feature]
    fig = go.Figure()
    for curve, part in rows[rows["curve"] != "PD"].groupby("curve"):
        fig.add_trace(go.Scatter(x=part["value"], y=part["effect"], mode="lines", line=dict(width=0.6, color="rgba(100,100,100,0.25)"),
                                 showlegend=False, hoverinfo="skip"))
    pd_rows = rows[rows["curve"] == "PD"]
    fig.add_trace(go.Scatter(x=pd_rows["value"], y=pd_rows["effect"], mode="lines", name="partial dependence",
                             line=dict(width=4, color="#d62728")))
    fig.add_trace(go.Scatter(x=ale["value"], y=ale["ale"], mode="lines+markers", name="ALE",
                             line=dict(width=3, color="#1f77b4", dash="dash")))
    fig.update_layout(title=_wrap(f"{_label(feature)}: centred ICE (grey), partial dependence and ALE", 60),
                      xaxis_title=_axis_title(result, feature),
                      yaxis_title=f"effect on the {_scale_name(result)}")
    return style_figure(fig)


def _shap_summary_figure(result, max_features=12):
    shap = result.shap
    order = result.importance["variable"].head(max_features).tolist()[::-1]
    X = result.data.set_index("CVEGEO")[result.covariates]
    fig = go.Figure()
    rng = np.random.default_rng(0)
    for k, name in enumerate(order):
        values = X[name].to_numpy(float)
        ranks = pd.Series(values).rank(pct=True).to_numpy()
        fig.add_trace(go.Scattergl(
            x=shap[name].to_numpy(), y=k + rng.uniform(-0.3, 0.3, len(values)), mode="markers",
            marker=dict(size=4, color=ranks, colorscale="RdBu_r", cmin=0, cmax=1, showscale=(k == 0),
                        colorbar=dict(title="feature<br>value (rank)", tickvals=[0, 1], ticktext=["low", "high"])),
            name=_label(name), showlegend=False,
            hovertemplate=f"{_label(name)}<br>SHAP=%{{x:.3f}}<extra></extra>"))
    fig.update_layout(title=_wrap("SHAP summary: contribution of each covariate to each municipality's "
                                  f"{_scale_name(result)}", 90),
                      xaxis_title=f"SHAP value ({_scale_name(result)})",
                      yaxis=dict(tickvals=list(range(len(order))), ticktext=[_label(n) for n in order]))
    fig.add_vline(x=0, line_color="grey")
    return style_figure(fig, base_height=max(360, 80 + 34 * len(order)))


def _shap_dependence_figure(result, feature, colour_by):
    X = result.data.set_index("CVEGEO")[result.covariates]
    fig = go.Figure(go.Scattergl(
        x=X[feature], y=result.shap[feature], mode="markers",
        marker=dict(size=5, color=X[colour_by], colorscale="Viridis", showscale=True,
                    colorbar=dict(title=_wrap(_axis_title(result, colour_by), 18))),
        text=X.index, hovertemplate="%{text}<br>value=%{x:.3g}<br>SHAP=%{y:.3f}<extra></extra>"))
    fig.update_layout(title=_wrap(f"SHAP dependence: {_label(feature)} (colour: {_label(colour_by)})", 60),
                      xaxis_title=_axis_title(result, feature),
                      yaxis_title=f"SHAP value ({_scale_name(result)})")
    return style_figure(fig)


def _deviance_figure(table):
    fig = go.Figure(go.Bar(x=table["model"], y=table["heldout_deviance"],
                           error_y=dict(type="data", array=table["se"])))
    fig.update_layout(title="Held-out deviance on the same folds (lower is better)", yaxis_title="mean deviance")
    return style_figure(fig, base_height=320)


def _category_map(table: pd.DataFrame, column: str, colours: dict, title: str):
    from pumamed.epi.mapping import category_choropleth

    return style_figure(category_choropleth(table, column, colours, title=title), base_height=560)


def _value_map(table: pd.DataFrame, column: str, label: str, palette: str = "RdBu"):
    from pumamed.epi.mapping import municipal_choropleth

    # Signed values (SHAP, residuals): classes split at zero, blue below, red above.
    result = municipal_choropleth(table, column, label=label, scheme="diverging", k=8, palette=palette,
                                  reverse=True)
    return style_figure(result.figure, base_height=560)


# ---------------------------------------------------------------- page
st.title("Diabetes models")
st.caption("Which socioeconomic factors and pollutants explain the number and severity of diabetes outcomes "
           "per municipality: penalised count regression with variable selection, gradient boosting with "
           "partial dependence and SHAP, and spatial checks of what the models leave unexplained.")

data_root = None
try:
    from pumamed.config import data_dir as _data_dir

    data_root = str(_data_dir())
    counts, covariate_table, coverage, pairs = _catalogue(data_root)
except MissingDataError as exc:
    missing_data_message("The municipal panel (CONAPO 2020 and the mxmaps geometry at least)",
                         "epi/conapo_imm_2020/IMM_2020.csv")
    st.caption(str(exc))
    st.stop()
except PumaMedError as exc:  # present but unreadable: its own message, not "was not found"
    show_error(exc, "The municipal panel")
    st.stop()

from pumamed.epi.modeling import DEFAULT_COVARIATES  # noqa: E402  (after the data check)

labels = dict(zip(covariate_table["name"], covariate_table["label"]))
spec: dict = {"data_dir": data_root}
uploaded_ok = True
with controls("Model settings"):
    kind = st.radio("Outcome", OUTCOME_KINDS, key="models_outcome_kind")
    default_covs = [c for c in DEFAULT_COVARIATES if c in labels]
    if kind == OUTCOME_KINDS[0]:
        if counts.empty:
            st.warning("The panel has no count outcome; use the simulated outcome or upload a table.")
            uploaded_ok = False
        else:
            names = counts["name"].tolist()
            default = names.index("covid_diabetic_hospitalized") if "covid_diabetic_hospitalized" in names else 0
            outcome = st.selectbox("Count outcome", names, index=default, key="models_count",
                                   format_func=lambda n: f"{counts.set_index('name').loc[n, 'label']} [{n}]")
            spec["outcome"] = outcome
    elif kind == OUTCOME_KINDS[1]:
        if not pairs:
            st.warning("No severity pair (events and their denominator) is in the panel.")
            uploaded_ok = False
        else:
            choice = st.selectbox("Severity proportion", range(len(pairs)), key="models_severity",
                                  format_func=lambda i: pairs[i][2])
            spec["outcome"], spec["severity_denominator"] = pairs[choice][0], pairs[choice][1]
    elif kind == OUTCOME_KINDS[2]:
        spec["outcome"] = "simulated"
        planted = st.multiselect("Planted covariates", default_covs, key="models_planted",
                                 default=["ses_illiteracy_pct", "ses_overcrowding_pct", "age_median"],
                                 format_func=lambda n: labels.get(n, n))
        size = st.slider("Planted IRR per SD (signs alternate)", 1.05, 1.6, 1.25, 0.05, key="models_irr")
        spec["sim_effects"] = tuple((name, size if k % 2 == 0 else 1 / size) for k, name in enumerate(planted))
        spec["sim_n_planted"] = 0
        spec["sim_dispersion"] = st.slider("Overdispersion (NB dispersion)", 0.0, 1.0, 0.1, 0.05, key="models_disp")
        spec["sim_baseline_rate"] = st.select_slider("Baseline cases per person", [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
                                                     value=1e-3, key="models_rate")
        spec["sim_seed"] = int(st.number_input("Simulation seed", 0, 10_000, 0, key="models_sim_seed"))
        if not planted:
            st.caption("No planted effect: every covariate is null; the model should select none.")
    else:
        upload = st.file_uploader("Outcome table (CSV, xlsx)", type=["csv", "txt", "xlsx"], key="models_upload")
        spec["count_col"] = st.text_input("Count column", "count", key="models_count_col")
        spec["population_col"] = st.text_input("Population column (blank: census 2020)", "",
                                               key="models_pop_col") or None
        spec["code_col"] = st.text_input("Municipality code column", "CVEGEO", key="models_code_col")
        if upload is None:
            uploaded_ok = False
        else:
            spec.update(outcome="table", table_bytes=upload.getvalue(), table_name=upload.name)

    # Covariates without a value in the modelled year would empty the design: not offered.
    offered = [n for n in covariate_table["name"] if coverage.get(n, 0) > 0]
    chosen_covs = st.multiselect("Covariates", offered, default=[c for c in default_covs if c in offered],
                                 key="models_covariates",
                                 help="coverage: share of the 2,469 municipalities with a 2020 value; a model "
                                      "keeps only municipalities with every chosen covariate",
                                 format_func=lambda n: f"{labels.get(n, n)} · {coverage.get(n, 0):.0%} covered")
    spec["covariates"] = tuple(chosen_covs)
    if kind != OUTCOME_KINDS[1]:
        spec["family"] = st.radio("Count family", ["negbin", "poisson"], horizontal=True, key="models_family",
                                  format_func=lambda f: {"negbin": "negative binomial", "poisson": "Poisson"}[f])
    with st.expander("Penalty and resampling"):
        spec["l1_ratio"] = st.slider("Elastic-net mix (1 = lasso)", 0.1, 1.0, 1.0, 0.1, key="models_l1")
        spec["adaptive"] = st.checkbox("Adaptive lasso weights", True, key="models_adaptive",
                                       help="Penalty weights 1/|ridge estimate|: removes the lasso's bias towards "
                                            "correlated null covariates (consistent selection).")
        spec["rule"] = st.radio("Penalty rule", ["1se", "min"], horizontal=True, key="models_rule",
                                format_func=lambda r: {"1se": "1-SE (sparser)", "min": "minimum CV deviance"}[r])
        spec["n_folds"] = st.slider("CV folds", 3, 10, 5, key="models_folds")
        spec["n_resamples"] = st.slider("Bootstrap resamples (stability)", 10, 200, 50, 10, key="models_resamples")
        spec["log_skewed"] = st.checkbox("log1p skewed covariates", True, key="models_log")

if not uploaded_ok:
    st.info("Choose an outcome (or upload a table with CVEGEO and a count column) to fit the models.",
            icon=":material/upload_file:")
    st.stop()
if not spec["covariates"]:
    st.info("Choose at least one covariate.", icon=":material/checklist:")
    st.stop()

result = None
try:
    result = _fit(tuple(sorted(spec.items())))
except PumaMedError as exc:
    show_error(exc, "Model")
except Exception as exc:  # noqa: BLE001
    show_error(exc, "Model")
if result is None:
    st.stop()

ratio = result.ratio_name
cols = st.columns(4)
cols[0].metric("Municipalities", f"{len(result.data):,}", help=f"{result.n_dropped} left out (see notes)")
cols[1].metric("Covariates selected", f"{len(result.selected)} / {len(result.covariates)}")
chosen = result.cv.chosen_index_
cols[2].metric("CV deviance", f"{result.cv.cv_mean_[chosen]:.3g}", help="mean held-out deviance at the chosen λ")
if result.moran:
    cols[3].metric("Moran's I (residuals)", f"{result.moran['I']:.3f}", help=f"permutation p = {result.moran['p_value']:.3g}")
penalty = result.spec.penalty
summary = (f"**{result.outcome_label}**; family: {result.family}; λ by the {penalty.rule} rule "
           f"({'adaptive ' if penalty.adaptive else ''}{'lasso' if penalty.l1_ratio == 1 else 'elastic net'}).")
if is_presentation():  # talks: the data notes fold away beside the summary, the figures keep the room
    summary_col, notes_col = st.columns([3, 1], vertical_alignment="center")
    summary_col.caption(summary)
    with notes_col.expander("Data notes"):
        for note in result.notes:
            st.caption(f"• {note}")
else:
    st.caption(summary)
    for note in result.notes:
        st.caption(f"• {note}")

tab_glm, tab_boost, tab_space, tab_data = st.tabs(["Penalised GLM", "Boosting & SHAP", "Spatial checks", "Data"])

with tab_glm, guarded("Penalised GLM"):
    left, right = st.columns(2)
    left.plotly_chart(_path_figure(result))
    right.plotly_chart(_cv_figure(result))
    st.subheader(f"Selected covariates: {ratio} per SD")
    if len(result.ratio_table):
        st.plotly_chart(_forest_figure(result.ratio_table, ratio))
        shown = result.ratio_table[["variable", "ratio_per_sd", "ci_low", "ci_high", "p_value",
                                    "penalised_ratio_per_sd", "selection_frequency", "ratio_per_unit", "sd"]]
        st.dataframe(shown, hide_index=True, column_config={
            "ratio_per_sd": st.column_config.NumberColumn(f"{ratio} per SD", format="%.3f"),
            "ci_low": st.column_config.NumberColumn("95% CI low", format="%.3f"),
            "ci_high": st.column_config.NumberColumn("95% CI high", format="%.3f"),
            "p_value": st.column_config.NumberColumn("p", format="%.2g"),
            "penalised_ratio_per_sd": st.column_config.NumberColumn(f"penalised {ratio}", format="%.3f"),
            "selection_frequency": st.column_config.NumberColumn("stability", format="%.2f"),
            "ratio_per_unit": st.column_config.NumberColumn(f"{ratio} per unit", format="%.4f"),
            "sd": st.column_config.NumberColumn("SD", format="%.3g"),
        })
        # the caveat is about the refit's intervals: shown only when there was a refit
        st.warning(result.caveat, icon=":material/warning:")
    else:
        from pumamed.epi.modeling import empty_selection_message

        st.info(empty_selection_message(result.family, result.spec.penalty.rule, len(result.data)),
                icon=":material/filter_alt_off:")
    if result.recovery is not None:
        st.subheader("Planted versus recovered")
        st.dataframe(result.recovery, hide_index=True)
    left, right = st.columns(2)
    left.plotly_chart(_stability_figure(result.stability))
    with right:
        st.markdown("**Variance inflation factors** (all covariates; > 10 signals strong collinearity)")
        st.dataframe(result.vif.sort_values("vif", ascending=False), hide_index=True,
                     column_config={"vif": st.column_config.NumberColumn("VIF", format="%.2f")})

with tab_boost, guarded("Boosting"):
    if result.deviance is not None:
        left, right = st.columns([3, 2])
        left.dataframe(result.deviance, hide_index=True)
        from pumamed.epi.modeling import COUNT_DEVIANCE_NOTE

        left.caption(COUNT_DEVIANCE_NOTE if result.family != "binomial" else
                     "Held-out binomial deviance per trial on the same folds; lower is better.")
        right.plotly_chart(_deviance_figure(result.deviance))
        st.plotly_chart(_shap_summary_figure(result))

        @st.fragment
        def _explanations():
            top = result.pdp["feature"].unique().tolist()
            feature = st.selectbox("Covariate to explain", top, key="models_pdp_feature",
                                   format_func=lambda n: labels.get(n, n))
            left, right = st.columns(2)
            left.plotly_chart(_pdp_figure(result, feature))
            others = [c for c in result.covariates if c != feature] or [feature]
            colour_by = result.importance["variable"][result.importance["variable"] != feature]
            colour_by = colour_by.iloc[0] if len(colour_by) else feature
            right.plotly_chart(_shap_dependence_figure(result, feature, colour_by if colour_by in others else others[0]))
            with guarded("SHAP map"):
                table = pd.DataFrame({"CVEGEO": result.shap.index, "shap": result.shap[feature].to_numpy()})
                st.plotly_chart(_value_map(table, "shap", f"SHAP of {_label(feature)}"))
                target = "proportion" if result.family == "binomial" else "rate"
                st.caption(f"Each municipality's SHAP contribution of this covariate ({_scale_name(result)}), in "
                           f"classes split at zero: red raises the expected {target}, blue lowers it.")

        _explanations()

with tab_space, guarded("Spatial diagnostics"):
    if result.moran:
        m, mb = result.moran, result.moran_boosting
        c1, c2 = st.columns(2)
        c1.metric("Moran's I, GLM residuals", f"{m['I']:.3f}", help=f"E[I]={m['expected']:.4f}")
        c1.caption(f"permutation p = {m['p_value']:.3g} ({m['permutations']} permutations); "
                   f"z = {m['z']:.2f}; islands attached to nearest neighbour: {m['n_islands_attached']}")
        if mb:
            c2.metric("Moran's I, boosting residuals", f"{mb['I']:.3f}")
            c2.caption(f"permutation p = {mb['p_value']:.3g}")
        st.caption("Queen contiguity, row-standardised; Pearson residuals of the unpenalised refit. Residual "
                   "clustering means a spatially structured cause is missing and intervals assuming "
                   "independence are too narrow.")
        st.plotly_chart(_category_map(result.lisa, "cluster", LISA_COLOURS,
                                      "LISA clusters of the residuals (p < 0.05, not corrected for multiplicity)"))
        st.plotly_chart(_value_map(result.residuals, "pearson_glm", "Pearson residual (GLM)"))

with tab_data, guarded("Data"):
    st.dataframe(result.data, hide_index=True)
    st.download_button("Download the modelled table (CSV)", result.data.to_csv(index=False).encode(),
                       file_name="model_data.csv", mime="text/csv")
    st.json({k: v for k, v in result.timings.items()}, expanded=False)
