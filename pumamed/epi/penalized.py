"""Penalised generalised linear models for municipal counts and severity proportions.

Poisson and negative-binomial (NB2) regression with a ``log(population)`` offset, and binomial
regression on proportions with their denominators, under an elastic-net penalty (``l1_ratio=1``
is the lasso). The solver is glmnet's: an outer IRLS quadratic approximation of the
log-likelihood and an inner coordinate descent in covariance form, with warm starts along a
decreasing grid of penalties and step-halving on the penalised objective. Covariates are
standardised internally, so coefficients are *per standard deviation* of each covariate and the
penalty treats all covariates alike; the intercept is never penalised.

Objective (as glmnet, with observation weights ``v``: 1 for counts, the denominators for
proportions)::

    -1/sum(v) * sum_i v_i * loglik_i(beta)  +  alpha * ((1 - l1_ratio)/2 * ||beta||^2 + l1_ratio * ||beta||_1)

Naming follows scikit-learn: ``alpha`` is the penalty strength, ``l1_ratio`` the mix. The
negative-binomial dispersion (variance ``mu + dispersion * mu^2``) is called ``dispersion``; when
not given it is estimated by maximum likelihood and then held fixed along the penalty path (a
negative binomial with known dispersion is a GLM, which is what makes the path and the
cross-validated deviance well defined).

Also here: K-fold cross-validation of the penalty (minimum and one-standard-error rules), the
unpenalised refit of the selected covariates with incidence-rate ratios and Wald intervals,
variance inflation factors, and stability selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from sklearn.base import BaseEstimator, RegressorMixin

from pumamed.errors import DataError

FAMILIES = ("poisson", "negbin", "binomial")


def single_thread_blas(func):
    """Run ``func`` with one BLAS thread. The solver multiplies small matrices (n x p, p ~ 20)
    thousands of times; a multi-threaded BLAS spends far longer waking threads than computing,
    and on a busy machine it slowed the cross-validation twentyfold."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper
_ETA_CLIP = 30.0  # exp(30) ~ 1e13: keeps a wild early IRLS step finite

POST_SELECTION_CAVEAT = (
    "Intervals come from an unpenalised refit of the covariates the lasso kept on the same data. "
    "They ignore the selection step, so they are too narrow and the p-values too small "
    "(post-selection inference); read them as descriptive, and use the stability-selection "
    "frequencies to judge how firm each selection is."
)


# ---------------------------------------------------------------- input checks
def check_design(X, y=None, *, exposure=None, trials=None, family="poisson", feature_names=None):
    """Validate a design matrix and outcome; return float arrays and the feature names.

    Raises :class:`DataError` with a message naming the problem (missing values, constant
    columns, fewer observations than covariates, negative counts, events above denominators).
    """
    if family not in FAMILIES:
        raise DataError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
        non_numeric = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        if non_numeric:
            raise DataError(f"covariates must be numeric; not numeric: {', '.join(map(str, non_numeric))}")
        Xa = X.to_numpy(dtype=float)
    else:
        Xa = np.asarray(X, dtype=float)
        if Xa.ndim == 1:
            Xa = Xa[:, None]
        names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(Xa.shape[1])]
    n, p = Xa.shape
    if p == 0:
        raise DataError("no covariates chosen")
    if n <= p:
        raise DataError(
            f"{n} observations for {p} covariates: the model needs more municipalities than covariates "
            "(choose fewer covariates or a table with more rows)"
        )
    bad = [names[j] for j in range(p) if not np.all(np.isfinite(Xa[:, j]))]
    if bad:
        raise DataError(f"covariates with missing or infinite values: {', '.join(bad)} (drop or impute them first)")
    sd = Xa.std(axis=0)
    const = [names[j] for j in range(p) if not sd[j] > 1e-12 * max(1.0, abs(Xa[:, j]).max())]
    if const:
        raise DataError(f"constant covariates carry no information: {', '.join(const)}")
    out = [Xa, names]
    if y is not None:
        ya = np.asarray(y, dtype=float).ravel()
        if ya.shape[0] != n:
            raise DataError(f"outcome has {ya.shape[0]} rows but the covariates have {n}")
        if not np.all(np.isfinite(ya)):
            raise DataError("the outcome has missing values")
        if np.any(ya < 0):
            raise DataError("the outcome has negative values; counts must be >= 0")
        out.append(ya)
        off = _offset(exposure, n, family)
        out.append(off)
        if family == "binomial":
            if trials is None:
                raise DataError("a binomial (severity) model needs the denominators (trials)")
            ta = np.asarray(trials, dtype=float).ravel()
            if ta.shape[0] != n or not np.all(np.isfinite(ta)) or np.any(ta <= 0):
                raise DataError("denominators must be positive numbers, one per row")
            if np.any(ya > ta + 1e-9):
                raise DataError("some event counts exceed their denominators")
            out.append(ta)
        else:
            out.append(None)
    return tuple(out)


