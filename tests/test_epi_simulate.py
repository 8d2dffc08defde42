"""The simulated outcome: drawn from the real covariates, with the planted truth returned."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pumamed.epi.simulate import COUNT_COLUMN, SEVERE_COLUMN, default_effects, simulate_outcome
from pumamed.errors import DataError

COVS = ["ses_illiteracy_pct", "ses_overcrowding_pct", "ses_low_wage_pct", "age_median", "ses_poverty_pct"]


@pytest.fixture(scope="module")
def section(epi_root):
    from pumamed.epi.panel import load_panel

    panel = load_panel(epi_root, year=2020)
    return panel[["CVEGEO", "population"] + COVS].dropna().reset_index(drop=True)


def test_simulation_uses_real_covariates_and_returns_truth(section):
    effects = {"ses_illiteracy_pct": 1.3, "age_median": 0.8}
    sim = simulate_outcome(section[COVS], section["population"], effects=effects, dispersion=0.2,
                           severity_effects={"ses_poverty_pct": 1.5}, codes=section["CVEGEO"], seed=4)
    assert len(sim.data) == len(section) > 2400
    assert sim.data["CVEGEO"].str.len().eq(5).all()
    assert sim.planted == ["ses_illiteracy_pct", "age_median"]
    assert sim.severity_planted == ["ses_poverty_pct"]
    truth = sim.truth.set_index("variable")
    assert truth.loc["ses_illiteracy_pct", "irr_per_sd"] == pytest.approx(1.3)
    assert truth.loc["ses_low_wage_pct", "irr_per_sd"] == 1.0
    # Severity never exceeds the cases; the overall rate is near the baseline.
    assert (sim.data[SEVERE_COLUMN] <= sim.data[COUNT_COLUMN]).all()
    rate = sim.data[COUNT_COLUMN].sum() / section["population"].sum()
    assert 0.5e-3 < rate < 2e-3
    # Same seed, same draw; another seed, another draw.
    again = simulate_outcome(section[COVS], section["population"], effects=effects, dispersion=0.2, seed=4)
    other = simulate_outcome(section[COVS], section["population"], effects=effects, dispersion=0.2, seed=5)
    assert np.array_equal(again.data[COUNT_COLUMN], sim.data[COUNT_COLUMN])
    assert not np.array_equal(other.data[COUNT_COLUMN], sim.data[COUNT_COLUMN])
    assert json.dumps(sim.truth_dict())


def test_overdispersion_is_what_was_asked(section):
    """Negative-binomial draws: Var/mean grows with the dispersion; 0 gives Poisson."""
    X = section[COVS]
    pop = np.full(len(section), 20_000.0)  # equal exposure: the spread comes from the draw alone
    poisson = simulate_outcome(X, pop, effects={}, dispersion=0.0, seed=1).data[COUNT_COLUMN]
    negbin = simulate_outcome(X, pop, effects={}, dispersion=0.5, seed=1).data[COUNT_COLUMN]
    assert poisson.var() / poisson.mean() == pytest.approx(1.0, abs=0.15)
    mu = negbin.mean()
    assert negbin.var() == pytest.approx(mu + 0.5 * mu**2, rel=0.2)


def test_default_effects_plant_a_few_and_leave_the_rest_null():
    effects = default_effects(COVS, n_planted=3, seed=2)
    assert len(effects) == 3 and set(effects) <= set(COVS)
    assert all(1.1 < max(v, 1 / v) < 1.4 for v in effects.values())


@pytest.mark.parametrize("kwargs, message", [
    ({"effects": {"nope": 1.2}}, "unknown covariates"),
    ({"effects": {"ses_poverty_pct": -1}}, "positive"),
    ({"effects": {}, "baseline_rate": 2.0}, "baseline rate"),
    ({"effects": {}, "dispersion": -0.1}, "dispersion"),
])
def test_bad_simulation_settings_are_data_errors(section, kwargs, message):
    with pytest.raises(DataError, match=message):
        simulate_outcome(section[COVS], section["population"], **kwargs)


def test_missing_covariates_are_refused(section):
    X = section[COVS].copy()
    X.iloc[3, 1] = np.nan
    with pytest.raises(DataError, match="missing"):
        simulate_outcome(X, section["population"], effects={})
    with pytest.raises(DataError, match="constant"):
        simulate_outcome(X.fillna(1).assign(ses_poverty_pct=5.0), section["population"], effects={})


def test_simulate_cli_writes_a_table_the_model_cli_reads(tmp_path, epi_root, capsys):
    from pumamed.cli import main

    out = tmp_path / "sim.csv"
    code = main(["epi", "simulate", "--data-dir", str(epi_root), "--out", str(out), "--effects",
                 "ses_illiteracy_pct=1.3", "age_median=0.8", "--seed", "3", "--json"])
    assert code == 0
    truth = json.loads(capsys.readouterr().out)
    assert truth["planted_irr_per_sd"] == {"ses_illiteracy_pct": 1.3, "age_median": 0.8}
    table = pd.read_csv(out, dtype={"CVEGEO": str})
    assert {"CVEGEO", "population", COUNT_COLUMN, SEVERE_COLUMN}.issubset(table.columns)
    assert len(table) > 2400
    assert (tmp_path / "sim.truth.json").exists()
