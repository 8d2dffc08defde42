"""The PyTorch dataset over a :class:`~pumamed.imaging.sources.SampleTable`, with a decode cache.

Decoding is the slow part (JPEG/PNG on 2 CPU cores), so each image is decoded and resized once
per (dataset files, size) and kept as uint8 in memory, shared by every split and every dataset
object built on the same files. The first access to a split decodes all of its missing images in
bulk (with a small thread pool on machines with more than 2 cores: PIL releases the GIL while
decoding; see :func:`decode_threads`). Optionally the whole array is
also written to / read from ``cache_dir`` (``$PUMAMED_CACHE_DIR``) as ``.npy``, keyed by a
fingerprint of the file list, sizes and modification times.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pumamed.imaging.sources import SampleTable

CACHE_DIR_ENV = "PUMAMED_CACHE_DIR"
DECODE_THREADS_ENV = "PUMAMED_DECODE_THREADS"
CACHE_FORMAT_VERSION = 1


def decode_threads() -> int:
    """Threads used for bulk decoding: ``$PUMAMED_DECODE_THREADS``, else cores - 1 (1..4).

    On a 2-core machine this is 1: measured there, a second decode thread only added GIL
    hand-over cost while the other core was busy.
    """
    try:
        wanted = int(os.environ.get(DECODE_THREADS_ENV, "0"))
    except ValueError:
        wanted = 0
    if wanted > 0:
        return wanted
    return max(1, min(4, (os.cpu_count() or 1) - 1))


class _ImageStore:
    """uint8 (N, S, S) array for one sample table at one size, filled on demand."""

    def __init__(self, table: SampleTable, size: int, cache_dir: Path | None):
        self.table = table
        self.size = size
        self.images = np.zeros((len(table), size, size), dtype=np.uint8)
        self.decoded = np.zeros(len(table), dtype=bool)
        self.lock = threading.Lock()
        self.cache_file = None
        if cache_dir is not None:
            self.cache_file = Path(cache_dir) / (
                f"{table.name}_{size}_{table.fingerprint}_v{CACHE_FORMAT_VERSION}.npy")
            if self.cache_file.is_file():
                try:
                    cached = np.load(self.cache_file, allow_pickle=False)
                    if cached.shape == self.images.shape and cached.dtype == np.uint8:
                        self.images[:] = cached
                        self.decoded[:] = True
                except (OSError, ValueError):
                    pass  # a damaged cache file is rebuilt below

    def ensure(self, indices: np.ndarray) -> None:
        indices = np.asarray(indices)
        with self.lock:
            todo = indices[~self.decoded[indices]]
            if len(todo) == 0:
                return
            workers = decode_threads()
            if workers == 1 or len(todo) < 64:
                for i in todo:
                    self.images[i] = self.table.decode(int(i), self.size)
            else:
                def decode_chunk(chunk):
                    for i in chunk:
                        self.images[i] = self.table.decode(int(i), self.size)

                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(decode_chunk, np.array_split(todo, max(workers, len(todo) // 64))))
            self.decoded[todo] = True
            if self.cache_file is not None and self.decoded.all():
                self._write_cache()

    def _write_cache(self) -> None:
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, self.images, allow_pickle=False)
            os.replace(tmp, self.cache_file)
        except OSError:
            pass  # a read-only or full disk only costs speed next time


_STORES: dict[tuple, _ImageStore] = {}
_STORES_LOCK = threading.Lock()


def image_store(table: SampleTable, size: int, cache_dir: str | os.PathLike | None = None) -> _ImageStore:
    if cache_dir is None and os.environ.get(CACHE_DIR_ENV):
        cache_dir = os.environ[CACHE_DIR_ENV]
    key = (table.name, table.fingerprint, len(table), int(size))
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = _ImageStore(table, int(size), Path(cache_dir) if cache_dir else None)
    return store


def clear_image_cache() -> None:
    """Forget every decoded image held in memory (frees RAM; the next access decodes again)."""
    with _STORES_LOCK:
        _STORES.clear()


class ImagingDataset(Dataset):
    """One split of one dataset at one size.

    ``ds[i]`` -> ``(image, label)``: image float32 tensor 1 x S x S in [0, 1] (after ``transform``,
    if given); label an ``int`` (binary / multiclass) or a float32 multi-hot tensor (multilabel).

    Attributes: ``metadata`` (DataFrame, one row per sample in the same order), ``labels`` (numpy
    (N,) or (N, C)), ``class_names``, ``task``, ``name``, ``modality``, ``split``, ``size``,
    ``split_rule`` (how the split was made).
    """

    def __init__(self, table: SampleTable, indices: np.ndarray, split: str, size: int, split_rule: str,
                 transform=None, cache_dir=None, info=None):
        self.table = table
        self.indices = np.asarray(indices, dtype=np.int64)
        self.split = split
        self.size = int(size)
        self.split_rule = split_rule
        self.transform = transform
        self.info = info
        self.name = table.name
        self.modality = table.modality
        self.task = table.task
        self.class_names = list(table.class_names)
        self.labels = table.labels[self.indices]
        self.metadata = table.frame.iloc[self.indices].drop(columns=["official_split"]).reset_index(drop=True)
        self._store = image_store(table, self.size, cache_dir)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preload(self) -> "ImagingDataset":
        """Decode every image of this split now (bulk, threaded); later epochs never decode."""
        self._store.ensure(self.indices)
        return self

    def uint8_images(self) -> np.ndarray:
        """All images of this split as uint8 (N, S, S) (a copy)."""
        self.preload()
        return self._store.images[self.indices]

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float32 N x 1 x S x S in [0, 1], labels) without transforms, e.g. for GPU training."""
        images = torch.from_numpy(self.uint8_images()).unsqueeze(1).float().div_(255.0)
        labels = torch.from_numpy(np.ascontiguousarray(self.labels))
        return images, labels

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as float32 1 x S x S in [0, 1], without the transform."""
        j = int(self.indices[i])
        if not self._store.decoded[j]:
            # In the main process decode the whole split at once (threads, one pass); inside a
            # DataLoader worker only this image (a worker's copy of the cache is thrown away).
            in_worker = torch.utils.data.get_worker_info() is not None
            self._store.ensure(np.array([j]) if in_worker else self.indices)
        return torch.from_numpy(self._store.images[j]).unsqueeze(0).float().div_(255.0)

    def label(self, i: int):
        if self.task == "multilabel":
            return torch.from_numpy(np.asarray(self.labels[i], dtype=np.float32))
        return int(self.labels[i])

    def __getitem__(self, i: int):
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        image = self.image(i)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.label(i)

    def __getitems__(self, positions):
        """Batched fetch used by DataLoader: one uint8 -> float conversion for the whole batch."""
        positions = [p + len(self) if p < 0 else p for p in positions]
        if any(not 0 <= p < len(self) for p in positions):
            raise IndexError(f"index out of range for {len(self)} samples")
        rows = self.indices[positions]
        if not self._store.decoded[rows].all():
            in_worker = torch.utils.data.get_worker_info() is not None
            self._store.ensure(rows if in_worker else self.indices)
        images = torch.from_numpy(self._store.images[rows]).unsqueeze(1).float().div_(255.0)
        samples = []
        for k, p in enumerate(positions):
            image = images[k] if self.transform is None else self.transform(images[k])
            samples.append((image, self.label(p)))
        return samples

    def lesion_mask(self, i: int) -> np.ndarray | None:
        """Boolean S x S lesion mask for mini-MIAS samples (None for datasets without annotations)."""
        if self.table.lesions is None or "refnum" not in self.metadata:
            return None
        from pumamed.imaging.sources import mias_lesion_mask

        return mias_lesion_mask(self.table.lesions, self.metadata["refnum"].iloc[i], self.size)

    def class_counts(self) -> pd.Series:
        if self.task == "multilabel":
            return pd.Series(self.labels.sum(axis=0).astype(int), index=self.class_names)
        return pd.Series(np.bincount(self.labels, minlength=self.num_classes), index=self.class_names)

    def __repr__(self) -> str:
        return (f"ImagingDataset({self.name!r}, split={self.split!r}, n={len(self)}, size={self.size}, "
                f"task={self.task!r}, classes={self.class_names})")
