"""Bias audit read from the latent space.

For a metadata attribute (sex, age, age group, view position, source dataset or modality, breast
tissue density, or any column a dataset carries) the audit answers four questions:

1. **Is the attribute encoded?** How well a cross-validated logistic regression (AUC, macro
   one-vs-rest for several groups) or ridge regression (R^2, continuous attributes) predicts it
   from ``mu``; splits are patient-wise when patient ids exist, so one patient's images never sit
   on both sides.
2. **Where?** Mutual information between the attribute and each latent dimension (sklearn's k-NN
   estimator). A dimension is *flagged* when its MI exceeds the 99th percentile of the same
   estimate with the attribute shuffled (a permutation null pooled over dimensions), so the flag
   means "more than chance", not "in the top k".
3. **Does the classifier behave differently per group?** AUC, TPR, FPR, expected calibration error
   and Brier score per group, with bootstrap confidence intervals (fairlearn's ``MetricFrame``) and
   the largest gap between groups.
4. **Can it be mitigated?** See :mod:`pumamed.explain.mitigation`; :func:`run_audit` reports the
   gap and the overall AUC before and after.

Everything here works on arrays (codes, labels, scores, metadata); :func:`encode_dataset` turns a
model and a dataset into those arrays once, so a page can cache them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pumamed.errors import DataError, InputError
from pumamed.explain.attributes import (  # noqa: F401 - the audit's attribute API, re-exported
    AGE_BINS,
    AGE_LABELS,
    ATTRIBUTE_COLUMNS,
    CONTINUOUS_ATTRIBUTES,
    DENSITY_NAMES,
    NON_ATTRIBUTES,
    SEX_NAMES,
    AttributeValues,
    attribute_values,
    available_attributes,
    clean_value,
)
from pumamed.jsonsafe import to_jsonable


# ----------------------------------------------------------------------------- encoded data
@dataclass
class LatentCodes:
    """A dataset seen through a model: codes, labels, classifier probabilities and metadata."""

    mu: np.ndarray  # N x D
    logvar: np.ndarray  # N x D
    labels: np.ndarray  # N (class index) or N x C (multi-label)
    probabilities: np.ndarray  # N x C, the model's own classifier head
    metadata: pd.DataFrame
    class_names: list[str]
    dataset_class_names: list[str] = field(default_factory=list)
    task: str = "multiclass"

    def __len__(self) -> int:
        return int(self.mu.shape[0])

    @property
    def patient_ids(self) -> np.ndarray | None:
        for column in ("patient_id", "Patient ID", "patient"):
            if column in self.metadata.columns:
                ids = self.metadata[column].astype(str).to_numpy()
                return ids if len(set(ids)) < len(ids) else None
        return None

    @property
    def head_matches_dataset(self) -> bool:
        """Whether the model's classifier predicts this dataset's classes (else a probe is used)."""
        if not self.dataset_class_names:
            return True
        return [str(c).lower() for c in self.class_names] == [str(c).lower() for c in self.dataset_class_names]


def encode_dataset(model, dataset, batch_size: int = 64, device=None, max_items: int | None = None,
                   class_names=None, task: str | None = None, seed: int = 0) -> LatentCodes:
    """Encode a dataset (``ds[i] -> (image, label)``, ``ds.metadata``) once: mu, logvar, head probabilities.

    ``max_items`` takes a seeded random subset (same subset every call), to bound the cost.
    """
    import torch

    from pumamed.explain.attributions import head_probabilities
    from pumamed.net.inference import encode_dataset as encode_images

    n = len(dataset)
    if n == 0:
        raise DataError("the dataset is empty")
    indices = np.arange(n)
    if max_items is not None and n > max_items:
        indices = np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))
    probs = []

    def score(x, mu, logvar, detail_mu):
        probs.append(head_probabilities(model, mu, task=task).float().cpu().numpy())

    labels = []

    class _LabelsRead:  # the dataset, keeping each item's label as the encoder reads the item
        def __len__(self):
            return n

        def __getitem__(self, i):
            item = dataset[i]
            labels.append(np.asarray(torch.as_tensor(item[1]).cpu().numpy()))
            return item

    mu, logvar = encode_images(model, _LabelsRead(), indices=indices, batch_size=batch_size, device=device,
                               on_batch=score)
    metadata = getattr(dataset, "metadata", None)
    metadata = (metadata.iloc[indices].reset_index(drop=True) if isinstance(metadata, pd.DataFrame)
                else pd.DataFrame(index=range(len(indices))))
    return LatentCodes(
        mu=mu, logvar=logvar, labels=np.stack(labels),
        probabilities=np.concatenate(probs), metadata=metadata,
        class_names=list(class_names) if class_names is not None else [str(i) for i in range(probs[0].shape[1])],
        dataset_class_names=list(getattr(dataset, "class_names", []) or []),
        task=task or getattr(dataset, "task", "multiclass"),
    )


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


# ----------------------------------------------------------------------------- 3. subgroup performance
def _tpr(y_true, y_score, threshold: float = 0.5) -> float:
    y_true = np.asarray(y_true).astype(bool)
    return float(np.mean(np.asarray(y_score)[y_true] >= threshold)) if y_true.any() else float("nan")


def _fpr(y_true, y_score, threshold: float = 0.5) -> float:
    y_true = np.asarray(y_true).astype(bool)
    return float(np.mean(np.asarray(y_score)[~y_true] >= threshold)) if (~y_true).any() else float("nan")


def _roc_auc(y_true, y_score) -> float:
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    return float(roc_auc_score(y_true, y_score)) if np.unique(y_true).size == 2 else float("nan")


def expected_calibration_error(y_true, y_score, n_bins: int = 10) -> float:
    """Weighted mean |observed rate - mean predicted probability| over equal-width bins."""
    y_true = np.asarray(y_true, dtype=float)
    y_score = np.asarray(y_score, dtype=float)
    if y_true.size == 0:
        return float("nan")
    bins = np.clip((y_score * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    observed = np.bincount(bins, weights=y_true, minlength=n_bins)
    predicted = np.bincount(bins, weights=y_score, minlength=n_bins)
    return float(np.abs(observed - predicted).sum() / y_true.size)


def _brier(y_true, y_score) -> float:
    return float(np.mean((np.asarray(y_score, float) - np.asarray(y_true, float)) ** 2))


def _prevalence(y_true, y_score) -> float:
    return float(np.mean(y_true))


def _count(y_true, y_score) -> float:
    return float(len(y_true))


SUBGROUP_METRICS = {
    "auc": _roc_auc,
    "tpr": _tpr,
    "fpr": _fpr,
    "ece": expected_calibration_error,
    "brier": _brier,
    "prevalence": _prevalence,
}
#: Metrics whose gap between groups is reported (prevalence is a property of the data, not the model).
GAP_METRICS = ("auc", "tpr", "fpr", "ece")


@dataclass
class SubgroupReport:
    table: pd.DataFrame  # one row per group (+ "overall"): n, metric, metric_lo, metric_hi
    gaps: dict  # metric -> {"gap", "lo", "hi", "worst_group", "best_group"}
    threshold: float
    n_boot: int

    def to_dict(self) -> dict:
        table = self.table.rename_axis("group").reset_index()
        records = [to_jsonable(row) for row in table.to_dict(orient="records")]
        return {"groups": records, "gaps": _finite(self.gaps), "threshold": self.threshold, "n_boot": self.n_boot}


def _finite(value):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, floats rounded to 5 digits."""
    return to_jsonable(value, digits=5)


