"""Classification metrics, model cost (parameters, FLOPs, CPU latency) and batched inference."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch


def _safe_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return None  # undefined with one class present
    return float(roc_auc_score(y, score))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, task: str, class_names) -> dict:
    """AUC (macro and per class; one-vs-rest for multiclass), accuracy, balanced accuracy.

    ``proba`` is N x num_classes as returned by ``predict_proba`` (binary: columns [1-p, p])."""
    from sklearn.metrics import balanced_accuracy_score

    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    class_names = list(class_names) or [str(i) for i in range(proba.shape[1])]
    out: dict = {"n": int(len(y_true))}
    if task == "multilabel":
        per = {name: _safe_auc(y_true[:, k], proba[:, k]) for k, name in enumerate(class_names)}
        pred = proba >= 0.5
        accs = [(pred[:, k] == y_true[:, k]).mean() for k in range(len(class_names))]
        bals = [balanced_accuracy_score(y_true[:, k], pred[:, k]) for k in range(len(class_names))
                if len(np.unique(y_true[:, k])) > 1]
        out["accuracy"] = float(np.mean(accs))
        out["balanced_accuracy"] = float(np.mean(bals)) if bals else None
    elif task == "binary":
        y = y_true.astype(int)
        auc = _safe_auc(y, proba[:, 1])
        per = {class_names[1]: auc}
        pred = (proba[:, 1] >= 0.5).astype(int)
        out["accuracy"] = float((pred == y).mean())
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) > 1 else None
    else:
        y = y_true.astype(int)
        per = {name: _safe_auc((y == k).astype(int), proba[:, k]) for k, name in enumerate(class_names)}
        pred = proba.argmax(1)
        out["accuracy"] = float((pred == y).mean())
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
    defined = [v for v in per.values() if v is not None]
    out["auc"] = {"macro": float(np.mean(defined)) if defined else None, "per_class": per}
    return out


def _one_vs_rest(y_true: np.ndarray, proba: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(binary targets N x K, scores N x K) over the classes the macro AUC averages."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if task == "multilabel":
        return y_true.astype(bool), proba
    if task == "binary":
        return (y_true.astype(int) == 1)[:, None], proba[:, 1:2]
    y = y_true.astype(int)
    return y[:, None] == np.arange(proba.shape[1])[None, :], proba


def _macro_auc_rows(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC of every row of a batch of resamples: ``positive`` and ``scores``
    are R x N x K. AUC by the rank-sum (Mann-Whitney) identity with average ranks for ties, the
    same value as ``roc_auc_score``; classes with one label only in a row are left out of its mean."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(1)
    n_neg = positive.shape[1] - n_pos
    rank_sum = (ranks * positive).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    with warnings.catch_warnings():  # a row with no defined class is NaN, dropped by the caller
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(auc, axis=1)


def paired_auc_bootstrap(y_true: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, task: str,
                         n_boot: int = 2000, seed: int = 0, chunk: int = 250) -> dict:
    """Macro AUC of two models on the same images, and their difference A - B with a 95 %
    percentile interval from a paired bootstrap: each replicate resamples images once and scores
    both models on them, so what the two share (hard and easy images) cancels out of the
    difference. For binary and multiclass tasks images are resampled within each class, which
    keeps every class present; multilabel resamples images as a whole."""
    positive, score_a = _one_vs_rest(y_true, proba_a, task)
    _, score_b = _one_vs_rest(y_true, proba_b, task)
    n = len(positive)
    if n < 2 or score_a.shape != score_b.shape:
        raise ValueError("paired_auc_bootstrap needs two score matrices of the same shape for the same images")
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        strata = [np.arange(n)]
    else:
        labels = np.asarray(y_true).astype(int)
        strata = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    full = np.arange(n)[None, :]
    auc_a = float(_macro_auc_rows(positive[full], score_a[full])[0])
    auc_b = float(_macro_auc_rows(positive[full], score_b[full])[0])
    diffs = []
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        index = np.concatenate([members[rng.integers(0, len(members), size=(rows, len(members)))]
                                for members in strata], axis=1)
        diffs.append(_macro_auc_rows(positive[index], score_a[index])
                     - _macro_auc_rows(positive[index], score_b[index]))
    diffs = np.concatenate(diffs)
    diffs = diffs[np.isfinite(diffs)]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"auc_a": auc_a, "auc_b": auc_b, "difference": auc_a - auc_b, "ci95": [float(low), float(high)],
            "se": float(diffs.std(ddof=1)), "p_a_not_below_b": float((diffs >= 0).mean()),
            "n_boot": int(len(diffs)), "stratified": task != "multilabel", "seed": seed}


@torch.no_grad()
def batched_outputs(model, images_uint8: torch.Tensor, device, batch_size: int = 256,
                    want_recon: bool = True) -> dict:
    """Run a model over uint8 N x 1 x S x S images: probabilities, mu, logvar and the per-image
    mean squared reconstruction error (PumaMedNet only)."""
    from pumamed.config import autocast
    from pumamed.net.image_quality import SSIM_WINDOW, psnr, ssim
    from pumamed.net.inference import encode_dataset

    model.eval()
    probs, errs, psnrs, ssims = [], [], [], []
    is_vae = hasattr(model, "decode")
    has_head = getattr(model, "classifier", None) is not None or not is_vae
    mu_all = logvar_all = None
    if is_vae:
        def score(x, mu, logvar, detail_mu):
            if want_recon:
                recon = model.decode(mu, detail_mu).float()
                errs.append((recon - x).pow(2).flatten(1).mean(1).cpu())
                psnrs.append(psnr(recon, x).cpu())
                if min(x.shape[-2:]) >= SSIM_WINDOW:
                    ssims.append(ssim(recon, x).cpu())
            if has_head:
                from pumamed.net.model import logits_to_proba

                probs.append(logits_to_proba(model.classifier(mu), model.config.task).cpu())

        mu_all, logvar_all = encode_dataset(model, images_uint8, batch_size=batch_size, device=device, amp=True,
                                            detail=True, on_batch=score)
    else:
        for start in range(0, len(images_uint8), batch_size):
            x = images_uint8[start:start + batch_size].to(device).float().div_(255.0)
            with autocast(device):
                probs.append(model.predict_proba(x).float().cpu())
    out = {}
    if probs:
        out["proba"] = torch.cat(probs).numpy()
    if mu_all is not None and len(images_uint8):
        out["mu"] = mu_all
        out["logvar"] = logvar_all
    if errs:
        out["recon_mse"] = torch.cat(errs).numpy()
        out["recon_psnr"] = torch.cat(psnrs).numpy()
    if ssims:
        out["recon_ssim"] = torch.cat(ssims).numpy()
    return out


def mean_with_interval(values) -> dict:
    """Mean and a normal-approximation 95 % interval of the mean (per-image figures over a split)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = float(values.mean())
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(values.size) if values.size > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half] if math.isfinite(half) else None, "n": int(values.size)}


