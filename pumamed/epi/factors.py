"""Exploratory factor analysis of municipal socioeconomic indicators.

:class:`SocioeconomicFactors` is a scikit-learn transformer around ``factor_analyzer`` (extraction
only): it validates and standardises the indicators, rotates, fixes the factors' signs and order so
results are reproducible, and exposes loadings, communalities, variance explained and
regression-method factor scores. :func:`adequacy` (KMO and Bartlett, with a verdict in plain
words) and :func:`parallel_analysis` (Horn's method) answer the two questions asked before any
extraction: is factoring sensible here, and how many factors.

Everything works on the correlation matrix of complete rows; rows with a missing value get
NaN scores instead of being silently imputed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from pumamed.errors import DataError, InputError

METHODS = ("minres", "ml", "principal")
ROTATIONS = ("varimax", "promax", "oblimin", None)
OBLIQUE_ROTATIONS = ("promax", "oblimin")

# Kaiser (1974): the customary reading of the KMO measure of sampling adequacy.
KMO_LABELS = ((0.9, "marvellous"), (0.8, "meritorious"), (0.7, "middling"), (0.6, "mediocre"),
              (0.5, "miserable"), (0.0, "unacceptable"))

# Variance inflation above which an indicator is reported as a near-duplicate of the others.
NEAR_COLLINEAR_VIF = 1000.0

# Eigenvalues below this fraction of the largest one mean the correlation matrix is singular
# (a column is, numerically, a linear combination of the others).
_SINGULAR_RTOL = 1e-10


# ---------------------------------------------------------------- input checks
def _as_frame(X) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        frame = X.copy()
    else:
        array = np.asarray(X)
        if array.ndim != 2:
            raise InputError(f"expected a 2-D table of indicators, got an array of shape {array.shape}")
        frame = pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])])
    frame.columns = [str(c) for c in frame.columns]
    non_numeric = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise DataError(f"indicators must be numeric; not numeric: {', '.join(non_numeric)}")
    frame = frame.astype(float)
    if np.isinf(frame.to_numpy()).any():
        bad = [c for c in frame.columns if np.isinf(frame[c]).any()]
        raise DataError(f"infinite values in: {', '.join(bad)}")
    return frame


def _complete_rows(X, min_columns: int = 2) -> pd.DataFrame:
    """The complete rows of ``X`` as floats, after checks a user's table can fail."""
    frame = _as_frame(X)
    if frame.shape[1] < min_columns:
        raise InputError(f"factor analysis needs at least {min_columns} indicators, got {frame.shape[1]}")
    empty = [c for c in frame.columns if frame[c].isna().all()]
    if empty:
        raise DataError(f"no values at all in: {', '.join(empty)}")
    complete = frame.dropna()
    n, p = complete.shape
    if n <= p:
        raise DataError(
            f"only {n} complete rows for {p} indicators: factor analysis needs more rows than "
            "indicators (and in practice many more)"
        )
    constant = [c for c in complete.columns if complete[c].std(ddof=0) == 0]
    if constant:
        raise DataError(f"constant over the complete rows (zero variance): {', '.join(constant)}")
    return complete


def _correlation(complete: pd.DataFrame) -> np.ndarray:
    corr = np.corrcoef(complete.to_numpy(), rowvar=False)
    eigenvalues = np.linalg.eigvalsh(corr)
    if eigenvalues[0] <= _SINGULAR_RTOL * eigenvalues[-1]:
        cols = list(complete.columns)
        pairs = [
            f"{cols[i]} ~ {cols[j]} (r = {corr[i, j]:+.4f})"
            for i in range(len(cols)) for j in range(i + 1, len(cols)) if abs(corr[i, j]) > 0.9999
        ]
        detail = ("; perfectly correlated: " + ", ".join(pairs)) if pairs else (
            "; one indicator is a linear combination of others (e.g. shares that add up to 100 %)"
        )
        raise DataError("the correlation matrix of the indicators is singular" + detail)
    return corr


