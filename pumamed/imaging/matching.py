"""Which datasets a model may be shown: those of its own imaging modality.

A classifier trained on brain MRI still returns a probability for a chest X-ray, and the number
looks as confident as any other ("pneumonia, p = 0.63" for a glioma). The pages therefore list
only the datasets of the model's modality, and offer the rest only on an explicit request, with a
warning (:func:`modality_mismatch_warning`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pumamed.imaging.registry import DATASETS

MODALITY_NAMES = {"chest_xray": "chest X-ray", "brain_mri": "brain MRI", "breast_ultrasound": "breast ultrasound",
                  "mammography": "mammography", "mixed": "mixed modalities", "unknown": "unknown modality"}
# Checkpoint names that say their modality when the config names no registered dataset.
_NAME_HINTS = {"chest": "chest_xray", "brain": "brain_mri", "breast": "breast_ultrasound"}


def modality_name(modality: str) -> str:
    return MODALITY_NAMES.get(modality, modality.replace("_", " "))


def trained_datasets(config: dict | None) -> list[str]:
    """Registered dataset names a checkpoint was trained (or fine-tuned) on, from the ``datasets``
    / ``dataset`` entries of its config's ``data`` section. Pretraining sources (``init_datasets``)
    do not count: they do not decide what the classifier head has learned to read."""
    cfg = config if isinstance(config, dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    named = data.get("datasets", data.get("dataset", []))
    if isinstance(named, str):
        named = named.replace(";", ",").split(",")
    found: list[str] = []
    for name in named if isinstance(named, (list, tuple)) else []:
        name = str(name).strip()
        if name in DATASETS and name not in found:
            found.append(name)
    return found


def model_modality(datasets: list[str], name: str = "") -> str:
    """The one modality of ``datasets``; ``mixed`` for several; else guessed from the name, or
    ``unknown``."""
    modalities = sorted({DATASETS[d].modality for d in datasets if d in DATASETS})
    if len(modalities) == 1:
        return modalities[0]
    if modalities:
        return "mixed"
    return next((m for key, m in _NAME_HINTS.items() if key in name.lower()), "unknown")


@dataclass(frozen=True)
class DatasetChoice:
    """Datasets present for a model: ``matching`` (its own first, then its modality's) and
    ``others`` (another modality: offered only on request)."""

    matching: list[str]
    others: list[str]
    modality: str

    def options(self, show_all: bool) -> list[str]:
        return self.matching + (self.others if show_all else [])

    def is_foreign(self, dataset: str) -> bool:
        return dataset in self.others


def datasets_for_model(own: list[str], modality: str, present: list[str]) -> DatasetChoice:
    """Split the ``present`` datasets into those a model of ``modality`` (trained on ``own``) can
    read and the others. A model of unknown modality matches everything (nothing to compare);
    a mixed model matches the modalities of its own datasets."""
    if modality == "unknown" and not own:
        return DatasetChoice(list(present), [], modality)
    modalities = {DATASETS[d].modality for d in own if d in DATASETS} or {modality}
    mine = [d for d in own if d in present]
    same = [d for d in present if d not in mine and d in DATASETS and DATASETS[d].modality in modalities]
    rest = [d for d in present if d not in mine and d not in same]
    return DatasetChoice(mine + same, rest, modality)


def modality_mismatch_warning(model_name: str, modality: str, dataset: str) -> str:
    """What a prediction on a dataset of another modality is worth, in one sentence."""
    other = DATASETS[dataset].modality if dataset in DATASETS else "unknown"
    return (f"{model_name} was trained on {modality_name(modality)} images; {dataset} is "
            f"{modality_name(other)}. Its class probabilities on these images are meaningless "
            "(the classifier always answers with one of its own classes).")