def proportion_with_interval(hits) -> dict:
    """A share with its Wilson 95 % interval (well behaved near 0 and 1, unlike the normal one)."""
    hits = np.asarray(hits, dtype=bool)
    n = int(hits.size)
    if n == 0:
        return {"share": None, "ci95": None, "n": 0}
    p, z = float(hits.mean()), 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"share": p, "ci95": [max(0.0, centre - half), min(1.0, centre + half)], "n": n}


def classification_path(model) -> torch.nn.Module:
    """The module that turns an image into logits (encoder -> mu -> classifier for PumaMedNet)."""
    if hasattr(model, "decode"):
        from pumamed.net.model import ClassificationPath

        if model.classifier is None:
            return model.encoder
        return ClassificationPath(model)
    return model


def count_flops(fn, *inputs) -> int:
    """FLOPs of ``fn(*inputs)`` by ``torch.utils.flop_counter``, without gradients. Attention runs
    on the unfused path while counting: the fused CPU kernel has no FLOP formula there and would
    count as zero, while the unfused one does the same arithmetic as counted matrix products."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return int(counter.get_total_flops())


def model_cost(model, image_size: int, latency_repeats: int = 30) -> dict:
    """Parameters, FLOPs (torch.utils.flop_counter, one image) and median CPU latency per image
    (batch of one, current torch thread count) of the classification path."""
    import copy

    path = copy.deepcopy(classification_path(model)).to("cpu").float().eval()
    x = torch.rand(1, 1, image_size, image_size)
    flops = count_flops(path, x)
    times = []
    with torch.no_grad():
        for _ in range(5):
            path(x)
        for _ in range(latency_repeats):
            t0 = time.perf_counter()
            path(x)
            times.append(time.perf_counter() - t0)
    return {"parameters": int(sum(p.numel() for p in path.parameters())), "flops": flops,
            "cpu_latency_ms": float(np.median(times) * 1000.0), "cpu_threads": torch.get_num_threads()}


def kl_per_dim_from(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    return (0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar)).mean(0)


def finite_or_none(value):
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
