"""Training data for PumaMedNet: decoded images held in memory as uint8 tensors, with the
denoising augmentations of torchvision.transforms.v2 applied per sample.

Geometric augmentation (flip, rotation/scale/shift, perspective) is drawn once per sample and
applied to the clean image, which becomes the *target*; corruption (blur, noise, random erasing
of patches) is then applied to a copy that becomes the *input*. The decoder therefore learns to
restore defective or missing patches from their context.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pumamed.net.augment import FILLED_BELOW


@dataclass
class ArrayData:
    """A labelled image set in memory. ``labels``: (N,) int64 (binary / multiclass), (N, C)
    float32 (multilabel or a mix's concatenated label vectors), or None; ``dataset_ids`` (N,)
    for a mix (index into ``slices``: (start, stop, task) of each dataset's label slice)."""

    images: torch.Tensor  # uint8 N x 1 x S x S
    labels: torch.Tensor | None
    task: str | None = None
    class_names: tuple[str, ...] = ()
    dataset_ids: torch.Tensor | None = None
    slices: tuple = ()
    names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, n: int, seed: int = 0) -> "ArrayData":
        """A seeded random subset (stratification is not needed for smoke tests)."""
        if n >= len(self):
            return self
        idx = torch.from_numpy(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return ArrayData(self.images[idx], None if self.labels is None else self.labels[idx], self.task,
                         self.class_names, None if self.dataset_ids is None else self.dataset_ids[idx],
                         self.slices, self.names)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def from_imaging_dataset(ds) -> ArrayData:
    """An :class:`pumamed.imaging.ImagingDataset` as in-memory arrays (decodes once)."""
    images, labels = ds.as_tensors()
    labels = labels.float() if ds.task == "multilabel" else labels.long()
    return ArrayData(_to_uint8(images), labels, ds.task, tuple(ds.class_names), names=(ds.name,))


def from_mix(datasets) -> ArrayData:
    """Several imaging datasets as one mix: concatenated label vectors, each dataset's slice."""
    images, vectors, ids, slices, names = [], [], [], [], []
    total = sum(d.num_classes for d in datasets)
    start = 0
    for k, ds in enumerate(datasets):
        x, y = ds.as_tensors()
        vec = torch.zeros(len(ds), total)
        if ds.task == "multilabel":
            vec[:, start:start + ds.num_classes] = y.float()
        else:
            vec[torch.arange(len(ds)), start + y.long()] = 1.0
        slices.append((start, start + ds.num_classes, ds.task))
        start += ds.num_classes
        images.append(_to_uint8(x))
        vectors.append(vec)
        ids.append(torch.full((len(ds),), k, dtype=torch.long))
        names.append(ds.name)
    class_names = tuple(f"{d.name}:{c}" for d in datasets for c in d.class_names)
    return ArrayData(torch.cat(images), torch.cat(vectors), "mix", class_names, torch.cat(ids), tuple(slices),
                     tuple(names))


def geometric_transform():
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)),
        v2.RandomApply([v2.RandomPerspective(distortion_scale=0.2, p=1.0)], p=0.3),
    ])


def corruption_transform():
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.3, 1.5))], p=0.3),
        v2.RandomApply([v2.GaussianNoise(mean=0.0, sigma=0.04, clip=True)], p=0.5),
        v2.RandomErasing(p=0.5, scale=(0.01, 0.06), ratio=(0.5, 2.0), value=0.0),
        v2.RandomErasing(p=0.25, scale=(0.01, 0.04), ratio=(0.5, 2.0), value=0.0),
    ])


class DenoisingDataset(Dataset):
    """``ds[i]`` -> ``(input, target, label, dataset_id)``; label -1 / zeros when unlabelled."""

    def __init__(self, data: ArrayData, augment: bool = True, denoise: bool = True, mark_fill: bool = False):
        self.data = data
        self.geometric = geometric_transform() if augment else None
        self.corruption = corruption_transform() if denoise else None
        # as BatchAugment(mark_fill=True): target pixels the geometric transform filled from
        # outside the image are NaN (the loss leaves them out); the input keeps the black fill
        self.mark_fill = mark_fill

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        target = self.data.images[i].float().div_(255.0)
        inside = None
        if self.geometric is not None and self.mark_fill:
            # the image and a plane of ones through one draw of the transform
            warped = self.geometric(torch.cat([target, torch.ones_like(target[:1])], dim=0))
            target, inside = warped[:-1].contiguous(), warped[-1:]
        elif self.geometric is not None:
            target = self.geometric(target)
        source = self.corruption(target.clone()) if self.corruption is not None else target
        if inside is not None:
            target = target.masked_fill(inside < FILLED_BELOW, float("nan"))
        label = self.data.labels[i] if self.data.labels is not None else torch.tensor(-1)
        did = self.data.dataset_ids[i] if self.data.dataset_ids is not None else torch.tensor(0)
        return source, target, label, did


ARRAY_CACHE_ENV = "PUMAMED_ARRAY_CACHE"


class _CachedSplit:
    """The parts of an ImagingDataset that training needs, read back from an array export."""

    def __init__(self, folder: Path, name: str, split: str, size: int):
        base = Path(folder) / f"{name}_{split}_{size}"
        meta = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
        with np.load(base.with_suffix(".npz"), allow_pickle=False) as arrays:
            self._images, self.labels = arrays["images"], arrays["labels"]
        self.name, self.task, self.class_names = name, meta["task"], list(meta["class_names"])
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self._images)

    def as_tensors(self):
        return (torch.from_numpy(self._images).unsqueeze(1).float().div_(255.0),
                torch.from_numpy(np.ascontiguousarray(self.labels)))


def export_arrays(names, splits, size: int, folder, data_dir=None) -> list[Path]:
    """Decode splits once through the data layer and save them as ``NAME_SPLIT_SIZE.npz`` (uint8
    images, labels; no pickles) + ``.json`` (task, class names), for a machine that has no copy
    of the raw data (a GPU box): point ``$PUMAMED_ARRAY_CACHE`` at the folder there."""
    from pumamed.imaging import load_dataset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        for split in splits:
            ds = load_dataset(name, split=split, size=size, data_dir=data_dir)
            base = folder / f"{name}_{split}_{size}"
            np.savez_compressed(base.with_suffix(".npz"), images=ds.uint8_images(), labels=np.asarray(ds.labels))
            base.with_suffix(".json").write_text(json.dumps({"task": ds.task, "class_names": list(ds.class_names),
                                                             "split_rule": ds.split_rule}), encoding="utf-8")
            written.append(base.with_suffix(".npz"))
    return written


def _open_split(name: str, split: str, size: int, data_dir=None):
    cache = os.environ.get(ARRAY_CACHE_ENV)
    if cache and (Path(cache) / f"{name}_{split}_{size}.npz").is_file():
        return _CachedSplit(Path(cache), name, split, size)
    from pumamed.imaging import load_dataset

    return load_dataset(name, split=split, size=size, data_dir=data_dir)


def load_arrays(names: list[str], split: str, size: int, data_dir=None) -> ArrayData:
    """One dataset (or a mix of several) from the data layer as :class:`ArrayData` (or from an
    array export in ``$PUMAMED_ARRAY_CACHE``, see :func:`export_arrays`)."""
    datasets = [_open_split(n, split, size, data_dir) for n in names]
    if len(datasets) == 1:
        return from_imaging_dataset(datasets[0])
    return from_mix(datasets)