# ---------------------------------------------------------------- adequacy
def kmo_label(value: float) -> str:
    for threshold, label in KMO_LABELS:
        if value >= threshold:
            return label
    return "unacceptable"


@dataclass(frozen=True)
class Adequacy:
    """Sampling adequacy of a set of indicators for factor analysis."""

    kmo: float  # overall Kaiser-Meyer-Olkin measure
    kmo_per_variable: pd.Series
    bartlett_chi2: float
    bartlett_df: int
    bartlett_p: float
    n_rows: int
    n_dropped: int  # rows left out because of a missing value
    verdict: str

    @property
    def kmo_label(self) -> str:
        return kmo_label(self.kmo)

    @property
    def suitable(self) -> bool:
        return self.kmo >= 0.6 and self.bartlett_p < 0.05

    def table(self) -> pd.DataFrame:
        """Per-variable KMO with its label, for display or download."""
        return pd.DataFrame({
            "indicator": self.kmo_per_variable.index,
            "kmo": self.kmo_per_variable.to_numpy(),
            "reading": [kmo_label(v) for v in self.kmo_per_variable],
        })


def adequacy(X) -> Adequacy:
    """KMO (overall and per variable) and Bartlett's test of sphericity, with a verdict.

    KMO compares correlations with partial correlations (anti-image): near 1 when the indicators
    share common factors. Bartlett tests whether the correlation matrix is the identity
    (``chi2 = -(n - 1 - (2p + 5)/6) ln|R|``, ``df = p(p - 1)/2``).
    """
    from scipy import stats

    n_total = len(X)
    complete = _complete_rows(X)
    corr = _correlation(complete)
    n, p = complete.shape

    inverse = np.linalg.inv(corr)
    scale = np.sqrt(np.outer(np.diag(inverse), np.diag(inverse)))
    partial = -inverse / scale
    off = ~np.eye(p, dtype=bool)
    r2 = np.where(off, corr**2, 0.0)
    q2 = np.where(off, partial**2, 0.0)
    kmo_each = r2.sum(0) / (r2.sum(0) + q2.sum(0))
    kmo_all = float(r2.sum() / (r2.sum() + q2.sum()))

    _, logdet = np.linalg.slogdet(corr)
    chi2 = float(-(n - 1 - (2 * p + 5) / 6) * logdet)
    df = p * (p - 1) // 2
    p_value = float(stats.chi2.sf(chi2, df))

    per_variable = pd.Series(kmo_each, index=complete.columns, name="kmo")
    weak = [c for c, v in per_variable.items() if v < 0.5]
    if kmo_all >= 0.6 and p_value < 0.05:
        verdict = (f"Suitable for factor analysis: the indicators share enough common variance "
                   f"(KMO = {kmo_all:.2f}, {kmo_label(kmo_all)}) and are clearly correlated "
                   f"(Bartlett p {_format_p(p_value)}).")
    elif p_value >= 0.05:
        verdict = (f"Not suitable: the indicators are barely correlated (Bartlett p = {p_value:.3f}), "
                   "so there is no common factor to extract.")
    else:
        verdict = (f"Doubtful: the indicators are correlated (Bartlett p {_format_p(p_value)}) but share "
                   f"little common variance (KMO = {kmo_all:.2f}, {kmo_label(kmo_all)}); "
                   "drop the weakest indicators or use them separately.")
    if weak:
        verdict += f" Indicators with KMO below 0.5 (candidates to drop): {', '.join(weak)}."
    # Near-singular sets (e.g. poverty = extreme + moderate poverty, rounded) pass the exact
    # singularity check but make loadings unstable and produce Heywood cases: say so.
    redundant = [c for c, vif in zip(complete.columns, np.diag(inverse)) if vif > NEAR_COLLINEAR_VIF]
    if redundant:
        verdict += (f" Almost exactly collinear (each is {1 - 1 / NEAR_COLLINEAR_VIF:.1%}+ explained by the "
                    f"others, e.g. parts that add up to a total): {', '.join(redundant)}; keep only one of them.")
    return Adequacy(kmo_all, per_variable, chi2, df, p_value, n, n_total - n, verdict)