def _offset(exposure, n, family):
    if exposure is None or family == "binomial":
        return np.zeros(n)
    ea = np.asarray(exposure, dtype=float).ravel()
    if ea.shape[0] != n:
        raise DataError(f"population has {ea.shape[0]} rows but the covariates have {n}")
    if not np.all(np.isfinite(ea)) or np.any(ea <= 0):
        raise DataError("population (exposure) must be positive for every municipality")
    return np.log(ea)


# ---------------------------------------------------------------- families
def unit_deviance(family, y, mu, dispersion=0.0, trials=None):
    """Per-observation deviance (binomial: ``y`` are event counts, ``trials`` the denominators)."""
    y = np.asarray(y, float)
    mu = np.asarray(mu, float)
    if family == "binomial":
        n = np.asarray(trials, float)
        p = np.clip(mu, 1e-12, 1 - 1e-12)
        frac = y / n
        return 2 * n * (special.xlogy(frac, frac / p) + special.xlogy(1 - frac, (1 - frac) / (1 - p)))
    mu = np.maximum(mu, 1e-300)
    if family == "poisson" or dispersion <= 0:
        return 2 * (special.xlogy(y, y / mu) - (y - mu))
    a = dispersion
    return 2 * (special.xlogy(y, y / mu) - (y + 1 / a) * np.log((1 + a * y) / (1 + a * mu)))


def mean_deviance(family, y, mu, dispersion=0.0, trials=None):
    dev = unit_deviance(family, y, mu, dispersion, trials)
    if family == "binomial":
        return float(dev.sum() / np.sum(trials))
    return float(dev.mean())


def _mean_fn(family, eta):
    eta = np.clip(eta, -_ETA_CLIP, _ETA_CLIP)
    return special.expit(eta) if family == "binomial" else np.exp(eta)


def _irls_terms(family, y, mu, eta_lin, dispersion, v):
    """Working weights and response of the IRLS quadratic approximation (eta_lin excludes the offset)."""
    if family == "binomial":
        frac = y / v
        var = np.maximum(mu * (1 - mu), 1e-10)
        return v * var, eta_lin + (frac - mu) / var
    w = mu / (1 + dispersion * mu) if family == "negbin" else mu
    return np.maximum(w, 1e-10), eta_lin + (y - mu) / np.maximum(mu, 1e-10)


def nb_loglik(y, mu, dispersion):
    a = dispersion
    r = 1.0 / a
    return float(np.sum(special.gammaln(y + r) - special.gammaln(r) - special.gammaln(y + 1)
                        + r * np.log(r / (r + mu)) + special.xlogy(y, mu / (r + mu))))


def estimate_dispersion(y, mu, bounds=(1e-6, 1e3)):
    """Maximum-likelihood NB2 dispersion for fixed means ``mu`` (profile over log dispersion)."""
    res = optimize.minimize_scalar(lambda la: -nb_loglik(y, mu, np.exp(la)),
                                   bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                                   options={"xatol": 1e-6})
    return float(np.exp(res.x))


# ---------------------------------------------------------------- core solver
@dataclass
class _Problem:
    family: str
    Xs: np.ndarray  # standardised design
    y: np.ndarray  # counts (binomial: events)
    offset: np.ndarray
    v: np.ndarray  # observation weights (binomial: trials; else ones)
    dispersion: float

    @property
    def v_sum(self):
        return float(self.v.sum())


def _penalized_objective(prob: _Problem, b0, beta, alpha, l1_ratio, pf=None):
    pf = 1.0 if pf is None else pf
    eta = np.clip(prob.offset + b0 + prob.Xs @ beta, -_ETA_CLIP, _ETA_CLIP)
    mu = _mean_fn(prob.family, eta)
    trials = prob.v if prob.family == "binomial" else None
    dev = unit_deviance(prob.family, prob.y, mu, prob.dispersion, trials).sum()
    pen = alpha * ((1 - l1_ratio) / 2 * np.sum(pf * beta**2) + l1_ratio * np.sum(pf * np.abs(beta)))
    return dev / (2 * prob.v_sum) + pen


