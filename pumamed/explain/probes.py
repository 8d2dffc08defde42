"""What the latent codes encode about an attribute: how predictable it is from ``mu``
(cross-validated, patient-wise), which dimensions carry it (mutual information against a
permutation null, rank effects within strata), and how much a head's weight sits on them.
The audit (:mod:`pumamed.explain.audit`) and the planted-shortcut experiment use these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pumamed.errors import InputError
from pumamed.explain.attributes import AttributeValues, attribute_values, available_attributes

# ----------------------------------------------------------------------------- 1. predictability
@dataclass
class Predictability:
    attribute: str
    kind: str
    metric: str  # "auc" or "r2"
    score: float
    score_sd: float
    chance: float
    n: int
    groups: dict = field(default_factory=dict)  # group -> count (categorical)
    fold_scores: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("attribute", "kind", "metric", "score", "score_sd", "chance", "n",
                                              "groups", "fold_scores")}


def _prepare_categorical(values: np.ndarray, min_count: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    series = pd.Series(values, dtype="object")
    counts = series.dropna().value_counts()
    kept = [g for g in counts.index if counts[g] >= min_count]
    mask = series.isin(kept).to_numpy()
    classes = sorted(str(g) for g in kept)
    y = np.array([classes.index(str(v)) if m else -1 for v, m in zip(values, mask)])
    return mask, y, classes


def _folds(y: np.ndarray, groups, n_splits: int, seed: int, stratify: bool):
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if groups is not None:
        splitter = (StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed) if stratify
                    else GroupKFold(n_splits))
        return list(splitter.split(np.zeros(len(y)), y, groups))
    splitter = StratifiedKFold(n_splits, shuffle=True, random_state=seed) if stratify else KFold(
        n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def _auc(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import roc_auc_score

    if np.unique(y).size < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    present = np.unique(y)
    if present.size < n_classes:  # a fold without some class: macro AUC over the classes present
        sub = proba[:, present] / np.clip(proba[:, present].sum(axis=1, keepdims=True), 1e-12, None)
        return float(roc_auc_score(np.searchsorted(present, y), sub, multi_class="ovr", average="macro")) \
            if present.size > 2 else float(roc_auc_score(y == present[1], sub[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def attribute_predictability(codes, attribute: AttributeValues, patient_ids=None, n_splits: int = 5,
                             seed: int = 0) -> Predictability:
    """Cross-validated AUC (categorical) or R^2 (continuous) of the attribute from the codes."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    codes = np.asarray(codes, dtype=np.float64)
    if attribute.kind == "continuous":
        y_all = pd.to_numeric(pd.Series(attribute.values), errors="coerce").to_numpy(dtype=float)
        mask = np.isfinite(y_all)
        if mask.sum() < 2 * n_splits:
            raise InputError(f"too few images with a known {attribute.name} ({int(mask.sum())})")
        x, y = codes[mask], y_all[mask]
        groups = None if patient_ids is None else np.asarray(patient_ids)[mask]
        predictions = np.zeros_like(y)
        fold_scores = []
        for train, test in _folds(y, groups, n_splits, seed, stratify=False):
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 12)))
            model.fit(x[train], y[train])
            predictions[test] = model.predict(x[test])
            fold_scores.append(float(r2_score(y[test], predictions[test])))
        return Predictability(attribute.name, "continuous", "r2", float(r2_score(y, predictions)),
                              float(np.std(fold_scores)), 0.0, int(mask.sum()), {}, fold_scores)

    mask, y_all, classes = _prepare_categorical(attribute.values, min_count=n_splits)
    if len(classes) < 2:
        raise InputError(f"'{attribute.name}' has fewer than two groups with at least {n_splits} images")
    x, y = codes[mask], y_all[mask]
    groups = None if patient_ids is None else np.asarray(patient_ids)[mask]
    proba = np.zeros((len(y), len(classes)))
    fold_scores = []
    for train, test in _folds(y, groups, n_splits, seed, stratify=True):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced"))
        model.fit(x[train], y[train])
        fold_proba = np.zeros((len(test), len(classes)))
        fold_proba[:, model.classes_] = model.predict_proba(x[test])
        proba[test] = fold_proba
        fold_scores.append(_auc(y[test], fold_proba, len(classes)))
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    return Predictability(attribute.name, "categorical", "auc", _auc(y, proba, len(classes)),
                          float(np.nanstd(fold_scores)), 0.5, int(mask.sum()), counts, fold_scores)


