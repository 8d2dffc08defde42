"""The PumaMedNet objective.

Per image (sums over pixels and latent dimensions, so beta = 1 is the usual ELBO scale)::

    loss = recon_weight * sum_px w(x) * (x_hat - x)^2                 weighted denoising reconstruction
         + beta_t * KL(q(z|x_corrupt) || N(0, I))                      (or beta * |KL - C_t| with capacity)
         + cls_weight * CE(classifier(mu), y)                          when the model has a classifier
           (with a teacher: (1 - a) * CE + a * T^2 * KL(teacher_T || classifier_T), distillation)
         + aux_weight * CE(aux_head(mu)[own slice], y)                 weak supervision on a mix
         + BCE(weight_net(x), error(x) / max error)                    trains the learned weight map only

``w(x)`` (mean 1 per image) is detached: the weight net learns to predict where the error will
be, from its own loss, and the reconstruction gradient never flows into it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pumamed.net.model import error_map, normalise_weights


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per sample and latent dimension (B x D, nats)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_gaussians(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) elementwise (nats); with mu_p = logvar_p = 0 it is
    :func:`kl_per_dim`. The prior's parameters may be plain numbers."""
    mu_p = torch.as_tensor(mu_p, dtype=mu_q.dtype, device=mu_q.device)
    logvar_p = torch.as_tensor(logvar_p, dtype=mu_q.dtype, device=mu_q.device)
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p) - 1.0)


def kl_schedule(step: float, total_steps: float, beta: float, warmup_fraction: float,
                capacity: float) -> tuple[float, float]:
    """(beta_t, C_t): beta rises linearly from 0 over the warm-up; the capacity C (nats) rises
    linearly over the whole run (Burgess et al. 2018) when given."""
    warm = max(1.0, warmup_fraction * total_steps)
    beta_t = beta * min(1.0, step / warm) if warmup_fraction > 0 else beta
    c_t = capacity * min(1.0, step / max(1.0, total_steps)) if capacity > 0 else 0.0
    return beta_t, c_t


def classification_loss(logits: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    logits = logits.float()
    if task == "multiclass":
        return F.cross_entropy(logits, target.long())
    if task == "binary":
        return F.binary_cross_entropy_with_logits(logits[:, -1], target.float())
    return F.binary_cross_entropy_with_logits(logits, target.float())


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, task: str,
                      temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): the student matches the teacher's probabilities softened by
    ``temperature``, scaled by T^2 so its gradients keep the size of the hard-label loss.
    Multiclass: KL(teacher || student) over the classes; binary and multilabel: the binary
    cross-entropy of each sigmoid against the teacher's (the same gradient as their KL)."""
    t = float(temperature)
    student, teacher = student_logits.float() / t, teacher_logits.float().detach() / t
    if task == "multiclass":
        soft = F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), reduction="batchmean",
                        log_target=True)
    elif task == "binary":
        soft = F.binary_cross_entropy_with_logits(student[:, -1], torch.sigmoid(teacher[:, -1]))
    else:
        soft = F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
    return soft * (t * t)


def mix_aux_loss(logits: torch.Tensor, label_vectors: torch.Tensor, dataset_ids: torch.Tensor,
                 slices: list[tuple[int, int, str]]) -> torch.Tensor:
    """Loss of a single head over the concatenated label space of a mix: each sample is scored
    only on its own dataset's slice (softmax for single-label tasks, sigmoid for multi-label).
    Rows are masked rather than selected, so the loss never waits for the device (no data-dependent
    shapes): a training step can then be captured into a CUDA graph."""
    logits = logits.float()
    total = logits.new_zeros(())
    for k, (start, stop, task) in enumerate(slices):
        rows = (dataset_ids == k).to(logits.dtype)
        part_logits = logits[:, start:stop]
        part_target = label_vectors[:, start:stop].to(logits.dtype)
        if task == "multilabel":
            per_row = F.binary_cross_entropy_with_logits(part_logits, part_target, reduction="none").sum(1) / (stop - start)
        else:
            per_row = F.cross_entropy(part_logits, part_target.argmax(1), reduction="none")
        total = total + (per_row * rows).sum()
    return total / max(1, len(logits))


def weighted_reconstruction(recon: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the per-image weighted sum of squared errors."""
    return (weights * (recon.float() - target.float()).pow(2)).flatten(1).sum(1).mean()


def split_fill(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the target with its fill black, the valid map: 1 on real pixels, 0 on fill).

    Training's augmentation marks the target pixels its warp filled from outside the image as NaN
    (``BatchAugment`` / ``DenoisingDataset`` with ``mark_fill``). The input shows that fill black,
    but the pictures a model draws at inference never have it: asked to redraw it, a decoder
    whose global code cannot say which images were filled hedges towards black in a corner for
    every image (the breast models' notch, docs/faithfulness.md D1-D2)."""
    valid = ~torch.isnan(target)
    return torch.where(valid, target, torch.zeros_like(target)), valid.to(target.dtype)


def weight_map(model, target: torch.Tensor, recon: torch.Tensor,
               valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weights for the loss (detached), the weight net's own loss or None); ``valid`` (1 = a
    real pixel, 0 = augmentation fill) zeroes the weights, and the error the weight net learns
    from, on the fill."""
    kind = model.config.weight_map
    own_loss = None
    if kind == "none":
        weights = torch.ones_like(target[:, :1])
    else:
        err = error_map(recon.detach().float(), target.float())
        if valid is not None:
            err = err * valid
        if kind == "error":
            weights = normalise_weights(err, model.config.weight_strength).detach()
        else:
            logits = model.weight_net(target).float()
            goal = err / err.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)
            own_loss = F.binary_cross_entropy_with_logits(logits, goal)
            weights = normalise_weights(torch.sigmoid(logits.detach()), model.config.weight_strength)
    return (weights if valid is None else weights * valid), own_loss