def _format_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


# ---------------------------------------------------------------- parallel analysis
@dataclass(frozen=True)
class ParallelAnalysis:
    """Horn's parallel analysis: keep the leading factors whose eigenvalue beats chance."""

    n_factors: int
    table: pd.DataFrame  # number, observed, random_mean, random_quantile, retain
    basis: str
    n_iter: int
    quantile: float


def _smc_reduced(corr: np.ndarray) -> np.ndarray:
    """Correlation matrices with squared multiple correlations on the diagonal (batched)."""
    inverse = np.linalg.inv(corr)
    smc = 1.0 - 1.0 / np.diagonal(inverse, axis1=-2, axis2=-1)
    reduced = corr.copy()
    idx = np.arange(corr.shape[-1])
    reduced[..., idx, idx] = smc
    return reduced


def parallel_analysis(X, n_iter: int = 100, seed: int = 0, quantile: float = 0.95,
                      basis: str = "components") -> ParallelAnalysis:
    """Compare the eigenvalues of the data with those of random normal data of the same shape.

    ``basis="components"`` uses the eigenvalues of the correlation matrix (Horn 1965; the scree
    plot's usual axis); ``"factors"`` those of the reduced matrix with squared multiple
    correlations on the diagonal (common variance only). The suggested number of factors is the
    count of leading eigenvalues above the random ``quantile``.
    """
    if basis not in ("components", "factors"):
        raise InputError(f"basis must be 'components' or 'factors', not {basis!r}")
    if not 0 < quantile < 1:
        raise InputError(f"quantile must lie in (0, 1), got {quantile}")
    if n_iter < 1:
        raise InputError("n_iter must be at least 1")
    complete = _complete_rows(X)
    corr = _correlation(complete)
    n, p = complete.shape

    rng = np.random.default_rng(seed)
    random_eigs = np.empty((n_iter, p))
    # Batches keep memory bounded (n x p x batch floats) while staying vectorised.
    batch = max(1, min(n_iter, int(2e7 // max(1, n * p))))
    for start in range(0, n_iter, batch):
        size = min(batch, n_iter - start)
        noise = rng.standard_normal((size, n, p))
        noise -= noise.mean(axis=1, keepdims=True)
        cov = np.einsum("bni,bnj->bij", noise, noise)
        sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        r = cov / (sd[:, :, None] * sd[:, None, :])
        if basis == "factors":
            r = _smc_reduced(r)
        random_eigs[start:start + size] = np.linalg.eigvalsh(r)[:, ::-1]

    observed = np.linalg.eigvalsh(_smc_reduced(corr) if basis == "factors" else corr)[::-1]
    threshold = np.quantile(random_eigs, quantile, axis=0)
    above = observed > threshold
    n_keep = int(np.argmin(above)) if not above.all() else p
    table = pd.DataFrame({
        "number": np.arange(1, p + 1),
        "observed": observed,
        "random_mean": random_eigs.mean(axis=0),
        "random_quantile": threshold,
        "retain": np.arange(p) < n_keep,
    })
    return ParallelAnalysis(n_keep, table, basis, n_iter, quantile)


# ---------------------------------------------------------------- the estimator
class SocioeconomicFactors(TransformerMixin, BaseEstimator):
    """Exploratory factor analysis as a scikit-learn transformer.

    Parameters
    ----------
    n_factors : int or None
        Number of factors; ``None`` takes the suggestion of :func:`parallel_analysis`.
    method : {"minres", "ml", "principal"}
        Extraction: minimum residuals, maximum likelihood, or principal factors.
    rotation : {"varimax", "promax", "oblimin", None}
        Orthogonal (varimax) or oblique (promax, oblimin) rotation; ignored for one factor.
    parallel_iter, random_state : parallel-analysis settings used when ``n_factors`` is None.

    Fitted attributes
    -----------------
    ``feature_names_in_``, ``n_factors_``, ``mean_``, ``scale_`` (standardisation),
    ``correlation_``, ``eigenvalues_`` (of the correlation matrix), ``loadings_`` (pattern
    matrix, DataFrame indicators x factors), ``structure_`` (correlations of indicators with
    factors), ``factor_correlation_`` (identity for orthogonal rotations), ``communalities_``,
    ``uniquenesses_``, ``variance_`` (SS loadings, proportion, cumulative), ``weights_`` (score
    coefficients), ``n_samples_fit_``, ``n_dropped_`` (incomplete rows left out of the fit).

    Factors are ordered by variance explained and signed so their loadings sum to a positive
    number, so the same data always give the same factors.
    """

    def __init__(self, n_factors: int | None = None, method: str = "minres", rotation: str | None = "varimax",
                 parallel_iter: int = 50, random_state: int = 0):
        self.n_factors = n_factors
        self.method = method
        self.rotation = rotation
        self.parallel_iter = parallel_iter
        self.random_state = random_state

    # -- fitting
    def fit(self, X, y=None):
        from factor_analyzer import FactorAnalyzer
        from factor_analyzer.rotator import Rotator

        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.rotation not in ROTATIONS:
            raise InputError(f"rotation must be one of varimax, promax, oblimin or None; got {self.rotation!r}")
        complete = _complete_rows(X)
        corr = _correlation(complete)
        n, p = complete.shape
        names = np.array(complete.columns, dtype=object)

        if self.n_factors is None:
            suggestion = parallel_analysis(complete, n_iter=self.parallel_iter, seed=self.random_state)
            k = max(1, suggestion.n_factors)
        else:
            k = int(self.n_factors)
        if not 1 <= k < p:
            raise InputError(f"n_factors must be between 1 and {p - 1} for {p} indicators; got {k}")

        values = complete.to_numpy()
        self.mean_ = values.mean(axis=0)
        self.scale_ = values.std(axis=0)
        standardized = (values - self.mean_) / self.scale_

        analyzer = FactorAnalyzer(n_factors=k, rotation=None, method=self.method, svd_method="lapack")
        with warnings.catch_warnings():
            # factor_analyzer warns through sklearn about feature names and small optimiser steps;
            # convergence problems are caught below as Heywood cases.
            warnings.simplefilter("ignore")
            analyzer.fit(standardized)
        # With the full (LAPACK) SVD, factor_analyzer's principal method returns every component:
        # keep the first k (they come sorted by singular value).
        unrotated = np.asarray(analyzer.loadings_, dtype=float)[:, :k]
        if not np.isfinite(unrotated).all():
            raise DataError(f"{self.method} extraction did not converge for {k} factors; try fewer factors "
                            "or another method")

        pattern, phi = unrotated, np.eye(k)
        if self.rotation is not None and k > 1:
            # factor_analyzer's default stopping rule (relative gain < 1e-5) halts varimax near the
            # unrotated solution when two factors are of similar size (it starts close to a
            # stationary point of the criterion); 1e-8 reaches the optimum (to ~0.001 in loadings).
            # Tighter is pointless: oblimin's gradient projection then runs to max_iter.
            rotator = Rotator(method=self.rotation, tol=1e-8, max_iter=5000)
            pattern = rotator.fit_transform(unrotated)
            if self.rotation in OBLIQUE_ROTATIONS and rotator.phi_ is not None:
                phi = np.asarray(rotator.phi_, dtype=float)

        # Sign: loadings sum to a positive number. Order: by variance explained.
        signs = np.sign(pattern.sum(axis=0))
        signs[signs == 0] = 1
        pattern = pattern * signs
        phi = phi * np.outer(signs, signs)
        structure = pattern @ phi
        ss_loadings = (pattern * structure).sum(axis=0)
        order = np.argsort(-ss_loadings, kind="stable")
        pattern, structure, ss_loadings = pattern[:, order], structure[:, order], ss_loadings[order]
        phi = phi[np.ix_(order, order)]

        factors = [f"F{i + 1}" for i in range(k)]
        # Communalities do not depend on the rotation, so take them from the unrotated solution.
        communalities = (unrotated**2).sum(axis=1)
        self.feature_names_in_ = names
        self.n_features_in_ = p
        self.n_factors_ = k
        self.n_samples_fit_ = n
        self.n_dropped_ = len(X) - n
        self.correlation_ = pd.DataFrame(corr, index=names, columns=names)
        self.eigenvalues_ = np.linalg.eigvalsh(corr)[::-1]
        self.loadings_ = pd.DataFrame(pattern, index=names, columns=factors)
        self.structure_ = pd.DataFrame(structure, index=names, columns=factors)
        self.factor_correlation_ = pd.DataFrame(phi, index=factors, columns=factors)
        self.communalities_ = pd.Series(communalities, index=names, name="communality")
        self.uniquenesses_ = pd.Series(1.0 - communalities, index=names, name="uniqueness")
        self.heywood_ = [str(c) for c, h in zip(names, communalities) if h >= 0.999]
        proportion = ss_loadings / p
        self.variance_ = pd.DataFrame(
            {"ss_loadings": ss_loadings, "proportion": proportion, "cumulative": np.cumsum(proportion)},
            index=factors,
        )
        # Thurstone's regression scores: W = R^-1 S.
        self.weights_ = pd.DataFrame(np.linalg.solve(corr, structure), index=names, columns=factors)
        return self

    # -- scores
    def transform(self, X) -> np.ndarray:
        """Regression-method factor scores; rows with a missing indicator get NaN."""
        check_is_fitted(self, "weights_")
        frame = _as_frame(X)
        if isinstance(X, pd.DataFrame):
            missing = [c for c in self.feature_names_in_ if c not in frame.columns]
            if missing:
                raise InputError(f"columns missing for the factor scores: {', '.join(missing)}")
            frame = frame[list(self.feature_names_in_)]
        elif frame.shape[1] != self.n_features_in_:
            raise InputError(f"expected {self.n_features_in_} indicators, got {frame.shape[1]}")
        standardized = (frame.to_numpy() - self.mean_) / self.scale_
        scores = standardized @ self.weights_.to_numpy()
        scores[np.isnan(standardized).any(axis=1)] = np.nan
        return scores

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "n_factors_")
        return np.array([f"F{i + 1}" for i in range(self.n_factors_)], dtype=object)

    def scores_frame(self, X, index=None) -> pd.DataFrame:
        """Factor scores as a DataFrame (columns F1..Fk) aligned to ``X``'s index."""
        scores = self.transform(X)
        idx = index if index is not None else (X.index if isinstance(X, pd.DataFrame) else None)
        return pd.DataFrame(scores, index=idx, columns=self.get_feature_names_out())

    def summary(self) -> pd.DataFrame:
        """Loadings with communality and uniqueness per indicator (the usual FA table)."""
        check_is_fitted(self, "loadings_")
        return self.loadings_.assign(communality=self.communalities_, uniqueness=self.uniquenesses_)


# ---------------------------------------------------------------- the municipal indicators
# Panel sources whose numeric variables are offered as indicators, and the reference index the
# factor scores are validated against.
INDICATOR_SOURCES = ("imm_2020", "coneval_2015", "hdi", "migration_index")
VALIDATION_VARIABLE = "ses_marginalization_index"  # CONAPO's IM_2020 (higher = less marginalized)
_NUMERIC_KINDS = ("continuous", "count", "share")


def max_identified_factors(n_indicators: int) -> int:
    """The most factors a common-factor model of ``n_indicators`` can identify: the Ledermann
    bound, where the degrees of freedom ((p - k)^2 - (p + k)) / 2 are still >= 0 (5 of 9)."""
    p = int(n_indicators)
    k = 0
    while k + 1 < p and (p - k - 1) ** 2 - (p + k + 1) >= 0:
        k += 1
    return max(1, k)


def too_many_factors_message(n_factors: int, n_indicators: int) -> str | None:
    """A warning when ``n_factors`` exceeds what ``n_indicators`` can identify, else None."""
    limit = max_identified_factors(n_indicators)
    if n_factors <= limit:
        return None
    return (f"{n_factors} factors from {n_indicators} indicators: the model has more free parameters than the "
            f"correlations it must reproduce (negative degrees of freedom), so its loadings are not identified. "
            f"At most {limit} factors can be identified from {n_indicators} indicators; parallel analysis "
            "suggests how many are worth keeping.")


def conapo_2020_indicators() -> list[str]:
    """Panel names of CONAPO's nine 2020 indicators (ANALF, SBASC, ... PO2SM), in official order."""
    from pumamed.epi.panel import panel_sources
    from pumamed.epi.socio import IMM_2020_INDICATORS

    by_raw = {v.raw: v.name for s in panel_sources() if s.key == "imm_2020" for v in s.variables}
    return [by_raw[raw] for raw in IMM_2020_INDICATORS if raw in by_raw]


def indicator_table(data_dir=None, sources=INDICATOR_SOURCES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Municipal socioeconomic indicators with the panel's names, read straight from their sources.

    Returns ``(table, catalog)``: ``table`` has ``CVEGEO`` and one column per numeric variable of
    the chosen panel ``sources`` (CONAPO 2020, CONEVAL 2015, UNDP HDI, migration index), without
    assembling the whole panel; ``catalog`` lists them (``name, label, unit, source, year``) plus
    ``available``. CONAPO 2020 is required (it holds the default indicators and the validation
    index); the others are skipped when their files are absent.
    """
    from pumamed.epi.io import epi_dir
    from pumamed.epi.panel import panel_sources

    root = epi_dir(data_dir)
    table: pd.DataFrame | None = None
    rows = []
    for source in panel_sources():
        if source.key not in sources:
            continue
        try:
            frame = source.load(root)
        except DataError:
            if source.key == "imm_2020":
                raise
            frame = None
        for var in source.variables:
            if var.kind not in _NUMERIC_KINDS:
                continue
            available = frame is not None and var.raw in frame.columns
            rows.append({"name": var.name, "label": var.label, "unit": var.unit, "source": var.source,
                         "year": var.year, "available": available})
        if frame is None:
            continue
        keep = {v.raw: v.name for v in source.variables if v.kind in _NUMERIC_KINDS and v.raw in frame.columns}
        part = frame[["CVEGEO", *keep]].rename(columns=keep).drop_duplicates("CVEGEO")
        table = part if table is None else table.merge(part, on="CVEGEO", how="outer")
    if table is None:
        raise DataError("none of the socioeconomic sources could be read")
    catalog = pd.DataFrame(rows, columns=["name", "label", "unit", "source", "year", "available"])
    return table.sort_values("CVEGEO").reset_index(drop=True), catalog.drop_duplicates("name").reset_index(drop=True)


# ---------------------------------------------------------------- shared variance between exposures
def correlation_table(frame: pd.DataFrame, method: str = "pearson") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairwise correlations of the columns of ``frame`` and the number of rows behind each.

    Pairwise-complete: each cell uses the rows where both columns have a value (sources such as
    pollutant networks cover different places and years), so ``n`` matters when reading it.
    """
    if method not in ("pearson", "spearman"):
        raise InputError(f"method must be 'pearson' or 'spearman'; got {method!r}")
    numeric = _as_frame(frame)
    present = numeric.notna().astype(float)
    n = present.T @ present
    corr = numeric.corr(method=method, min_periods=3)
    return corr, n.astype(int)


def vif_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Variance inflation factors on the complete rows, as a table: ``VIF_j = 1 / (1 - R²_j)``
    from :func:`pumamed.epi.penalized.variance_inflation` (the one computation; infinite for the
    columns of an exactly collinear set). Above 5-10 a regression cannot separate that column's
    effect from the others'."""
    from pumamed.epi.penalized import variance_inflation as vif_of

    complete = _complete_rows(frame)
    vif = vif_of(complete).to_numpy()
    with np.errstate(divide="ignore"):
        r2 = 1 - 1 / vif
    return pd.DataFrame({"variable": complete.columns, "vif": vif, "r2_on_others": r2, "n_rows": len(complete)})