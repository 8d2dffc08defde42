"""Bias mitigation on the latent codes, before the classifier.

Two families, both cheap because the classifier is a head on ``mu``:

* **Removing the attribute-encoding subspace** (:class:`AttributeSubspaceRemover`):

  - ``"orthogonal"`` (default): project ``mu`` onto the orthogonal complement of the
    cross-covariance between ``mu`` and the one-hot attribute (the span of the group-mean
    differences). Afterwards every group has the same mean code, which is exactly the condition
    under which *no* linear classifier can predict the attribute better than a constant
    (linear guardedness; Belrose et al., "LEACE", 2023). One direction per group minus one.
  - ``"inlp"``: iterative nullspace projection (Ravfogel et al., ACL 2020): fit a linear
    classifier of the attribute, project out its direction(s), repeat until the attribute is no
    longer predictable on held-out codes (or ``n_iterations``). Also removes directions a
    regularised classifier finds, not only mean differences.
  - ``"drop"``: replace chosen dimensions (e.g. the audit's flagged ones) by their mean.

* **Reweighting** (:func:`reweighing_weights`, Kamiran & Calders, 2012): train the head with
  sample weights ``P(a) P(y) / P(a, y)`` so that the attribute and the label look independent to
  the learner.

:func:`compare_mitigations` refits the same logistic head on the codes for each strategy and
reports the overall AUC, the subgroup gaps and how predictable the attribute still is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from pumamed.errors import InputError
from pumamed.explain.attributes import age_groups, is_continuous
from pumamed.explain.fairness import subgroup_performance
from pumamed.jsonsafe import to_jsonable

METHODS = ("orthogonal", "inlp", "drop")


def _one_hot(values) -> tuple[np.ndarray, np.ndarray, list]:
    """One-hot matrix (rows with a known value), the mask of those rows, and the groups."""
    series = pd.Series(np.asarray(values, dtype=object))
    known = series.notna().to_numpy()
    if is_continuous(series):
        # A continuous attribute (age): one "group" column holding the centred value.
        column = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        return (column[known] - column[known].mean())[:, None], known, ["value"]
    groups = sorted(series[known].astype(str).unique())
    if len(groups) < 2:
        raise InputError("the attribute has a single group here: there is nothing to remove")
    labels = series[known].astype(str).to_numpy()
    return (labels[:, None] == np.array(groups)[None, :]).astype(float), known, groups


def _within_strata(X: np.ndarray, onehot: np.ndarray, strata: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of strata where the attribute varies, with codes centred per stratum."""
    keep_x, keep_a = [], []
    for stratum in np.unique(strata):
        rows = strata == stratum
        if onehot.shape[1] > 1 and (onehot[rows].sum(axis=0) > 0).sum() < 2:
            continue
        keep_x.append(X[rows] - X[rows].mean(axis=0))
        keep_a.append(onehot[rows])
    if not keep_x:
        raise InputError("the attribute does not vary within any stratum: nothing to remove")
    return np.concatenate(keep_x), np.concatenate(keep_a)


def _orthonormal_rows(directions: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """An orthonormal basis (rows) of the span of the given row vectors."""
    if directions.size == 0:
        return directions.reshape(0, -1)
    u, s, vt = np.linalg.svd(directions, full_matrices=False)
    return vt[s > tol * max(s.max(), 1e-12)]


class AttributeSubspaceRemover(TransformerMixin, BaseEstimator):
    """Remove the directions of the latent space that encode an attribute (see module doc).

    ``fit(X, attribute)``: X is N x D codes, ``attribute`` one value per row (None = unknown;
    those rows are ignored when fitting). ``transform(X)`` returns the projected codes, same shape.
    """

    def __init__(self, method: str = "orthogonal", n_iterations: int = 10, dims=None, stop_auc: float = 0.55,
                 random_state: int = 0):
        # strata (fit parameter): e.g. the class labels. The attribute's directions are then
        # estimated *within* each stratum, so a label correlated with the attribute is not
        # mistaken for it (and not removed with it).
        self.method = method
        self.n_iterations = n_iterations
        self.dims = dims
        self.stop_auc = stop_auc
        self.random_state = random_state

    def fit(self, X, attribute=None, strata=None):
        X = np.asarray(X, dtype=np.float64)
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)} (got {self.method!r})")
        self.mean_ = X.mean(axis=0)
        d = X.shape[1]
        if self.method == "drop":
            dims = np.asarray(self.dims if self.dims is not None else [], dtype=int)
            if dims.size and (dims.min() < 0 or dims.max() >= d):
                raise InputError(f"dimensions to drop must be between 0 and {d - 1}")
            self.directions_ = np.eye(d)[dims] if dims.size else np.zeros((0, d))
        else:
            if attribute is None:
                raise InputError(f"the '{self.method}' method needs the attribute values to fit")
            onehot, known, self.groups_ = _one_hot(attribute)
            Xk = X[known] - X[known].mean(axis=0)
            if strata is not None:
                Xk, onehot = _within_strata(X[known], onehot, np.asarray(strata)[known])
            if self.method == "orthogonal":
                cross = Xk.T @ (onehot - onehot.mean(axis=0)) / max(len(Xk) - 1, 1)  # D x G
                self.directions_ = _orthonormal_rows(cross.T)
            else:
                self.directions_ = self._inlp(Xk, onehot)
        self.projection_ = np.eye(d) - self.directions_.T @ self.directions_
        self.n_removed_ = int(self.directions_.shape[0])
        return self

    def _inlp(self, Xk: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.model_selection import train_test_split

        continuous = onehot.shape[1] == 1 and self.groups_ == ["value"]
        y = onehot[:, 0] if continuous else onehot.argmax(axis=1)
        found = np.zeros((0, Xk.shape[1]))
        projected = Xk.copy()
        for _ in range(int(self.n_iterations)):
            if continuous:
                model = Ridge(alpha=1.0).fit(projected, y)
                w = np.atleast_2d(model.coef_)
            else:
                train, test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=self.random_state,
                                               stratify=y)
                model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(projected[train], y[train])
                score = _held_out_auc(model, projected[test], y[test])
                if score < self.stop_auc:
                    break
                w = np.atleast_2d(model.coef_)
            found = _orthonormal_rows(np.vstack([found, w]))
            projected = Xk - Xk @ found.T @ found
            if continuous:
                break  # one direction carries all the linear information about a scalar
        return found

    def transform(self, X):
        X = np.asarray(X, dtype=np.float64)
        return (X - self.mean_) @ self.projection_ + self.mean_


