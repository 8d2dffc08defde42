"""Masked reconstruction: hide part of an image, let the decoder fill it in from context, and
compare with non-learned inpainting so the value of the learned context is visible.

Masks are boolean ``S x S`` arrays, ``True`` where the image is hidden. They come from rectangles
(given in fractions of the image side, so the same mask works at 64, 128 or 256 px) or from
random-erasing patches drawn with a seed (the same recipe as ``torchvision.transforms.v2.RandomErasing``,
which the denoising objective uses during training).

Baselines (no learning, no data beyond the visible pixels of this image):

``harmonic``
    Solves Laplace's equation inside the hole with the visible pixels as boundary values (the
    smoothest fill; reproduces constant and linear intensity ramps exactly).
``border_mean``
    Every hidden pixel gets the mean of the visible pixels that touch the hole.

All metrics are computed over hidden pixels only: outside the mask every method returns the
original, so including those pixels would only dilute the differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pumamed.errors import InputError

FILL_VALUES = ("zero", "mean", "noise")
BASELINES = ("harmonic", "border_mean")


# ---------------------------------------------------------------- masks
@dataclass(frozen=True)
class Box:
    """A rectangle in fractions of the image side: top-left corner (x, y), width and height."""

    x: float
    y: float
    width: float
    height: float

    def pixels(self, size: int) -> tuple[int, int, int, int]:
        """Row/column slice bounds (r0, r1, c0, c1) at ``size`` px, at least one pixel, clipped."""
        values = (self.x, self.y, self.width, self.height)
        if not all(np.isfinite(v) for v in values):
            raise InputError(f"mask rectangle has a non-numeric coordinate: {values}")
        c0 = int(np.clip(round(self.x * size), 0, size - 1))
        r0 = int(np.clip(round(self.y * size), 0, size - 1))
        c1 = int(np.clip(round((self.x + self.width) * size), c0 + 1, size))
        r1 = int(np.clip(round((self.y + self.height) * size), r0 + 1, size))
        return r0, r1, c0, c1


def rectangle_mask(size: int, boxes) -> np.ndarray:
    """Boolean ``size x size`` mask, True inside any of ``boxes`` (:class:`Box` or 4-tuples)."""
    mask = np.zeros((size, size), dtype=bool)
    for box in boxes:
        box = box if isinstance(box, Box) else Box(*box)
        r0, r1, c0, c1 = box.pixels(size)
        mask[r0:r1, c0:c1] = True
    return mask


def random_erasing_mask(size: int, n_patches: int = 3, scale=(0.02, 0.08), ratio=(0.3, 3.3),
                        seed: int = 0) -> np.ndarray:
    """``n_patches`` rectangles, each covering a fraction of the image drawn from ``scale`` with an
    aspect ratio drawn log-uniformly from ``ratio`` (RandomErasing's recipe), reproducible by seed."""
    if n_patches < 1:
        raise InputError("random erasing needs at least one patch")
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi < 1:
        raise InputError(f"patch scale must satisfy 0 < min <= max < 1 (got {scale})")
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=bool)
    log_ratio = np.log(ratio)
    for _ in range(int(n_patches)):
        for _attempt in range(10):  # RandomErasing retries until the patch fits
            area = rng.uniform(lo, hi) * size * size
            aspect = float(np.exp(rng.uniform(*log_ratio)))
            h = int(round(np.sqrt(area * aspect)))
            w = int(round(np.sqrt(area / aspect)))
            if 0 < h < size and 0 < w < size:
                break
        else:
            h = w = max(1, int(round(np.sqrt(lo) * size)))
        r0 = int(rng.integers(0, size - h + 1))
        c0 = int(rng.integers(0, size - w + 1))
        mask[r0:r0 + h, c0:c0 + w] = True
    return mask


