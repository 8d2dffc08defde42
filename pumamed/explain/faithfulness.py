"""Are PumaMedNet's pictures faithful to the images and to the decisions they explain?

Three questions, each answered by an *independent judge*: a classifier trained on original
images (typically the ResNet-18 baseline, ``python -m pumamed train --arch resnet18``), which
never saw a reconstruction and does not share PumaMedNet's encoder.

1. **Reconstruction** (no judge): PSNR and SSIM of the decoded posterior means against the
   inputs (:func:`pumamed.net.metrics.batched_outputs`).
2. **Faithfulness**: the judge's macro AUC on the originals and on the reconstructions, and
   ``(AUC_recon - 0.5) / (AUC_orig - 0.5)``: the share of the judge's skill above chance that
   survives the round trip through the autoencoder (1: the pictures keep everything the judge
   uses; 0: they keep nothing). Undefined when the judge itself is at chance.
3. **Counterfactuals**: for each image, the latent-shift counterfactual away from the model's own
   decision (:func:`pumamed.explain.counterfactual.decision_counterfactuals`). *Validity*: the
   share of images whose judge decision on the counterfactual differs from its decision on the
   reconstruction, the walk's starting frame (the picture changed what a second reader sees, not
   only PumaMedNet's head), counted only where the walk reached its goal (the model's decision
   changed within ``max_shift``): a walk that never did ends at an extreme frame that any judge
   may read differently, which ``judge_changed`` still counts. Against the original instead (``validity_vs_original``), a blurry
   model would score high for what its reconstructions already lost: on the first-release brain
   model the judge already disagrees between original and reconstruction on 46 % of the images.
   *Proximity*: SSIM between counterfactual and reconstruction (how little else changed).
   *Localisation* (datasets with lesion masks, mini-MIAS): mean absolute change inside the lesion
   over the mean outside it, per image with a lesion.

The judge reads images at its own size: inputs, reconstructions and counterfactuals are resized
to it (bilinear, antialiased) when the model's size differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pumamed.errors import InputError


def faithfulness_ratio(auc_reconstruction: float | None, auc_original: float | None) -> float | None:
    """``(AUC_recon - 0.5) / (AUC_orig - 0.5)``; None when either is undefined or the judge is at
    (or below) chance on the originals, where the ratio would divide by noise."""
    if auc_reconstruction is None or auc_original is None or auc_original <= 0.5 + 1e-9:
        return None
    return float((auc_reconstruction - 0.5) / (auc_original - 0.5))


def judge_probabilities(judge, images, device, batch_size: int = 64):
    """The judge's class probabilities (N x C) for N x S x S images in [0, 1] (array or tensor),
    resized to the judge's own input size."""
    import torch
    from torch.nn import functional as F

    from pumamed.config import autocast

    size = int(judge.config.image_size)
    device = torch.device(device)
    images = torch.as_tensor(np.asarray(images, dtype=np.float32)) if not torch.is_tensor(images) else images
    if images.dim() == 3:
        images = images[:, None]
    judge.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).float()
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            with autocast(device):
                out.append(judge.predict_proba(x.clamp(0, 1)).float().cpu())
    return torch.cat(out).numpy()


def decisions(proba: np.ndarray, task: str) -> np.ndarray:
    """One class per image: argmax for multiclass, p >= 0.5 for binary ([1 - p, p] columns)."""
    proba = np.asarray(proba)
    if task == "binary":
        return (proba[:, 1] >= 0.5).astype(int)
    return proba.argmax(1)