def _cd_kernel(G, c, m, wsum, zbar_num, beta, l1, l2, pf, tol, max_sweeps):
    """Coordinate descent for 1/2 sum W (z - b0 - x beta)^2 + penalty, in covariance form.

    G = X'WX, c = X'Wz, m = X'W1, wsum = sum W, zbar_num = sum W z; ``pf`` are per-covariate
    penalty factors (1 = plain, larger = penalised more, as the adaptive lasso). Sweeps the
    active set until it settles, then confirms with a full sweep. Written with scalar loops so
    that numba compiles it (a pure-Python run is ~100x slower but gives the same result)."""
    p = beta.shape[0]
    Gb = np.zeros(p)
    for i in range(p):
        s = 0.0
        for k in range(p):
            s += G[i, k] * beta[k]
        Gb[i] = s
    full_sweep = True
    b0 = 0.0
    for _sweep in range(max_sweeps):
        mb = 0.0
        for k in range(p):
            mb += m[k] * beta[k]
        b0 = (zbar_num - mb) / wsum
        max_change = 0.0
        for j in range(p):
            if not full_sweep and beta[j] == 0.0:
                continue
            old = beta[j]
            r = c[j] - Gb[j] + G[j, j] * old - b0 * m[j]
            lj = l1 * pf[j]
            if r > lj:
                new = (r - lj) / (G[j, j] + l2 * pf[j])
            elif r < -lj:
                new = (r + lj) / (G[j, j] + l2 * pf[j])
            else:
                new = 0.0
            if new != old:
                delta = new - old
                for i in range(p):
                    Gb[i] += G[i, j] * delta
                beta[j] = new
                change = abs(delta) * np.sqrt(G[j, j])
                if change > max_change:
                    max_change = change
        if max_change < tol:
            if full_sweep:
                break
            full_sweep = True
        else:
            full_sweep = False
    mb = 0.0
    for k in range(p):
        mb += m[k] * beta[k]
    return (zbar_num - mb) / wsum, beta


try:  # numba ships with shap, a requirement; without it the same kernel runs in Python.
    import numba

    _cd_compiled = numba.njit(cache=True, nogil=True)(_cd_kernel)
except Exception:  # noqa: BLE001 - any numba/llvm problem falls back to the Python kernel
    _cd_compiled = None


def _cd_weighted_lasso(G, c, m, wsum, zbar_num, b0, beta, alpha, l1_ratio, tol, max_sweeps, pf=None):
    pf = np.ones(beta.shape[0]) if pf is None else np.asarray(pf, float)
    args = (np.ascontiguousarray(G, dtype=np.float64), np.ascontiguousarray(c, dtype=np.float64),
            np.ascontiguousarray(m, dtype=np.float64), float(wsum), float(zbar_num),
            np.array(beta, dtype=np.float64), float(alpha * l1_ratio), float(alpha * (1 - l1_ratio)),
            pf, float(tol), int(max_sweeps))
    if _cd_compiled is not None:
        try:
            return _cd_compiled(*args)
        except Exception:  # noqa: BLE001 - e.g. a read-only numba cache: compute in Python instead
            pass
    return _cd_kernel(*args)


def _fit_one(prob: _Problem, alpha, l1_ratio, b0, beta, tol=1e-7, max_irls=100, max_sweeps=1000, pf=None):
    """Penalised IRLS from a warm start; returns (b0, beta, n_iter)."""
    obj = _penalized_objective(prob, b0, beta, alpha, l1_ratio, pf)
    n_iter = 0
    for n_iter in range(1, max_irls + 1):
        eta_lin = b0 + prob.Xs @ beta
        mu = _mean_fn(prob.family, prob.offset + eta_lin)
        w, z = _irls_terms(prob.family, prob.y, mu, eta_lin, prob.dispersion, prob.v)
        W = w / prob.v_sum
        XW = prob.Xs.T * W
        G = XW @ prob.Xs
        c = XW @ z
        m = XW.sum(axis=1)
        nb0, nbeta = _cd_weighted_lasso(G, c, m, W.sum(), W @ z, b0, beta, alpha, l1_ratio,
                                        tol=tol * 0.1, max_sweeps=max_sweeps, pf=pf)
        new_obj = _penalized_objective(prob, nb0, nbeta, alpha, l1_ratio, pf)
        step = 1.0
        # Step-halving keeps the penalised objective monotone when a full Newton step overshoots.
        while new_obj > obj + 1e-12 * max(1.0, abs(obj)) and step > 1e-4:
            step /= 2
            tb0 = b0 + step * (nb0 - b0)
            tbeta = beta + step * (nbeta - beta)
            new_obj = _penalized_objective(prob, tb0, tbeta, alpha, l1_ratio, pf)
            nb0, nbeta = tb0, tbeta
        converged = abs(obj - new_obj) <= tol * max(1.0, abs(new_obj)) and \
            np.max(np.abs(nbeta - beta), initial=0.0) <= 1e-5 + 10 * tol
        b0, beta, obj = nb0, nbeta, new_obj
        if converged:
            break
    return float(b0), beta, n_iter


