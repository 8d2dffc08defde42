"""Counterfactual latent shift ("Gifsplanation", Cohen et al., MIDL 2021).

Question answered: *what would this image have to look like for the model to change its mind?*

1. Encode the image: ``z = mu(x)``.
2. Take the gradient of the classifier's probability for the chosen class with respect to ``z``.
   By default the classifier is applied to the *decoded image*, ``f(D(z)) = head(mu(D(z)))``, as
   in the paper (the explanation is about pictures, not about the head alone); ``through="head"``
   differentiates ``head(z)`` directly (cheaper, same direction for a linear head up to the
   encoder's distortion).
3. Decode along the unit gradient direction, ``x_lambda = D(z + lambda * g / |g|)``, for a sweep
   of ``lambda`` until the predicted probability (of the re-encoded frame) has moved by a set
   amount (``target_change``) or ``max_shift`` latent units are used up.
4. Frames, the probability per frame, and the difference heatmap ``x_lambda_end - x_0`` (both
   decoded, so the autoencoder's own reconstruction error cancels out) show *what* changed.

The search decodes the whole lambda grid in one batch (a decoder call on 40 codes costs about as
much as one on a single code on a CPU), then re-samples ``n_frames`` frames up to the stopping
point, so one counterfactual costs two batched decoder calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pumamed.errors import InputError
from pumamed.explain.attributions import (
    as_batch,
    check_class,
    head_probabilities,
    model_device,
    model_task,
    require_classifier,
)

DIRECTIONS = ("decrease", "increase", "both")


@dataclass
class Counterfactual:
    frames: np.ndarray  # n x S x S in [0, 1], ordered by lambda
    lambdas: np.ndarray  # n, latent units along the unit gradient
    probabilities: np.ndarray  # n, probability of the target class of each (re-encoded) frame
    original: np.ndarray  # S x S, the input
    reconstruction: np.ndarray  # S x S, the frame at lambda = 0
    counterfactual: np.ndarray  # S x S, the frame at the end of the primary direction
    difference: np.ndarray  # S x S, counterfactual - reconstruction (signed)
    target_class: int
    class_name: str
    direction: str
    start_probability: float
    end_probability: float
    reached: bool  # True when the probability moved by target_change within max_shift
    target_change: float
    gradient_norm: float  # |d p / d z| at the start (0 = the model is flat here)

    @property
    def change(self) -> float:
        return self.end_probability - self.start_probability

    def summary(self) -> dict:
        return {"class": self.class_name, "direction": self.direction,
                "start_probability": round(self.start_probability, 4),
                "end_probability": round(self.end_probability, 4),
                "shift": round(float(self.lambdas[np.argmax(np.abs(self.lambdas))]), 3),
                "reached": self.reached, "gradient_norm": round(self.gradient_norm, 6)}


def _probabilities_of_images(model, images, target_class: int, task: str | None):
    mu, _ = model.encode(images)
    return head_probabilities(model, mu, task)[:, target_class]


def _encode_for_explanation(model, x, detail: str):
    """(mu, detail code to hold): hierarchical PumaMedNets hold their detail code; other models
    have none."""
    if callable(getattr(model, "encode_for_explanation", None)):
        return model.encode_for_explanation(x, detail)
    return model.encode(x)[0], None


def _decode(model, codes, held):
    return model.decode(codes) if held is None else model.decode(codes, held)


def _runner_up(probabilities, excluded):
    """Per row, the most probable class other than ``excluded`` (a class index per row)."""
    import torch

    mask = torch.nn.functional.one_hot(excluded, probabilities.shape[1]).bool()
    return probabilities.masked_fill(mask, -1.0).argmax(1)


def _stop_index(probabilities: np.ndarray, start: float, target_change: float) -> tuple[int, bool]:
    moved = np.abs(probabilities - start) >= target_change
    if moved.any():
        return int(np.argmax(moved)), True
    return len(probabilities) - 1, False


def latent_shift(model, image, target_class: int, *, target_change: float = 0.3, direction: str = "decrease",
                 max_shift: float = 30.0, n_search: int = 61, n_frames: int = 9, through: str = "image",
                 class_names=None, task: str | None = None, detail: str = "image",
                 centroids=None) -> Counterfactual:
    """Counterfactual frames for one image (1 x S x S in [0, 1]) and one class of the classifier.

    ``direction``: ``"decrease"`` removes evidence for the class (the paper's default),
    ``"increase"`` adds it, ``"both"`` walks both ways (frames ordered from most negative lambda).
    ``target_change``: stop once the probability moved this much (probability units).
    ``detail``: what a hierarchical model's detail code is while the global code walks: the
    image's own (``"image"``), its prior mean (``"mean"``) or a posterior draw (``"resampled"``).
    ``centroids`` (classes x latent_dim, the mean training code of each class, as
    ``trust.class_centroids`` stores): walk along the unit vector from the centroid of the most
    probable *other* class to the centroid of ``target_class`` instead of the classifier's
    gradient (what separates the classes in the training codes; on brain MRI its counterfactuals
    change a second classifier's decision far more often, docs/faithfulness.md).
    """
    import torch

    require_classifier(model)
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)} (got {direction!r})")
    if through not in ("image", "head"):
        raise InputError(f"through must be 'image' or 'head' (got {through!r})")
    if not 0 < target_change < 1:
        raise InputError(f"target_change is a probability difference in (0, 1) (got {target_change})")
    if not max_shift > 0 or n_search < 3 or n_frames < 2:
        raise InputError("max_shift must be positive, n_search >= 3 and n_frames >= 2")
    target_class = check_class(model, target_class, class_names)
    device = model_device(model)
    x = as_batch(image, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            mu, held = _encode_for_explanation(model, x, detail)
        if centroids is not None:
            centres = torch.as_tensor(np.asarray(centroids, dtype=np.float32), device=device)
            if centres.ndim != 2 or len(centres) < 2 or target_class >= len(centres):
                raise InputError("centroids must be classes x latent_dim, one row per class")
            with torch.no_grad():
                target = torch.tensor([target_class], device=device)
                other = int(_runner_up(head_probabilities(model, mu, task), target)[0])
                towards = centres[target_class] - centres[other]
            grad_norm = float(towards.norm())
            unit = (towards / grad_norm if grad_norm > 0 else torch.zeros_like(towards))[None]
        else:
            z = mu.detach().clone().requires_grad_(True)
            if through == "image":
                probability = _probabilities_of_images(model, _decode(model, z, held), target_class, task)[0]
            else:
                probability = head_probabilities(model, z, task)[0, target_class]
            (grad,) = torch.autograd.grad(probability, z)
            grad_norm = float(grad.norm())
            unit = grad / grad_norm if grad_norm > 0 else torch.zeros_like(grad)

        def sweep(lambdas: np.ndarray):
            with torch.no_grad():
                steps = torch.as_tensor(np.ascontiguousarray(lambdas), dtype=torch.float32, device=device)[:, None]
                codes = mu + steps * unit
                frames = _decode(model, codes, None if held is None else held.expand(len(codes), -1, -1, -1))
                probs = _probabilities_of_images(model, frames, target_class, task)
            return frames[:, 0].float().cpu().numpy(), probs.float().cpu().numpy()

        search = np.linspace(0.0, max_shift, n_search)
        sides = {"decrease": [-1.0], "increase": [1.0], "both": [-1.0, 1.0]}[direction]
        _, start_prob = sweep(np.zeros(1))
        start = float(start_prob[0])
        ends, reached = {}, {}
        for sign in sides:
            _, probs = sweep(sign * search)
            index, ok = _stop_index(probs, start, target_change)
            # The walk ends on the first grid point where the change is reached, so the last
            # frame's probability is the one that met the criterion.
            ends[sign] = sign * search[max(index, 1)]
            reached[sign] = ok
        if direction == "both":
            half = max(2, (n_frames + 1) // 2)
            lambdas = np.concatenate([np.linspace(ends[-1.0], 0.0, half), np.linspace(0.0, ends[1.0], half)[1:]])
        else:
            lambdas = np.linspace(0.0, ends[sides[0]], n_frames)
            if sides[0] < 0:
                lambdas = lambdas[::-1].copy()  # always ordered by lambda
        frames, probs = sweep(lambdas)
    finally:
        model.train(was_training)
    zero = int(np.argmin(np.abs(lambdas)))
    primary = -1.0 if direction in ("decrease", "both") else 1.0
    end = int(np.argmin(lambdas)) if primary < 0 else int(np.argmax(lambdas))
    names = list(class_names) if class_names else []
    return Counterfactual(
        frames=np.clip(frames, 0.0, 1.0),
        lambdas=lambdas,
        probabilities=probs,
        original=x[0, 0].float().cpu().numpy(),
        reconstruction=frames[zero],
        counterfactual=frames[end],
        difference=frames[end] - frames[zero],
        target_class=target_class,
        class_name=str(names[target_class]) if target_class < len(names) else f"class {target_class}",
        direction=direction,
        start_probability=start,
        end_probability=float(probs[end]),
        reached=bool(reached[primary]),
        target_change=float(target_change),
        gradient_norm=grad_norm,
    )


def counterfactual_gif(cf: Counterfactual, duration_ms: int = 150, scale: int = 3) -> bytes:
    """Animated GIF of the frames (forward then back), each captioned with its probability."""
    from pumamed.explain.export import traversal_gif

    labels = [f"p={p:.2f}" for p in cf.probabilities]
    return traversal_gif(cf.frames, duration_ms=duration_ms, scale=scale, bounce=True,
                         label=cf.class_name[:18], frame_labels=labels)


def decision_counterfactuals(model, images, *, max_shift: float = 30.0, n_search: int = 61,
                             detail: str = "image", batch_size: int = 16, task: str | None = None,
                             min_confidence: float = 0.0, centroids=None, centroid_span: float = 3.0) -> dict:
    """The latent-shift counterfactual *away from the model's decision*, for a batch of images.

    For each image ``x`` with code ``mu`` and predicted class ``c = argmax head(mu)``, walk the
    global code along the unit gradient that lowers ``p_c`` of the decoded, re-encoded frame
    (``head(mu(D(z)))``, as :func:`latent_shift` with ``through="image"``) and stop at the first
    grid point (``n_search`` points over ``0..max_shift``) where the model's decision on the
    frame is no longer ``c`` (and, with ``min_confidence`` > 0, the model gives its new class at
    least that probability: a walk past the boundary, for pictures that show the new class rather
    than a tie). The detail code (hierarchical models) is held at the image's own
    value (``detail="image"``), at the prior mean (``"mean"``) or redrawn (``"resampled"``).

    ``centroids`` (classes x latent_dim, the mean training code of each class, as
    ``trust.class_centroids`` stores): walk instead from ``mu`` along the difference between
    the centroid of the runner-up class (the second most probable on ``mu``) and that of ``c``,
    ``mu + f (centroid_t - centroid_c)`` for ``f`` on ``n_search`` points over
    ``0..centroid_span``. That direction is what separates the classes in the training codes,
    not what moves the classifier fastest: the gradient finds the shortest way across the
    model's boundary, often by edits a second classifier does not read as the other class.

    ``images``: N x 1 x S x S in [0, 1] (float tensor or array). Returns NumPy arrays:
    ``reconstruction`` and ``counterfactual`` (N x S x S, both decoded, so the autoencoder's own
    error is common to both), ``predicted`` (c), ``decision`` (the model's class on the final
    frame), ``flipped`` (the decision changed within ``max_shift``) and ``shift`` (latent units)."""
    import torch

    require_classifier(model)
    task = model_task(model, task)
    if task == "multilabel":
        raise InputError("a decision counterfactual needs one decision per image; multi-label models have one per "
                         "finding (use latent_shift with a chosen finding)")
    if not max_shift > 0 or n_search < 2:
        raise InputError("max_shift must be positive and n_search at least 2")
    if not 0.0 <= min_confidence < 1.0:
        raise InputError(f"min_confidence is a probability in [0, 1), got {min_confidence}")
    device = model_device(model)
    images = torch.as_tensor(np.asarray(images, dtype=np.float32) if not torch.is_tensor(images) else images)
    was_training = model.training
    model.eval()
    if centroids is not None:
        centroids = torch.as_tensor(np.asarray(centroids, dtype=np.float32), device=device)
        if centroids.ndim != 2 or len(centroids) < 2 or not centroid_span > 0:
            raise InputError("centroids must be classes x latent_dim (at least two classes) and centroid_span positive")
        grid = torch.linspace(0.0, float(centroid_span), n_search, device=device)[1:]
    else:
        grid = torch.linspace(0.0, float(max_shift), n_search, device=device)[1:]
    out = {k: [] for k in ("reconstruction", "counterfactual", "predicted", "decision", "flipped", "shift")}
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).float()
            with torch.no_grad():
                mu, detail_code = _encode_for_explanation(model, x, detail)
                start_probabilities = head_probabilities(model, mu, task)
                predicted = start_probabilities.argmax(1)
            rows = torch.arange(len(x), device=device)
            if centroids is None:
                z = mu.detach().clone().requires_grad_(True)
                frames = _decode(model, z, detail_code)
                frame_mu, _ = model.encode(frames)
                p = head_probabilities(model, frame_mu, task)[rows, predicted]
                (grad,) = torch.autograd.grad(p.sum(), z)
                norms = grad.norm(dim=1, keepdim=True)
                unit = torch.where(norms > 0, -grad / norms.clamp_min(1e-12), torch.zeros_like(grad))
            else:
                with torch.no_grad():
                    frames = _decode(model, mu, detail_code)
                    runner_up = _runner_up(start_probabilities, predicted)
                    unit = centroids[runner_up] - centroids[predicted]  # the grid is in fractions of it
            with torch.no_grad():
                recon = frames.detach()
                b, steps = len(x), len(grid)
                codes = (mu[:, None, :] + grid[None, :, None] * unit[:, None, :]).reshape(b * steps, -1)
                held = None if detail_code is None else detail_code.repeat_interleave(steps, dim=0)
                swept = _decode(model, codes, held)
                probabilities = head_probabilities(model, model.encode(swept)[0], task)
                confidence, decisions = probabilities.max(1)
                decisions, confidence = decisions.reshape(b, steps), confidence.reshape(b, steps)
                changed = (decisions != predicted[:, None]) & (confidence >= min_confidence)
                flipped = changed.any(1)
                # the first grid point where the decision changed, else the end of the walk
                index = torch.where(flipped, changed.float().argmax(1), torch.full_like(predicted, steps - 1))
                swept = swept.reshape(b, steps, *swept.shape[1:])
                counterfactual = swept[rows, index]
            out["reconstruction"].append(recon[:, 0].float().cpu())
            out["counterfactual"].append(counterfactual[:, 0].float().cpu())
            out["predicted"].append(predicted.cpu())
            out["decision"].append(decisions[rows, index].cpu())
            out["flipped"].append(flipped.cpu())
            # latent units: the gradient walk's grid is in them, the centroid walk's in fractions of unit
            out["shift"].append((grid[index] * unit.norm(dim=1) if centroids is not None else grid[index]).cpu())
    finally:
        model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in out.items()}
