"""Penalised GLMs, boosting, spatial diagnostics and the models pipeline: the solver's pure math on
simulated data (no data directory), the rest on the real covariates."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pumamed.epi import boosting as boost
from pumamed.epi import penalized as pen
from pumamed.epi import spatial
from pumamed.epi.modeling import DEFAULT_COVARIATES, ModelSpec, build_design, run_models
from pumamed.errors import DataError

# Planted truth of the known-truth test: four effects (two up, two down) among 19 covariates.
PLANTED = (("ses_illiteracy_pct", 1.25), ("ses_overcrowding_pct", 0.8), ("population_density_km2", 1.2),
           ("age_median", 0.85))


@pytest.fixture(scope="module")
def simulated(epi_root):
    """Counts drawn from the real 2020 covariates (negative binomial, dispersion 0.1)."""
    return build_design(ModelSpec.of(sim_effects=PLANTED, sim_seed=0, data_dir=str(epi_root)))


@pytest.fixture(scope="module")
def synthetic():
    """``(X, y, population)`` with no data directory, for the solver's pure-math checks: 800
    simulated municipalities, 12 correlated covariates, negative binomial counts (dispersion 0.1)
    with four planted effects."""
    rng = np.random.default_rng(0)
    n, p = 800, 12
    cov = 0.3 ** np.abs(np.subtract.outer(np.arange(p), np.arange(p)))
    X = pd.DataFrame(rng.multivariate_normal(np.zeros(p), cov, size=n) * 3 + 10, columns=[f"x{j}" for j in range(p)])
    population = np.round(np.exp(rng.normal(9, 1.2, n)))
    beta = np.zeros(p)
    beta[[0, 3, 6, 9]] = np.log([1.25, 0.8, 1.2, 0.85])
    z = ((X - X.mean()) / X.std(ddof=0)).to_numpy()
    mean = population * 0.01 * np.exp(z @ beta)
    y = rng.poisson(rng.gamma(1 / 0.1, 0.1 * mean)).astype(float)
    return X, y, population


def _xy(design):
    return (design.frame[design.covariates], design.frame["y"].to_numpy(float),
            design.frame["population"].to_numpy(float))


# ---------------------------------------------------------------- known truth
@pytest.mark.parametrize("sim_seed", [0, 5])
def test_known_truth_planted_effects_are_recovered(epi_root, sim_seed):
    result = run_models(ModelSpec.of(sim_effects=PLANTED, sim_seed=sim_seed, run_boosting=False, run_spatial=False,
                                  n_resamples=10, data_dir=str(epi_root)))
    rec = result.recovery.set_index("variable")
    planted = {name for name, _ in PLANTED}
    selected = set(result.selected)
    assert planted <= selected, f"missed {planted - selected}"
    assert len(selected - planted) <= 1, f"false positives {selected - planted}"
    assert len(result.covariates) >= 15  # many nulls
    for name, irr in PLANTED:
        assert rec.loc[name, "estimated_ratio"] == pytest.approx(irr, rel=0.10)
        row = result.ratio_table.set_index("variable").loc[name]
        assert row["ci_low"] < row["ratio_per_sd"] < row["ci_high"]


# ---------------------------------------------------------------- agreement with statsmodels
def test_zero_penalty_poisson_matches_statsmodels(synthetic):
    import statsmodels.api as sm

    X, y, pop = synthetic
    model = pen.PenalizedGLM(family="poisson", alpha=0.0).fit(X, y, exposure=pop)
    Z = sm.add_constant(model.standardizer_.transform(X.to_numpy(float)))
    ref = sm.GLM(y, Z, family=sm.families.Poisson(), offset=np.log(pop)).fit()
    np.testing.assert_allclose(model.coef_, ref.params[1:], atol=1e-6)
    np.testing.assert_allclose(model.intercept_, ref.params[0], atol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(model.cov_params_)), ref.bse, rtol=1e-5)
    # Per-unit coefficients are the per-SD ones rescaled.
    np.testing.assert_allclose(model.coef_unit_ * X.to_numpy(float).std(axis=0), model.coef_, rtol=1e-10)


def test_zero_penalty_negbin_matches_statsmodels(synthetic):
    import statsmodels.api as sm

    X, y, pop = synthetic
    X = X.iloc[:, :8]
    model = pen.PenalizedGLM(family="negbin", alpha=0.0).fit(X, y, exposure=pop)
    Z = sm.add_constant(model.standardizer_.transform(X.to_numpy(float)))
    ref = sm.NegativeBinomial(y, Z, offset=np.log(pop)).fit(disp=0, maxiter=300)
    np.testing.assert_allclose(model.coef_, ref.params[1:-1], atol=1e-4)
    assert model.dispersion_ == pytest.approx(ref.params[-1], rel=1e-3)
    np.testing.assert_allclose(np.sqrt(np.diag(model.cov_params_)), ref.bse[:-1], rtol=2e-2)


def test_zero_penalty_binomial_matches_statsmodels(epi_root):
    import statsmodels.api as sm

    design = build_design(ModelSpec.of(severity_denominator="sim_count", sim_effects=PLANTED,
                                    sim_severity_effects=(("ses_poverty_pct", 1.4),), data_dir=str(epi_root)))
    X = design.frame[design.covariates].iloc[:, :6]
    events, trials = design.frame["y"].to_numpy(float), design.frame["trials"].to_numpy(float)
    model = pen.PenalizedGLM(family="binomial", alpha=0.0).fit(X, events, trials=trials)
    Z = sm.add_constant(model.standardizer_.transform(X.to_numpy(float)))
    ref = sm.GLM(np.column_stack([events, trials - events]), Z, family=sm.families.Binomial()).fit()
    np.testing.assert_allclose(model.coef_, ref.params[1:], atol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(model.cov_params_)), ref.bse, rtol=1e-5)


@pytest.mark.parametrize("family, l1_ratio, adaptive", [("poisson", 1.0, False), ("negbin", 0.5, False),
                                                       ("negbin", 1.0, True)])
def test_path_solutions_satisfy_the_optimality_conditions(synthetic, family, l1_ratio, adaptive):
    """Every point of the path is the penalised optimum: the elastic-net KKT conditions hold.
    (statsmodels' fit_regularized, the obvious reference, does not converge on these data.)"""
    X, y, pop = synthetic
    path = pen.glm_path(X, y, exposure=pop, family=family, l1_ratio=l1_ratio, n_lambdas=12, adaptive=adaptive)
    pf = None
    if adaptive:
        prob, _ = pen._make_problem(family, X.to_numpy(float), y, np.log(pop), None, path.dispersion)
        pf = pen.adaptive_weights(prob)
    scale = np.abs(pen.score_vector(*pen._make_problem(family, X.to_numpy(float), y, np.log(pop), None,
                                                         path.dispersion)[:1], path.intercepts[0],
                                     np.zeros(X.shape[1]))).max()
    for k in range(len(path.lambdas)):
        violation = pen.kkt_violation(X, y, path.intercepts[k], path.coefs[k], path.lambdas[k], l1_ratio,
                                      exposure=pop, family=family, dispersion=path.dispersion, penalty_factor=pf)
        assert violation <= 1e-4 * scale, (k, violation)
    assert np.all(path.coefs[0] == 0)


# ---------------------------------------------------------------- path, CV, stability, VIF
def test_path_starts_empty_and_cv_rules_are_ordered(simulated):
    X, y, pop = _xy(simulated)
    cv = pen.PenalizedGLMCV(family="negbin", n_lambdas=25, random_state=1).fit(X, y, exposure=pop)
    assert np.all(cv.path_.coefs[0] == 0)  # lambda_max: nothing enters
    assert cv.path_.n_selected()[-1] >= 10  # the smallest penalty keeps most covariates
    assert cv.lambda_1se_ >= cv.lambda_min_
    assert cv.alpha_ == cv.lambda_1se_
    frame = cv.cv_frame()
    assert list(frame.columns) == ["lambda", "log10_lambda", "cv_deviance", "cv_se", "n_selected"]
    assert frame["cv_deviance"].iloc[0] > frame["cv_deviance"].min()  # the empty model is worse
    assert cv.dispersion_ == pytest.approx(0.1, rel=0.3)  # the simulated overdispersion


def test_stability_selection_separates_planted_from_null(simulated):
    X, y, pop = _xy(simulated)
    cv = pen.PenalizedGLMCV(family="negbin", adaptive=True, n_lambdas=25).fit(X, y, exposure=pop)
    freq = pen.stability_selection(X, y, exposure=pop, alpha=cv.alpha_, n_resamples=20, dispersion=cv.dispersion_,
                                   warm_start=(cv.intercept_, cv.coef_), penalty_factor=cv.penalty_factor_)
    planted = [name for name, _ in PLANTED]
    assert freq[planted].min() >= 0.9
    assert freq.drop(planted).median() <= 0.1
    assert freq.between(0, 1).all()


def test_vif_of_a_duplicated_column_is_infinite(synthetic):
    X, _, _ = synthetic
    vif = pen.variance_inflation(X)
    assert (vif >= 1 - 1e-9).all() and np.isfinite(vif).all()
    twin = X.iloc[:, :4].assign(twin=2 * X.iloc[:, 0] + 1)
    vif_twin = pen.variance_inflation(twin)
    assert np.isinf(vif_twin.iloc[0]) and np.isinf(vif_twin["twin"])
    assert np.isfinite(vif_twin.iloc[1])


# ---------------------------------------------------------------- bad inputs
def test_bad_designs_are_data_errors(synthetic):
    X, y, pop = synthetic
    with pytest.raises(DataError, match="more municipalities than covariates"):
        pen.PenalizedGLM(family="poisson").fit(X.iloc[:10], y[:10], exposure=pop[:10])
    with pytest.raises(DataError, match="constant"):
        pen.PenalizedGLMCV(family="poisson").fit(X.assign(flat=3.0), y, exposure=pop)
    holes = X.copy()
    holes.iloc[5, 2] = np.nan
    with pytest.raises(DataError, match="missing"):
        pen.PenalizedGLMCV(family="poisson").fit(holes, y, exposure=pop)
    with pytest.raises(DataError, match="population"):
        pen.PenalizedGLM(family="poisson").fit(X, y, exposure=np.where(np.arange(len(y)) == 0, 0, pop))
    with pytest.raises(DataError, match="negative"):
        pen.PenalizedGLM(family="poisson").fit(X, -y, exposure=pop)
    with pytest.raises(DataError, match="denominators"):
        pen.PenalizedGLM(family="binomial").fit(X, y)


def test_pipeline_bad_inputs(epi_root, tmp_path):
    with pytest.raises(DataError, match="unknown covariates"):
        build_design(ModelSpec.of(covariates=("no_such_column",), data_dir=str(epi_root)))
    with pytest.raises(DataError, match="unknown count outcome"):
        build_design(ModelSpec.of(outcome="nope", data_dir=str(epi_root)))
    bad = tmp_path / "bad.csv"
    bad.write_text("CVEGEO,cases\n01001,3\n01002,4\n")
    with pytest.raises(DataError, match="missing column"):
        run_models(ModelSpec.of(outcome="table", table_path=str(bad), count_col="count", data_dir=str(epi_root)))


def test_user_table_outcome(epi_root, simulated, tmp_path):
    frame = simulated.frame
    table = pd.DataFrame({"clave": frame["CVEGEO"].str.lstrip("0"), "casos": frame["y"].astype(int),
                          "pob": frame["population"].astype(int)})
    path = tmp_path / "cases.csv"
    table.to_csv(path, index=False)
    result = run_models(ModelSpec.of(outcome="table", table_path=str(path), table_name="cases.csv", count_col="casos",
                                  population_col="pob", code_col="clave", run_boosting=False, run_spatial=False,
                                  n_resamples=5, data_dir=str(epi_root)))
    assert len(result.data) == len(frame)
    assert {name for name, _ in PLANTED} <= set(result.selected)


# ---------------------------------------------------------------- boosting
@pytest.fixture(scope="module")
def booster(simulated):
    X, y, pop = _xy(simulated)
    return boost.OffsetBoosting(random_state=0).fit(X, y, exposure=pop), X, y, pop


def test_boosting_offset_and_shap_additivity(booster):
    model, X, y, pop = booster
    fitted = model.predict(X, exposure=pop)
    assert fitted.sum() == pytest.approx(y.sum(), rel=0.05)  # the offset carries the population
    values, expected = boost.shap_values(model, X)
    np.testing.assert_allclose(values.sum(axis=1) + expected, model.raw_score(X), atol=1e-8)
    importance = boost.shap_importance(values)
    planted = [name for name, _ in PLANTED]
    # Trees share credit with correlated nulls (schooling with illiteracy, ...), so no exact
    # ranking is promised; but the 4 planted of 19 covariates carry far more than a 4/19 share.
    assert importance[planted].sum() / importance.sum() > 0.4
    assert set(importance.index[:2]) <= set(planted)


def test_lightgbm_treeshap_equals_shap_tree_explainer(booster):
    model, X, _, _ = booster
    ours, expected = boost.shap_values(model, X.iloc[:300])
    theirs, expected_shap = boost.shap_values(model, X.iloc[:300], backend="shap")
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), atol=1e-8)
    assert expected == pytest.approx(expected_shap, abs=1e-8)


