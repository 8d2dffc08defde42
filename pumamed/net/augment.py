"""The denoising augmentations of :mod:`pumamed.net.data`, applied to a whole batch on the device.

``DenoisingDataset`` draws torchvision.transforms.v2 transforms image by image in DataLoader
workers. That is the reference, and it is what ``train`` uses on the CPU. On a GPU it is also
the bottleneck: about 1,000 images/s per worker at 64 px against a training step of 17,000-46,000
images/s on an H100. :class:`BatchAugment` draws the same families of random parameters for
every image of a batch at once, on the batch's device, from one seeded generator:

* geometry (input and target alike): horizontal flip (p 0.5); rotation within ±10°, scale
  0.9-1.1 and shift within ±5 % (``v2.RandomAffine(10, (0.05, 0.05), (0.9, 1.1))``); with p 0.3
  a perspective warp whose corners move inward by up to 20 % of the half-size
  (``v2.RandomPerspective(0.2)``). All three are composed into one homography per image, so the
  image is resampled once (bilinear, zeros outside), not three times;
* corruption (input only): Gaussian blur, 5 taps, sigma 0.3-1.5 (p 0.3, reflected borders);
  Gaussian noise, sigma 0.04, clipped to [0, 1] (p 0.5); random erasing of a rectangle of 1-6 %
  of the image (p 0.5) and of 1-4 % (p 0.25), aspect ratio 0.5-2, set to 0.

The parameters and probabilities are those of :func:`~pumamed.net.data.geometric_transform` and
:func:`~pumamed.net.data.corruption_transform` (a test compares the two pipelines' statistics).
Differences on purpose: one bilinear resampling instead of v2's nearest-neighbour affine
followed by a bilinear perspective, and the inverse map's parameters are drawn directly.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

ROTATION_DEGREES = 10.0
SHIFT_FRACTION = 0.05
SCALE_RANGE = (0.9, 1.1)
PERSPECTIVE_P, PERSPECTIVE_DISTORTION = 0.3, 0.2
BLUR_P, BLUR_TAPS, BLUR_SIGMA = 0.3, 5, (0.3, 1.5)
NOISE_P, NOISE_SIGMA = 0.5, 0.04
ERASING = ((0.5, (0.01, 0.06)), (0.25, (0.01, 0.04)))  # (probability, area fraction range)
ERASING_RATIO = (0.5, 2.0)
# a target pixel with less than this share of its bilinear footprint inside the image is fill
# (mark_fill): the blended edge pixels are as artificial as the black beyond them
FILLED_BELOW = 0.99


class BatchAugment:
    """``augment(images) -> (source, target)``: float Bx1xSxS batches in [0, 1], from uint8
    images (0-255) or float ones (0-1).

    ``geometric`` / ``corrupt`` switch the two halves off (as ``train --no-augment`` /
    ``--no-denoise``). ``reseed(seed)`` makes the following batches reproducible (``train``
    reseeds at every epoch, so a resumed run draws what an uninterrupted one would)."""

    def __init__(self, device, geometric: bool = True, corrupt: bool = True, mark_fill: bool = False):
        self.device = torch.device(device)
        self.geometric = geometric
        self.corrupt = corrupt
        # training's targets mark the pixels the warp filled from outside the image as NaN, so the
        # loss can leave them out (pumamed.net.losses.split_fill); the source keeps the black fill
        self.mark_fill = mark_fill
        self.generator = torch.Generator(device=self.device)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = images.to(self.device, non_blocking=True)
        target = target.float().div_(255.0) if target.dtype == torch.uint8 else target.float()
        inside = None
        if self.geometric and self.mark_fill:
            # one warp of image and a plane of ones: the same homography, so the second channel
            # is the share of each output pixel that came from inside the image
            warped = self.warp(torch.cat([target, torch.ones_like(target[:, :1])], dim=1))
            target, inside = warped[:, :-1].contiguous(), warped[:, -1:]
        elif self.geometric:
            target = self.warp(target)
        source = self.corruption(target) if self.corrupt else target
        if inside is not None:
            target = target.masked_fill(inside < FILLED_BELOW, float("nan"))
        return source, target

    # --- random draws ---------------------------------------------------------------------------
    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(n, device=self.device, generator=self.generator) * (high - low) + low

    def _coin(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, device=self.device, generator=self.generator) < p

    # --- geometry -------------------------------------------------------------------------------
    def homographies(self, n: int) -> torch.Tensor:
        """(n, 3, 3) maps from output to input coordinates, both normalised to [-1, 1]."""
        flip = torch.where(self._coin(n, 0.5), -1.0, 1.0)
        angle = self._uniform(n, -ROTATION_DEGREES, ROTATION_DEGREES) * (math.pi / 180.0)
        scale = self._uniform(n, *SCALE_RANGE)
        shift = self._uniform(2 * n, -2 * SHIFT_FRACTION, 2 * SHIFT_FRACTION).view(n, 2)  # width 2 in [-1, 1]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        affine = torch.zeros(n, 3, 3, device=self.device)
        # inverse of (shift o rotate o scale o flip): flip, then the inverse rotation and scale of (p - shift)
        affine[:, 0, 0], affine[:, 0, 1] = cos * flip, sin * flip
        affine[:, 1, 0], affine[:, 1, 1] = -sin, cos
        affine[:, 0, 2] = -(affine[:, 0, 0] * shift[:, 0] + affine[:, 0, 1] * shift[:, 1])
        affine[:, 1, 2] = -(affine[:, 1, 0] * shift[:, 0] + affine[:, 1, 1] * shift[:, 1])
        affine[:, 2, 2] = 1.0
        warped = self._coin(n, PERSPECTIVE_P)
        return torch.where(warped.view(n, 1, 1), affine @ self._perspective(n), affine)

    def _perspective(self, n: int) -> torch.Tensor:
        """(n, 3, 3) inverse perspective warps: the image's corners are moved inward by up to
        ``PERSPECTIVE_DISTORTION`` of the half-size (as v2.RandomPerspective, whose offsets are
        drawn in [0, distortion * size / 2]), and each output point is mapped back to its source."""
        corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=self.device)
        inward = self._uniform(8 * n, 0.0, PERSPECTIVE_DISTORTION).view(n, 4, 2)  # normalised: half-size is 1
        moved = corners - corners.sign() * inward
        # output point (moved corner) -> input point (corner): 8 equations in the 8 unknowns of H
        x, y = moved[..., 0], moved[..., 1]
        u, v = corners[:, 0].expand(n, 4), corners[:, 1].expand(n, 4)
        zeros, ones = torch.zeros_like(x), torch.ones_like(x)
        rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)
        rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
        system = torch.cat([rows_u, rows_v], dim=1)  # (n, 8, 8)
        rhs = torch.cat([u, v], dim=1).unsqueeze(-1)
        # solve_ex: no singularity check, which would make the CPU wait for the GPU at every batch
        # (corners moved inward by at most 20 % keep the quadrilateral convex: never singular)
        h = torch.linalg.solve_ex(system, rhs)[0].squeeze(-1)
        return torch.cat([h, torch.ones(n, 1, device=self.device)], dim=1).view(n, 3, 3)

    def warp(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        m = self.homographies(n).to(images.dtype).view(n, 9, 1, 1)
        xs = ((torch.arange(width, device=self.device, dtype=images.dtype) * 2 + 1) / width - 1).view(1, 1, width)
        ys = ((torch.arange(height, device=self.device, dtype=images.dtype) * 2 + 1) / height - 1).view(1, height, 1)
        # the 3x3 map applied by broadcasting (n, H, W): a batched matmul with an inner size of 3
        # is several times slower on the CPU
        depth = (m[:, 6] * xs + m[:, 7] * ys + m[:, 8]).clamp_min(1e-6)
        grid_x = (m[:, 0] * xs + m[:, 1] * ys + m[:, 2]) / depth
        grid_y = (m[:, 3] * xs + m[:, 4] * ys + m[:, 5]) / depth
        return F.grid_sample(images, torch.stack([grid_x, grid_y], dim=-1), mode="bilinear", padding_mode="zeros",
                             align_corners=False)

    # --- corruption -----------------------------------------------------------------------------
    def corruption(self, target: torch.Tensor) -> torch.Tensor:
        n = target.shape[0]
        x = self.blur(target)
        noisy = self._coin(n, NOISE_P).view(n, 1, 1, 1)
        noise = torch.randn(x.shape, device=self.device, generator=self.generator) * NOISE_SIGMA
        x = torch.where(noisy, (x + noise).clamp(0.0, 1.0), x)
        erased = None
        for p, area in ERASING:
            mask = self.erasing_masks(x.shape, p, area)
            erased = mask if erased is None else erased | mask
        return x.masked_fill(erased, 0.0)

    def blur(self, images: torch.Tensor) -> torch.Tensor:
        """Each image blurred with probability ``BLUR_P`` by its own sigma (separable, reflected
        borders); the others pass through a unit kernel."""
        n, c, height, width = images.shape
        half = BLUR_TAPS // 2
        sigma = self._uniform(n, *BLUR_SIGMA)
        taps = torch.arange(-half, half + 1, device=self.device, dtype=images.dtype)
        kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1)) ** 2)
        kernel = kernel / kernel.sum(1, keepdim=True)
        unit = (taps == 0).to(images.dtype).expand(n, -1)
        kernel = torch.where(self._coin(n, BLUR_P).view(n, 1), kernel, unit)
        kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (image, channel)
        planes = F.pad(images.reshape(1, n * c, height, width), (half, half, half, half), mode="reflect")
        planes = F.conv2d(planes, kernel.view(n * c, 1, 1, BLUR_TAPS), groups=n * c)
        planes = F.conv2d(planes, kernel.view(n * c, 1, BLUR_TAPS, 1), groups=n * c)
        return planes.view(n, c, height, width)

    def erasing_masks(self, shape, p: float, area: tuple[float, float]) -> torch.Tensor:
        """(n, 1, H, W) boolean masks: with probability ``p`` a rectangle of ``area`` of the image,
        aspect ratio drawn log-uniformly in ``ERASING_RATIO``, placed uniformly inside it."""
        n, _, height, width = shape
        target_area = self._uniform(n, *area) * height * width
        log_ratio = self._uniform(n, math.log(ERASING_RATIO[0]), math.log(ERASING_RATIO[1]))
        ratio = torch.exp(log_ratio)
        h = torch.sqrt(target_area * ratio).round().clamp(1, height - 1)
        w = torch.sqrt(target_area / ratio).round().clamp(1, width - 1)
        top = (self._uniform(n, 0.0, 1.0) * (height - h + 1)).floor()
        left = (self._uniform(n, 0.0, 1.0) * (width - w + 1)).floor()
        rows = torch.arange(height, device=self.device).view(1, -1, 1)
        cols = torch.arange(width, device=self.device).view(1, 1, -1)
        # the coin and the row range on (n, H, 1), the column range on (n, 1, W): one full-size AND
        in_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1)) & self._coin(n, p).view(n, 1, 1)
        in_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1))
        return (in_rows & in_cols).unsqueeze(1)
