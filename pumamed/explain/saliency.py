"""Pixel-space explanations of the same decision, for comparison with the latent counterfactual.

* **Gradient saliency** (Simonyan et al., 2014): ``|d p_c / d x|``, which pixels the probability
  is most sensitive to, infinitesimally.
* **Occlusion sensitivity** (Zeiler & Fergus, 2014): slide a grey patch over the image and record
  how much the probability of the class drops; slow but model-agnostic and not fooled by
  saturated gradients.
* **Integrated gradients** (Sundararajan et al., 2017), optional: path-integrated gradients from
  a black image, whose attributions add up to the probability difference.

All three go through Captum on the classification path ``x -> encoder -> mu -> head ->
probability``. Maps are returned as S x S float arrays; :func:`normalise_map` scales them to
[0, 1] (or [-1, 1] for signed maps) for display.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pumamed.errors import InputError
from pumamed.explain.attributions import as_batch, check_class, head_probabilities, model_device, require_classifier


def _probability_module(model, task: str | None = None):
    """``x -> class probabilities`` as an nn.Module (what Captum attributes)."""
    import torch

    class ProbabilityPath(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            mu, _ = self.inner.encode(x)
            return head_probabilities(self.inner, mu, task)

    return ProbabilityPath().eval()


def normalise_map(values, signed: bool = False) -> np.ndarray:
    """Scale a map to [0, 1] (or [-1, 1] keeping 0 at 0 when ``signed``) by its 99th percentile."""
    values = np.asarray(values, dtype=np.float64)
    reference = np.percentile(np.abs(values), 99) if values.size else 0.0
    if reference <= 0:
        return np.zeros_like(values)
    if signed:
        return np.clip(values / reference, -1.0, 1.0)
    values = values - values.min()
    top = np.percentile(values, 99)
    return np.clip(values / top, 0.0, 1.0) if top > 0 else np.zeros_like(values)


@dataclass
class PixelExplanations:
    saliency: np.ndarray  # S x S, |gradient|
    occlusion: np.ndarray  # S x S, drop of the probability when the patch covers the pixel (signed)
    integrated_gradients: np.ndarray | None  # S x S, signed
    probability: float
    target_class: int
    window: int
    stride: int


def gradient_saliency(model, image, target_class: int, task: str | None = None) -> np.ndarray:
    """``|d p_c / d x|`` for one image (Captum ``Saliency``)."""
    from captum.attr import Saliency

    require_classifier(model)
    x = as_batch(image, model_device(model)).detach().clone().requires_grad_(True)
    attribution = Saliency(_probability_module(model, task)).attribute(x, target=int(target_class), abs=True)
    return attribution[0, 0].detach().float().cpu().numpy()


def occlusion_sensitivity(model, image, target_class: int, window: int | None = None, stride: int | None = None,
                          baseline: float | None = None, task: str | None = None) -> np.ndarray:
    """Probability drop when a ``window`` x ``window`` patch (filled with ``baseline``, default the
    image mean) covers each pixel, averaged over the patches covering it (Captum ``Occlusion``).

    Positive = covering this area lowers the class probability (the area is evidence for it).
    """
    import torch
    from captum.attr import Occlusion

    require_classifier(model)
    x = as_batch(image, model_device(model)).detach()
    size = x.shape[-1]
    window = int(window or max(4, size // 8))
    stride = int(stride or max(2, window // 2))
    if not 1 <= window <= size or not 1 <= stride <= size:
        raise InputError(f"occlusion window and stride must be between 1 and the image size {size}")
    fill = float(x.mean()) if baseline is None else float(baseline)
    with torch.no_grad():
        attribution = Occlusion(_probability_module(model, task)).attribute(
            x, target=int(target_class), sliding_window_shapes=(1, window, window), strides=(1, stride, stride),
            baselines=fill, perturbations_per_eval=64)
    return attribution[0, 0].float().cpu().numpy()


def integrated_gradients(model, image, target_class: int, steps: int = 32, task: str | None = None) -> np.ndarray:
    """Integrated gradients from a black image (Captum ``IntegratedGradients``)."""
    from captum.attr import IntegratedGradients

    require_classifier(model)
    x = as_batch(image, model_device(model)).detach()
    attribution = IntegratedGradients(_probability_module(model, task)).attribute(
        x, baselines=x * 0, target=int(target_class), n_steps=int(steps), internal_batch_size=32)
    return attribution[0, 0].detach().float().cpu().numpy()


def pixel_explanations(model, image, target_class: int, window: int | None = None, stride: int | None = None,
                       with_integrated_gradients: bool = False, class_names=None,
                       task: str | None = None) -> PixelExplanations:
    """Saliency, occlusion (and optionally integrated gradients) of one image for one class."""
    import torch

    target_class = check_class(model, target_class, class_names)
    was_training = model.training
    model.eval()
    try:
        x = as_batch(image, model_device(model))
        size = x.shape[-1]
        window = int(window or max(4, size // 8))
        stride = int(stride or max(2, window // 2))
        with torch.no_grad():
            mu, _ = model.encode(x)
            probability = float(head_probabilities(model, mu, task)[0, target_class])
        return PixelExplanations(
            saliency=gradient_saliency(model, x, target_class, task),
            occlusion=occlusion_sensitivity(model, x, target_class, window, stride, task=task),
            integrated_gradients=integrated_gradients(model, x, target_class, task=task)
            if with_integrated_gradients else None,
            probability=probability, target_class=target_class, window=window, stride=stride,
        )
    finally:
        model.train(was_training)
