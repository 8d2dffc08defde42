"""Latent traversals: walk one latent dimension at a time and decode what the model imagines.

A traversal starts from a base code ``z`` (usually the posterior mean ``mu`` of an image, or a
sample from the prior) and, for each chosen dimension ``d``, replaces ``z[d]`` by
``z[d] + t * sd[d]`` for ``t`` in ``linspace(-span, span, n_steps)``. ``sd`` is the scale of that
dimension: 1 for the N(0, 1) prior (the default), or the spread of ``mu`` over a dataset (the
aggregate posterior), which keeps the walk inside the region the decoder has actually seen.

The whole k x m grid is decoded in ONE batched call, because a decoder call on a batch of 72 costs
far less than 72 calls on one image (the per-call overhead dominates on a CPU).

Dimensions are ranked by their KL divergence to the prior (averaged over data): a dimension whose
posterior never leaves N(0, 1) carries no information (it is "inactive", a collapsed unit) and its
traversal decodes to the same image at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pumamed.errors import InputError

#: A dimension whose mean KL to the prior is below this (nats) is considered inactive. 0.01 nats
#: is the usual threshold for collapsed VAE units (Burda et al. use a variance criterion of the
#: same order); it is a display choice, never used for computation.
ACTIVE_KL_THRESHOLD = 0.01


def rank_dimensions(kl_per_dim) -> np.ndarray:
    """Indices of the latent dimensions, most informative (highest KL) first.

    Ties keep the natural order (stable sort), so a model without KL statistics (all zeros)
    ranks its dimensions 0, 1, 2, ...
    """
    kl = np.asarray(kl_per_dim, dtype=float).reshape(-1)
    if kl.size == 0:
        raise InputError("the model reports no latent dimensions to rank")
    kl = np.where(np.isfinite(kl), kl, -np.inf)
    return np.argsort(-kl, kind="stable")


def active_dimensions(kl_per_dim, threshold: float = ACTIVE_KL_THRESHOLD) -> np.ndarray:
    """Indices of dimensions whose KL exceeds ``threshold``, most informative first."""
    kl = np.asarray(kl_per_dim, dtype=float).reshape(-1)
    order = rank_dimensions(kl)
    return order[kl[order] > threshold]


def kl_per_dimension(mu, logvar) -> np.ndarray:
    """Mean KL( N(mu, sigma^2) || N(0, 1) ) per dimension over a batch of codes (nats).

    Used when a checkpoint carries no KL statistics: computed from the encodings of a dataset.
    """
    mu = np.asarray(mu, dtype=np.float64)
    logvar = np.asarray(logvar, dtype=np.float64)
    if mu.shape != logvar.shape or mu.ndim != 2:
        raise InputError(f"mu and logvar must both be N x D (got {mu.shape} and {logvar.shape})")
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)
    return kl.mean(axis=0)


def traversal_offsets(n_steps: int = 9, span: float = 3.0) -> np.ndarray:
    """``n_steps`` evenly spaced multiples of the scale in ``[-span, span]`` (0 included if odd)."""
    n_steps = int(n_steps)
    if n_steps < 2:
        raise InputError("a traversal needs at least 2 steps")
    if not np.isfinite(span) or span <= 0:
        raise InputError(f"the traversal span must be a positive number of standard deviations (got {span})")
    return np.linspace(-float(span), float(span), n_steps)


def traversal_latents(z, dims, offsets, scale=None) -> np.ndarray:
    """The (k * m) x D batch of codes for a k-dimension x m-step traversal, row-major.

    ``z``: base code, shape (D,). ``dims``: k dimension indices. ``offsets``: m multiples of the
    scale. ``scale``: per-dimension standard deviation (D,), default 1 (the prior's).
    """
    z = np.asarray(z, dtype=np.float32).reshape(-1)
    dims = np.asarray(dims, dtype=int).reshape(-1)
    offsets = np.asarray(offsets, dtype=np.float32).reshape(-1)
    latent_dim = z.size
    if dims.size == 0:
        raise InputError("choose at least one latent dimension to traverse")
    if dims.min() < 0 or dims.max() >= latent_dim:
        raise InputError(f"latent dimensions must be between 0 and {latent_dim - 1} (got {dims.tolist()})")
    scale = np.ones(latent_dim, np.float32) if scale is None else np.asarray(scale, np.float32).reshape(-1)
    if scale.size != latent_dim:
        raise InputError(f"the traversal scale has {scale.size} entries for a {latent_dim}-dimensional latent space")
    codes = np.repeat(z[None, None, :], dims.size, axis=0).repeat(offsets.size, axis=1)  # k x m x D
    rows = np.arange(dims.size)
    codes[rows, :, dims] = z[dims][:, None] + offsets[None, :] * scale[dims][:, None]
    return codes.reshape(-1, latent_dim)


@dataclass
class TraversalGrid:
    """Decoded traversal: ``images[i, j]`` is dimension ``dims[i]`` at ``offsets[j]`` (x scale)."""

    images: np.ndarray  # k x m x S x S, float32 in [0, 1]
    dims: np.ndarray  # k
    offsets: np.ndarray  # m, in units of the scale
    base: np.ndarray  # D, the code the walk started from
    scale: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))  # D

    @property
    def shape(self) -> tuple[int, int]:
        return self.images.shape[0], self.images.shape[1]

    def row(self, dim: int) -> np.ndarray:
        """The m frames of one traversed dimension (for an animated GIF)."""
        where = np.flatnonzero(self.dims == dim)
        if where.size == 0:
            raise InputError(f"dimension {dim} is not part of this traversal (it has {self.dims.tolist()})")
        return self.images[where[0]]

    def column_labels(self) -> list[str]:
        """'-3 sd', '-2.25 sd', ..., '0 sd', ... (at most two decimals, no trailing zeros)."""
        labels = []
        for t in self.offsets:
            text = f"{t:+.2f}".rstrip("0").rstrip(".")
            labels.append("0 sd" if text in ("+0", "-0") else f"{text} sd")
        return labels

    def row_labels(self, kl_per_dim=None) -> list[str]:
        if kl_per_dim is None:
            return [f"z{d}" for d in self.dims]
        kl = np.asarray(kl_per_dim, dtype=float).reshape(-1)
        return [f"z{d} (KL {kl[d]:.2f})" for d in self.dims]


def traverse(decode, z, dims, n_steps: int = 9, span: float = 3.0, scale=None) -> TraversalGrid:
    """Decode a k x m traversal grid with a single call of ``decode``.

    ``decode``: a function from an N x D float32 array of codes to N x S x S images in [0, 1]
    (``ExplorerSession.decode`` is one; it batches and runs under ``torch.inference_mode``).
    """
    z = np.asarray(z, dtype=np.float32).reshape(-1)
    dims = np.asarray(dims, dtype=int).reshape(-1)
    offsets = traversal_offsets(n_steps, span)
    scale_arr = np.ones(z.size, np.float32) if scale is None else np.asarray(scale, np.float32).reshape(-1)
    codes = traversal_latents(z, dims, offsets, scale_arr)
    images = np.asarray(decode(codes), dtype=np.float32)
    size = images.shape[-1]
    return TraversalGrid(
        images=images.reshape(dims.size, offsets.size, size, size),
        dims=dims,
        offsets=offsets,
        base=z,
        scale=scale_arr,
    )
