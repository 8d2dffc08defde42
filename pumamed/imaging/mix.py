"""Multi-dataset mix for pretraining (MIMeta-style: all modalities at once, one head per dataset).

``mix[i]`` -> ``(image, target)`` with ``target = {"dataset": int, "label": float32 vector}``:
``label`` concatenates every dataset's classes (one-hot for binary / multiclass, multi-hot for
multi-label) and is zero outside the sample's own dataset's slice ``mix.task_slices[name]``, so a
default DataLoader collates it and a multi-head loss reads the slice of each sample's dataset.
``mix.metadata`` has one row per sample with ``dataset`` and ``modality`` (plus each dataset's own
columns). :func:`balanced_sampler` draws every dataset equally often regardless of its size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from pumamed.errors import InputError
from pumamed.imaging.registry import DATASETS, load_dataset


class PretrainingMix(Dataset):
    def __init__(self, datasets, transform=None):
        if not datasets:
            raise InputError("a pretraining mix needs at least one dataset")
        sizes = {d.size for d in datasets}
        if len(sizes) != 1:
            raise InputError(f"all datasets of a mix must have one size, got {sorted(sizes)}")
        self.datasets = list(datasets)
        self.names = [d.name for d in self.datasets]
        self.size = sizes.pop()
        self.transform = transform
        self.task_slices: dict[str, slice] = {}
        self.tasks = {d.name: d.task for d in self.datasets}
        self.class_names: list[str] = []
        start = 0
        for d in self.datasets:
            self.task_slices[d.name] = slice(start, start + d.num_classes)
            self.class_names += [f"{d.name}:{c}" for c in d.class_names]
            start += d.num_classes
        self.n_outputs = start
        self.lengths = np.array([len(d) for d in self.datasets])
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.dataset_ids = np.repeat(np.arange(len(self.datasets)), self.lengths)
        self.modalities = [d.modality for d in self.datasets]
        self.metadata = pd.concat([d.metadata.assign(dataset=d.name, modality=d.modality)
                                   for d in self.datasets], ignore_index=True)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def preload(self) -> "PretrainingMix":
        for d in self.datasets:
            d.preload()
        return self

    def _locate(self, i: int) -> tuple[int, int]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return k, i - int(self.offsets[k])

    def __getitem__(self, i: int):
        k, j = self._locate(i)
        dataset = self.datasets[k]
        image = dataset.image(j)
        if self.transform is not None:
            image = self.transform(image)
        vector = torch.zeros(self.n_outputs, dtype=torch.float32)
        part = self.task_slices[dataset.name]
        if dataset.task == "multilabel":
            vector[part] = torch.from_numpy(np.asarray(dataset.labels[j], dtype=np.float32))
        else:
            vector[part.start + int(dataset.labels[j])] = 1.0
        return image, {"dataset": k, "label": vector}

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={l}" for n, l in zip(self.names, self.lengths))
        return f"PretrainingMix({parts}, size={self.size})"


def make_pretraining_mix(names=None, split: str = "train", size: int = 64, data_dir=None,
                         transform=None, skip_missing: bool = False) -> PretrainingMix:
    """Concatenate one split of several datasets (default: every registered one) at one size.

    ``skip_missing=True`` leaves out datasets absent from the data directory instead of raising.
    """
    from pumamed.errors import DataError

    names = list(names) if names else list(DATASETS)
    datasets = []
    for name in names:
        try:
            datasets.append(load_dataset(name, split=split, size=size, data_dir=data_dir))
        except DataError:
            if not skip_missing:
                raise
    return PretrainingMix(datasets, transform=transform)


def balanced_sampler(mix: PretrainingMix, seed: int = 0, num_samples: int | None = None,
                     replacement: bool = True) -> WeightedRandomSampler:
    """Each dataset drawn with equal probability (each sample weighted 1 / its dataset's size).

    ``num_samples`` defaults to the mix's length (one "epoch"). Seeded, so a run is reproducible.
    """
    weights = 1.0 / mix.lengths[mix.dataset_ids]
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples or len(mix),
                                 replacement=replacement, generator=generator)