def _null_intercept(prob: _Problem):
    """Maximum-likelihood intercept of the model without covariates (exact for binomial and
    Poisson; Newton steps on the NB2 score sum (y - mu)/(1 + a mu) = 0 for the negative binomial)."""
    if prob.family == "binomial":
        rate = np.clip(prob.y.sum() / prob.v.sum(), 1e-9, 1 - 1e-9)
        return float(special.logit(rate))
    b0 = float(np.log(max(prob.y.sum(), 1e-9) / np.exp(prob.offset).sum()))
    if prob.family == "negbin" and prob.dispersion > 0:
        a = prob.dispersion
        for _ in range(50):
            mu = np.exp(np.clip(prob.offset + b0, -_ETA_CLIP, _ETA_CLIP))
            score = np.sum((prob.y - mu) / (1 + a * mu))
            info = np.sum(mu * (1 + a * prob.y) / (1 + a * mu) ** 2)
            step = score / max(info, 1e-12)
            b0 += float(np.clip(step, -2, 2))
            if abs(step) < 1e-12:
                break
    return b0


def score_vector(prob: _Problem, b0, beta) -> np.ndarray:
    """Gradient of the mean log-likelihood (1/sum v) * sum v_i loglik_i with respect to beta."""
    eta = prob.offset + b0 + prob.Xs @ beta
    mu = _mean_fn(prob.family, eta)
    if prob.family == "binomial":
        resid = prob.y - prob.v * mu
    elif prob.family == "negbin":
        resid = (prob.y - mu) / (1 + prob.dispersion * mu)
    else:
        resid = prob.y - mu
    return prob.Xs.T @ resid / prob.v_sum


def kkt_violation(X, y, b0, beta, alpha, l1_ratio=1.0, *, exposure=None, trials=None, family="poisson",
                  dispersion=0.0, penalty_factor=None) -> float:
    """Largest violation of the elastic-net optimality (KKT) conditions at a solution given on the
    standardised scale: |score_j - l2 pf_j beta_j| <= l1 pf_j where beta_j = 0, and equality with
    the sign of beta_j elsewhere. Zero (to solver tolerance) at the optimum; used to check solvers."""
    Xa, _, ya, offset, ta = check_design(X, y, exposure=exposure, trials=trials, family=family)
    prob, _ = _make_problem(family, Xa, ya, offset, ta, dispersion)
    beta = np.asarray(beta, float)
    pf = np.ones(len(beta)) if penalty_factor is None else np.asarray(penalty_factor, float)
    g = score_vector(prob, b0, beta) - alpha * (1 - l1_ratio) * pf * beta
    l1 = alpha * l1_ratio * pf
    active = beta != 0
    viol = np.where(active, np.abs(g - l1 * np.sign(beta)), np.maximum(np.abs(g) - l1, 0.0))
    return float(viol.max(initial=0.0))


def lambda_max(prob: _Problem, l1_ratio, pf=None):
    """Smallest penalty at which every coefficient is zero (for l1_ratio > 0)."""
    b0 = _null_intercept(prob)
    mu = _mean_fn(prob.family, prob.offset + b0)
    if prob.family == "binomial":
        score = prob.Xs.T @ (prob.y - prob.v * mu)
    elif prob.family == "negbin":
        score = prob.Xs.T @ ((prob.y - mu) / (1 + prob.dispersion * mu))
    else:
        score = prob.Xs.T @ (prob.y - mu)
    pf = np.ones(len(score)) if pf is None else pf
    # A hair above the exact value, so rounding in the coordinate updates cannot let a covariate in.
    return float(np.max(np.abs(score) / pf) / prob.v_sum / max(l1_ratio, 1e-3)) * (1 + 1e-6)


def adaptive_weights(prob: _Problem, gamma=1.0, ridge=1e-3):
    """Adaptive-lasso penalty factors ``1/|b_j|^gamma`` from a lightly ridge-penalised fit.

    Large first-stage effects are penalised little, so the lasso's shrinkage no longer pushes
    their signal onto correlated null covariates (the adaptive lasso's oracle property, Zou
    2006). Normalised to mean 1 so the penalty grid keeps its scale."""
    _, b, _ = _fit_one(prob, ridge, 0.0, _null_intercept(prob), np.zeros(prob.Xs.shape[1]))
    pf = 1.0 / np.maximum(np.abs(b), 1e-6) ** gamma
    return pf / pf.mean()


class _Standardizer:
    def fit(self, X):
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0)
        return self

    def transform(self, X):
        return (X - self.mean_) / self.scale_


def _make_problem(family, X, y, offset, trials, dispersion, standardizer=None):
    st = standardizer or _Standardizer().fit(X)
    v = np.asarray(trials, float) if family == "binomial" else np.ones(len(y))
    return _Problem(family, st.transform(X), y, offset, v, float(dispersion or 0.0)), st


