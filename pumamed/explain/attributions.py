"""Latent attributions: which latent dimensions drive the classifier's decision.

PumaMedNet classifies from ``mu`` alone, so the classifier's evidence can be read dimension by
dimension instead of pixel by pixel. Two complementary views:

* **Gradient x input on mu** (per image, averaged over a dataset): ``d p_c / d mu_d * (mu_d -
  baseline_d)``, the first-order share of dimension ``d`` in moving the class probability away
  from the baseline (the dataset mean code). Signed: positive pushes towards class ``c``.
* **Head weight x spread**: for a linear head, ``|w_cd| * sd(mu_d)``, how much the logit of
  class ``c`` swings when dimension ``d`` moves by one typical amount over the data. It needs no
  gradient and answers "what does the head listen to" for the whole dataset at once.

Each dimension comes with a traversal (via :mod:`pumamed.explain.traversal`) so a user can *see*
what the dimension encodes, and the probability of the class along that walk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pumamed.errors import CheckpointError, InputError
from pumamed.net.inference import model_device  # noqa: F401 - re-exported for the explanation modules


# ----------------------------------------------------------------------------- model helpers


def model_task(model, task: str | None = None) -> str:
    if task:
        return task
    config = getattr(model, "config", None)
    return getattr(config, "task", "multiclass") if config is not None else "multiclass"


def require_classifier(model) -> None:
    if getattr(model, "classifier", None) is None:
        raise CheckpointError("this model has no classifier head, so there is no decision to explain "
                              "(train it with labels, e.g. python -m pumamed train --dataset NAME)")


def head_probabilities(model, mu, task: str | None = None):
    """Class probabilities (B x C) of the classifier head applied to codes ``mu`` (differentiable).

    Binary heads have one logit; they are returned as two columns [1 - p, p] so that class
    indices mean the same for every task (as ``PumaMedNet.predict_proba`` does).
    """
    import torch

    require_classifier(model)
    logits = model.classifier(mu).float()
    task = model_task(model, task)
    if task == "multiclass":
        return torch.softmax(logits, dim=1)
    if task == "binary" or logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, -1])
        return torch.stack([1 - p, p], dim=1)
    return torch.sigmoid(logits)


def check_class(model, target_class: int, class_names=None) -> int:
    """Validate a class index against the head (binary heads have two classes)."""
    import torch

    require_classifier(model)
    latent_dim = model.config.latent_dim
    with torch.no_grad():
        n_classes = head_probabilities(model, torch.zeros(1, latent_dim, device=model_device(model))).shape[1]
    target_class = int(target_class)
    if not 0 <= target_class < n_classes:
        names = f" ({', '.join(map(str, class_names))})" if class_names else ""
        raise InputError(f"class {target_class} does not exist; the classifier has {n_classes} classes{names}")
    return target_class


def as_batch(image, device):
    """A 1xSxS / SxS / 1x1xSxS image (tensor or array) as a 1x1xSxS float tensor on ``device``."""
    import torch

    x = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image, dtype=torch.float32)
    while x.dim() < 4:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 1:
        raise InputError(f"expected one grey image (1 x S x S), got shape {tuple(x.shape)}")
    return x.to(device)


# ----------------------------------------------------------------------------- attributions
@dataclass
class LatentAttribution:
    """One row per latent dimension, sorted by importance (``table``), for one class."""

    table: pd.DataFrame  # dim, grad_x_input (signed mean), abs_grad_x_input, weight_x_sd, kl, rank
    target_class: int
    class_name: str
    n_images: int

    def top(self, k: int = 8) -> list[int]:
        return [int(d) for d in self.table["dim"].head(k)]


def latent_attributions(model, mu, target_class: int, class_names=None, kl_per_dim=None,
                        task: str | None = None) -> LatentAttribution:
    """Attribution of the probability of ``target_class`` to each latent dimension, over codes ``mu``.

    ``mu``: N x D codes of a dataset (or one image, 1 x D). The baseline of gradient x input is
    the mean code of ``mu`` (the "average image" of this data), so attributions add up to roughly
    the difference between each image's probability and the average one.
    """
    import torch

    require_classifier(model)
    target_class = check_class(model, target_class, class_names)
    device = model_device(model)
    codes = torch.as_tensor(np.asarray(mu), dtype=torch.float32, device=device)
    if codes.dim() != 2 or codes.shape[1] != model.config.latent_dim:
        raise InputError(f"codes must be N x {model.config.latent_dim}, got {tuple(codes.shape)}")
    baseline = codes.mean(dim=0, keepdim=True)
    codes = codes.clone().requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        probability = head_probabilities(model, codes, task)[:, target_class]
        (grad,) = torch.autograd.grad(probability.sum(), codes)
    finally:
        model.train(was_training)
    gxi = (grad * (codes - baseline)).detach().cpu().numpy()
    spread = np.asarray(mu, dtype=np.float64).std(axis=0) if len(mu) > 1 else np.ones(codes.shape[1])
    weight_x_sd = np.full(codes.shape[1], np.nan)
    head = model.classifier
    if isinstance(head, torch.nn.Linear):
        weights = head.weight.detach().cpu().numpy()
        row = weights[-1] if weights.shape[0] == 1 else weights[target_class]
        sign = -1.0 if (weights.shape[0] == 1 and target_class == 0) else 1.0  # binary: class 0 = -logit
        weight_x_sd = sign * row * spread
    table = pd.DataFrame({
        "dim": np.arange(codes.shape[1]),
        "grad_x_input": gxi.mean(axis=0),
        "abs_grad_x_input": np.abs(gxi).mean(axis=0),
        "weight_x_sd": weight_x_sd,
        "mu_sd": spread,
    })
    if kl_per_dim is not None and len(kl_per_dim) == codes.shape[1]:
        table["kl"] = np.asarray(kl_per_dim, dtype=float)
    table = table.sort_values("abs_grad_x_input", ascending=False, kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    names = list(class_names) if class_names else []
    name = str(names[target_class]) if target_class < len(names) else f"class {target_class}"
    return LatentAttribution(table, target_class, name, int(codes.shape[0]))


def decoder_function(model, batch_size: int = 64, detail=None):
    """``codes (N x D array) -> images (N x S x S array)`` for :func:`pumamed.explain.traversal.traverse`,
    with a hierarchical model's detail code (1 x C x R x R tensor, or None: the prior mean) held."""
    import torch

    device = model_device(model)

    def decode(codes):
        out = []
        model.eval()
        with torch.inference_mode():
            z = torch.as_tensor(np.asarray(codes), dtype=torch.float32, device=device)
            for start in range(0, z.shape[0], batch_size):
                part = z[start:start + batch_size]
                held = None if detail is None else detail.to(device).expand(len(part), -1, -1, -1)
                out.append((model.decode(part, held) if held is not None else model.decode(part))
                           .float().cpu().numpy()[:, 0])
        return np.concatenate(out)

    return decode


