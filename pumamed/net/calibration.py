"""Calibrating a checkpoint and evaluating its trust signals: the workflows over
:mod:`pumamed.net.trust` (the scores and figures) and :mod:`pumamed.net.checkpoint` (loading and
writing the folder), above both, so that neither imports the other's callers.

:func:`calibrate_checkpoint` is what ``python -m pumamed calibrate`` (and the end of training)
runs; :func:`evaluate_trust` gives the ``calibration`` and ``ood`` blocks of ``evaluate``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from pumamed.errors import InputError
from pumamed.net.trust import (
    DEFAULT_QUANTILE,
    ECE_BINS,
    FEATURES,
    TRUST_FILE,
    TRUST_FORMAT,
    TRUST_TENSORS,
    Trust,
    calibration_figures,
    class_centroids,
    combine,
    ece_noise_floor,
    fit_code_gaussian,
    fit_temperature,
    load_trust,
    logits_to_proba,
    model_outputs,
    ood_auroc,
    relation,
    reliability_diagram,
    safe_log,
)


def _own_datasets(loaded) -> list[str]:
    return list((loaded.config.get("data") or {}).get("datasets") or [])


def _available(names, data_dir) -> list[str]:
    from pumamed.imaging.registry import DATASETS

    found = []
    for name in names:
        info = DATASETS.get(name)
        if info is not None and info.path(data_dir).exists():
            found.append(name)
    return found


def _split_outputs(loaded, names, split: str, data_dir, device, batch_size: int) -> dict:
    from pumamed.net.data import load_arrays

    data = load_arrays(list(names), split, loaded.image_size, data_dir)
    out = model_outputs(loaded.model, data.images, device, batch_size)
    out["labels"] = None if data.labels is None else data.labels.numpy()
    out["task"] = data.task
    return out


def _select_features(z_in: dict, z_out: dict[str, dict]) -> tuple[tuple[str, ...], dict]:
    """The feature subset whose worst validation AUROC over the far-OOD datasets is highest
    (ties: higher mean); every subset's figures for the record."""
    names = [f for f in FEATURES if f in z_in]
    table = {}
    best, best_key = names and tuple(names), None
    for k in range(1, len(names) + 1):
        for subset in itertools.combinations(names, k):
            aucs = {d: ood_auroc(combine(z_in, subset), combine(z, subset)) for d, z in z_out.items()}
            table["+".join(subset)] = aucs
            if aucs:
                key = (min(aucs.values()), float(np.mean(list(aucs.values()))))
                if best_key is None or key > best_key:
                    best, best_key = subset, key
    return tuple(best), table