def apply_mask(image, mask, fill: str = "zero", seed: int = 0) -> np.ndarray:
    """The image with hidden pixels replaced: ``zero`` (RandomErasing's default value), ``mean``
    (mean of the visible pixels) or ``noise`` (uniform noise, reproducible by seed)."""
    image, mask = _check_pair(image, mask)
    out = image.copy()
    if fill == "zero":
        out[mask] = 0.0
    elif fill == "mean":
        out[mask] = float(image[~mask].mean()) if (~mask).any() else 0.5
    elif fill == "noise":
        out[mask] = np.random.default_rng(seed).uniform(0.0, 1.0, int(mask.sum())).astype(np.float32)
    else:
        raise InputError(f"unknown fill {fill!r}; choose one of {', '.join(FILL_VALUES)}")
    return out


# ---------------------------------------------------------------- baselines
def harmonic_inpaint(image, mask) -> np.ndarray:
    """Fill hidden pixels with the solution of Laplace's equation (4-neighbour stencil) whose
    boundary values are the visible pixels. At the image border a missing neighbour is simply
    left out (zero-flux), so the system stays well posed as long as one pixel is visible."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    image, mask = _check_pair(image, mask)
    if not mask.any():
        return image.copy()
    if mask.all():
        raise InputError("the mask hides the whole image: nothing is left to inpaint from")
    size_r, size_c = image.shape
    unknown = np.flatnonzero(mask.ravel())
    index = -np.ones(mask.size, dtype=np.int64)
    index[unknown] = np.arange(unknown.size)
    rows_u, cols_u = np.divmod(unknown, size_c)
    flat = image.ravel().astype(np.float64)

    diag = np.zeros(unknown.size)
    rhs = np.zeros(unknown.size)
    off_i, off_j = [], []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        r, c = rows_u + dr, cols_u + dc
        inside = (r >= 0) & (r < size_r) & (c >= 0) & (c < size_c)
        diag += inside
        neighbour = np.where(inside, r * size_c + c, 0)
        is_unknown = inside & mask.ravel()[neighbour]
        is_known = inside & ~mask.ravel()[neighbour]
        rhs += np.where(is_known, flat[neighbour], 0.0)
        off_i.append(np.flatnonzero(is_unknown))
        off_j.append(index[neighbour[is_unknown]])
    off_i = np.concatenate(off_i)
    off_j = np.concatenate(off_j)
    n = unknown.size
    matrix = coo_matrix(
        (np.concatenate([diag, -np.ones(off_i.size)]),
         (np.concatenate([np.arange(n), off_i]), np.concatenate([np.arange(n), off_j]))),
        shape=(n, n),
    ).tocsc()
    solution = spsolve(matrix, rhs)
    out = flat.copy()
    out[unknown] = solution
    return np.clip(out.reshape(image.shape), 0.0, 1.0).astype(np.float32)


def border_mean_inpaint(image, mask) -> np.ndarray:
    """Fill hidden pixels with the mean of the visible pixels 4-adjacent to the hidden region."""
    from scipy.ndimage import binary_dilation

    image, mask = _check_pair(image, mask)
    if not mask.any():
        return image.copy()
    if mask.all():
        raise InputError("the mask hides the whole image: nothing is left to inpaint from")
    ring = binary_dilation(mask) & ~mask
    out = image.copy()
    out[mask] = float(image[ring].mean())
    return out


def inpaint(image, mask, method: str = "harmonic") -> np.ndarray:
    if method == "harmonic":
        return harmonic_inpaint(image, mask)
    if method == "border_mean":
        return border_mean_inpaint(image, mask)
    raise InputError(f"unknown inpainting baseline {method!r}; choose one of {', '.join(BASELINES)}")


# ---------------------------------------------------------------- metrics
def masked_metrics(prediction, target, mask) -> dict[str, float]:
    """Errors over hidden pixels only: MAE, RMSE, PSNR (dB, data range 1) and the Pearson
    correlation between predicted and true intensities (NaN when either is constant)."""
    prediction = np.asarray(prediction, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if prediction.shape != target.shape or target.shape != mask.shape:
        raise InputError(f"shapes differ: prediction {prediction.shape}, target {target.shape}, mask {mask.shape}")
    n = int(mask.sum())
    if n == 0:
        return {"pixels": 0, "mae": float("nan"), "rmse": float("nan"), "psnr_db": float("nan"), "correlation": float("nan")}
    p, t = prediction[mask], target[mask]
    err = p - t
    mse = float(np.mean(err**2))
    psnr = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
    corr = float("nan")
    if n > 1 and p.std() > 0 and t.std() > 0:
        corr = float(np.corrcoef(p, t)[0, 1])
    return {"pixels": n, "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(mse)), "psnr_db": psnr,
            "correlation": corr}


# ---------------------------------------------------------------- the whole comparison
@dataclass
class MaskedReconstruction:
    original: np.ndarray  # S x S
    mask: np.ndarray  # S x S bool, True = hidden
    masked_input: np.ndarray  # what the encoder saw
    decoder_output: np.ndarray  # the decoder's whole image for the masked input
    fill_in: np.ndarray  # original outside the mask, decoder inside
    baseline: np.ndarray  # original outside the mask, non-learned fill inside
    baseline_name: str
    reference: np.ndarray | None = None  # decoder output for the UNMASKED image (the error floor)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def difference(self) -> np.ndarray:
        """Decoder fill-in minus original (signed; zero outside the mask)."""
        return self.fill_in - self.original

    @property
    def error_in_mask(self) -> np.ndarray:
        """Absolute error of the decoder's fill-in inside the mask, 0 outside."""
        return np.where(self.mask, np.abs(self.fill_in - self.original), 0.0).astype(np.float32)

    @property
    def baseline_error_in_mask(self) -> np.ndarray:
        return np.where(self.mask, np.abs(self.baseline - self.original), 0.0).astype(np.float32)

    def metrics_rows(self) -> list[dict]:
        return [{"method": name, **values} for name, values in self.metrics.items()]


