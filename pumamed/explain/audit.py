"""Bias audit read from the latent space.

For a metadata attribute (sex, age, age group, view position, source dataset or modality, breast
tissue density, or any column a dataset carries) the audit answers four questions:

1. **Is the attribute encoded?** How well a cross-validated logistic regression (AUC, macro
   one-vs-rest for several groups) or ridge regression (R^2, continuous attributes) predicts it
   from ``mu``; splits are patient-wise when patient ids exist, so one patient's images never sit
   on both sides.
2. **Where?** Mutual information between the attribute and each latent dimension (sklearn's k-NN
   estimator). A dimension is *flagged* when its MI exceeds the 99th percentile of the same
   estimate with the attribute shuffled (a permutation null pooled over dimensions), so the flag
   means "more than chance", not "in the top k".
3. **Does the classifier behave differently per group?** AUC, TPR, FPR, expected calibration error
   and Brier score per group, with bootstrap confidence intervals (fairlearn's ``MetricFrame``) and
   the largest gap between groups.
4. **Can it be mitigated?** See :mod:`pumamed.explain.mitigation`; :func:`run_audit` reports the
   gap and the overall AUC before and after.

This module orchestrates; each part lives below it, so dependencies point one way:
:mod:`pumamed.explain.attributes` (which column, cleaned values, groups, continuous or not),
:mod:`pumamed.explain.probes` (questions 1 and 2), :mod:`pumamed.explain.fairness` (question 3)
and :mod:`pumamed.explain.mitigation` (question 4, which uses the fairness metrics). Everything
works on arrays (codes, labels, scores, metadata); :func:`encode_dataset` turns a model and a
dataset into those arrays once, so a page can cache them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pumamed.errors import DataError, InputError
from pumamed.explain.attributes import (  # noqa: F401 - the audit's attribute API, re-exported
    AGE_BINS,
    AGE_LABELS,
    ATTRIBUTE_COLUMNS,
    CONTINUOUS_ATTRIBUTES,
    DENSITY_NAMES,
    NON_ATTRIBUTES,
    SEX_NAMES,
    AttributeValues,
    attribute_values,
    available_attributes,
    clean_value,
)
from pumamed.explain.fairness import (  # noqa: F401 - re-exported
    GAP_METRICS,
    PROBE_AUC_FLOOR,
    SUBGROUP_METRICS,
    PerformanceVerdict,
    SubgroupReport,
    expected_calibration_error,
    performance_verdict,
    subgroup_performance,
)
from pumamed.explain.probes import (  # noqa: F401 - re-exported
    DimensionFlags,
    Predictability,
    attribute_predictability,
    conditional_mutual_information,
    dimension_effects,
    flag_dimensions,
    head_dependence,
    mutual_information,
    mutual_information_matrix,
)
from pumamed.jsonsafe import to_jsonable


# ----------------------------------------------------------------------------- encoded data
@dataclass
class LatentCodes:
    """A dataset seen through a model: codes, labels, classifier probabilities and metadata."""

    mu: np.ndarray  # N x D
    logvar: np.ndarray  # N x D
    labels: np.ndarray  # N (class index) or N x C (multi-label)
    probabilities: np.ndarray  # N x C, the model's own classifier head
    metadata: pd.DataFrame
    class_names: list[str]
    dataset_class_names: list[str] = field(default_factory=list)
    task: str = "multiclass"

    def __len__(self) -> int:
        return int(self.mu.shape[0])

    @property
    def patient_ids(self) -> np.ndarray | None:
        for column in ("patient_id", "Patient ID", "patient"):
            if column in self.metadata.columns:
                ids = self.metadata[column].astype(str).to_numpy()
                return ids if len(set(ids)) < len(ids) else None
        return None

    @property
    def head_matches_dataset(self) -> bool:
        """Whether the model's classifier predicts this dataset's classes (else a probe is used)."""
        if not self.dataset_class_names:
            return True
        return [str(c).lower() for c in self.class_names] == [str(c).lower() for c in self.dataset_class_names]


def encode_dataset(model, dataset, batch_size: int = 64, device=None, max_items: int | None = None,
                   class_names=None, task: str | None = None, seed: int = 0) -> LatentCodes:
    """Encode a dataset (``ds[i] -> (image, label)``, ``ds.metadata``) once: mu, logvar, head probabilities.

    ``max_items`` takes a seeded random subset (same subset every call), to bound the cost.
    """
    import torch

    from pumamed.explain.attributions import head_probabilities
    from pumamed.net.inference import encode_dataset as encode_images

    n = len(dataset)
    if n == 0:
        raise DataError("the dataset is empty")
    indices = np.arange(n)
    if max_items is not None and n > max_items:
        indices = np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))
    probs = []

    def score(x, mu, logvar, detail_mu):
        probs.append(head_probabilities(model, mu, task=task).float().cpu().numpy())

    labels = []

    class _LabelsRead:  # the dataset, keeping each item's label as the encoder reads the item
        def __len__(self):
            return n

        def __getitem__(self, i):
            item = dataset[i]
            labels.append(np.asarray(torch.as_tensor(item[1]).cpu().numpy()))
            return item

    mu, logvar = encode_images(model, _LabelsRead(), indices=indices, batch_size=batch_size, device=device,
                               on_batch=score)
    metadata = getattr(dataset, "metadata", None)
    metadata = (metadata.iloc[indices].reset_index(drop=True) if isinstance(metadata, pd.DataFrame)
                else pd.DataFrame(index=range(len(indices))))
    return LatentCodes(
        mu=mu, logvar=logvar, labels=np.stack(labels),
        probabilities=np.concatenate(probs), metadata=metadata,
        class_names=list(class_names) if class_names is not None else [str(i) for i in range(probs[0].shape[1])],
        dataset_class_names=list(getattr(dataset, "class_names", []) or []),
        task=task or getattr(dataset, "task", "multiclass"),
    )


# ----------------------------------------------------------------------------- the whole audit
NORMAL_CLASS_NAMES = ("normal", "notumor", "no finding", "no_finding", "healthy")


@dataclass
class BinaryTarget:
    y: np.ndarray  # N, 1 = positive
    head_score: np.ndarray | None  # N, the model head's probability of the positive outcome (None: no match)
    name: str  # what "positive" means, e.g. "abnormal" or "pneumonia"


def binary_target(codes: LatentCodes, positive=None) -> BinaryTarget:
    """Reduce the dataset's labels to one binary outcome for subgroup metrics.

    multilabel: any finding vs none (head: noisy-OR of the finding probabilities); binary: class
    1; multiclass: ``positive`` (name or index) vs the rest, by default "not normal" when the
    dataset has a normal class, else class 1 vs the rest.
    """
    names = [str(c) for c in (codes.dataset_class_names or codes.class_names)]
    labels = np.asarray(codes.labels)
    probs = codes.probabilities if codes.head_matches_dataset and codes.probabilities.size else None
    if labels.ndim == 2:
        y = (labels.sum(axis=1) > 0).astype(int)
        score = None if probs is None else 1.0 - np.prod(1.0 - probs, axis=1)
        return BinaryTarget(y, score, "any finding")
    labels = labels.astype(int)
    if positive is not None:
        index = names.index(str(positive)) if str(positive) in names else int(positive)
        if not 0 <= index < len(names):
            raise InputError(f"positive class {positive!r} is not one of {names}")
        score = None if probs is None else probs[:, index]
        return BinaryTarget((labels == index).astype(int), score, names[index])
    if len(names) == 2:
        return BinaryTarget((labels == 1).astype(int), None if probs is None else probs[:, 1], names[1])
    normal = next((i for i, c in enumerate(names) if c.lower() in NORMAL_CLASS_NAMES), None)
    if normal is not None:
        score = None if probs is None else 1.0 - probs[:, normal]
        return BinaryTarget((labels != normal).astype(int), score, f"not {names[normal]}")
    return BinaryTarget((labels == 1).astype(int), None if probs is None else probs[:, 1], names[1])


@dataclass
class AuditReport:
    attribute: str
    kind: str
    positive: str
    classifier: str  # "model head" or "logistic probe on mu"
    n_train: int
    n_test: int
    predictability: Predictability
    flags: DimensionFlags
    subgroups: SubgroupReport | None
    mitigation: "object | None"  # MitigationReport
    head_dependence: dict
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return to_jsonable({
            "attribute": self.attribute, "kind": self.kind, "positive": self.positive,
            "classifier": self.classifier, "n_train": self.n_train, "n_test": self.n_test,
            "predictability": self.predictability.to_dict(),
            "flagged_dimensions": self.flags.flagged,
            "mutual_information": self.flags.to_dict(),
            "subgroups": None if self.subgroups is None else self.subgroups.to_dict(),
            "mitigation": None if self.mitigation is None else self.mitigation.to_dict(),
            "head_dependence": self.head_dependence,
            "subgroups_judgeable": self.verdict().judgeable,
            "notes": self.notes,
        }, digits=5)

    def verdict(self) -> PerformanceVerdict:
        """Whether the subgroup gaps and mitigation ranking mean anything (see performance_verdict)."""
        return performance_verdict(self.subgroups, self.classifier)


def _patient_groups(frames) -> np.ndarray | None:
    """One group per patient (images without a patient id are their own group), or None when no
    patient has two images (then plain stratified folds are equivalent and cheaper)."""
    groups = []
    for frame in frames:
        ids = frame["patient_id"].tolist() if "patient_id" in frame.columns else [None] * len(frame)
        groups.extend(ids)
    labels = [f"image-{i}" if clean_value(v) is None else f"patient-{v}" for i, v in enumerate(groups)]
    return np.array(labels, dtype=object) if len(set(labels)) < len(labels) else None


def run_audit(train: LatentCodes, test: LatentCodes, attribute: str, positive=None, n_boot: int = 200,
              seed: int = 0, strategies=None, within_label: bool = True) -> AuditReport:
    """Audit one attribute: predictability, flagged dims, subgroup metrics, mitigation (module doc)."""
    from pumamed.explain.mitigation import compare_mitigations, fit_head

    notes = []
    attr_train = attribute_values(train.metadata, attribute)
    attr_test = attribute_values(test.metadata, attribute)
    both_mu = np.concatenate([train.mu, test.mu])
    both_attr = AttributeValues(attr_train.name, np.concatenate([attr_train.values, attr_test.values]),
                                attr_train.kind)
    patients = _patient_groups([train.metadata, test.metadata])
    predictability = attribute_predictability(both_mu, both_attr, patient_ids=patients, seed=seed)
    if train.task == "mix" or test.task == "mix":
        flags = flag_dimensions(both_mu, both_attr, seed=seed)
        notes.append("a mix of datasets has no common label: subgroup performance and mitigation do not apply")
        return AuditReport(attr_train.name, attr_train.kind, "(none)", "none", len(train), len(test),
                           predictability, flags, None, None, {}, notes)
    target_train = binary_target(train, positive)
    target_test = binary_target(test, positive)
    # Conditional on the label: a dimension is flagged for what it says about the attribute
    # beyond the diagnosis (see conditional_mutual_information).
    strata = np.concatenate([target_train.y, target_test.y]) if within_label else None
    flags = flag_dimensions(both_mu, both_attr, seed=seed, strata=strata)

    groups_test = attr_test.groups()
    probe = None
    if np.unique(target_train.y).size == 2:
        probe = fit_head(train.mu, target_train.y, seed=seed)
    if target_test.head_score is not None:
        scores, source, threshold = target_test.head_score, "model head", 0.5
    elif probe is not None:
        scores, source = probe.predict_proba(test.mu)[:, 1], "logistic probe on mu"
        threshold = float(target_train.y.mean())
        notes.append("the model's classifier does not predict this dataset's classes, so a logistic "
                     "probe fitted on the training codes stands in for it")
    else:
        scores, source, threshold = None, "none", 0.5
        notes.append("the training split holds a single class: no classifier to audit")
    subgroups = None
    if scores is not None:
        try:
            subgroups = subgroup_performance(target_test.y, scores, groups_test, threshold=threshold,
                                             n_boot=n_boot, seed=seed)
        except InputError as exc:
            notes.append(f"subgroup performance skipped: {exc}")
    mitigation = None
    dependence = {}
    if probe is not None:
        coef = probe.named_steps["logisticregression"].coef_[0]
        dependence = head_dependence(coef, flags.flagged)
        try:
            mitigation = compare_mitigations(train.mu, target_train.y, attr_train.values, test.mu, target_test.y,
                                             attr_test.values, groups_test, flagged_dims=flags.flagged,
                                             n_boot=n_boot, seed=seed, strategies=strategies,
                                             within_label=within_label)
        except InputError as exc:
            notes.append(f"mitigation skipped: {exc}")
    return AuditReport(attr_train.name, attr_train.kind, target_test.name, source, len(train), len(test),
                       predictability, flags, subgroups, mitigation, dependence, notes)


# ----------------------------------------------------------------------------- from a checkpoint
def dataset_task_for(loaded, dataset: str) -> str | None:
    """The label view of a dataset that matches a checkpoint (the registry's rule, e.g. NIH:
    binary or multi-label)."""
    from pumamed.imaging.registry import label_view_for

    return label_view_for(dataset, getattr(loaded, "task", None))


def codes_for(loaded, dataset: str, split: str, data_dir=None, max_items: int | None = None,
              seed: int = 0) -> LatentCodes:
    """Encode one split of a registered dataset with a loaded checkpoint (``pumamed.net.load_model``).

    ``dataset`` may name several datasets, comma-separated (a pretraining mix): their codes are
    concatenated, with ``dataset`` and ``modality`` in the metadata; such a mix has no common
    label, so only the latent-space parts of the audit apply (predictability, flags, MI).
    """
    from pumamed.imaging import load_dataset

    if getattr(loaded, "arch", "pumamednet") != "pumamednet":
        raise InputError(f"the audit reads the latent space of a PumaMedNet; {loaded.arch} has none")
    names = [n.strip() for n in str(dataset).split(",") if n.strip()]
    if len(names) > 1:
        parts = [codes_for(loaded, n, split, data_dir, max_items, seed) for n in names]
        metadata = pd.concat([p.metadata for p in parts], ignore_index=True)
        return LatentCodes(
            mu=np.concatenate([p.mu for p in parts]), logvar=np.concatenate([p.logvar for p in parts]),
            labels=np.full(len(metadata), -1), probabilities=np.concatenate([p.probabilities for p in parts]),
            metadata=metadata, class_names=parts[0].class_names, dataset_class_names=["(mix)"], task="mix")
    ds = load_dataset(dataset, split=split, size=loaded.image_size, data_dir=data_dir,
                      task=dataset_task_for(loaded, dataset))
    return encode_dataset(loaded.model, ds, max_items=max_items, class_names=loaded.class_names or None,
                          task=loaded.task, seed=seed)