def _estimate_family_dispersion(family, X, y, offset, trials, dispersion):
    """NB2 dispersion by maximum likelihood from a lightly ridge-penalised full model.

    The small ridge keeps this defined under collinearity; the value is then held fixed along the
    penalty path. Returns 0 for the other families."""
    if family != "negbin":
        return 0.0
    if dispersion is not None:
        if dispersion <= 0:
            raise DataError("the negative-binomial dispersion must be positive")
        return float(dispersion)
    prob, _ = _make_problem("poisson", X, y, offset, trials, 0.0)
    b0, beta, _ = _fit_one(prob, 1e-4, 0.0, _null_intercept(prob), np.zeros(X.shape[1]))
    disp = 0.0
    for _ in range(3):
        mu = _mean_fn("poisson", prob.offset + b0 + prob.Xs @ beta)
        disp = estimate_dispersion(y, mu)
        prob.family, prob.dispersion = "negbin", disp
        b0, beta, _ = _fit_one(prob, 1e-4, 0.0, b0, beta)
    return disp


# ---------------------------------------------------------------- estimators
class PenalizedGLM(RegressorMixin, BaseEstimator):
    """Elastic-net GLM for counts (``poisson``, ``negbin``) or severity (``binomial``).

    ``fit(X, y, exposure=population)`` for counts (``log(exposure)`` is the offset);
    ``fit(X, events, trials=denominators)`` for binomial proportions. ``alpha=0`` gives the
    ordinary maximum-likelihood GLM; then ``cov_params_`` (on the standardised scale) and, for
    the negative binomial with estimated dispersion, the joint maximum-likelihood dispersion are
    available.

    Attributes: ``coef_`` (per standard deviation of each covariate), ``intercept_``,
    ``coef_unit_`` and ``intercept_unit_`` (per original unit), ``dispersion_``,
    ``feature_names_in_``, ``n_iter_``, ``deviance_`` (mean, training data).
    """

    def __init__(self, family="negbin", alpha=0.0, l1_ratio=1.0, dispersion=None, tol=1e-7, max_iter=100):
        self.family = family
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.dispersion = dispersion
        self.tol = tol
        self.max_iter = max_iter

    @single_thread_blas
    def fit(self, X, y, exposure=None, trials=None, *, warm_start=None, standardizer=None):
        Xa, names, ya, offset, ta = check_design(X, y, exposure=exposure, trials=trials, family=self.family)
        if not 0 <= self.l1_ratio <= 1:
            raise DataError("l1_ratio must lie in [0, 1]")
        if self.alpha < 0:
            raise DataError("the penalty alpha must be >= 0")
        disp = _estimate_family_dispersion(self.family, Xa, ya, offset, ta, self.dispersion)
        prob, st = _make_problem(self.family, Xa, ya, offset, ta, disp, standardizer)
        if warm_start is not None:
            b0, beta = float(warm_start[0]), np.asarray(warm_start[1], float).copy()
        else:
            b0, beta = _null_intercept(prob), np.zeros(Xa.shape[1])
        b0, beta, n_iter = _fit_one(prob, self.alpha, self.l1_ratio, b0, beta, self.tol, self.max_iter)
        if self.alpha == 0 and self.family == "negbin" and self.dispersion is None:
            # Joint ML: alternate the dispersion profile and the IRLS fit until both settle.
            for _ in range(20):
                mu = _mean_fn("negbin", prob.offset + b0 + prob.Xs @ beta)
                new = estimate_dispersion(ya, mu)
                done = abs(new - prob.dispersion) <= 1e-6 * max(1.0, new)
                prob.dispersion = new
                b0, beta, n_iter = _fit_one(prob, 0.0, 1.0, b0, beta, self.tol, self.max_iter)
                if done:
                    break
        self._store(prob, st, names, b0, beta, n_iter)
        return self

    def _store(self, prob, st, names, b0, beta, n_iter):
        self.standardizer_ = st
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        self.intercept_ = b0
        self.coef_ = beta
        self.coef_unit_ = beta / st.scale_
        self.intercept_unit_ = b0 - float(np.sum(beta * st.mean_ / st.scale_))
        self.dispersion_ = prob.dispersion
        self.n_iter_ = n_iter
        mu = _mean_fn(prob.family, prob.offset + b0 + prob.Xs @ beta)
        self.deviance_ = mean_deviance(prob.family, prob.y, mu if prob.family != "binomial" else mu,
                                       prob.dispersion, prob.v if prob.family == "binomial" else None)
        if self.alpha == 0:
            self.cov_params_ = _fisher_covariance(prob, b0, beta)

    def _design(self, X):
        Xa = X.to_numpy(dtype=float) if isinstance(X, pd.DataFrame) else np.asarray(X, float)
        return self.standardizer_.transform(Xa)

    def linear_predictor(self, X, exposure=None):
        eta = self.intercept_ + self._design(X) @ self.coef_
        if exposure is not None and self.family != "binomial":
            eta = eta + np.log(np.asarray(exposure, float))
        return eta

    def predict(self, X, exposure=None):
        """Expected counts (with ``exposure``), rates per person (without), or proportions (binomial)."""
        return _mean_fn(self.family, self.linear_predictor(X, exposure))