def lesion_localisation(change: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: mean |change| inside the lesion mask over the mean outside it (N,); NaN for
    an image whose mask is empty or covers everything. ``change``, ``masks``: N x S x S."""
    change = np.abs(np.asarray(change, dtype=np.float64))
    masks = np.asarray(masks, dtype=bool)
    inside_n, outside_n = masks.sum((1, 2)), (~masks).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = (change * masks).sum((1, 2)) / inside_n
        outside = (change * ~masks).sum((1, 2)) / outside_n
        ratio = inside / outside
    ratio[(inside_n == 0) | (outside_n == 0)] = np.nan
    return ratio


def stratified_subset(labels: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` images, in proportion to the classes (all when no limit)."""
    labels = np.asarray(labels)
    n = len(labels)
    if not limit or limit >= n:
        return np.arange(n)
    if labels.ndim > 1:  # multi-label: a plain seeded sample
        return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        take = max(1, int(round(limit * len(members) / n)))
        chosen.append(rng.choice(members, min(take, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))[:max(limit, len(chosen))]


def other_class_donors(labels, seed: int = 0) -> np.ndarray:
    """For each image, the index of an image of another class (drawn with ``seed``); -1 where the
    split has no other class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    donors = np.full(len(labels), -1)
    for value in np.unique(labels):
        others = np.flatnonzero(labels != value)
        if len(others):
            members = labels == value
            donors[members] = rng.choice(others, int(members.sum()))
    return donors


def other_detail_reading(model, judge, mu, detail, labels, task: str, class_names, auc_original: float, device,
                         batch_size: int = 64) -> dict:
    """The judge on each image's global code drawn with the detail code of an image of another
    class: its macro AUC against the global code's class (``auc_other_detail``) and its ratio. A
    judge that reads fine texture cannot read the smooth picture of the global code alone; with
    real texture from another class, this says how much of its evidence the global code carries
    (1: all, as the global code alone; below 0: the judge reads the detail's class. BUSI: 0.71,
    where the global code alone reads 0.62; docs/faithfulness.md X1). ``mu``, ``detail``: the
    split's global and residual detail codes (``encode_all``), in the order of ``labels``."""
    import torch

    from pumamed.net.metrics import classification_metrics

    labels = np.asarray(labels)
    donors = other_class_donors(labels)
    if (donors < 0).any():
        return {}
    with torch.no_grad():
        detail = detail[torch.as_tensor(donors, device=detail.device)]
        pictures = torch.cat([model.decode(mu[s:s + batch_size], detail[s:s + batch_size]).float().cpu()
                              for s in range(0, len(mu), batch_size)])
    proba = judge_probabilities(judge, pictures, device, batch_size)
    auc_global = classification_metrics(labels, proba, task, class_names)["auc"]["macro"]
    return {
        "auc_other_detail": auc_global, "ratio_other_detail": faithfulness_ratio(auc_global, auc_original),
        "definition_other_detail": "the judge's macro AUC, against the global code's class, on decode(mu, the "
                                   "residual detail code of an image of another class, drawn with seed 0), and its "
                                   "ratio as above",
    }


def score_faithfulness(model, judge, images, labels, task: str, class_names, device, batch_size: int = 64):
    """(faithfulness block, judge probabilities on the originals, on the reconstructions).

    ``model``: anything with ``reconstruct(x)`` (a PumaMedNet); ``images``: N x 1 x S x S float
    tensor in [0, 1]; ``judge``: a classifier with ``predict_proba`` and ``config.image_size``."""
    import torch

    from pumamed.net.metrics import classification_metrics

    with torch.no_grad():
        reconstructions = torch.cat([model.reconstruct(images[s:s + batch_size].to(device)).float().cpu()
                                     for s in range(0, len(images), batch_size)])
    proba_original = judge_probabilities(judge, images, device, batch_size)
    proba_recon = judge_probabilities(judge, reconstructions, device, batch_size)
    on_original = classification_metrics(labels, proba_original, task, class_names)
    on_recon = classification_metrics(labels, proba_recon, task, class_names)
    auc_o, auc_r = on_original["auc"]["macro"], on_recon["auc"]["macro"]
    block = {
        "n": int(len(labels)), "auc_original": auc_o, "auc_reconstruction": auc_r,
        "ratio": faithfulness_ratio(auc_r, auc_o),
        "per_class_auc_original": on_original["auc"]["per_class"],
        "per_class_auc_reconstruction": on_recon["auc"]["per_class"],
        "judge_agreement": float((decisions(proba_original, task) == decisions(proba_recon, task)).mean())
        if task != "multilabel" else None,
        "definition": "(AUC_recon - 0.5) / (AUC_orig - 0.5), macro AUC of the judge",
    }
    if getattr(model, "has_detail", False):
        # the picture of the global code alone (detail at its prior mean): what the walks and
        # traversals move. A judge that reads it near chance reads its evidence from the held detail
        # code, so edits of the global code rarely change its decision (breast against brain, A2)
        with torch.no_grad():
            codes = [model.encode_all(images[s:s + batch_size].to(device)) for s in range(0, len(images), batch_size)]
            mu, detail = torch.cat([c[0] for c in codes]), torch.cat([c[2] for c in codes])
            global_only = torch.cat([model.decode(mu[s:s + batch_size]).float().cpu()
                                     for s in range(0, len(mu), batch_size)])
        auc_g = classification_metrics(labels, judge_probabilities(judge, global_only, device, batch_size), task,
                                       class_names)["auc"]["macro"]
        block["global_code"] = {
            "auc": auc_g, "ratio": faithfulness_ratio(auc_g, auc_o),
            "definition": "the judge's macro AUC on decode(mu, detail code at its prior mean), and its ratio as above",
        }
        if task in ("binary", "multiclass"):
            block["global_code"].update(other_detail_reading(model, judge, mu, detail, labels, task, class_names,
                                                             auc_o, device, batch_size))
    return block, proba_original, proba_recon


def faithfulness_report(model_dir, dataset: str, judge_dir, split: str = "test", data_dir=None, device=None,
                        batch_size: int = 64, counterfactual_limit: int | None = None, max_shift: float = 30.0,
                        n_search: int = 61, detail: str = "image", seed: int = 0,
                        min_confidence: float = 0.0, direction: str = "gradient", centroid_span: float = 3.0) -> dict:
    """The ``faithfulness`` and ``counterfactuals`` blocks of ``evaluate --judge`` (JSON-able).
    ``direction``: ``"gradient"`` or ``"centroid"`` (the classes' mean training codes, from the
    checkpoint's trust file; see :func:`pumamed.explain.counterfactual.decision_counterfactuals`)."""
    import torch

    from pumamed.config import select_device
    from pumamed.explain.counterfactual import decision_counterfactuals
    from pumamed.imaging import load_dataset
    from pumamed.net.checkpoint import load_model
    from pumamed.net.data import from_imaging_dataset
    from pumamed.net.image_quality import ssim
    from pumamed.net.metrics import mean_with_interval, proportion_with_interval

    if counterfactual_limit is not None and counterfactual_limit < 1:
        raise InputError("the counterfactual limit must be at least 1 image")
    device = select_device(device)
    loaded = load_model(model_dir, device=device)
    if loaded.arch != "pumamednet":
        raise InputError(f"the model in {model_dir} is a {loaded.arch}, not a PumaMedNet: it has no pictures to judge")
    judge_loaded = load_model(judge_dir, device=device)
    if Path(judge_dir).resolve() == Path(model_dir).resolve():
        raise InputError("the judge must be another model than the one judged (e.g. the ResNet-18 baseline)")
    ds = load_dataset(dataset, split=split, size=loaded.image_size, data_dir=data_dir)
    data = from_imaging_dataset(ds)
    for name, other in (("model", loaded), ("judge", judge_loaded)):
        if list(other.class_names) != list(data.class_names) or other.task != data.task:
            raise InputError(f"the {name} predicts {list(other.class_names)} ({other.task}) but {dataset} has classes "
                             f"{list(data.class_names)} ({data.task}); judge a model on the dataset it was trained for")
    model, judge, task = loaded.model.eval(), judge_loaded.model.eval(), data.task
    labels = data.labels.numpy()
    images = data.images.float().div_(255.0)
    block, proba_original, proba_recon = score_faithfulness(model, judge, images, labels, task, data.class_names,
                                                            device, batch_size)
    report = {"faithfulness": {"judge": str(judge_dir), "judge_arch": judge_loaded.arch,
                               "judge_image_size": judge_loaded.image_size, **block}}
    if task == "multilabel":
        report["counterfactuals"] = {"skipped": "a decision counterfactual needs one decision per image; "
                                                "this dataset is multi-label"}
        return report

    centroids = None
    if direction == "centroid":
        trust = loaded.trust
        centroids = trust.class_centroids if trust is not None else None
        if centroids is None:
            raise InputError(f"{model_dir} stores no class centroids for the centroid walk: run python -m pumamed "
                             f"calibrate --model {model_dir}")
    elif direction != "gradient":
        raise InputError(f"direction must be gradient or centroid, got {direction!r}")
    if direction == "centroid":
        # the same grid step (1/20 of the distance between class means) whatever the span, so that a
        # longer walk only adds points beyond the shorter one's end
        n_search = int(round(20 * centroid_span)) + 1
    chosen = stratified_subset(labels, counterfactual_limit, seed)
    walked = decision_counterfactuals(model, images[chosen], max_shift=max_shift, n_search=n_search, detail=detail,
                                      batch_size=16, task=task, min_confidence=min_confidence,
                                      centroids=centroids, centroid_span=centroid_span)
    cf = torch.from_numpy(walked["counterfactual"])[:, None]
    rc = torch.from_numpy(walked["reconstruction"])[:, None]
    judge_cf = decisions(judge_probabilities(judge, cf, device, batch_size), task)
    judge_orig = decisions(proba_original[chosen], task)
    judge_rc = decisions(proba_recon[chosen], task)
    proximity = ssim(cf, rc).numpy() if min(cf.shape[-2:]) >= 11 else np.full(len(cf), np.nan)
    block = {
        "n": int(len(chosen)),
        "validity": proportion_with_interval(walked["flipped"] & (judge_cf != judge_rc)),
        "judge_changed": proportion_with_interval(judge_cf != judge_rc),
        "validity_vs_original": proportion_with_interval(walked["flipped"] & (judge_cf != judge_orig)),
        "model_decision_changed": proportion_with_interval(walked["flipped"]),
        "proximity_ssim": mean_with_interval(proximity),
        "shift": mean_with_interval(walked["shift"]),
        "settings": {"direction": "away from the model's predicted class", "walk": direction,
                     "max_shift": max_shift if direction == "gradient" else None,
                     "centroid_span": centroid_span if direction == "centroid" else None,
                     "n_search": n_search, "min_confidence": min_confidence, "detail": detail if getattr(model, "has_detail", False) else None,
                     "through": "image (decoded and re-encoded frames)", "seed": seed},
        "definition": "validity: the model's decision changed within max_shift and the judge's decision on the "
                      "counterfactual differs from its decision on the reconstruction (the walk's start, so what "
                      "the autoencoder already lost is not counted as the walk's doing; a walk that never changed "
                      "the model's mind ends far out at max_shift and counts as a failure, whatever the judge "
                      "says of that frame: judge_changed counts it); validity_vs_original compares with the "
                      "original image instead; proximity: SSIM(counterfactual, reconstruction)",
        "localisation": None,
    }
    masks = [ds.lesion_mask(int(i)) for i in chosen]
    if any(m is not None and m.any() for m in masks):
        with_lesion = np.array([m is not None and m.any() for m in masks])
        stack = np.stack([m for m, keep in zip(masks, with_lesion) if keep])
        change = (walked["counterfactual"] - walked["reconstruction"])[with_lesion]
        ratios = lesion_localisation(change, stack)
        block["localisation"] = {
            "ratio": mean_with_interval(ratios), "median": float(np.nanmedian(ratios)),
            "n_with_lesion": int(with_lesion.sum()),
            "definition": "mean |counterfactual - reconstruction| inside the lesion / outside it, per image"}
    report["counterfactuals"] = block
    return report