def _held_out_auc(model, X, y) -> float:
    from sklearn.metrics import roc_auc_score

    if np.unique(y).size < 2:
        return 0.5
    proba = model.predict_proba(X)
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=model.classes_))


def reweighing_weights(groups, y) -> np.ndarray:
    """Kamiran & Calders weights ``P(a) P(y) / P(a, y)`` (mean 1); unknown groups get weight 1.

    Cells (group, label) that do not occur cannot be up-weighted: reweighting then only rebalances
    the cells that exist (the report says so through the remaining gap).
    """
    groups = pd.Series(np.asarray(groups, dtype=object))
    y = pd.Series(np.asarray(y))
    known = groups.notna()
    weights = np.ones(len(y))
    g, yk = groups[known].astype(str), y[known]
    p_group = g.value_counts(normalize=True)
    p_label = yk.value_counts(normalize=True)
    p_joint = pd.crosstab(g, yk, normalize=True)
    weights[known.to_numpy()] = [p_group[a] * p_label[b] / p_joint.loc[a, b] for a, b in zip(g, yk)]
    return weights / weights.mean()


# ----------------------------------------------------------------------------- comparison
@dataclass
class MitigationReport:
    table: pd.DataFrame  # one row per strategy
    threshold: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        records = [to_jsonable(row, digits=5) for row in self.table.to_dict(orient="records")]
        return {"strategies": records, "threshold": self.threshold, "notes": self.notes}


def fit_head(X, y, sample_weight=None, seed: int = 0):
    """The logistic head used for every strategy (standardised codes, L2, C=1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000, random_state=seed))
    params = {} if sample_weight is None else {"logisticregression__sample_weight": sample_weight}
    return model.fit(X, y, **params)


def attribute_leakage(train_codes, train_attr, test_codes, test_attr) -> float:
    """Held-out AUC (macro OvR) of the attribute from codes, or R^2 for a continuous attribute."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_attr = pd.Series(np.asarray(train_attr, dtype=object))
    test_attr = pd.Series(np.asarray(test_attr, dtype=object))
    tr, te = train_attr.notna().to_numpy().copy(), test_attr.notna().to_numpy().copy()
    if is_continuous(train_attr):
        numeric = pd.to_numeric(train_attr, errors="coerce")
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 12)))
        model.fit(train_codes[tr], numeric[tr].to_numpy(float))
        return float(r2_score(pd.to_numeric(test_attr[te]).to_numpy(float), model.predict(test_codes[te])))
    groups = sorted(set(train_attr[tr].astype(str)) & set(test_attr[te].astype(str)))
    if len(groups) < 2:
        return float("nan")
    tr = tr & train_attr.astype(str).isin(groups).to_numpy()
    te = te & test_attr.astype(str).isin(groups).to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced"))
    model.fit(train_codes[tr], train_attr[tr].astype(str).to_numpy())
    return _held_out_auc(model, test_codes[te], test_attr[te].astype(str).to_numpy())


#: The mitigation strategies, by name, and how a report spells each one out.
STRATEGY_LABELS = {
    "baseline": "logistic head (no mitigation)",
    "orthogonal": "orthogonal projection",
    "inlp": "INLP",
    "drop flagged": "drop flagged dims",
    "reweighting": "reweighting",
    "orthogonal + reweighting": "orthogonal projection + reweighting",
}
STRATEGIES = tuple(STRATEGY_LABELS)