def test_partial_dependence_ice_and_ale_follow_the_planted_direction(booster):
    model, X, _, _ = booster
    pdp = boost.partial_dependence(model, X, ["ses_illiteracy_pct", "ses_overcrowding_pct"], n_ice=10)
    pd_up = pdp[(pdp["feature"] == "ses_illiteracy_pct") & (pdp["curve"] == "PD")]
    pd_down = pdp[(pdp["feature"] == "ses_overcrowding_pct") & (pdp["curve"] == "PD")]
    assert pd_up["effect"].iloc[-1] > pd_up["effect"].iloc[0]  # planted IRR 1.25
    assert pd_down["effect"].iloc[-1] < pd_down["effect"].iloc[0]  # planted IRR 0.8
    assert pdp["curve"].nunique() == 11  # PD + 10 ICE curves
    ale = boost.accumulated_local_effects(model, X, "ses_illiteracy_pct")
    assert ale["ale"].iloc[-1] > ale["ale"].iloc[0]
    weighted = np.sum((ale["ale"].to_numpy()[:-1] + ale["ale"].to_numpy()[1:]) / 2 * ale["count"].to_numpy()[1:])
    assert abs(weighted) < 1e-9  # centred


# ---------------------------------------------------------------- spatial
@pytest.fixture(scope="module")
def weights(epi_root):
    from pumamed.epi.geometry import load_municipalities

    codes = load_municipalities(epi_root)["CVEGEO"].tolist()
    return spatial.municipal_weights(codes, epi_root), codes