def _fisher_covariance(prob: _Problem, b0, beta):
    eta_lin = b0 + prob.Xs @ beta
    mu = _mean_fn(prob.family, prob.offset + eta_lin)
    w, _ = _irls_terms(prob.family, prob.y, mu, eta_lin, prob.dispersion, prob.v)
    Z = np.column_stack([np.ones(len(w)), prob.Xs])
    info = (Z.T * w) @ Z
    try:
        return np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(info)


@dataclass
class CoefficientPath:
    """Solutions along a decreasing penalty grid (standardised coefficients)."""

    lambdas: np.ndarray
    coefs: np.ndarray  # (n_lambdas, p)
    intercepts: np.ndarray
    feature_names: list
    dispersion: float

    def to_frame(self) -> pd.DataFrame:
        """Long table: lambda, log10_lambda, variable, coefficient, irr (per SD)."""
        rows = pd.DataFrame(self.coefs, columns=self.feature_names)
        rows["lambda"] = self.lambdas
        long = rows.melt(id_vars="lambda", var_name="variable", value_name="coefficient")
        long["log10_lambda"] = np.log10(long["lambda"])
        long["irr_per_sd"] = np.exp(long["coefficient"])
        return long

    def n_selected(self) -> np.ndarray:
        return (self.coefs != 0).sum(axis=1)


def lambda_grid(lmax, n_lambdas=40, min_ratio=1e-3):
    return np.geomspace(lmax, lmax * min_ratio, n_lambdas)


def _path_on_problem(prob, lambdas, l1_ratio, tol=1e-7, pf=None):
    p = prob.Xs.shape[1]
    b0, beta = _null_intercept(prob), np.zeros(p)
    coefs = np.zeros((len(lambdas), p))
    intercepts = np.zeros(len(lambdas))
    for k, lam in enumerate(lambdas):
        b0, beta, _ = _fit_one(prob, lam, l1_ratio, b0, beta, tol, pf=pf)
        coefs[k], intercepts[k] = beta, b0
    return coefs, intercepts


@single_thread_blas
def glm_path(X, y, *, exposure=None, trials=None, family="negbin", l1_ratio=1.0, lambdas=None,
             n_lambdas=40, lambda_min_ratio=1e-3, dispersion=None, adaptive=False) -> CoefficientPath:
    """The coefficient path over a penalty grid (from the all-zero penalty down)."""
    Xa, names, ya, offset, ta = check_design(X, y, exposure=exposure, trials=trials, family=family)
    disp = _estimate_family_dispersion(family, Xa, ya, offset, ta, dispersion)
    prob, _ = _make_problem(family, Xa, ya, offset, ta, disp)
    pf = adaptive_weights(prob) if adaptive else None
    if lambdas is None:
        lambdas = lambda_grid(lambda_max(prob, l1_ratio, pf), n_lambdas, lambda_min_ratio)
    coefs, intercepts = _path_on_problem(prob, np.asarray(lambdas, float), l1_ratio, pf=pf)
    return CoefficientPath(np.asarray(lambdas, float), coefs, intercepts, names, disp)


def make_folds(n, n_folds=5, random_state=0, groups=None) -> np.ndarray:
    """Fold id per row (balanced, shuffled). With ``groups`` (e.g. state codes) whole groups
    share a fold, a spatially blocked cross-validation."""
    if n_folds < 2:
        raise DataError("cross-validation needs at least 2 folds")
    rng = np.random.default_rng(random_state)
    if groups is None:
        if n < n_folds:
            raise DataError(f"{n} rows cannot be split into {n_folds} folds")
        folds = np.arange(n) % n_folds
        rng.shuffle(folds)
        return folds
    groups = np.asarray(groups)
    uniq = rng.permutation(pd.unique(groups))
    if len(uniq) < n_folds:
        raise DataError(f"{len(uniq)} groups cannot be split into {n_folds} folds")
    assign = {g: k % n_folds for k, g in enumerate(uniq)}
    return np.array([assign[g] for g in groups])