# ----------------------------------------------------------------------------- 2. which dimensions
def mutual_information(codes, attribute: AttributeValues, seed: int = 0) -> np.ndarray:
    """Mutual information (nats) between the attribute and each code dimension (k-NN estimator)."""
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    codes = np.asarray(codes, dtype=np.float64)
    if attribute.kind == "continuous":
        y = pd.to_numeric(pd.Series(attribute.values), errors="coerce").to_numpy(dtype=float)
        mask = np.isfinite(y)
        return mutual_info_regression(codes[mask], y[mask], random_state=seed)
    mask, y, classes = _prepare_categorical(attribute.values, min_count=2)
    if len(classes) < 2:
        return np.zeros(codes.shape[1])
    return mutual_info_classif(codes[mask], y[mask], random_state=seed)


@dataclass
class DimensionFlags:
    mutual_information: np.ndarray  # D, nats (conditional on the strata when given)
    null_threshold: float  # effect above this is more than chance (family-wise permutation threshold)
    flagged: list[int]  # dimensions above the threshold, strongest first
    effect: np.ndarray | None = None  # D, the rank effect size tested

    def to_dict(self) -> dict:
        return {"mutual_information": np.round(self.mutual_information, 5).tolist(),
                "effect": None if self.effect is None else np.round(self.effect, 5).tolist(),
                "null_threshold": round(float(self.null_threshold), 5), "flagged": self.flagged}


def conditional_mutual_information(codes, attribute: AttributeValues, strata=None, seed: int = 0) -> np.ndarray:
    """I(z_d; A | S): the MI within each stratum (e.g. each label), weighted by the stratum's size.

    Without strata this is the plain MI. With the label as strata it measures what a dimension
    says about the attribute *beyond* the label: when the attribute and the label are correlated
    (a token planted in one class only, or a disease more common in one sex), every dimension
    that encodes the label would otherwise look like it encodes the attribute too.
    """
    if strata is None:
        return mutual_information(codes, attribute, seed=seed)
    codes = np.asarray(codes, dtype=np.float64)
    strata = np.asarray(strata)
    total = np.zeros(codes.shape[1])
    weight = 0
    for stratum in np.unique(strata):
        rows = strata == stratum
        sub = AttributeValues(attribute.name, attribute.values[rows], attribute.kind)
        known = pd.Series(sub.values, dtype="object").dropna()
        if attribute.kind == "categorical" and ((known.value_counts() >= 2).sum() < 2):
            continue  # the attribute does not vary within this stratum: no information either way
        if attribute.kind == "continuous" and len(known) < 10:
            continue
        total += rows.sum() * mutual_information(codes[rows], sub, seed=seed)
        weight += rows.sum()
    return total / weight if weight else total


def _rank_effect(ranks: np.ndarray, labels: np.ndarray, kind: str) -> np.ndarray:
    """Per-dimension effect size from precomputed ranks (N x D) of the codes.

    categorical: max over groups of |AUC(group vs rest) - 0.5| * 2 (0 = no separation, 1 =
    perfect); continuous: |Spearman correlation| with the attribute.
    """
    n = ranks.shape[0]
    if kind == "continuous":
        y = pd.Series(labels).rank().to_numpy(dtype=float)
        y = (y - y.mean()) / (y.std() or 1.0)
        r = (ranks - ranks.mean(axis=0)) / np.where(ranks.std(axis=0) > 0, ranks.std(axis=0), 1.0)
        return np.abs((r * y[:, None]).mean(axis=0))
    best = np.zeros(ranks.shape[1])
    groups = np.unique(labels)
    for g in groups[: (1 if groups.size == 2 else groups.size)]:
        inside = labels == g
        n_in = int(inside.sum())
        if n_in == 0 or n_in == n:
            continue
        auc = (ranks[inside].sum(axis=0) - n_in * (n_in + 1) / 2) / (n_in * (n - n_in))
        best = np.maximum(best, np.abs(auc - 0.5) * 2)
    return best


