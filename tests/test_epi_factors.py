"""Factor analysis (pumamed.epi.factors) and choropleth building (pumamed.epi.mapping).

Known answers on synthetic data with a planted factor structure, the CONAPO validation on the
real 2020 indicators, and the errors a user's table can trigger.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pumamed.epi.factors import SocioeconomicFactors, adequacy, kmo_label, parallel_analysis
from pumamed.errors import DataError, InputError


# ---------------------------------------------------------------- synthetic, planted structure
def planted(n=1500, seed=0, phi=0.0):
    """Two factors, three indicators each, known loadings; ``phi`` = factor correlation."""
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, phi], [phi, 1.0]])
    factors = rng.multivariate_normal([0, 0], cov, size=n)
    loadings = np.array([
        [0.8, 0.0], [0.7, 0.0], [0.6, 0.0],
        [0.0, 0.8], [0.0, 0.7], [0.0, 0.6],
    ])
    unique_sd = np.sqrt(1 - (loadings**2).sum(axis=1))
    X = factors @ loadings.T + rng.standard_normal((n, 6)) * unique_sd
    # Arbitrary units and offsets: standardisation must make them irrelevant.
    X = X * np.array([1, 10, 100, 2, 0.5, 30]) + np.array([5, -3, 100, 0, 7, 1])
    columns = ["a1", "a2", "a3", "b1", "b2", "b3"]
    return pd.DataFrame(X, columns=columns), factors, loadings


def _match(fitted: pd.DataFrame, truth: np.ndarray) -> np.ndarray:
    """Fitted loadings reordered to the planted factors (the one each indicator block loads on)."""
    order = [int(np.argmax(np.abs(fitted.to_numpy()[:3]).sum(0))), int(np.argmax(np.abs(fitted.to_numpy()[3:]).sum(0)))]
    return fitted.to_numpy()[:, order]


@pytest.mark.parametrize("method", ["minres", "ml", "principal"])
def test_planted_two_factor_loadings_are_recovered(method):
    X, _, truth = planted(n=4000)
    model = SocioeconomicFactors(n_factors=2, method=method, rotation="varimax").fit(X)
    recovered = _match(model.loadings_, truth)
    # Sampling error of a loading at n=4000 is ~0.02; principal components inflate loadings
    # (they keep the unique variance), so a looser bound there.
    tolerance = 0.1 if method != "principal" else 0.2
    assert np.abs(recovered - truth).max() < tolerance, model.loadings_.round(2)
    assert list(model.get_feature_names_out()) == ["F1", "F2"]
    if method != "principal":
        np.testing.assert_allclose(model.communalities_, (truth**2).sum(1), atol=0.08)
        np.testing.assert_allclose(model.communalities_ + model.uniquenesses_, 1.0)


def test_planted_scores_track_the_true_factors():
    X, factors, truth = planted(seed=1)
    model = SocioeconomicFactors(n_factors=2, rotation="varimax").fit(X)
    scores = model.transform(X)
    corr = np.corrcoef(np.column_stack([scores, factors]), rowvar=False)[:2, 2:]
    # Each score correlates strongly with exactly one planted factor.
    assert np.sort(np.abs(corr).max(axis=1)).min() > 0.85
    assert np.abs(corr).min() < 0.15


def test_oblique_rotation_recovers_the_factor_correlation():
    X, _, _ = planted(n=3000, seed=2, phi=0.5)
    oblique = SocioeconomicFactors(n_factors=2, rotation="oblimin").fit(X)
    assert abs(oblique.factor_correlation_.iloc[0, 1] - 0.5) < 0.1
    orthogonal = SocioeconomicFactors(n_factors=2, rotation="varimax").fit(X)
    np.testing.assert_allclose(orthogonal.factor_correlation_, np.eye(2), atol=1e-12)
    # Rotation moves loadings but never the communalities.
    np.testing.assert_allclose(oblique.communalities_, orthogonal.communalities_, atol=1e-8)
    # The variance contributions add up to the total communality, for oblique rotations too.
    assert oblique.variance_["ss_loadings"].sum() == pytest.approx(oblique.communalities_.sum(), rel=1e-6)


def test_signs_and_order_are_deterministic():
    X, _, _ = planted(seed=3)
    a = SocioeconomicFactors(n_factors=2, rotation="promax").fit(X)
    b = SocioeconomicFactors(n_factors=2, rotation="promax").fit(-X)  # every indicator flipped
    # Flipping every indicator leaves the correlations, hence the signed, ordered loadings, unchanged.
    assert (a.loadings_.sum() > 0).all()
    np.testing.assert_allclose(a.loadings_, b.loadings_, atol=1e-8)
    assert a.variance_["ss_loadings"].is_monotonic_decreasing
    # Flipping one block flips its factor's loadings, which the sign convention turns back.
    c = SocioeconomicFactors(n_factors=2, rotation="promax").fit(X.assign(a1=-X.a1, a2=-X.a2, a3=-X.a3))
    assert (c.loadings_.sum() > 0).all()


def test_parallel_analysis_finds_the_planted_number():
    X, _, _ = planted(seed=4)
    result = parallel_analysis(X, n_iter=40, seed=0)
    assert result.n_factors == 2
    assert list(result.table.columns) == ["number", "observed", "random_mean", "random_quantile", "retain"]
    assert result.table["retain"].sum() == 2
    assert parallel_analysis(X, n_iter=40, seed=0, basis="factors").n_factors >= 2
    # Pure noise: chance beats chance at most at the 5 % level the quantile sets.
    false_factors = [
        parallel_analysis(pd.DataFrame(np.random.default_rng(s).standard_normal((500, 6))), n_iter=40, seed=s).n_factors
        for s in range(10, 16)
    ]
    assert sum(false_factors) <= 1, false_factors
    # n_factors=None asks parallel analysis
    assert SocioeconomicFactors(parallel_iter=30).fit(X).n_factors_ == 2


def test_adequacy_on_structure_and_on_noise():
    X, _, _ = planted(seed=6)
    good = adequacy(X)
    assert good.suitable and good.bartlett_p < 1e-10
    assert good.bartlett_df == 15
    assert 0.5 < good.kmo <= 1 and good.kmo_label in {"miserable", "mediocre", "middling", "meritorious", "marvellous"}
    assert "Suitable" in good.verdict
    assert set(good.table()["indicator"]) == set(X.columns)
    noise = pd.DataFrame(np.random.default_rng(7).standard_normal((300, 5)))
    bad = adequacy(noise)
    assert not bad.suitable
    assert "Not suitable" in bad.verdict or "Doubtful" in bad.verdict
    assert kmo_label(0.95) == "marvellous" and kmo_label(0.42) == "unacceptable"


def test_near_duplicate_indicators_are_named():
    X, _, _ = planted(n=600, seed=12)
    total = X["a1"] + X["a2"] + np.round(np.random.default_rng(0).normal(0, 0.01, len(X)), 3)
    check = adequacy(X.assign(total=total))
    assert "collinear" in check.verdict and "total" in check.verdict
    assert "collinear" not in adequacy(X).verdict


def test_bartlett_matches_the_textbook_formula():
    X, _, _ = planted(n=500, seed=8)
    n, p = X.shape
    R = np.corrcoef(X.to_numpy(), rowvar=False)
    expected = -(n - 1 - (2 * p + 5) / 6) * np.log(np.linalg.det(R))
    assert adequacy(X).bartlett_chi2 == pytest.approx(expected, rel=1e-9)


def test_missing_rows_are_left_out_and_scored_nan():
    X, _, _ = planted(seed=9)
    X.iloc[[3, 10, 20], 1] = np.nan
    model = SocioeconomicFactors(n_factors=2).fit(X)
    assert model.n_dropped_ == 3 and model.n_samples_fit_ == len(X) - 3
    scores = model.scores_frame(X)
    assert scores.iloc[[3, 10, 20]].isna().all().all()
    assert scores.drop(index=[3, 10, 20]).notna().all().all()


@pytest.mark.parametrize("mutate, message", [
    (lambda X: X.assign(a1=np.nan), "no values at all"),
    (lambda X: X.assign(b2=4.0), "constant"),
    (lambda X: X.head(5), "complete rows"),
    (lambda X: X.assign(b3=X["a1"] * 2 + 1), "singular"),
    (lambda X: X.assign(b3=X["a1"] + X["a2"] - X["b1"]), "singular"),
    (lambda X: X.assign(a2="x"), "numeric"),
])
def test_bad_tables_raise_clear_data_errors(mutate, message):
    X, _, _ = planted(n=300, seed=10)
    with pytest.raises(DataError, match=message):
        SocioeconomicFactors(n_factors=1).fit(mutate(X))


def test_bad_settings_raise_input_errors():
    X, _, _ = planted(n=300, seed=11)
    with pytest.raises(InputError):
        SocioeconomicFactors(n_factors=6).fit(X)
    with pytest.raises(InputError):
        SocioeconomicFactors(method="pca").fit(X)
    with pytest.raises(InputError):
        SocioeconomicFactors(rotation="quartimax").fit(X)
    model = SocioeconomicFactors(n_factors=2).fit(X)
    with pytest.raises(InputError, match="missing"):
        model.transform(X.drop(columns="a1"))


# ---------------------------------------------------------------- real data: CONAPO 2020
@pytest.fixture(scope="module")
def imm_2020(epi_root):
    from pumamed.epi.socio import read_imm_2020

    return read_imm_2020(epi_root)


def test_first_factor_of_conapo_indicators_reproduces_im_2020(imm_2020):
    from pumamed.epi.socio import IMM_2020_INDICATORS

    X = imm_2020[list(IMM_2020_INDICATORS)]
    assert X.shape == (2469, 9)
    model = SocioeconomicFactors(n_factors=1, method="minres").fit(X)
    r = np.corrcoef(model.transform(X)[:, 0], imm_2020["IM_2020"])[0, 1]
    assert abs(r) >= 0.95, r
    # All nine are deprivation indicators: they load positively, and IM_2020 grows with
    # *less* marginalization, so the correlation is negative.
    assert (model.loadings_["F1"] > 0).all()
    assert r < 0
    check = adequacy(X)
    assert check.suitable and check.kmo > 0.7


def test_parallel_analysis_on_conapo_suggests_few_factors(imm_2020):
    from pumamed.epi.socio import IMM_2020_INDICATORS

    result = parallel_analysis(imm_2020[list(IMM_2020_INDICATORS)], n_iter=30, seed=0)
    assert 1 <= result.n_factors <= 3
    assert result.table["observed"].iloc[0] > 4  # one dominant dimension of deprivation


# ---------------------------------------------------------------- choropleth
def test_classify_schemes_known_answers():
    from pumamed.epi.mapping import classify

    values = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, np.nan], dtype=float)
    quantiles = classify(values, "quantiles", 5)
    assert quantiles.k == 5 and quantiles.counts == (2, 2, 2, 2, 2)
    assert quantiles.classes[-1] == -1 and quantiles.label_of(-1) == "no data"
    equal = classify(values, "equal_interval", 3)
    np.testing.assert_allclose(equal.edges, [1, 4, 7, 10])
    breaks = classify(np.array([1, 1.1, 1.2, 10, 10.5, 11, 50, 51.0]), "natural_breaks", 3)
    assert breaks.counts == (3, 3, 2)
    assert classify(values, "unclassed").k == 1
    # fewer distinct values than classes
    assert classify(np.array([1.0, 1.0, 2.0, 2.0]), "quantiles", 5).k <= 2
    with pytest.raises(DataError):
        classify(np.array([np.nan, np.nan]), "quantiles")
    with pytest.raises(InputError):
        classify(values, "jenks-ish")


def test_fisher_jenks_is_the_exact_optimum():
    """Against brute force over every set of breaks, on small samples with ties."""
    import itertools

    from pumamed.epi.mapping import fisher_jenks_breaks

    def sse(uppers, y):
        classes = np.searchsorted(uppers, y, side="left")
        return sum(((y[classes == i] - y[classes == i].mean()) ** 2).sum() for i in range(len(uppers)))

    rng = np.random.default_rng(0)
    for _ in range(25):
        y = np.round(rng.lognormal(size=int(rng.integers(5, 13))), 1)
        distinct = np.unique(y)
        for k in (2, 3, 4):
            if k > len(distinct):
                continue
            brute = min(sse(np.array([*c, distinct[-1]]), y) for c in itertools.combinations(distinct[:-1], k - 1))
            assert sse(fisher_jenks_breaks(y, k), y) == pytest.approx(brute, abs=1e-9)
    # Beyond one block (128 ends), the Monge shortcut must still reach the plain DP's optimum.
    y = np.sort(rng.lognormal(size=300))
    k = 6
    cum, cum2 = np.concatenate([[0], np.cumsum(y)]), np.concatenate([[0], np.cumsum(y**2)])

    def cost(a, e):
        return cum2[e] - cum2[a] - (cum[e] - cum[a]) ** 2 / (e - a)

    best = np.array([np.inf] + [cost(0, e) for e in range(1, len(y) + 1)])
    for j in range(1, k):
        best = np.array([np.inf] * (j + 1) + [
            min(best[a] + cost(a, e) for a in range(j, e)) for e in range(j + 1, len(y) + 1)
        ])
    breaks = fisher_jenks_breaks(y, k)
    assert len(breaks) == k and breaks[-1] == y.max()
    assert sse(breaks, y) == pytest.approx(best[-1], rel=1e-10)


def test_national_choropleth_and_state_zoom(imm_2020, epi_root):
    from pumamed.epi.mapping import municipal_choropleth, state_choices

    data = imm_2020[["CVEGEO", "IM_2020"]].iloc[10:]  # the first ten municipalities have no data
    result = municipal_choropleth(data, "IM_2020", label="Marginalization index", scheme="natural_breaks",
                                  palette="cividis", data_dir=epi_root)
    assert len(result.table) == 2469
    assert result.table["IM_2020"].isna().sum() == 10
    assert sum(result.classification.counts) == 2459
    traces = result.figure.data
    no_data = [t for t in traces if t.name == "no data"][0]
    assert len(no_data.locations) == 10 and len(no_data.geojson["features"]) == 10
    main = [t for t in traces if t.name == "Marginalization index"][0]
    assert len(main.locations) == len(main.geojson["features"]) == 2459
    assert "Aguascalientes" in str(main.customdata[0])

    oaxaca = municipal_choropleth(imm_2020[["CVEGEO", "IM_2020"]], "IM_2020", states=["20"], scheme="quantiles",
                                  data_dir=epi_root)
    assert len(oaxaca.table) == 570 and set(oaxaca.table["state"]) == {state_choices(epi_root)["20"]}
    lon_range = oaxaca.figure.layout.geo.lonaxis.range
    assert -99 < lon_range[0] < lon_range[1] < -93  # zoomed on Oaxaca
    with pytest.raises(InputError):
        municipal_choropleth(data, "IM_2020", states=["99"], data_dir=epi_root)
    with pytest.raises(DataError):
        municipal_choropleth(pd.concat([data, data]), "IM_2020", data_dir=epi_root)


def test_map_benchmark_is_registered_and_parses():
    import argparse

    from pumamed.commands.bench import map as bench_map

    parser = argparse.ArgumentParser()
    bench_map.add_arguments(parser)
    args = parser.parse_args(["--json", "--repeats", "2", "--scheme", "quantiles", "--no-naive"])
    assert args.json and args.repeats == 2 and args.no_naive and callable(bench_map.run)
