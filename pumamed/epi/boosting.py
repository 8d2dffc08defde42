"""Gradient boosting for municipal counts (and severity), with its explanations.

:class:`OffsetBoosting` is LightGBM with a Poisson objective whose starting score is
``log(population) + log(overall rate)`` (``init_score``), so the trees model the log *relative*
rate of each municipality, exactly the scale of a Poisson GLM with a log-population offset. For
severity proportions the objective is cross-entropy on the proportions weighted by their
denominators, starting from the overall log-odds.

Explanations, all on that log scale (log relative rate, or log-odds): partial dependence with
ICE curves, accumulated local effects (ALE: unbiased where covariates are correlated, unlike
PD), and SHAP values from ``shap.TreeExplainer`` (one contribution per municipality and
covariate, for summary and dependence plots and maps). Held-out deviance over the same folds as
the penalised GLM compares the two.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special
from sklearn.base import BaseEstimator, RegressorMixin

from pumamed.epi.penalized import check_design, mean_deviance
from pumamed.errors import DataError

BOOST_FAMILIES = ("poisson", "binomial")


def _base_score(family, y, offset, trials):
    if family == "binomial":
        rate = np.clip(y.sum() / trials.sum(), 1e-9, 1 - 1e-9)
        return np.full(len(y), special.logit(rate))
    rate = max(y.sum(), 1e-9) / np.exp(offset).sum()
    return offset + np.log(rate)


class OffsetBoosting(RegressorMixin, BaseEstimator):
    """LightGBM with an offset: ``fit(X, counts, exposure=population)`` or
    ``fit(X, events, trials=denominators)`` with ``family="binomial"``.

    With ``early_stopping_rounds`` the number of trees is chosen on an internal validation
    share, then the model is refitted on all rows with that many trees. Attributes:
    ``booster_``, ``n_trees_``, ``base_rate_`` (overall rate or proportion),
    ``feature_names_in_``, ``feature_importances_`` (total gain).
    """

    def __init__(self, family="poisson", n_estimators=250, learning_rate=0.1, num_leaves=15,
                 min_child_samples=20, subsample=0.8, colsample_bytree=0.8, reg_lambda=1.0,
                 early_stopping_rounds=25, validation_fraction=0.2, random_state=0, n_jobs=1):
        self.family = family
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _params(self):
        return {
            "objective": "poisson" if self.family == "poisson" else "cross_entropy",
            "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples, "bagging_fraction": self.subsample,
            "bagging_freq": 1 if self.subsample < 1 else 0, "feature_fraction": self.colsample_bytree,
            "lambda_l2": self.reg_lambda, "seed": self.random_state, "num_threads": self.n_jobs,
            "verbosity": -1, "deterministic": True, "force_row_wise": True,
        }

    def _dataset(self, X, y, base, trials):
        import lightgbm as lgb

        if self.family == "binomial":
            return lgb.Dataset(X, label=y / trials, weight=trials, init_score=base, free_raw_data=False)
        return lgb.Dataset(X, label=y, init_score=base, free_raw_data=False)

    def fit(self, X, y, exposure=None, trials=None):
        import lightgbm as lgb

        if self.family not in BOOST_FAMILIES:
            raise DataError(f"boosting supports {', '.join(BOOST_FAMILIES)}, not {self.family!r}")
        Xa, names, ya, offset, ta = check_design(X, y, exposure=exposure, trials=trials, family=self.family)
        params = self._params()
        n_trees = int(self.n_estimators)
        if self.early_stopping_rounds:
            rng = np.random.default_rng(self.random_state)
            valid = rng.random(len(ya)) < self.validation_fraction
            tr, va = ~valid, valid
            t_trials = None if ta is None else ta[tr]
            v_trials = None if ta is None else ta[va]
            train_set = self._dataset(Xa[tr], ya[tr], _base_score(self.family, ya[tr], offset[tr], t_trials), t_trials)
            # The validation start uses the training rate: nothing of the held-out rows leaks in.
            if self.family == "binomial":
                v_base = np.full(va.sum(), special.logit(np.clip(ya[tr].sum() / ta[tr].sum(), 1e-9, 1 - 1e-9)))
            else:
                v_base = offset[va] + np.log(max(ya[tr].sum(), 1e-9) / np.exp(offset[tr]).sum())
            valid_set = self._dataset(Xa[va], ya[va], v_base, v_trials)
            probe = lgb.train(params, train_set, num_boost_round=n_trees, valid_sets=[valid_set],
                              callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)])
            n_trees = max(int(probe.best_iteration or n_trees), 10)
        base = _base_score(self.family, ya, offset, ta)
        self.booster_ = lgb.train(params, self._dataset(Xa, ya, base, ta), num_boost_round=n_trees)
        self.n_trees_ = n_trees
        self.base_rate_ = float(ya.sum() / (ta.sum() if ta is not None else np.exp(offset).sum()))
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        self.feature_importances_ = self.booster_.feature_importance(importance_type="gain")
        return self

    def _array(self, X):
        return X.to_numpy(dtype=float) if isinstance(X, pd.DataFrame) else np.asarray(X, float)

    def raw_score(self, X) -> np.ndarray:
        """Log relative rate (or log-odds relative to the overall proportion) per row."""
        return self.booster_.predict(self._array(X), raw_score=True, num_threads=self.n_jobs)

    def predict(self, X, exposure=None):
        """Expected counts (with ``exposure``), the rate per person (without), or proportions."""
        raw = self.raw_score(X)
        if self.family == "binomial":
            return special.expit(special.logit(self.base_rate_) + raw)
        mu = self.base_rate_ * np.exp(raw)
        return mu * np.asarray(exposure, float) if exposure is not None else mu


# ---------------------------------------------------------------- cross-validation
def cross_validated_predictions(estimator, X, y, folds, *, exposure=None, trials=None):
    """Held-out predicted means (counts or proportions) for each row, fitting a clone per fold."""
    from sklearn.base import clone

    Xa, names, ya, _, ta = check_design(X, y, exposure=exposure, trials=trials, family=estimator.family)
    folds = np.asarray(folds)
    pred = np.zeros(len(ya))
    ex = None if exposure is None else np.asarray(exposure, float)
    for fid in np.unique(folds):
        test = folds == fid
        model = clone(estimator).fit(Xa[~test], ya[~test], exposure=None if ex is None else ex[~test],
                                     trials=None if ta is None else ta[~test])
        pred[test] = model.predict(Xa[test], exposure=None if ex is None or estimator.family == "binomial" else ex[test])
    return pred


def null_predictions(y, folds, *, exposure=None, trials=None):
    """Held-out predictions of the rate-only model (training-fold overall rate x population)."""
    y = np.asarray(y, float)
    folds = np.asarray(folds)
    pred = np.zeros(len(y))
    for fid in np.unique(folds):
        test = folds == fid
        if trials is not None:
            t = np.asarray(trials, float)
            pred[test] = y[~test].sum() / t[~test].sum()
        else:
            e = np.ones(len(y)) if exposure is None else np.asarray(exposure, float)
            pred[test] = y[~test].sum() / e[~test].sum() * e[test]
    return pred


def deviance_table(y, folds, predictions: dict, *, family="poisson", trials=None) -> pd.DataFrame:
    """Held-out deviance per model on the same folds: mean over folds, its SE, and the share of
    the null model's deviance explained. ``predictions`` maps model name -> held-out means;
    a ``"null (overall rate)"`` entry is used as the reference when present."""
    y = np.asarray(y, float)
    folds = np.asarray(folds)
    fam = "binomial" if family == "binomial" else "poisson"
    rows = []
    for name, pred in predictions.items():
        per_fold = []
        for fid in np.unique(folds):
            test = folds == fid
            per_fold.append(mean_deviance(fam, y[test], np.asarray(pred)[test], 0.0,
                                          None if trials is None else np.asarray(trials, float)[test]))
        per_fold = np.array(per_fold)
        rows.append({"model": name, "heldout_deviance": per_fold.mean(),
                     "se": per_fold.std(ddof=1) / np.sqrt(len(per_fold))})
    table = pd.DataFrame(rows)
    null = table.loc[table["model"].str.startswith("null"), "heldout_deviance"]
    if len(null):
        table["deviance_explained"] = 1 - table["heldout_deviance"] / float(null.iloc[0])
    return table


# ---------------------------------------------------------------- explanations
def _grid(values, n_points):
    qs = np.unique(np.quantile(values, np.linspace(0.02, 0.98, n_points)))
    return qs


def partial_dependence(model: OffsetBoosting, X: pd.DataFrame, features, *, grid_points=20, n_ice=60,
                       max_rows=600, random_state=0) -> pd.DataFrame:
    """Partial dependence and ICE curves on the log relative-rate scale.

    Long table: feature, value, curve (``"PD"`` or the row label of an ICE curve), effect
    (centred at the curve's mean so that ICE shapes are comparable: a "centred ICE" plot).
    PD averages over up to ``max_rows`` rows; ``n_ice`` of them are returned as ICE curves."""
    rng = np.random.default_rng(random_state)
    Xa = X.to_numpy(float)
    rows = rng.choice(len(Xa), min(max_rows, len(Xa)), replace=False)
    ice_rows = rows[:min(n_ice, len(rows))]
    out = []
    for feat in features:
        j = list(X.columns).index(feat)
        grid = _grid(Xa[:, j], grid_points)
        stacked = np.repeat(Xa[rows], len(grid), axis=0)
        stacked[:, j] = np.tile(grid, len(rows))
        raw = model.raw_score(stacked).reshape(len(rows), len(grid))
        pd_curve = raw.mean(axis=0)
        out.append(pd.DataFrame({"feature": feat, "value": grid, "curve": "PD", "effect": pd_curve - pd_curve.mean()}))
        labels = X.index.to_numpy()[ice_rows]
        ice = raw[: len(ice_rows)]
        ice = ice - ice.mean(axis=1, keepdims=True)
        out.append(pd.DataFrame({"feature": feat, "value": np.tile(grid, len(ice_rows)),
                                 "curve": np.repeat(labels.astype(str), len(grid)), "effect": ice.ravel()}))
    return pd.concat(out, ignore_index=True)


def accumulated_local_effects(model: OffsetBoosting, X: pd.DataFrame, feature, n_bins=20) -> pd.DataFrame:
    """First-order ALE (Apley & Zhu 2020) on the log relative-rate scale, centred to mean 0.

    Columns: value (bin upper edges, with the lowest edge first), ale, count (rows per bin)."""
    Xa = X.to_numpy(float)
    j = list(X.columns).index(feature)
    x = Xa[:, j]
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        raise DataError(f"{feature} takes a single value: no accumulated local effect")
    bins = np.clip(np.searchsorted(edges, x, side="left") - 1, 0, len(edges) - 2)
    lo, hi = Xa.copy(), Xa.copy()
    lo[:, j] = edges[bins]
    hi[:, j] = edges[bins + 1]
    diff = model.raw_score(hi) - model.raw_score(lo)
    counts = np.bincount(bins, minlength=len(edges) - 1)
    mean_diff = np.bincount(bins, weights=diff, minlength=len(edges) - 1) / np.maximum(counts, 1)
    ale = np.concatenate([[0.0], np.cumsum(mean_diff)])
    # Centre: subtract the mean effect over the data (bin midpoints weighted by their counts).
    mid = (ale[:-1] + ale[1:]) / 2
    ale = ale - np.sum(mid * counts) / counts.sum()
    return pd.DataFrame({"feature": feature, "value": edges, "ale": ale,
                         "count": np.concatenate([[0], counts])})


def shap_values(model: OffsetBoosting, X: pd.DataFrame, backend: str = "lightgbm") -> tuple[pd.DataFrame, float]:
    """Exact TreeSHAP values per row and covariate, on the log relative-rate scale, and the
    expected raw score (the values of a row sum with it to the row's raw score).

    ``backend="lightgbm"`` uses LightGBM's built-in TreeSHAP (``pred_contrib``), the same
    tree-path-dependent algorithm as ``shap.TreeExplainer`` (Lundberg et al. 2020) and equal to
    it to machine precision (tested), without the seconds that importing ``shap`` costs a fresh
    process; ``backend="shap"`` calls ``shap.TreeExplainer`` itself."""
    Xa = X.to_numpy(float)
    if backend == "lightgbm":
        contrib = model.booster_.predict(Xa, pred_contrib=True, num_threads=model.n_jobs)
        values, expected = contrib[:, :-1], float(contrib[0, -1])
    elif backend == "shap":
        import shap

        explainer = shap.TreeExplainer(model.booster_)
        values = explainer.shap_values(Xa)
        if isinstance(values, list):  # older shap returned one array per output
            values = values[0]
        expected = float(np.ravel(explainer.expected_value)[0])
    else:
        raise DataError(f"unknown SHAP backend {backend!r}; use 'lightgbm' or 'shap'")
    return pd.DataFrame(values, index=X.index, columns=X.columns), expected


def shap_importance(shap_frame: pd.DataFrame) -> pd.Series:
    """Mean absolute SHAP value per covariate, largest first."""
    return shap_frame.abs().mean().sort_values(ascending=False).rename("mean_abs_shap")