def mitigated_heads(train_codes, train_y, train_attr, *, flagged_dims=(), strategies=None, strata=None,
                    weight_groups=None, seed: int = 0, notes: list | None = None):
    """The one strategy loop: for each strategy (default: all of :data:`STRATEGIES`), yield
    ``(name, remover or None, head)``, the head being :func:`fit_head` refitted on the training
    codes transformed by the remover, with reweighting weights where the strategy says so.

    ``strata`` (e.g. the labels): the attribute's directions are estimated within each stratum.
    ``weight_groups``: the groups reweighting balances (default: the attribute's values).
    ``notes`` receives what a reader should know (e.g. nothing flagged to drop).
    """
    train_codes = np.asarray(train_codes, dtype=np.float64)
    weight_groups = train_attr if weight_groups is None else weight_groups
    for name in strategies or STRATEGIES:
        if name not in STRATEGY_LABELS:
            raise InputError(f"unknown mitigation {name!r}; choose from {', '.join(STRATEGIES)}")
        weights = None
        remover = None
        if name in ("orthogonal", "orthogonal + reweighting"):
            remover = AttributeSubspaceRemover("orthogonal").fit(train_codes, train_attr, strata=strata)
        elif name == "inlp":
            remover = AttributeSubspaceRemover("inlp", random_state=seed).fit(train_codes, train_attr, strata=strata)
        elif name == "drop flagged":
            if not len(flagged_dims) and notes is not None:
                notes.append("no flagged dimensions, so 'drop flagged' equals the baseline")
            remover = AttributeSubspaceRemover("drop", dims=list(flagged_dims)).fit(train_codes)
        if name in ("reweighting", "orthogonal + reweighting"):
            weights = reweighing_weights(weight_groups, train_y)
        codes = remover.transform(train_codes) if remover is not None else train_codes
        yield name, remover, fit_head(codes, train_y, sample_weight=weights, seed=seed)


def compare_mitigations(train_codes, train_y, train_attr, test_codes, test_y, test_attr, test_groups,
                        flagged_dims=(), n_boot: int = 200, seed: int = 0, strategies=None,
                        within_label: bool = True) -> MitigationReport:
    """Refit a logistic head on the codes under each strategy; report AUC, gaps and attribute leakage.

    ``*_y``: binary labels (1 = positive class). ``*_attr``: the attribute per image (None =
    unknown); ``test_groups``: the groups the gaps are measured over (equal to ``test_attr`` for a
    categorical attribute, age groups for age). The decision threshold of every head is the
    training prevalence (a head trained on imbalanced data rarely crosses 0.5). With
    ``within_label`` the attribute's directions are estimated within each class, so that removing
    them does not remove the label information the attribute happens to be correlated with.
    """
    train_codes = np.asarray(train_codes, dtype=np.float64)
    test_codes = np.asarray(test_codes, dtype=np.float64)
    train_y = np.asarray(train_y).astype(int)
    test_y = np.asarray(test_y).astype(int)
    if np.unique(train_y).size < 2:
        raise InputError("the training codes hold a single class: no head can be fitted")
    threshold = float(train_y.mean())
    train_groups_for_weights = np.asarray(train_attr, dtype=object)
    if is_continuous(train_groups_for_weights):  # continuous: reweight by age group
        train_groups_for_weights = age_groups(train_groups_for_weights)
    strata = train_y if within_label else None
    notes = []
    rows = []
    for name, remover, head in mitigated_heads(train_codes, train_y, train_attr, flagged_dims=flagged_dims,
                                               strategies=strategies, strata=strata,
                                               weight_groups=train_groups_for_weights, seed=seed, notes=notes):
        tr = remover.transform(train_codes) if remover is not None else train_codes
        te = remover.transform(test_codes) if remover is not None else test_codes
        scores = head.predict_proba(te)[:, 1]
        report = subgroup_performance(test_y, scores, test_groups, threshold=threshold, n_boot=n_boot, seed=seed)
        overall = report.table.loc["overall"]
        row = {"strategy": name, "directions_removed": int(remover.n_removed_) if remover is not None else 0,
               "auc": float(overall["auc"]),
               "auc_lo": float(overall.get("auc_lo", np.nan)), "auc_hi": float(overall.get("auc_hi", np.nan))}
        for metric in ("auc", "tpr", "fpr"):
            gap = report.gaps.get(metric, {})
            row[f"{metric}_gap"] = float(gap.get("gap", np.nan))
            row[f"{metric}_gap_lo"] = float(gap.get("lo", np.nan))
            row[f"{metric}_gap_hi"] = float(gap.get("hi", np.nan))
        row["attribute_leakage"] = attribute_leakage(tr, train_attr, te, test_attr)
        rows.append(row)
    return MitigationReport(pd.DataFrame(rows), threshold, notes)
