"""Latent map: a 2-D projection of a dataset's posterior means, to see how classes and metadata
(sex, age, view, scanner...) organise the latent space.

:class:`LatentProjector` follows scikit-learn's conventions (``fit`` / ``transform`` /
``fit_transform``, parameters stored untouched in ``__init__``). PCA is linear and has a
``transform``, so new images (an upload, a prior sample) can be placed on an existing map; t-SNE
is offered for small sets as a non-linear view, but it only embeds the points it was fitted on.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from pumamed.errors import InputError

METHODS = ("pca", "tsne")
TSNE_MAX_POINTS = 3000  # beyond this t-SNE takes minutes on a laptop CPU; PCA has no limit


class LatentProjector(TransformerMixin, BaseEstimator):
    """Project N x D latent codes to N x ``n_components``.

    Parameters
    ----------
    method : "pca" or "tsne"
    n_components : output dimensions (2 for a map)
    standardize : scale every latent dimension to unit variance first, so that a few
        high-variance dimensions do not hide the structure in the others
    random_state : seed of t-SNE (PCA here is deterministic: full SVD)
    """

    def __init__(self, method: str = "pca", n_components: int = 2, standardize: bool = False,
                 random_state: int = 0):
        self.method = method
        self.n_components = n_components
        self.standardize = standardize
        self.random_state = random_state

    def _check(self, codes) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim != 2:
            raise InputError(f"latent codes must be an N x D array (got shape {codes.shape})")
        if not np.isfinite(codes).all():
            raise InputError("latent codes contain NaN or infinite values")
        return codes

    def fit(self, codes, y=None):
        codes = self._check(codes)
        if self.method not in METHODS:
            raise InputError(f"unknown projection {self.method!r}; choose one of {', '.join(METHODS)}")
        n, d = codes.shape
        if n < max(3, self.n_components + 1):
            raise InputError(f"a latent map needs at least {max(3, self.n_components + 1)} images (got {n})")
        if self.n_components > d:
            raise InputError(f"cannot project {d} latent dimensions onto {self.n_components}")
        self.mean_ = codes.mean(axis=0)
        scale = codes.std(axis=0) if self.standardize else np.ones(d)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        centred = (codes - self.mean_) / self.scale_
        if self.method == "pca":
            from sklearn.decomposition import PCA

            self.pca_ = PCA(n_components=self.n_components, svd_solver="full").fit(centred)
            self.explained_variance_ratio_ = self.pca_.explained_variance_ratio_
            self.components_ = self.pca_.components_
            self.embedding_ = self.pca_.transform(centred)
        else:
            if n > TSNE_MAX_POINTS:
                raise InputError(f"t-SNE is limited to {TSNE_MAX_POINTS} images here (got {n}); use PCA or a subset")
            from sklearn.manifold import TSNE

            perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
            self.embedding_ = TSNE(n_components=self.n_components, perplexity=perplexity, init="pca",
                                   random_state=self.random_state).fit_transform(centred)
            self.explained_variance_ratio_ = None
        self.n_features_in_ = d
        return self

    def transform(self, codes) -> np.ndarray:
        if not hasattr(self, "embedding_"):
            raise InputError("fit the projector before transforming")
        if self.method != "pca":
            raise InputError("t-SNE cannot place new points on an existing map; use PCA")
        codes = self._check(codes)
        if codes.shape[1] != self.n_features_in_:
            raise InputError(f"codes have {codes.shape[1]} dimensions, the map was fitted on {self.n_features_in_}")
        return self.pca_.transform((codes - self.mean_) / self.scale_)

    def fit_transform(self, codes, y=None, **fit_params) -> np.ndarray:
        return self.fit(codes).embedding_

    def axis_labels(self) -> list[str]:
        if self.method == "pca":
            return [f"PC{i + 1} ({100 * r:.1f} % var.)" for i, r in enumerate(self.explained_variance_ratio_)]
        return [f"t-SNE {i + 1}" for i in range(self.n_components)]

    def dominant_dimensions(self, top: int = 3) -> list[list[int]]:
        """For PCA, the latent dimensions loading most on each component (what an axis means)."""
        if self.method != "pca":
            return []
        return [[int(d) for d in np.argsort(-np.abs(c))[:top]] for c in self.components_]


def colour_values(metadata, field: str):
    """Values to colour a map by, as strings for categories or floats for numbers, with a flag
    telling which. Missing values become the text 'unknown' (categories) or NaN (numbers)."""
    import pandas as pd

    if field not in metadata:
        raise InputError(f"no metadata field {field!r}; available: {', '.join(map(str, metadata.columns))}")
    column = metadata[field]
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column) \
        and column.nunique(dropna=True) > 12
    if numeric:
        return column.astype(float).to_numpy(), True
    return column.astype("string").fillna("unknown").to_numpy(dtype=object), False
