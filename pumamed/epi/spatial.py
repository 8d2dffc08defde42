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
    from pumamed.epi.geometry import load_municipalities

    geo = load_municipalities(root)
    missing = sorted(set(codes) - set(geo["CVEGEO"]))
    if missing:
        raise DataError(f"{len(missing)} codes have no municipal polygon, e.g. {', '.join(missing[:5])}")
    sub = geo.set_index("CVEGEO").loc[list(codes)].reset_index()
    return queen_weights(sub)


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


def lisa_clusters(values, w, permutations=999, significance=0.05, seed=0) -> pd.DataFrame:
    """Local Moran (LISA) per municipality: local I, quadrant, pseudo p-value, cluster label
    (high-high, low-low, high-low, low-high where p < ``significance``, else not significant).

    With 2,469 local tests some 5 % are flagged by chance; the table carries the p-values so a
    stricter threshold (e.g. a Bonferroni or FDR one) can be applied."""
    import esda

    y = _aligned(values, w)
    lisa = esda.Moran_Local(y, w, permutations=permutations, seed=seed, n_jobs=1)
    sig = lisa.p_sim < significance
    quadrant = np.where(sig, lisa.q, 0)
    return pd.DataFrame({"CVEGEO": list(w.id_order), "local_i": lisa.Is, "quadrant": lisa.q,
                         "p_value": lisa.p_sim, "cluster": [LISA_LABELS[int(q)] for q in quadrant]})


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