def test_morans_i_detects_a_planted_pattern_and_not_noise(weights, epi_root):
    from pumamed.epi.geometry import load_municipalities

    w, codes = weights
    geo = load_municipalities(epi_root).set_index("CVEGEO").loc[codes]
    centroid = geo.geometry.representative_point()
    rng = np.random.default_rng(3)
    smooth = np.sin(centroid.x.to_numpy() / 3) + np.cos(centroid.y.to_numpy() / 2) + rng.normal(0, 0.3, len(codes))
    noise = rng.normal(size=len(codes))
    planted = spatial.morans_i(smooth, w, permutations=199)
    random = spatial.morans_i(noise, w, permutations=199)
    assert planted.I > 0.5 and planted.p_value <= 0.01
    assert abs(random.I) < 0.05 and random.p_value > 0.01
    lisa = spatial.lisa_clusters(smooth, w, permutations=199)
    counts = lisa["cluster"].value_counts()
    assert counts.get("high-high", 0) > 200 and counts.get("low-low", 0) > 200
    lisa_noise = spatial.lisa_clusters(noise, w, permutations=199)
    assert (lisa_noise["cluster"] != "not significant").mean() < 0.1


def test_local_moran_statistic_equals_esda(weights):
    import esda

    w, _ = weights
    y = np.random.default_rng(0).normal(size=w.n)
    Is, q, _ = spatial.local_moran(y, w, permutations=0)
    ref = esda.Moran_Local(y, w, permutations=0)
    np.testing.assert_allclose(Is, ref.Is, atol=1e-12)
    assert np.array_equal(q, ref.q)