def _bootstrap_metrics(y_true: np.ndarray, y_score: np.ndarray, codes: np.ndarray, n_groups: int,
                       threshold: float, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates (n_boot x (n_groups + 1) x metrics), resampling within each group.

    Resampling within groups keeps every group's size fixed (a stratified bootstrap), so a small
    group never vanishes from a replicate; the last slot is the overall value of the replicate.
    """
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(codes == g) for g in range(n_groups)]
    out = np.full((n_boot, n_groups + 1, len(SUBGROUP_METRICS)), np.nan)
    for b in range(n_boot):
        drawn = [rng.choice(m, size=m.size, replace=True) for m in members]
        for g, idx in enumerate(drawn + [np.concatenate(drawn)]):
            out[b, g] = [fn(y_true[idx], y_score[idx], threshold) for fn in _FAST_METRICS]
    return out


def _fast_auc(y_true, y_score, threshold=None) -> float:
    """Mann-Whitney AUC from ranks (ties averaged): the same value as roc_auc_score, 20x faster."""
    from scipy.stats import rankdata

    y_true = np.asarray(y_true).astype(bool)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(y_score)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


_FAST_METRICS = (
    _fast_auc,
    _tpr,
    _fpr,
    lambda yt, ys, t: expected_calibration_error(yt, ys),
    lambda yt, ys, t: _brier(yt, ys),
    lambda yt, ys, t: _prevalence(yt, ys),
)


def _group_order(name: str):
    """Age groups in age order, everything else alphabetically."""
    return (AGE_LABELS.index(name), "") if name in AGE_LABELS else (len(AGE_LABELS), name)


def subgroup_performance(y_true, y_score, groups, threshold: float = 0.5, n_boot: int = 200,
                         confidence: float = 0.95, seed: int = 0, min_group_size: int = 5) -> SubgroupReport:
    """Per-group AUC, TPR, FPR, ECE, Brier with bootstrap CIs and the largest gap.

    ``y_true`` binary (positive class = 1), ``y_score`` the predicted probability of the positive
    class, ``groups`` one group label per image (None = unknown, excluded). Groups with fewer than
    ``min_group_size`` images are left out (their metrics would be noise). Point estimates come from
    fairlearn's ``MetricFrame``; the percentile CIs from a bootstrap stratified by group (the gap's
    CI from the same replicates, so it accounts for both groups' uncertainty).
    """
    from fairlearn.metrics import MetricFrame

    y_true = np.asarray(y_true).astype(int).reshape(-1)
    y_score = np.asarray(y_score, dtype=float).reshape(-1)
    groups = pd.Series(np.asarray(groups, dtype=object)).astype("object")
    if not (len(y_true) == len(y_score) == len(groups)):
        raise InputError("labels, scores and groups must have one entry per image")
    counts = groups.dropna().value_counts()
    kept = counts[counts >= min_group_size].index
    mask = groups.isin(kept).to_numpy()
    if len(kept) < 2:
        raise InputError(f"need at least two groups with {min_group_size}+ images (found {dict(counts)})")
    group_labels = groups[mask].astype(str).to_numpy()
    frame = MetricFrame(
        metrics={name: (lambda f: (lambda yt, ys: f(yt, ys, threshold)))(fn) if name in ("tpr", "fpr") else fn
                 for name, fn in SUBGROUP_METRICS.items()},
        y_true=y_true[mask], y_pred=y_score[mask], sensitive_features=group_labels,
    )
    by_group = frame.by_group.astype(float)
    by_group.index = pd.Index(by_group.index.astype(str), name="group")
    by_group = by_group.loc[sorted(by_group.index, key=_group_order)]
    table = by_group.copy()
    table.loc["overall"] = frame.overall.astype(float)
    table.insert(0, "n", [int((group_labels == g).sum()) for g in by_group.index] + [int(mask.sum())])
    names = list(SUBGROUP_METRICS)
    tail = (1 - confidence) / 2
    replicates = None
    if n_boot:
        codes = np.array([list(by_group.index).index(g) for g in group_labels])
        replicates = _bootstrap_metrics(y_true[mask], y_score[mask], codes, len(by_group), threshold, n_boot, seed)
        with np.errstate(all="ignore"):
            lo = np.nanquantile(replicates, tail, axis=0)
            hi = np.nanquantile(replicates, 1 - tail, axis=0)
        for k, metric in enumerate(names):
            table[f"{metric}_lo"] = lo[:, k]
            table[f"{metric}_hi"] = hi[:, k]
    gaps = {}
    for metric in GAP_METRICS:
        column = by_group[metric]
        if column.notna().sum() < 2:
            continue
        # For AUC/TPR the worst group is the lowest; for FPR/ECE the highest.
        worst = column.idxmax() if metric in ("fpr", "ece") else column.idxmin()
        best = column.idxmin() if metric in ("fpr", "ece") else column.idxmax()
        gaps[metric] = {"gap": float(column.max() - column.min()), "worst_group": str(worst),
                        "best_group": str(best)}
        if replicates is not None:
            per_group = replicates[:, :-1, names.index(metric)]
            with np.errstate(all="ignore"):
                spread = np.nanmax(per_group, axis=1) - np.nanmin(per_group, axis=1)
            spread = spread[np.isfinite(spread)]
            if spread.size:
                gaps[metric]["lo"] = float(np.quantile(spread, tail))
                gaps[metric]["hi"] = float(np.quantile(spread, 1 - tail))
    return SubgroupReport(table, gaps, threshold, int(n_boot or 0))


# ----------------------------------------------------------------------------- the whole audit
NORMAL_CLASS_NAMES = ("normal", "notumor", "no finding", "no_finding", "healthy")


@dataclass
class BinaryTarget:
    y: np.ndarray  # N, 1 = positive
    head_score: np.ndarray | None  # N, the model head's probability of the positive outcome (None: no match)
    name: str  # what "positive" means, e.g. "abnormal" or "pneumonia"


def binary_target(codes: LatentCodes, positive=None) -> BinaryTarget:
    """Reduce the dataset's labels to one binary outcome for subgroup metrics.

    multilabel: any finding vs none (head: noisy-OR of the finding probabilities); binary: class
    1; multiclass: ``positive`` (name or index) vs the rest, by default "not normal" when the
    dataset has a normal class, else class 1 vs the rest.
    """
    names = [str(c) for c in (codes.dataset_class_names or codes.class_names)]
    labels = np.asarray(codes.labels)
    probs = codes.probabilities if codes.head_matches_dataset and codes.probabilities.size else None
    if labels.ndim == 2:
        y = (labels.sum(axis=1) > 0).astype(int)
        score = None if probs is None else 1.0 - np.prod(1.0 - probs, axis=1)
        return BinaryTarget(y, score, "any finding")
    labels = labels.astype(int)
    if positive is not None:
        index = names.index(str(positive)) if str(positive) in names else int(positive)
        if not 0 <= index < len(names):
            raise InputError(f"positive class {positive!r} is not one of {names}")
        score = None if probs is None else probs[:, index]
        return BinaryTarget((labels == index).astype(int), score, names[index])
    if len(names) == 2:
        return BinaryTarget((labels == 1).astype(int), None if probs is None else probs[:, 1], names[1])
    normal = next((i for i, c in enumerate(names) if c.lower() in NORMAL_CLASS_NAMES), None)
    if normal is not None:
        score = None if probs is None else 1.0 - probs[:, normal]
        return BinaryTarget((labels != normal).astype(int), score, f"not {names[normal]}")
    return BinaryTarget((labels == 1).astype(int), None if probs is None else probs[:, 1], names[1])


#: Below this cross-validated overall AUC a stand-in logistic probe is too weak for its subgroup
#: gaps to say anything about the model (its errors are mostly its own).
PROBE_AUC_FLOOR = 0.6


@dataclass(frozen=True)
class PerformanceVerdict:
    """Whether subgroup performance can be judged at all, and why not."""

    judgeable: bool
    reason: str = ""


def performance_verdict(subgroups: SubgroupReport | None, classifier: str,
                        probe_floor: float = PROBE_AUC_FLOOR) -> PerformanceVerdict:
    """Subgroup gaps of a classifier at chance are noise. Not judgeable when the overall AUC's 95 %
    interval includes 0.5, or when a stand-in probe scores below ``probe_floor``."""
    if subgroups is None or "overall" not in subgroups.table.index:
        return PerformanceVerdict(False, "no classifier score to compare groups with")
    overall = subgroups.table.loc["overall"]
    auc, lo, hi = (float(overall.get(k, np.nan)) for k in ("auc", "auc_lo", "auc_hi"))
    who = "the logistic probe standing in for the classifier" if "probe" in classifier else f"the {classifier}"
    if not np.isfinite(auc):
        return PerformanceVerdict(False, f"{who} has no overall AUC (a single class in the test split)")
    interval = f"{auc:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else f"{auc:.3f}"
    if np.isfinite(lo) and np.isfinite(hi) and lo <= 0.5 <= hi:
        return PerformanceVerdict(False, f"{who} scores an overall AUC of {interval}, an interval that "
                                         "includes chance (0.5)")
    if "probe" in classifier and auc < probe_floor:
        return PerformanceVerdict(False, f"{who} scores an overall AUC of {interval}, below the floor of "
                                         f"{probe_floor:.2f} set for a stand-in probe")
    return PerformanceVerdict(True)


@dataclass
class AuditReport:
    attribute: str
    kind: str
    positive: str
    classifier: str  # "model head" or "logistic probe on mu"
    n_train: int
    n_test: int
    predictability: Predictability
    flags: DimensionFlags
    subgroups: SubgroupReport | None
    mitigation: "object | None"  # MitigationReport
    head_dependence: dict
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return _finite({
            "attribute": self.attribute, "kind": self.kind, "positive": self.positive,
            "classifier": self.classifier, "n_train": self.n_train, "n_test": self.n_test,
            "predictability": self.predictability.to_dict(),
            "flagged_dimensions": self.flags.flagged,
            "mutual_information": self.flags.to_dict(),
            "subgroups": None if self.subgroups is None else self.subgroups.to_dict(),
            "mitigation": None if self.mitigation is None else self.mitigation.to_dict(),
            "head_dependence": self.head_dependence,
            "subgroups_judgeable": self.verdict().judgeable,
            "notes": self.notes,
        })

    def verdict(self) -> PerformanceVerdict:
        """Whether the subgroup gaps and mitigation ranking mean anything (see performance_verdict)."""
        return performance_verdict(self.subgroups, self.classifier)


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


def _patient_groups(frames) -> np.ndarray | None:
    """One group per patient (images without a patient id are their own group), or None when no
    patient has two images (then plain stratified folds are equivalent and cheaper)."""
    groups = []
    for frame in frames:
        ids = frame["patient_id"].tolist() if "patient_id" in frame.columns else [None] * len(frame)
        groups.extend(ids)
    labels = [f"image-{i}" if clean_value(v) is None else f"patient-{v}" for i, v in enumerate(groups)]
    return np.array(labels, dtype=object) if len(set(labels)) < len(labels) else None


def run_audit(train: LatentCodes, test: LatentCodes, attribute: str, positive=None, n_boot: int = 200,
              seed: int = 0, strategies=None, within_label: bool = True) -> AuditReport:
    """Audit one attribute: predictability, flagged dims, subgroup metrics, mitigation (module doc)."""
    from pumamed.explain.mitigation import compare_mitigations, fit_head

    notes = []
    attr_train = attribute_values(train.metadata, attribute)
    attr_test = attribute_values(test.metadata, attribute)
    both_mu = np.concatenate([train.mu, test.mu])
    both_attr = AttributeValues(attr_train.name, np.concatenate([attr_train.values, attr_test.values]),
                                attr_train.kind)
    patients = _patient_groups([train.metadata, test.metadata])
    predictability = attribute_predictability(both_mu, both_attr, patient_ids=patients, seed=seed)
    if train.task == "mix" or test.task == "mix":
        flags = flag_dimensions(both_mu, both_attr, seed=seed)
        notes.append("a mix of datasets has no common label: subgroup performance and mitigation do not apply")
        return AuditReport(attr_train.name, attr_train.kind, "(none)", "none", len(train), len(test),
                           predictability, flags, None, None, {}, notes)
    target_train = binary_target(train, positive)
    target_test = binary_target(test, positive)
    # Conditional on the label: a dimension is flagged for what it says about the attribute
    # beyond the diagnosis (see conditional_mutual_information).
    strata = np.concatenate([target_train.y, target_test.y]) if within_label else None
    flags = flag_dimensions(both_mu, both_attr, seed=seed, strata=strata)

    groups_test = attr_test.groups()
    probe = None
    if np.unique(target_train.y).size == 2:
        probe = fit_head(train.mu, target_train.y, seed=seed)
    if target_test.head_score is not None:
        scores, source, threshold = target_test.head_score, "model head", 0.5
    elif probe is not None:
        scores, source = probe.predict_proba(test.mu)[:, 1], "logistic probe on mu"
        threshold = float(target_train.y.mean())
        notes.append("the model's classifier does not predict this dataset's classes, so a logistic "
                     "probe fitted on the training codes stands in for it")
    else:
        scores, source, threshold = None, "none", 0.5
        notes.append("the training split holds a single class: no classifier to audit")
    subgroups = None
    if scores is not None:
        try:
            subgroups = subgroup_performance(target_test.y, scores, groups_test, threshold=threshold,
                                             n_boot=n_boot, seed=seed)
        except InputError as exc:
            notes.append(f"subgroup performance skipped: {exc}")
    mitigation = None
    dependence = {}
    if probe is not None:
        coef = probe.named_steps["logisticregression"].coef_[0]
        dependence = head_dependence(coef, flags.flagged)
        try:
            mitigation = compare_mitigations(train.mu, target_train.y, attr_train.values, test.mu, target_test.y,
                                             attr_test.values, groups_test, flagged_dims=flags.flagged,
                                             n_boot=n_boot, seed=seed, strategies=strategies,
                                             within_label=within_label)
        except InputError as exc:
            notes.append(f"mitigation skipped: {exc}")
    return AuditReport(attr_train.name, attr_train.kind, target_test.name, source, len(train), len(test),
                       predictability, flags, subgroups, mitigation, dependence, notes)


# ----------------------------------------------------------------------------- from a checkpoint
def dataset_task_for(loaded, dataset: str) -> str | None:
    """The label view of a dataset that matches a checkpoint (NIH: binary or multi-label)."""
    if str(dataset).startswith("nih") and getattr(loaded, "task", None) in ("binary", "multilabel"):
        return loaded.task
    if str(dataset).startswith("nih"):
        return "binary"
    return None


def codes_for(loaded, dataset: str, split: str, data_dir=None, max_items: int | None = None,
              seed: int = 0) -> LatentCodes:
    """Encode one split of a registered dataset with a loaded checkpoint (``pumamed.net.load_model``).

    ``dataset`` may name several datasets, comma-separated (a pretraining mix): their codes are
    concatenated, with ``dataset`` and ``modality`` in the metadata; such a mix has no common
    label, so only the latent-space parts of the audit apply (predictability, flags, MI).
    """
    from pumamed.imaging import load_dataset

    if getattr(loaded, "arch", "pumamednet") != "pumamednet":
        raise InputError(f"the audit reads the latent space of a PumaMedNet; {loaded.arch} has none")
    names = [n.strip() for n in str(dataset).split(",") if n.strip()]
    if len(names) > 1:
        parts = [codes_for(loaded, n, split, data_dir, max_items, seed) for n in names]
        metadata = pd.concat([p.metadata for p in parts], ignore_index=True)
        return LatentCodes(
            mu=np.concatenate([p.mu for p in parts]), logvar=np.concatenate([p.logvar for p in parts]),
            labels=np.full(len(metadata), -1), probabilities=np.concatenate([p.probabilities for p in parts]),
            metadata=metadata, class_names=parts[0].class_names, dataset_class_names=["(mix)"], task="mix")
    ds = load_dataset(dataset, split=split, size=loaded.image_size, data_dir=data_dir,
                      task=dataset_task_for(loaded, dataset))
    return encode_dataset(loaded.model, ds, max_items=max_items, class_names=loaded.class_names or None,
                          task=loaded.task, seed=seed)
