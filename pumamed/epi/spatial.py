"""Spatial diagnostics of model residuals: Moran's I and LISA clusters (libpysal / esda).

Neighbours are queen contiguity (shared border or corner) between municipal polygons. Islands
(municipalities touching no other, e.g. Cozumel, Isla Mujeres, the Revillagigedo and Marías
islands) are attached to their nearest municipality, so every unit has a neighbour and row
standardisation stays defined. Weights are cached per data directory and set of codes, since
building them from the 2,469 polygons costs about a second and never changes.

Residuals are Pearson residuals ``(y - mu) / sqrt(Var(y))`` of the fitted model; residual
spatial autocorrelation means the covariates miss a spatially structured cause (or the
municipalities' counts are not independent), so intervals that assume independence are too
narrow.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pumamed.errors import DataError

LISA_LABELS = {0: "not significant", 1: "high-high", 2: "low-high", 3: "low-low", 4: "high-low"}


@dataclass
class MoranResult:
    I: float  # noqa: E741 - the statistic's name
    expected: float
    z: float
    p_value: float  # permutation (pseudo) p-value, two-sided as esda's p_sim
    p_normal: float  # analytical, under normality
    permutations: int
    n: int
    n_islands_attached: int

    def to_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in self.__dict__.items()}


def queen_weights(geometry_frame, ids_col: str = "CVEGEO"):
    """Row-standardised queen-contiguity weights over ``geometry_frame`` with islands attached to
    their nearest neighbour (centroid distance in an equal-area projection)."""
    import warnings

    from libpysal import weights

    if ids_col not in geometry_frame.columns:
        raise DataError(f"the geometry has no {ids_col} column")
    if geometry_frame[ids_col].duplicated().any():
        raise DataError("duplicated municipality codes in the geometry")
    frame = geometry_frame.reset_index(drop=True)
    ids = frame[ids_col].astype(str).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # libpysal warns about islands, handled right below
        w = weights.Queen.from_dataframe(frame, ids=ids, use_index=False)
        islands = list(w.islands)
        if islands:
            projected = frame.to_crs("ESRI:102008")
            pts = np.column_stack([projected.geometry.centroid.x, projected.geometry.centroid.y])
            knn = weights.KNN(pts, k=1, ids=ids)
            w = weights.attach_islands(w, knn)
    w.transform = "r"
    w.n_islands_attached = len(islands)
    return w


@functools.lru_cache(maxsize=8)
def _cached_weights(root: str, codes: tuple):
    """Queen weights for ``codes``: from memory, else from the disk cache (neighbour lists as
    JSON, keyed by the geometry file's fingerprint and the codes), else built from the polygons."""
    import hashlib
    import json

    from libpysal import weights

    from pumamed.epi.geometry import MUNICIPALITY_RDATA, load_municipalities
    from pumamed.epi.io import cache_dir, file_fingerprint

    rdata = Path(root) / MUNICIPALITY_RDATA
    cache_file = None
    folder = cache_dir()
    if folder is not None and rdata.exists():
        key = hashlib.sha256((file_fingerprint(rdata, extra="queen-v1") + "|".join(codes)).encode()).hexdigest()[:24]
        cache_file = folder / f"queen_{key}.json"
        if cache_file.exists():
            try:
                stored = json.loads(cache_file.read_text())
                w = weights.W(stored["neighbors"], id_order=list(codes), silence_warnings=True)
                w.transform = "r"
                w.n_islands_attached = int(stored["n_islands_attached"])
                return w
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is rebuilt below
    geo = load_municipalities(root)
    missing = sorted(set(codes) - set(geo["CVEGEO"]))
    if missing:
        raise DataError(f"{len(missing)} codes have no municipal polygon, e.g. {', '.join(missing[:5])}")
    sub = geo.set_index("CVEGEO").loc[list(codes)].reset_index()
    w = queen_weights(sub)
    if cache_file is not None:
        try:
            neighbors = {str(k): [str(v) for v in vals] for k, vals in w.neighbors.items()}
            cache_file.write_text(json.dumps({"neighbors": neighbors, "n_islands_attached": w.n_islands_attached}))
        except OSError:
            pass
    return w


def municipal_weights(codes, data_dir=None):
    """Queen weights for the municipalities ``codes`` (in that order), from the real geometry."""
    from pumamed.epi.io import epi_dir

    return _cached_weights(str(epi_dir(data_dir)), tuple(pd.Series(codes).astype(str)))


def _aligned(values, w):
    y = np.asarray(values, float).ravel()
    if len(y) != w.n:
        raise DataError(f"{len(y)} residuals for {w.n} municipalities in the weights")
    if not np.all(np.isfinite(y)):
        raise DataError("residuals contain missing values")
    return y


def morans_i(values, w, permutations=999, seed=0) -> MoranResult:
    """Global Moran's I with a permutation p-value (esda)."""
    import esda

    y = _aligned(values, w)
    np.random.seed(seed)  # esda draws permutations from numpy's global generator
    mi = esda.Moran(y, w, permutations=permutations)
    p_perm = float(mi.p_sim) if permutations else float(mi.p_norm)
    return MoranResult(float(mi.I), float(mi.EI), float(mi.z_norm), p_perm, float(mi.p_norm),
                       int(permutations), int(w.n), int(getattr(w, "n_islands_attached", 0)))


def local_moran(values, w, permutations=999, seed=0):
    """Local Moran's I with conditional-permutation pseudo p-values.

    Same statistic and folded one-sided pseudo p-value as ``esda.Moran_Local``
    (``I_i = (n-1) z_i lag_i / sum z^2``, quadrant 1 HH, 2 LH, 3 LL, 4 HL), computed in NumPy:
    esda's numba kernel is compiled anew in every process (close to a minute on a small
    machine), too slow for an interactive page. As in esda, one set of random neighbour draws
    is shared by all municipalities, shifted past each municipality's own index so that a
    unit is never its own random neighbour. Returns (Is, q, p_sim)."""
    y = _aligned(values, w)
    n = len(y)
    z = y - y.mean()
    m2 = float(z @ z)
    if m2 == 0:
        raise DataError("residuals are constant: no local spatial association to measure")
    sparse = w.sparse.tocsr()
    lag = sparse @ z
    Is = (n - 1) * z * lag / m2
    q = np.where(z >= 0, np.where(lag >= 0, 1, 4), np.where(lag >= 0, 2, 3))
    if not permutations:
        return Is, q, np.full(n, np.nan)
    indptr, weights = sparse.indptr, sparse.data
    counts = np.diff(indptr)
    k_max = int(counts.max())
    rng = np.random.default_rng(seed)
    # Draws without replacement from the n-1 other units (the k_max smallest of uniform keys).
    draws = np.argpartition(rng.random((permutations, n - 1)), k_max, axis=1)[:, :k_max] \
        if k_max < n - 1 else np.argsort(rng.random((permutations, n - 1)), axis=1)
    scale = (n - 1) / m2
    p_sim = np.empty(n)
    for k in np.unique(counts):
        units = np.flatnonzero(counts == k)
        if k == 0:
            p_sim[units] = np.nan
            continue
        base = draws[:, :k]
        chunk = max(1, 4_000_000 // (permutations * k))
        for start in range(0, len(units), chunk):
            ii = units[start:start + chunk]
            idx = base[None, :, :] + (base[None, :, :] >= ii[:, None, None])  # skip the unit itself
            wts = weights[indptr[ii][:, None] + np.arange(k)[None, :]]  # (G, k)
            rlag = np.einsum("gpk,gk->gp", z[idx], wts)
            rI = scale * z[ii][:, None] * rlag
            larger = np.sum(rI >= Is[ii][:, None], axis=1)
            larger = np.where(permutations - larger < larger, permutations - larger, larger)
            p_sim[ii] = (larger + 1) / (permutations + 1)
    return Is, q, p_sim


def lisa_clusters(values, w, permutations=999, significance=0.05, seed=0) -> pd.DataFrame:
    """Local Moran (LISA) per municipality: local I, quadrant, pseudo p-value, cluster label
    (high-high, low-low, high-low, low-high where p < ``significance``, else not significant).

    With 2,469 local tests some 5 % are flagged by chance; the table carries the p-values so a
    stricter threshold (e.g. a Bonferroni or FDR one) can be applied."""
    Is, q, p_sim = local_moran(values, w, permutations, seed)
    sig = p_sim < significance
    quadrant = np.where(sig, q, 0)
    return pd.DataFrame({"CVEGEO": list(w.id_order), "local_i": Is, "quadrant": q,
                         "p_value": p_sim, "cluster": [LISA_LABELS[int(c)] for c in quadrant]})


def pearson_residuals(y, mu, family="poisson", dispersion=0.0, trials=None):
    """``(y - mu)/sqrt(V(mu))``: Poisson V = mu, NB2 V = mu + dispersion*mu^2, binomial on
    proportions V = p(1-p)/n (``mu`` is then the proportion)."""
    y = np.asarray(y, float)
    mu = np.asarray(mu, float)
    if family == "binomial":
        n = np.asarray(trials, float)
        return (y / n - mu) / np.sqrt(np.maximum(mu * (1 - mu) / n, 1e-12))
    var = mu + (dispersion * mu**2 if family == "negbin" else 0.0)
    return (y - mu) / np.sqrt(np.maximum(var, 1e-12))
