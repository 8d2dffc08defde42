"""Disentanglement metrics with metadata as the ground-truth factors: MIG, DCI and SAP.

The definitions follow ``google-research/disentanglement_lib`` (Locatello et al., 2019) line by
line, except that the factors of variation are not sampled from a synthetic generator: they are
whatever metadata a real dataset carries (sex, age group, view position, tissue density, the
source dataset of a pretraining mix...). Each metric therefore answers "does one latent dimension
capture one metadata factor, and only that one?".

Conventions: ``codes`` is N x D (one row per image, usually the posterior mean ``mu``);
``factors`` is N x K of integer-coded discrete factors (continuous metadata such as age is binned
by :func:`factors_from_metadata` first, as disentanglement_lib does for its discrete factors).

* **MIG** (Chen et al., 2018): for each factor, the gap between the two latent dimensions with the
  highest mutual information with it, divided by the factor's entropy; averaged over factors.
  Codes are discretised into 20 equal-width bins per dimension (disentanglement_lib's default).
* **DCI** (Eastwood & Williams, 2018): a gradient-boosted-trees importance matrix R (D x K).
  Disentanglement = importance-weighted mean over codes of 1 - H_K(R[d, :]); completeness =
  importance-weighted mean over factors of 1 - H_D(R[:, k]); informativeness = the trees' test
  accuracy, averaged over factors.
* **SAP** (Kumar et al., 2018): a D x K score matrix (accuracy of a linear SVM on one code for a
  discrete factor); per factor, the gap between the two best codes; averaged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from pumamed.errors import InputError

NUM_BINS = 20  # disentanglement_lib's "discretizer.num_bins" default


@dataclass
class DisentanglementScores:
    """All metrics of one evaluation, plus the per-factor parts a page can plot."""

    mig: float
    dci_disentanglement: float
    dci_completeness: float
    dci_informativeness: float
    sap: float
    factor_names: list[str]
    mig_per_factor: list[float] = field(default_factory=list)
    sap_per_factor: list[float] = field(default_factory=list)
    informativeness_per_factor: list[float] = field(default_factory=list)
    mutual_information: np.ndarray | None = None  # D x K, nats
    importance: np.ndarray | None = None  # D x K, DCI importance matrix
    sap_scores: np.ndarray | None = None  # D x K
    n: int = 0

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("mutual_information", "importance", "sap_scores"):
            value = getattr(self, key)
            out[key] = None if value is None else np.round(value, 5).tolist()
        return out


# ----------------------------------------------------------------------------- helpers
def _check(codes, factors) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(codes, dtype=np.float64)
    factors = np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2:
        raise InputError(f"codes and factors must be N x D and N x K arrays (got {codes.shape} and {factors.shape})")
    if codes.shape[0] != factors.shape[0]:
        raise InputError(f"codes and factors describe different numbers of images ({codes.shape[0]} vs {factors.shape[0]})")
    if codes.shape[0] < 10:
        raise InputError("disentanglement metrics need at least 10 images")
    if codes.shape[1] < 2:
        raise InputError("disentanglement metrics need at least 2 latent dimensions")
    if not np.all(np.isfinite(codes)):
        raise InputError("the latent codes contain NaN or infinite values")
    return codes, factors.astype(np.int64)


def histogram_discretize(codes, num_bins: int = NUM_BINS) -> np.ndarray:
    """Equal-width binning of each code dimension (disentanglement_lib ``_histogram_discretize``)."""
    codes = np.asarray(codes, dtype=np.float64)
    out = np.zeros(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram(codes[:, d], num_bins)[1][:-1]
        out[:, d] = np.digitize(codes[:, d], edges)
    return out


def discrete_mutual_info(discrete_codes, factors) -> np.ndarray:
    """D x K matrix of mutual information (nats) between discretised codes and factors."""
    from sklearn.metrics import mutual_info_score

    n_codes, n_factors = discrete_codes.shape[1], factors.shape[1]
    m = np.zeros((n_codes, n_factors))
    for i in range(n_codes):
        for j in range(n_factors):
            m[i, j] = mutual_info_score(factors[:, j], discrete_codes[:, i])
    return m


def discrete_entropy(factors) -> np.ndarray:
    from sklearn.metrics import mutual_info_score

    return np.array([mutual_info_score(factors[:, j], factors[:, j]) for j in range(factors.shape[1])])


def _split(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * train_fraction))
    return order[:cut], order[cut:]


# ----------------------------------------------------------------------------- metrics
def mig(codes, factors, num_bins: int = NUM_BINS) -> tuple[float, np.ndarray, np.ndarray]:
    """Mutual Information Gap. Returns (score, per-factor gaps, D x K mutual information)."""
    codes, factors = _check(codes, factors)
    m = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)
    entropy = discrete_entropy(factors)
    sorted_m = np.sort(m, axis=0)[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_factor = np.where(entropy > 0, (sorted_m[0] - sorted_m[1]) / entropy, np.nan)
    return float(np.nanmean(per_factor)), per_factor, m


def _entropy(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    from scipy.stats import entropy

    return entropy(p, base=base, axis=axis)


def dci(codes, factors, train_fraction: float = 2 / 3, seed: int = 0,
        n_estimators: int = 100) -> dict:
    """Disentanglement, completeness, informativeness with gradient-boosted trees (as in the lib).

    Returns a dict with the three scores, the per-factor test accuracy and the D x K importance
    matrix. Disentanglement needs at least two factors (H over one factor is undefined): NaN then.
    """
    from sklearn.ensemble import GradientBoostingClassifier

    codes, factors = _check(codes, factors)
    train, test = _split(codes.shape[0], train_fraction, seed)
    n_codes, n_factors = codes.shape[1], factors.shape[1]
    importance = np.zeros((n_codes, n_factors))
    test_acc = np.zeros(n_factors)
    for k in range(n_factors):
        y_train = factors[train, k]
        if np.unique(y_train).size < 2:
            test_acc[k] = np.nan
            continue
        model = GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed)
        model.fit(codes[train], y_train)
        importance[:, k] = np.abs(model.feature_importances_)
        test_acc[k] = float(np.mean(model.predict(codes[test]) == factors[test, k]))
    total = importance.sum()
    if total <= 0:
        raise InputError("no latent dimension predicts any factor (all importances are zero)")
    if n_factors > 1:
        per_code = 1.0 - _entropy(importance.T + 1e-11, base=n_factors, axis=0)
        code_weight = importance.sum(axis=1) / total
        disentanglement = float(np.sum(per_code * code_weight))
    else:
        disentanglement = float("nan")
    per_factor = 1.0 - _entropy(importance + 1e-11, base=n_codes, axis=0)
    factor_weight = importance.sum(axis=0) / total
    completeness = float(np.sum(per_factor * factor_weight))
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness": float(np.nanmean(test_acc)),
        "informativeness_per_factor": test_acc,
        "importance": importance,
    }


def sap(codes, factors, continuous_factors: bool = False, train_fraction: float = 2 / 3,
        seed: int = 0) -> tuple[float, np.ndarray, np.ndarray]:
    """Separated Attribute Predictability. Returns (score, per-factor gaps, D x K score matrix)."""
    from sklearn.svm import LinearSVC

    codes, factors = _check(codes, factors)
    train, test = _split(codes.shape[0], train_fraction, seed)
    n_codes, n_factors = codes.shape[1], factors.shape[1]
    scores = np.zeros((n_codes, n_factors))
    for i in range(n_codes):
        for j in range(n_factors):
            x_train, y_train = codes[train, i], factors[train, j]
            if continuous_factors:
                cov = np.cov(x_train, y_train, ddof=1)
                var_mu, var_y = cov[0, 0], cov[1, 1]
                scores[i, j] = cov[0, 1] ** 2 / (var_mu * var_y) if var_mu > 1e-12 and var_y > 1e-12 else 0.0
            elif np.unique(y_train).size < 2:
                scores[i, j] = 0.0
            else:
                classifier = LinearSVC(C=0.01, class_weight="balanced")
                classifier.fit(x_train[:, None], y_train)
                scores[i, j] = float(np.mean(classifier.predict(codes[test, i][:, None]) == factors[test, j]))
    sorted_scores = np.sort(scores, axis=0)[::-1]
    per_factor = sorted_scores[0] - sorted_scores[1]
    return float(np.mean(per_factor)), per_factor, scores


def disentanglement_scores(codes, factors, factor_names=None, seed: int = 0,
                           n_estimators: int = 100) -> DisentanglementScores:
    """MIG, DCI and SAP of one set of codes against one set of discrete factors."""
    codes, factors = _check(codes, factors)
    names = list(factor_names) if factor_names is not None else [f"factor {k}" for k in range(factors.shape[1])]
    if len(names) != factors.shape[1]:
        raise InputError(f"{len(names)} factor names for {factors.shape[1]} factors")
    mig_score, mig_per_factor, mi = mig(codes, factors)
    dci_scores = dci(codes, factors, seed=seed, n_estimators=n_estimators)
    sap_score, sap_per_factor, sap_matrix = sap(codes, factors, seed=seed)
    return DisentanglementScores(
        mig=mig_score,
        dci_disentanglement=dci_scores["disentanglement"],
        dci_completeness=dci_scores["completeness"],
        dci_informativeness=dci_scores["informativeness"],
        sap=sap_score,
        factor_names=names,
        mig_per_factor=[float(v) for v in mig_per_factor],
        sap_per_factor=[float(v) for v in sap_per_factor],
        informativeness_per_factor=[float(v) for v in dci_scores["informativeness_per_factor"]],
        mutual_information=mi,
        importance=dci_scores["importance"],
        sap_scores=sap_matrix,
        n=int(codes.shape[0]),
    )


# ----------------------------------------------------------------------------- metadata factors
def factors_from_metadata(metadata: pd.DataFrame, attributes, n_bins_continuous: int = 4,
                          min_coverage: float = 0.5) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Integer-coded factors from metadata columns, for the rows where all of them are known.

    Continuous attributes (age) are cut into ``n_bins_continuous`` quantile bins. Returns
    (N' x K factors, factor names, boolean mask of the rows kept). Attributes with fewer than two
    distinct values are dropped (a constant factor has zero entropy and no gap to measure), and so
    are attributes known for less than ``min_coverage`` of the rows (in a mix of datasets, sex and
    age exist for the chest X-rays only; keeping them would keep only those rows).
    """
    from pumamed.explain.attributes import attribute_values

    columns, names = [], []
    keep = np.ones(len(metadata), dtype=bool)
    for attribute in attributes:
        values = attribute_values(metadata, attribute)
        if values.kind == "continuous":
            numeric = pd.to_numeric(pd.Series(values.values), errors="coerce")
            binned = pd.qcut(numeric, q=n_bins_continuous, duplicates="drop")
            codes = binned.cat.codes.to_numpy()
            known = codes >= 0
        else:
            series = pd.Series(values.values, dtype="object")
            known = series.notna().to_numpy()
            codes = pd.Categorical(series.where(known, None)).codes
        if np.unique(codes[known]).size < 2 or known.mean() < min_coverage:
            continue
        columns.append(np.asarray(codes, dtype=np.int64))
        names.append(values.name)
        keep &= known
    if not columns:
        raise InputError(f"none of the attributes {list(attributes)} varies in this dataset")
    return np.stack(columns, axis=1)[keep], names, keep


def metadata_disentanglement(parts, attributes=None, *, seed: int = 0,
                             n_estimators: int = 100) -> DisentanglementScores:
    """MIG, DCI and SAP of the codes of several encoded splits pooled (each with ``.mu`` and
    ``.metadata``, e.g. :class:`pumamed.explain.audit.LatentCodes`), with their metadata
    attributes as the factors of variation (``age_group`` is left out: age is binned into the
    same groups). ``attributes``: by default those usable in the pooled metadata."""
    metadata = pd.concat([p.metadata for p in parts], ignore_index=True)
    codes = np.concatenate([p.mu for p in parts])
    if attributes is None:
        from pumamed.explain.attributes import available_attributes

        attributes = available_attributes(metadata)
    factors, names, keep = factors_from_metadata(metadata, [a for a in attributes if a != "age_group"])
    return disentanglement_scores(codes[keep], factors, names, seed=seed, n_estimators=n_estimators)