def masked_reconstruction(reconstruct, image, mask, fill: str = "zero", baseline: str = "harmonic",
                          seed: int = 0, with_reference: bool = True) -> MaskedReconstruction:
    """Hide ``mask`` in ``image``, reconstruct with the model, compare with a baseline.

    ``reconstruct``: a function from an N x S x S array to N x S x S reconstructions in [0, 1]
    (``ExplorerSession.reconstruct_batch``). The masked and (for the reference row) the unmasked
    image go through it in one batch.
    """
    image, mask = _check_pair(image, mask)
    if not mask.any():
        raise InputError("the mask is empty: place at least one rectangle or patch")
    if mask.all():
        raise InputError("the mask hides the whole image: leave some context visible")
    masked_input = apply_mask(image, mask, fill=fill, seed=seed)
    batch = np.stack([masked_input, image]) if with_reference else masked_input[None]
    outputs = np.asarray(reconstruct(batch), dtype=np.float32)
    decoder_output = outputs[0]
    fill_in = np.where(mask, decoder_output, image).astype(np.float32)
    base = inpaint(image * ~mask, mask, baseline)  # the baseline never sees the hidden pixels
    result = MaskedReconstruction(
        original=image, mask=mask, masked_input=masked_input, decoder_output=decoder_output,
        fill_in=fill_in, baseline=base, baseline_name=baseline,
        reference=outputs[1] if with_reference else None,
    )
    result.metrics["decoder fill-in"] = masked_metrics(fill_in, image, mask)
    result.metrics[f"{baseline.replace('_', ' ')} baseline"] = masked_metrics(base, image, mask)
    other = [b for b in BASELINES if b != baseline]
    for name in other:
        result.metrics[f"{name.replace('_', ' ')} baseline"] = masked_metrics(inpaint(image * ~mask, mask, name), image, mask)
    if with_reference:
        result.metrics["decoder, nothing hidden (floor)"] = masked_metrics(outputs[1], image, mask)
    return result


def _check_pair(image, mask) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    mask = np.asarray(mask, dtype=bool)
    if image.ndim != 2 or image.shape != mask.shape:
        raise InputError(f"image and mask must be the same 2-D size (got {image.shape} and {mask.shape})")
    return image, mask