def calibrate_checkpoint(model_dir, dataset: str | None = None, data_dir=None, device=None, batch_size: int = 128,
                         quantile: float = DEFAULT_QUANTILE, report_test: bool = True, log=None,
                         select_against=None) -> dict:
    """Fit the temperature and the OOD score of a checkpoint on its validation split, write
    ``trust.json`` (+ ``trust.safetensors``) into the folder, and, with ``report_test``, add the
    test figures (calibration before/after, false alarms, AUROC against every other registered
    dataset present). ``select_against``: the other datasets whose validation splits choose the
    score's features (default: every registered dataset of another modality that is present).
    Returns the trust report."""
    from pumamed.config import select_device
    from pumamed.imaging.registry import DATASETS
    from pumamed.net.checkpoint import atomic_save_tensors, atomic_write_json, load_model

    if not 0.5 <= quantile < 1.0:
        raise InputError("`quantile` must be in [0.5, 1)")
    log = log or (lambda message: None)
    device = select_device(None if device is None else str(device))
    folder = Path(model_dir)
    loaded = load_model(folder, device=device)
    own = [dataset] if dataset else _own_datasets(loaded)
    if not own:
        raise InputError(f"{folder}: config.json does not name its training data; pass `dataset`")
    unknown = [n for n in own if n not in DATASETS]
    if unknown:
        raise InputError(f"unknown dataset {unknown[0]!r} (registered: {', '.join(DATASETS)})")
    is_vae = loaded.arch == "pumamednet"
    report: dict = {"format": TRUST_FORMAT, "version": 1, "model": folder.name, "datasets": own,
                    "task": loaded.task, "image_size": loaded.image_size, "fitted_on": "val"}

    log(f"encoding the validation split of {', '.join(own)}")
    val = _split_outputs(loaded, own, "val", data_dir, device, batch_size)
    has_head = "logits" in val and val["task"] in ("binary", "multiclass", "multilabel")
    trust = Trust(task=loaded.task)
    if has_head:
        temperature = fit_temperature(val["logits"], val["labels"], loaded.task)
        trust.temperature = temperature
        before = logits_to_proba(val["logits"], loaded.task)
        after = logits_to_proba(val["logits"], loaded.task, temperature)
        report["calibration"] = {
            "method": "temperature scaling of the classifier's logits, fitted by NLL on the validation split",
            "temperature": temperature, "bins": ECE_BINS,
            "val": {"n": int(len(val["labels"])), "before": calibration_figures(before, val["labels"], loaded.task),
                    "after": calibration_figures(after, val["labels"], loaded.task)}}
        log(f"temperature {temperature:.3f}: validation ECE {report['calibration']['val']['before']['ece']:.4f} -> "
            f"{report['calibration']['val']['after']['ece']:.4f}")

    if is_vae:
        log("encoding the training split (code mean and covariance)")
        train = _split_outputs(loaded, own, "train", data_dir, device, batch_size)
        trust.code_mean, trust.code_precision = fit_code_gaussian(train["mu"])
        if "detail_pooled" in train:
            trust.detail_mean, trust.detail_precision = fit_code_gaussian(train["detail_pooled"])
        raw = trust.feature_values(val)
        trust.center = {f: float(safe_log(v).mean()) for f, v in raw.items()}
        trust.scale = {f: float(max(safe_log(v).std(ddof=1), 1e-6)) for f, v in raw.items()}
        z_val = trust.standardised(val)
        others = [n for n in _available(DATASETS, data_dir) if n not in own]
        far = [n for n in (others if select_against is None else select_against) if relation(own, n) == "far"]
        z_far = {}
        for name in far:
            log(f"encoding the validation split of {name} (far OOD, to choose the score's features)")
            z_far[name] = trust.standardised(_split_outputs(loaded, [name], "val", data_dir, device, batch_size))
        features, table = _select_features(z_val, z_far)
        trust.features = features
        score_val = combine(z_val, features)
        trust.threshold = float(np.quantile(score_val, quantile))
        report["ood"] = {
            "score": "mean of the chosen features, each log-transformed and standardised on the validation split",
            "features": list(features), "center": trust.center, "scale": trust.scale, "threshold": trust.threshold,
            "quantile": quantile, "selection": {"rule": "highest worst-case AUROC against the validation splits "
                                                        "of the other modalities (ties: mean)",
                                                "candidates_val_auroc": table},
            "val": {"n": int(len(score_val)), "false_alarm_rate": float(trust.flagged(score_val).mean())}}
        tensors = {"code_mean": torch.from_numpy(trust.code_mean),
                   "code_precision": torch.from_numpy(trust.code_precision)}
        if trust.detail_mean is not None:
            tensors["detail_mean"] = torch.from_numpy(trust.detail_mean)
            tensors["detail_precision"] = torch.from_numpy(trust.detail_precision)
        if has_head:
            trust.class_centroids = class_centroids(train["mu"], train["labels"], loaded.task)
            if trust.class_centroids is not None:
                tensors["class_centroids"] = torch.from_numpy(trust.class_centroids)
        atomic_save_tensors(folder / TRUST_TENSORS, tensors, metadata={"format": TRUST_FORMAT})
        log(f"OOD score: {' + '.join(features)}; threshold {trust.threshold:.3f} (validation quantile {quantile})")
    trust.report = report
    if report_test:
        report["test"] = trust_test_figures(loaded, trust, own, data_dir=data_dir, device=device,
                                            batch_size=batch_size, log=log)
    atomic_write_json(folder / TRUST_FILE, report)
    return report


