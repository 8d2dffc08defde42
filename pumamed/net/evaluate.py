"""Evaluate a checkpoint on one split of a dataset: what ``python -m pumamed evaluate`` prints."""

from __future__ import annotations

import numpy as np

from pumamed.errors import InputError
from pumamed.net.baseline import BASELINE_ARCHITECTURES


def _predict(model_dir, dataset: str, split: str, data_dir, device, batch_size: int):
    """(loaded checkpoint, the split's data at the model's size, batched outputs, has a classifier)."""
    from pumamed.net.checkpoint import load_model
    from pumamed.net.data import load_arrays
    from pumamed.net.metrics import batched_outputs

    loaded = load_model(model_dir, device=device)
    data = load_arrays([dataset], split, loaded.image_size, data_dir)
    has_classifier = loaded.arch in BASELINE_ARCHITECTURES or getattr(loaded.model, "classifier", None) is not None
    if has_classifier:
        if list(loaded.class_names) != list(data.class_names):
            raise InputError(f"the model in {model_dir} predicts {loaded.class_names} but {dataset} has classes "
                             f"{list(data.class_names)}; evaluate it on the dataset it was trained for")
        if loaded.task != data.task:
            raise InputError(f"the model in {model_dir} was trained for a {loaded.task} task but {dataset} is "
                             f"{data.task}")
    out = batched_outputs(loaded.model, data.images, device, batch_size=batch_size)
    return loaded, data, out, has_classifier


def evaluate_checkpoint(model_dir, dataset: str, split: str = "test", data_dir=None, device=None,
                        batch_size: int = 256, latency_repeats: int = 30, against=None,
                        bootstrap: int = 2000, seed: int = 0) -> dict:
    """One JSON-able dict: n, auc (macro + per class; one-vs-rest for multiclass), accuracy,
    balanced accuracy, reconstruction error (PumaMedNet), and the classification path's
    parameters, FLOPs (torch.utils.flop_counter, per image) and median CPU latency per image.

    ``against``: a second checkpoint (e.g. the ResNet-18 baseline) evaluated on the same images;
    the dict then also holds its figures under ``"against"`` and the macro-AUC difference
    (this model minus that one) with a paired, class-stratified bootstrap 95 % interval under
    ``"difference"`` (``bootstrap`` replicates)."""
    from pumamed.config import select_device
    from pumamed.net.metrics import classification_metrics, mean_with_interval, model_cost, paired_auc_bootstrap

    if against is not None and bootstrap < 100:  # checked before any model is run
        raise InputError("`bootstrap` needs at least 100 replicates for a 95 % interval")
    device = select_device(device)

    def figures(model_dir):
        loaded, data, out, has_classifier = _predict(model_dir, dataset, split, data_dir, device, batch_size)
        result = {"model": str(model_dir), "arch": loaded.arch, "dataset": dataset, "split": split,
                  "n": len(data), "image_size": loaded.image_size, "task": data.task, "device": str(device)}
        if has_classifier:
            metrics = classification_metrics(data.labels.numpy(), out["proba"], data.task, data.class_names)
            result.update({k: metrics[k] for k in ("auc", "accuracy", "balanced_accuracy")})
        else:
            result.update({"auc": None, "accuracy": None, "balanced_accuracy": None})
        result["reconstruction_error"] = float(out["recon_mse"].mean()) if "recon_mse" in out else None
        result["reconstruction_metric"] = "mean squared error per pixel, images in [0, 1], z = mu"
        if "recon_psnr" in out:
            result["reconstruction"] = {
                "psnr_db": mean_with_interval(out["recon_psnr"]),
                "ssim": mean_with_interval(out["recon_ssim"]) if "recon_ssim" in out else None,
                "of": "decoded posterior means (global code and any detail code at their means) against the "
                      "inputs, images in [0, 1]; SSIM: 11-tap Gaussian window, sigma 1.5"}
        cost = model_cost(loaded.model, loaded.image_size, latency_repeats=latency_repeats)
        result.update({k: cost[k] for k in ("parameters", "flops", "cpu_latency_ms", "cpu_threads")})
        result["cost_of"] = ("classification path (encoder -> mu -> classifier)" if loaded.arch == "pumamednet"
                             else "whole network")
        return result, data, out.get("proba") if has_classifier else None

    result, data, proba = figures(model_dir)
    if against is None:
        return result
    if proba is None:
        raise InputError(f"the model in {model_dir} has no classifier head to compare")
    other, other_data, other_proba = figures(against)
    if other_proba is None:
        raise InputError(f"the `against` model in {against} has no classifier head to compare")
    if not np.array_equal(data.labels.numpy(), other_data.labels.numpy()):
        raise InputError("the two models did not see the same labelled images; compare them on one dataset split")
    result["against"] = {k: other[k] for k in ("model", "arch", "image_size", "auc", "accuracy",
                                                "balanced_accuracy", "parameters", "flops", "cpu_latency_ms",
                                                "cpu_threads", "cost_of")}
    paired = paired_auc_bootstrap(data.labels.numpy(), proba, other_proba, data.task, n_boot=bootstrap, seed=seed)
    result["difference"] = {"macro_auc": paired["difference"], "ci95": paired["ci95"], "se": paired["se"],
                            "p_not_below": paired["p_a_not_below_b"], "n_boot": paired["n_boot"],
                            "method": "paired bootstrap over images" + (", stratified by class"
                                                                         if paired["stratified"] else "")
                                      + f", percentile interval, seed {seed}"}
    return result
