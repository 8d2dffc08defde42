"""Evaluate a checkpoint on one split of a dataset: what ``python -m pumamed evaluate`` prints."""

from __future__ import annotations

from pumamed.errors import InputError


def evaluate_checkpoint(model_dir, dataset: str, split: str = "test", data_dir=None, device=None,
                        batch_size: int = 256, latency_repeats: int = 30) -> dict:
    """One JSON-able dict: n, auc (macro + per class; one-vs-rest for multiclass), accuracy,
    balanced accuracy, reconstruction error (PumaMedNet), and the classification path's
    parameters, FLOPs (torch.utils.flop_counter, per image) and median CPU latency per image."""
    from pumamed.config import select_device
    from pumamed.net.checkpoint import load_model
    from pumamed.net.data import load_arrays
    from pumamed.net.metrics import batched_outputs, classification_metrics, model_cost

    device = select_device(device)
    loaded = load_model(model_dir, device=device)
    size = loaded.image_size
    data = load_arrays([dataset], split, size, data_dir)
    result = {"model": str(model_dir), "arch": loaded.arch, "dataset": dataset, "split": split, "n": len(data),
              "image_size": size, "task": data.task, "device": str(device)}
    has_classifier = loaded.arch == "resnet18" or getattr(loaded.model, "classifier", None) is not None
    if has_classifier:
        if list(loaded.class_names) != list(data.class_names):
            raise InputError(f"the model predicts {loaded.class_names} but {dataset} has classes "
                             f"{list(data.class_names)}; evaluate it on the dataset it was trained for")
        if loaded.task != data.task:
            raise InputError(f"the model was trained for a {loaded.task} task but {dataset} is {data.task}")
    out = batched_outputs(loaded.model, data.images, device, batch_size=batch_size)
    if has_classifier:
        metrics = classification_metrics(data.labels.numpy(), out["proba"], data.task, data.class_names)
        result.update({k: metrics[k] for k in ("auc", "accuracy", "balanced_accuracy")})
    else:
        result.update({"auc": None, "accuracy": None, "balanced_accuracy": None})
    result["reconstruction_error"] = float(out["recon_mse"].mean()) if "recon_mse" in out else None
    result["reconstruction_metric"] = "mean squared error per pixel, images in [0, 1], z = mu"
    cost = model_cost(loaded.model, size, latency_repeats=latency_repeats)
    result["parameters"] = cost["parameters"]
    result["flops"] = cost["flops"]
    result["cpu_latency_ms"] = cost["cpu_latency_ms"]
    result["cpu_threads"] = cost["cpu_threads"]
    result["cost_of"] = "classification path (encoder -> mu -> classifier)" if loaded.arch == "pumamednet" else "whole network"
    return result