def trust_test_figures(loaded, trust: Trust, own, others=None, split: str = "test", data_dir=None, device=None,
                       batch_size: int = 128, log=None, reliability=None) -> dict:
    """The figures ``evaluate`` and the model cards report, on ``split`` (test by default):
    calibration before/after, AUC before/after, false alarms on the model's own images, and the
    OOD AUROC against each dataset in ``others`` (default: every other registered dataset present)."""
    from pumamed.imaging.registry import DATASETS
    from pumamed.net.metrics import classification_metrics, proportion_with_interval

    log = log or (lambda message: None)
    log(f"encoding the {split} split of {', '.join(own)}")
    data = _split_outputs(loaded, own, split, data_dir, device, batch_size)
    out: dict = {"split": split, "n": int(len(next(iter(v for v in data.values() if isinstance(v, np.ndarray)))))}
    if "logits" in data and trust.temperature is not None and data["labels"] is not None:
        task = loaded.task
        before = logits_to_proba(data["logits"], task)
        after = trust.calibrated_proba(data["logits"])
        auc_before = classification_metrics(data["labels"], before, task, loaded.class_names)["auc"]["macro"]
        auc_after = classification_metrics(data["labels"], after, task, loaded.class_names)["auc"]["macro"]
        out["calibration"] = {"temperature": trust.temperature, "bins": ECE_BINS,
                              "before": calibration_figures(before, data["labels"], task),
                              "after": calibration_figures(after, data["labels"], task),
                              "macro_auc": {"before": auc_before, "after": auc_after},
                              "accuracy_unchanged": bool(np.array_equal(before.argmax(1), after.argmax(1))),
                              "ece_if_perfectly_calibrated": ece_noise_floor(after, task)}
        if reliability is not None:
            out["calibration"]["reliability_diagram"] = str(reliability_diagram(
                before, after, data["labels"], task, reliability,
                title=f"{Path(loaded.path).name if loaded.path else 'model'} on {', '.join(own)} [{split}], "
                      f"T = {trust.temperature:.2f}"))
    if trust.has_ood and "mu" in data:
        own_scores = trust.ood_score(data)
        alarms = proportion_with_interval(trust.flagged(own_scores))
        out["ood"] = {"features": list(trust.features), "threshold": trust.threshold,
                      "false_alarm_rate": alarms["share"], "false_alarm_ci95": alarms["ci95"], "datasets": {}}
        if others is None:
            others = [n for n in _available(DATASETS, data_dir) if n not in own]
        for name in others:
            if name not in DATASETS:
                raise InputError(f"unknown dataset {name!r} for `ood` (registered: {', '.join(DATASETS)})")
            log(f"encoding the {split} split of {name}")
            other = _split_outputs(loaded, [name], split, data_dir, device, batch_size)
            scores = trust.ood_score(other)
            out["ood"]["datasets"][name] = {
                "relation": relation(own, name), "modality": DATASETS[name].modality, "n": int(len(scores)),
                "auroc": ood_auroc(own_scores, scores), "flagged": float(trust.flagged(scores).mean())}
    return out


def evaluate_trust(model_dir, dataset: str, split: str = "test", ood=None, data_dir=None, device=None,
                   batch_size: int = 128, reliability=None) -> dict:
    """The ``calibration`` and ``ood`` blocks of ``python -m pumamed evaluate``: the stored
    calibration applied to ``split`` of ``dataset`` (ECE, Brier, NLL and macro AUC before and
    after), false alarms on those images and, for each name in ``ood``, the AUROC of separating
    them from that dataset's images of the same split."""
    from pumamed.config import select_device
    from pumamed.imaging.registry import DATASETS
    from pumamed.net.checkpoint import load_model

    names = [n.strip() for n in (ood or []) if n and n.strip()]
    for name in names:
        if name not in DATASETS:
            raise InputError(f"unknown dataset {name!r} in `ood` (registered: {', '.join(DATASETS)})")
        if name == dataset:
            raise InputError(f"`ood` {name} is the model's own dataset; name other datasets")
    device = select_device(None if device is None else str(device))
    loaded = load_model(model_dir, device=device)
    trust = load_trust(model_dir)
    hint = f"no {TRUST_FILE} in {model_dir}: run python -m pumamed calibrate --model {model_dir}"
    if trust is None:
        if names or reliability is not None:
            raise InputError(hint)
        return {"calibration": {"skipped": hint}}
    if names and not trust.has_ood:
        raise InputError(f"{model_dir} has no OOD score (only PumaMedNet checkpoints have one)")
    figures = trust_test_figures(loaded, trust, [dataset], others=names, split=split, data_dir=data_dir,
                                 device=device, batch_size=batch_size, reliability=reliability)
    out = {}
    if "calibration" in figures:
        out["calibration"] = dict(figures["calibration"], split=split, n=figures["n"],
                                  method="temperature scaling fitted on the validation split")
    elif reliability is not None:
        raise InputError(f"{model_dir} has no classifier calibration to draw")
    if "ood" in figures:
        out["ood"] = dict(figures["ood"], split=split, n=figures["n"],
                          score=" + ".join(trust.features) + " (standardised on the validation split)",
                          auroc_of="the model's own images (negatives) against each dataset's images (positives)")
    return out
