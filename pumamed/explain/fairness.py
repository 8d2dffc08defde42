"""Does a classifier behave differently per group? Subgroup performance with bootstrap intervals.

AUC, TPR, FPR, expected calibration error and Brier score per group (fairlearn's ``MetricFrame``
for the point estimates, a bootstrap stratified by group for the intervals) and the largest gap
between groups; :func:`performance_verdict` says when a classifier is too close to chance for
its gaps to mean anything. Used by the audit (:mod:`pumamed.explain.audit`) and the mitigation
comparison (:mod:`pumamed.explain.mitigation`), below both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pumamed.errors import InputError
from pumamed.explain.attributes import AGE_LABELS
from pumamed.jsonsafe import to_jsonable

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
        return {"groups": records, "gaps": to_jsonable(self.gaps, digits=5), "threshold": self.threshold, "n_boot": self.n_boot}


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