def test_islands_get_their_nearest_neighbour(epi_root):
    from pumamed.epi.geometry import load_municipalities

    geo = load_municipalities(epi_root)
    # Baja California Sur plus one Yucatán municipality far away: the latter is an island here.
    subset = pd.concat([geo[geo["CVE_ENT"] == "03"], geo[geo["CVEGEO"] == "31050"]])
    w = spatial.queen_weights(subset)
    assert w.n_islands_attached >= 1
    assert not w.islands
    assert all(len(v) >= 1 for v in w.neighbors.values())


# ---------------------------------------------------------------- pipeline and CLI
def test_pipeline_on_a_real_outcome(epi_root):
    result = run_models(ModelSpec.of(outcome="covid_diabetic_hospitalized", n_resamples=10, permutations=99,
                                  data_dir=str(epi_root)))
    assert len(result.data) > 2400
    assert set(result.deviance["model"]) == {"null (overall rate)", "penalised negbin GLM", "LightGBM (offset)"}
    assert (result.deviance.set_index("model")["deviance_explained"].drop("null (overall rate)") > 0).all()
    assert result.moran is not None and -1 < result.moran["I"] < 1
    assert len(result.lisa) == len(result.data)
    assert result.shap.shape == (len(result.data), len(result.covariates))
    assert json.dumps(result.to_dict(), default=str)