class PenalizedGLMCV(RegressorMixin, BaseEstimator):
    """Penalty chosen by K-fold cross-validated deviance over the path.

    ``rule="1se"`` takes the largest penalty whose mean held-out deviance lies within one
    standard error of the minimum (a sparser model, as glmnet's ``lambda.1se``); ``"min"`` takes
    the minimum. ``fit(..., folds=fold_ids)`` reuses given folds (so that other models can be
    compared on the same split).

    Attributes: ``path_`` (:class:`CoefficientPath`), ``cv_mean_``, ``cv_se_`` (per lambda),
    ``lambda_min_``, ``lambda_1se_``, ``alpha_`` (chosen), ``coef_``, ``intercept_``,
    ``selected_`` (names), ``dispersion_``, ``folds_``, ``fold_predictions_`` (held-out means at
    the chosen penalty, one per row), ``penalty_factor_`` (adaptive weights, or ones).

    ``adaptive=True`` gives the adaptive lasso: penalty factors from a ridge fit, recomputed
    inside every training fold so that the cross-validated deviance stays honest.
    """

    def __init__(self, family="negbin", l1_ratio=1.0, n_lambdas=40, lambda_min_ratio=1e-3, n_folds=5,
                 rule="1se", dispersion=None, adaptive=False, random_state=0):
        self.adaptive = adaptive
        self.family = family
        self.l1_ratio = l1_ratio
        self.n_lambdas = n_lambdas
        self.lambda_min_ratio = lambda_min_ratio
        self.n_folds = n_folds
        self.rule = rule
        self.dispersion = dispersion
        self.random_state = random_state

    @single_thread_blas
    def fit(self, X, y, exposure=None, trials=None, folds=None):
        if self.rule not in ("1se", "min"):
            raise DataError("rule must be '1se' or 'min'")
        if not 0 < self.l1_ratio <= 1:
            raise DataError("l1_ratio must lie in (0, 1] for variable selection")
        Xa, names, ya, offset, ta = check_design(X, y, exposure=exposure, trials=trials, family=self.family)
        n = len(ya)
        disp = _estimate_family_dispersion(self.family, Xa, ya, offset, ta, self.dispersion)
        prob, st = _make_problem(self.family, Xa, ya, offset, ta, disp)
        pf = adaptive_weights(prob) if self.adaptive else np.ones(len(names))
        lambdas = lambda_grid(lambda_max(prob, self.l1_ratio, pf), self.n_lambdas, self.lambda_min_ratio)
        coefs, intercepts = _path_on_problem(prob, lambdas, self.l1_ratio, pf=pf)
        self.path_ = CoefficientPath(lambdas, coefs, intercepts, names, disp)

        folds = make_folds(n, self.n_folds, self.random_state) if folds is None else np.asarray(folds)
        if folds.shape[0] != n:
            raise DataError("fold ids must have one entry per row")
        fold_ids = np.unique(folds)
        dev = np.zeros((len(fold_ids), len(lambdas)))
        held_out_eta = np.zeros((n, len(lambdas)))
        for f, fid in enumerate(fold_ids):
            test = folds == fid
            train = ~test
            tprob, tst = _make_problem(self.family, Xa[train], ya[train], offset[train],
                                       None if ta is None else ta[train], disp)
            tpf = adaptive_weights(tprob) if self.adaptive else None
            c, b = _path_on_problem(tprob, lambdas, self.l1_ratio, pf=tpf)
            Xt = tst.transform(Xa[test])
            eta = offset[test][:, None] + b[None, :] + Xt @ c.T
            held_out_eta[test] = eta
            mu = _mean_fn(self.family, eta)
            for k in range(len(lambdas)):
                dev[f, k] = mean_deviance(self.family, ya[test], mu[:, k], disp,
                                          None if ta is None else ta[test])
        self.cv_folds_deviance_ = dev
        self.cv_mean_ = dev.mean(axis=0)
        self.cv_se_ = dev.std(axis=0, ddof=1) / np.sqrt(len(fold_ids))
        k_min = int(np.argmin(self.cv_mean_))
        within = np.flatnonzero(self.cv_mean_ <= self.cv_mean_[k_min] + self.cv_se_[k_min])
        k_1se = int(within.min())  # lambdas decrease along the grid: smallest index = largest penalty
        self.lambda_min_, self.lambda_1se_ = float(lambdas[k_min]), float(lambdas[k_1se])
        k = k_1se if self.rule == "1se" else k_min
        self.chosen_index_ = k
        self.alpha_ = float(lambdas[k])
        self.coef_, self.intercept_ = coefs[k].copy(), float(intercepts[k])
        self.selected_ = [names[j] for j in np.flatnonzero(coefs[k])]
        self.dispersion_ = disp
        self.penalty_factor_ = pf
        self.standardizer_ = st
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        self.folds_ = folds
        self.fold_predictions_ = _mean_fn(self.family, held_out_eta[:, k])
        return self

    def cv_frame(self) -> pd.DataFrame:
        """lambda, log10_lambda, mean and SE of held-out deviance, number of covariates kept."""
        return pd.DataFrame({
            "lambda": self.path_.lambdas, "log10_lambda": np.log10(self.path_.lambdas),
            "cv_deviance": self.cv_mean_, "cv_se": self.cv_se_, "n_selected": self.path_.n_selected(),
        })

    def predict(self, X, exposure=None):
        Xs = self.standardizer_.transform(X.to_numpy(float) if isinstance(X, pd.DataFrame) else np.asarray(X, float))
        eta = self.intercept_ + Xs @ self.coef_
        if exposure is not None and self.family != "binomial":
            eta = eta + np.log(np.asarray(exposure, float))
        return _mean_fn(self.family, eta)


