"""Full-reference image quality of reconstructions: PSNR and SSIM, batched on the model's device.

SSIM follows Wang et al. (IEEE TIP 2004) with the usual settings: an 11-tap Gaussian window of
sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) variances, the mean of the SSIM map over
the pixels whose window fits inside the image. These are scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
settings, which the tests check against; it is written here on tensors so a whole test split is
scored in a few batched convolutions, and so it can also serve as a differentiable loss.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of B x C x H x W, per channel."""
    c = x.shape[1]
    k = len(window)
    x = F.conv2d(x, window.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, window.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """The SSIM map (B x C x (H - 10) x (W - 10)) of two image batches in [0, data_range]."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two B x C x H x W batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW} px, got {tuple(x.shape[-2:])}")
    x, y = x.float(), y.float()
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, x.device, x.dtype)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x ** 2
    var_y = _blur(y * y, window) - mu_y ** 2
    cov = _blur(x * y, window) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM per image (B,): 1 for identical images, about 0 for unrelated ones.

    ``valid`` (B x 1 x H x W, 1 = a real pixel): the mean over the windows that lie wholly on
    real pixels (training leaves out the augmentation's fill this way)."""
    values = ssim_map(x, y, data_range)
    if valid is None:
        return values.flatten(1).mean(1)
    # a window is whole when no pixel under it is fill: min-pool of the valid map, as ssim_map crops
    whole = -F.max_pool2d(-valid.float(), SSIM_WINDOW, stride=1)
    return (values * whole).flatten(1).sum(1) / whole.flatten(1).sum(1).clamp_min(1.0)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, max_db: float = 100.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image (B,), in dB; identical images get ``max_db`` rather
    than infinity, so means over a split stay finite."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    floor = data_range ** 2 * 10 ** (-max_db / 10)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(floor))