def test_pipeline_severity_is_binomial(epi_root):
    result = run_models(ModelSpec.of(outcome="covid_diabetic_icu", severity_denominator="covid_diabetic_hospitalized",
                                  n_resamples=5, permutations=99, data_dir=str(epi_root)))
    assert result.family == "binomial" and result.ratio_name == "OR"
    assert (result.data["y"] <= result.data["trials"]).all() and (result.data["trials"] > 0).all()
    assert "LightGBM (offset)" in set(result.deviance["model"])


def test_model_cli_json(epi_root, capsys):
    from pumamed.cli import main

    effects = [f"{name}={irr}" for name, irr in PLANTED]
    code = main(["epi", "model", "--outcome", "simulated", "--data-dir", str(epi_root), "--effects", *effects,
                 "--resamples", "5", "--permutations", "99", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("selected", "selected_table", "cv_deviance", "boosting_importance", "moran_residuals",
                "deviance_comparison", "caveat", "vif", "stability", "truth_recovery"):
        assert key in out, key
    row = out["selected_table"][0]
    assert {"variable", "ratio_per_sd", "ci_low", "ci_high", "p_value"} <= set(row)
    assert {"I", "p_value"} <= set(out["moran_residuals"])


def test_model_cli_reports_bad_input_in_one_line(epi_root, capsys):
    from pumamed.cli import main

    assert main(["epi", "model", "--outcome", "simulated", "--data-dir", str(epi_root),
                 "--covariates", "nonexistent"]) == 2
    assert "unknown covariates" in capsys.readouterr().err


def test_default_covariates_exist_in_the_catalogue():
    from pumamed.epi.modeling import candidate_covariates

    names = set(candidate_covariates()["name"])
    assert set(DEFAULT_COVARIATES) <= names


def test_severity_pair_with_events_outside_its_denominator_fits_after_excluding_them(epi_root):
    """Deaths among the hospitalised: some deaths were never hospitalised, so a few municipalities
    count more deaths than hospitalisations. They are left out with a note naming how many, and
    the binomial model fits on the rest."""
    spec = ModelSpec.of(outcome="covid_diabetic_deaths", severity_denominator="covid_diabetic_hospitalized",
                     data_dir=str(epi_root))
    design = build_design(spec)
    frame = design.frame
    assert (frame["y"] <= frame["trials"]).all() and (frame["trials"] > 0).all()
    over = [n for n in design.notes if "exceeds covid_diabetic_hospitalized" in n]
    assert over and int(over[0].split()[0].replace(",", "")) > 0, design.notes
    assert any("zero denominator" in n and "undefined" in n for n in design.notes)


def test_empty_selection_message_says_what_it_means():
    from pumamed.epi.modeling import empty_selection_message

    text = empty_selection_message("binomial", "1se", 1183)
    assert "proportion" in text and "1,183" in text and "1-SE" in text and "not proof" in text
    assert "rate" in empty_selection_message("negbin", "min", 10)