def dimension_effects(codes, attribute: AttributeValues, strata=None, n_permutations: int = 200,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Effect size of the attribute on each dimension (within strata) and its permutation null.

    Returns (effect per dimension (D,), null effects (n_permutations x D)). Ranks are computed
    once per stratum; a permutation only reshuffles labels, so hundreds of them cost little.
    """
    from scipy.stats import rankdata

    codes = np.asarray(codes, dtype=np.float64)
    known = attribute.known
    strata_arr = np.zeros(len(attribute.values), dtype=int) if strata is None else np.asarray(strata)
    rng = np.random.default_rng(seed)
    parts = []
    for stratum in np.unique(strata_arr):
        rows = np.flatnonzero((strata_arr == stratum) & known)
        if rows.size < 6:
            continue
        if attribute.kind == "continuous":
            labels = pd.to_numeric(pd.Series(attribute.values[rows]), errors="coerce").to_numpy(dtype=float)
        else:
            labels = np.array([str(v) for v in attribute.values[rows]])
            if np.unique(labels).size < 2:
                continue
        parts.append((rows.size, rankdata(codes[rows], axis=0), labels))
    if not parts:
        zeros = np.zeros(codes.shape[1])
        return zeros, np.zeros((max(n_permutations, 1), codes.shape[1]))
    total = sum(p[0] for p in parts)
    effect = sum(w * _rank_effect(r, lab, attribute.kind) for w, r, lab in parts) / total
    null = np.zeros((n_permutations, codes.shape[1]))
    for b in range(n_permutations):
        null[b] = sum(w * _rank_effect(r, rng.permutation(lab), attribute.kind) for w, r, lab in parts) / total
    return effect, null


def flag_dimensions(codes, attribute: AttributeValues, n_permutations: int = 200, alpha: float = 0.01,
                    seed: int = 0, max_flagged: int | None = None, strata=None) -> DimensionFlags:
    """Dimensions that carry the attribute more than chance, with the mutual information of each.

    Test statistic: a rank effect size per dimension (2|AUC - 0.5| for groups, |Spearman rho|
    for a continuous attribute), computed within strata when given (see
    :func:`conditional_mutual_information` for why). The threshold is the (1 - alpha) quantile
    of the *maximum* over dimensions of the same statistic under permutations of the attribute
    (within strata): a family-wise error rate of ``alpha`` across all D dimensions. The k-NN
    mutual information (also conditional on the strata) is reported for the heatmap; it is too
    noisy on a few hundred images to be the test itself.
    """
    effect, null = dimension_effects(codes, attribute, strata, n_permutations, seed)
    threshold = float(np.quantile(null.max(axis=1), 1 - alpha)) if null.size else 0.0
    mi = conditional_mutual_information(codes, attribute, strata, seed=seed)
    order = np.argsort(-effect, kind="stable")
    flagged = [int(d) for d in order if effect[d] > threshold]
    if max_flagged is not None:
        flagged = flagged[:max_flagged]
    return DimensionFlags(mi, threshold, flagged, effect)


def mutual_information_matrix(codes, metadata: pd.DataFrame, attributes=None, seed: int = 0) -> pd.DataFrame:
    """Attributes x dimensions table of mutual information (the heatmap of the audit page)."""
    attributes = list(attributes) if attributes is not None else available_attributes(metadata)
    rows = {}
    for attribute in attributes:
        rows[attribute] = mutual_information(codes, attribute_values(metadata, attribute), seed=seed)
    return pd.DataFrame(rows, index=[f"z{d}" for d in range(np.asarray(codes).shape[1])]).T


def head_dependence(coefficients: np.ndarray, flagged) -> dict:
    """Share of a head's (standardised) weight that sits on the flagged dimensions.

    ``coefficients``: D weights in units of one standard deviation of each code. Compared with
    the share of dimensions flagged, it says whether the classifier listens to the attribute's
    dimensions more than to an average dimension.
    """
    weights = np.abs(np.asarray(coefficients, dtype=float).reshape(-1))
    total = weights.sum()
    flagged = [int(d) for d in flagged]
    share = float(weights[flagged].sum() / total) if total > 0 and flagged else 0.0
    top = np.argsort(-weights)[:5]
    return {"weight_share_on_flagged": share,
            "flagged_fraction_of_dims": len(flagged) / max(len(weights), 1),
            "top_weighted_dims": [int(d) for d in top]}
