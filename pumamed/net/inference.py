"""Batched inference without gradients: the one place a set of images is encoded to ``mu``.

:func:`encode_dataset` serves every caller that needs the codes of many images (evaluation
metrics, the explorer session, the bias audit, the planted-shortcut experiment, the pages):
images as a tensor or an array (uint8 scaled by 1/255, floats used as given) or a dataset whose
items are ``(image, label)``; ``on_batch`` lets a caller also decode or score each batch while it
is on the device.
"""

from __future__ import annotations

import numpy as np


def model_device(model):
    """The device of a model's parameters (the CPU for a model without any)."""
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _batch_tensor(data, rows, device):
    """Rows ``rows`` of ``data`` (tensor, array or dataset of ``(image, label)``) as a float
    B x 1 x S x S tensor on ``device``."""
    import torch

    if isinstance(data, torch.Tensor):
        x = data[rows]
    elif isinstance(data, np.ndarray):
        x = torch.as_tensor(data[rows])
    else:
        if isinstance(rows, slice):
            rows = range(*rows.indices(len(data)))
        x = torch.stack([torch.as_tensor(data[int(i)][0], dtype=torch.float32) for i in rows])
    x = x.to(device)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    elif not x.is_floating_point():
        x = x.float()
    if x.ndim == 3:
        x = x[:, None]
    return x


def encode_dataset(model, data, *, indices=None, batch_size: int = 256, device=None, amp: bool = False,
                   detail: bool = False, on_batch=None) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log-variances (N x D float32 arrays each) of ``data``, in batches.

    ``data``: N x 1 x S x S (or N x S x S) images as a tensor or an array (uint8 is scaled by
    1/255, floats are used as given), or a dataset whose items are ``(image, label)``;
    ``indices``: which items (default: all, in order). ``amp``: mixed precision on CUDA
    (:func:`pumamed.config.autocast`). ``on_batch(x, mu, logvar, detail_mu)`` is called with each
    batch's tensors on the device (``detail_mu`` is None unless ``detail`` is set and the model
    has a detail code), for callers that also decode or score the batch.
    """
    import contextlib

    import torch

    device = device or model_device(model)
    rows = None if indices is None else np.asarray(list(indices), dtype=int)
    n = len(data) if rows is None else len(rows)
    if amp:
        from pumamed.config import autocast

        precision = autocast(device)
    else:
        precision = contextlib.nullcontext()
    mus, logvars = [], []
    model.eval()
    with torch.inference_mode(), precision:
        for start in range(0, n, batch_size):
            part = slice(start, min(n, start + batch_size)) if rows is None else rows[start:start + batch_size]
            x = _batch_tensor(data, part, device)
            if detail:
                mu, logvar, detail_mu, _ = model.encode_all(x)
            else:
                (mu, logvar), detail_mu = model.encode(x), None
            mus.append(mu.float().cpu().numpy())
            logvars.append(logvar.float().cpu().numpy())
            if on_batch is not None:
                on_batch(x, mu, logvar, detail_mu)
    if not mus:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(mus), np.concatenate(logvars)
