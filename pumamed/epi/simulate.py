"""A simulated outcome with planted effects, drawn from the real municipal covariates.

Counts follow a negative binomial (a gamma-Poisson mixture: variance ``mu + dispersion*mu^2``)
with mean ``population * baseline_rate * exp(sum_j beta_j z_j)``, where ``z_j`` are the real
covariates standardised over the municipalities given (mean 0, SD 1; population SD as in the
models), so each ``exp(beta_j)`` is an incidence-rate ratio *per standard deviation*. Severity
(e.g. deaths among the cases) is binomial among the simulated cases with a logit-linear
probability. A few planted effects and many nulls let users, and the tests, check that the
models find what was planted and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import special

from pumamed.errors import DataError

SIMULATED_OUTCOME = "simulated"
COUNT_COLUMN = "sim_count"
SEVERE_COLUMN = "sim_severe"
POPULATION_COLUMN = "population"


@dataclass
class SimulatedOutcome:
    """``data``: CVEGEO (if codes were given), population, ``sim_count``, ``sim_severe`` and the
    covariates used. ``truth``: one row per covariate with the planted log-IRR and IRR per SD
    (0 / 1 for nulls), the planted severity log-odds ratio, and flags ``planted`` (count effect)
    and ``severity_planted``."""

    data: pd.DataFrame
    truth: pd.DataFrame
    baseline_rate: float
    dispersion: float
    severity_baseline: float
    seed: int
    settings: dict = field(default_factory=dict)

    @property
    def planted(self) -> list[str]:
        return self.truth.loc[self.truth["planted"], "variable"].tolist()

    @property
    def severity_planted(self) -> list[str]:
        return self.truth.loc[self.truth["severity_planted"], "variable"].tolist()

    def truth_dict(self) -> dict:
        return {
            "baseline_rate": self.baseline_rate, "dispersion": self.dispersion,
            "severity_baseline": self.severity_baseline, "seed": self.seed,
            "irr_per_sd": {r.variable: r.irr_per_sd for r in self.truth.itertuples()},
            "severity_odds_ratio_per_sd": {r.variable: r.severity_or_per_sd for r in self.truth.itertuples()},
            "planted": self.planted, "severity_planted": self.severity_planted,
        }


def default_effects(names, n_planted=3, seed=0) -> dict[str, float]:
    """IRRs per SD for ``n_planted`` covariates drawn at random (alternating signs, 1.15-1.35 or
    their inverses); every other covariate is null."""
    names = list(names)
    if n_planted > len(names):
        raise DataError(f"cannot plant {n_planted} effects among {len(names)} covariates")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(names), n_planted, replace=False)
    sizes = rng.uniform(1.15, 1.35, n_planted)
    return {names[j]: float(s if k % 2 == 0 else 1 / s) for k, (j, s) in enumerate(zip(chosen, sizes))}


def simulate_outcome(covariates: pd.DataFrame, population, *, effects: dict[str, float],
                     baseline_rate: float = 1e-3, dispersion: float = 0.1,
                     severity_effects: dict[str, float] | None = None, severity_baseline: float = 0.15,
                     codes=None, seed: int = 0) -> SimulatedOutcome:
    """Draw counts and severity from the real ``covariates`` (one row per municipality).

    ``effects`` and ``severity_effects`` map covariate names to ratios per SD (IRR and odds ratio;
    1 = null). ``dispersion`` 0 gives Poisson counts. Rows with missing covariates or population
    must be removed beforehand (a clear error says so)."""
    if not isinstance(covariates, pd.DataFrame) or covariates.shape[1] == 0:
        raise DataError("simulation needs a table of covariates")
    unknown = [k for k in list(effects) + list(severity_effects or {}) if k not in covariates.columns]
    if unknown:
        raise DataError(f"planted effects name unknown covariates: {', '.join(map(str, unknown))}")
    for label, mapping in (("IRR", effects), ("odds ratio", severity_effects or {})):
        bad = [k for k, v in mapping.items() if not (np.isfinite(v) and v > 0)]
        if bad:
            raise DataError(f"planted {label}s must be positive numbers: {', '.join(bad)}")
    if not (0 < baseline_rate < 1):
        raise DataError("the baseline rate must lie between 0 and 1 (cases per person)")
    if not (0 < severity_baseline < 1):
        raise DataError("the severity baseline must lie between 0 and 1")
    if dispersion < 0:
        raise DataError("the dispersion must be >= 0")
    X = covariates.apply(pd.to_numeric, errors="coerce").to_numpy(float)
    pop = np.asarray(population, float).ravel()
    if len(pop) != len(X):
        raise DataError("population must have one value per municipality")
    missing = [c for j, c in enumerate(covariates.columns) if not np.all(np.isfinite(X[:, j]))]
    if missing:
        raise DataError(f"covariates with missing values: {', '.join(map(str, missing))}; drop those rows first")
    if not np.all(np.isfinite(pop)) or np.any(pop <= 0):
        raise DataError("population must be positive for every municipality")
    sd = X.std(axis=0)
    const = [c for j, c in enumerate(covariates.columns) if not sd[j] > 0]
    if const:
        raise DataError(f"constant covariates: {', '.join(map(str, const))}")
    Z = (X - X.mean(axis=0)) / sd
    names = list(covariates.columns)
    beta = np.array([np.log(effects.get(c, 1.0)) for c in names])
    gamma = np.array([np.log((severity_effects or {}).get(c, 1.0)) for c in names])

    rng = np.random.default_rng(seed)
    mu = pop * baseline_rate * np.exp(Z @ beta)
    if dispersion > 0:
        mu = mu * rng.gamma(shape=1 / dispersion, scale=dispersion, size=len(mu))
    counts = rng.poisson(mu)
    p_severe = special.expit(special.logit(severity_baseline) + Z @ gamma)
    severe = rng.binomial(counts, p_severe)

    data = covariates.reset_index(drop=True).copy()
    data.insert(0, SEVERE_COLUMN, severe)
    data.insert(0, COUNT_COLUMN, counts)
    data.insert(0, POPULATION_COLUMN, pop)
    if codes is not None:
        data.insert(0, "CVEGEO", pd.Series(codes).astype(str).str.zfill(5).to_numpy())
    truth = pd.DataFrame({
        "variable": names, "log_irr_per_sd": beta, "irr_per_sd": np.exp(beta),
        "severity_log_or_per_sd": gamma, "severity_or_per_sd": np.exp(gamma),
        "planted": beta != 0, "severity_planted": gamma != 0,
    })
    settings = {"effects": dict(effects), "severity_effects": dict(severity_effects or {})}
    return SimulatedOutcome(data, truth, baseline_rate, dispersion, severity_baseline, seed, settings)