@dataclass
class DimensionTraversals:
    images: np.ndarray  # k x m x S x S
    probabilities: np.ndarray  # k x m, probability of the class at each step (re-encoded image)
    dims: list[int]
    offsets: np.ndarray  # m, in standard deviations of mu over the data


def traverse_dimensions(model, base_code, dims, scale=None, target_class: int | None = None, n_steps: int = 7,
                        span: float = 2.5, task: str | None = None) -> DimensionTraversals:
    """Traversal thumbnails of ``dims`` around ``base_code`` and the class probability along each walk.

    The probability is that of the *decoded* image, re-encoded (what the classifier would say
    about the picture shown), not of the code itself.
    """
    import torch

    from pumamed.explain.traversal import traverse

    grid = traverse(decoder_function(model), base_code, dims, n_steps=n_steps, span=span, scale=scale)
    k, m = grid.shape
    probs = np.full((k, m), np.nan)
    if target_class is not None and getattr(model, "classifier", None) is not None:
        device = model_device(model)
        with torch.inference_mode():
            x = torch.as_tensor(grid.images.reshape(k * m, 1, *grid.images.shape[-2:]), device=device)
            mu, _ = model.encode(x)
            probs = head_probabilities(model, mu, task)[:, target_class].float().cpu().numpy().reshape(k, m)
    return DimensionTraversals(grid.images, probs, [int(d) for d in grid.dims], grid.offsets)