# ---------------------------------------------------------------- refit, VIF, stability
def refit_table(X, y, selected, *, exposure=None, trials=None, family="negbin", level=0.95):
    """Unpenalised refit of the selected covariates: ratio per SD with Wald intervals.

    Returns ``(table, model)``. The table has variable, coef (per SD), se, ratio (incidence-rate
    ratio for counts, odds ratio for binomial), its lower and upper bound, p_value, and the ratio
    per original unit. See :data:`POST_SELECTION_CAVEAT`.
    """
    cols = ["variable", "coef_per_sd", "se", "ratio_per_sd", "ci_low", "ci_high", "p_value", "ratio_per_unit", "sd"]
    if not selected:
        return pd.DataFrame(columns=cols), None
    Xsel = X[list(selected)] if isinstance(X, pd.DataFrame) else X
    model = PenalizedGLM(family=family, alpha=0.0).fit(Xsel, y, exposure=exposure, trials=trials)
    se = np.sqrt(np.diag(model.cov_params_))[1:]
    zcrit = stats.norm.ppf(0.5 + level / 2)
    coef = model.coef_
    table = pd.DataFrame({
        "variable": list(model.feature_names_in_), "coef_per_sd": coef, "se": se,
        "ratio_per_sd": np.exp(coef), "ci_low": np.exp(coef - zcrit * se), "ci_high": np.exp(coef + zcrit * se),
        "p_value": 2 * stats.norm.sf(np.abs(coef / se)), "ratio_per_unit": np.exp(model.coef_unit_),
        "sd": model.standardizer_.scale_,
    })
    return table, model


def variance_inflation(X) -> pd.Series:
    """Variance inflation factors: the diagonal of the inverse correlation matrix (inf when singular)."""
    Xa, names = check_design(X)
    corr = np.corrcoef(Xa, rowvar=False)
    corr = np.atleast_2d(corr)
    try:
        vif = np.diag(np.linalg.inv(corr))
        if np.any(vif < 0) or np.linalg.cond(corr) > 1e12:
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        vif = np.full(len(names), np.inf)
        # Exactly collinear sets: report inf only for columns in the null space.
        w, vecs = np.linalg.eigh(corr)
        null = np.abs(vecs[:, w < 1e-10]).sum(axis=1) > 1e-8
        pinv = np.diag(np.linalg.pinv(corr))
        vif = np.where(null, np.inf, pinv)
    return pd.Series(vif, index=names, name="vif")


@single_thread_blas
def stability_selection(X, y, *, exposure=None, trials=None, family="negbin", l1_ratio=1.0, alpha,
                        n_resamples=50, method="bootstrap", dispersion=None, random_state=0,
                        warm_start=None, penalty_factor=None) -> pd.Series:
    """Share of resamples in which each covariate is selected at penalty ``alpha``.

    ``method="bootstrap"`` draws n rows with replacement; ``"subsample"`` draws n/2 without
    replacement (Meinshausen & Buhlmann). Standardisation (and ``penalty_factor``, e.g. the
    adaptive weights of the full fit) are those of the full data, so the penalty means the same
    on every resample."""
    if method not in ("bootstrap", "subsample"):
        raise DataError("method must be 'bootstrap' or 'subsample'")
    if n_resamples < 1:
        raise DataError("stability selection needs at least one resample")
    Xa, names, ya, offset, ta = check_design(X, y, exposure=exposure, trials=trials, family=family)
    disp = _estimate_family_dispersion(family, Xa, ya, offset, ta, dispersion)
    st = _Standardizer().fit(Xa)
    rng = np.random.default_rng(random_state)
    n = len(ya)
    counts = np.zeros(len(names))
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n) if method == "bootstrap" else rng.choice(n, n // 2, replace=False)
        prob, _ = _make_problem(family, Xa[idx], ya[idx], offset[idx], None if ta is None else ta[idx], disp, st)
        if warm_start is not None:
            b0, beta = float(warm_start[0]), np.asarray(warm_start[1], float).copy()
        else:
            b0, beta = _null_intercept(prob), np.zeros(len(names))
        _, beta, _ = _fit_one(prob, alpha, l1_ratio, b0, beta, tol=1e-6, pf=penalty_factor)
        counts += beta != 0
    return pd.Series(counts / n_resamples, index=names, name="selection_frequency")
