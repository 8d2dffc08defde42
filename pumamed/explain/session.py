"""The explorer's inference helper: one loaded PumaMedNet on one device, with batched,
gradient-free calls that take and return NumPy arrays.

Pages hold one :class:`ExplorerSession` per checkpoint (``st.cache_resource``), so a rerun never
reloads weights. Every method batches: a traversal grid is one decoder call, a masked
reconstruction and its unmasked reference are one forward pass. Recently decoded codes are kept
in a small LRU cache, so a slider moved back to a previous value, or a rerun caused by another
widget, costs nothing.

Arrays are float32 in [0, 1]; images are ``N x S x S`` (a single image ``S x S`` where a method
says so); codes are ``N x D``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pumamed.errors import CheckpointError, InputError

DECODE_CACHE_SIZE = 512  # codes; at 128 px that is 32 MB of float32 images at most
CPU_BATCH_SIZE = 16
ACCELERATOR_BATCH_SIZE = 256


@dataclass
class ImageAnalysis:
    """Everything the first row of the page shows for one image."""

    image: np.ndarray  # S x S
    mu: np.ndarray  # D
    logvar: np.ndarray  # D
    reconstruction: np.ndarray  # S x S, decoded from mu
    error: np.ndarray  # S x S, |reconstruction - image|
    weights: np.ndarray  # S x S, reconstruction-loss weights (mean 1)
    probabilities: np.ndarray | None = None  # classes, when the model has a classifier head (calibrated when
    # the checkpoint has a temperature, see pumamed.net.trust)
    metrics: dict = field(default_factory=dict)
    raw_probabilities: np.ndarray | None = None  # before calibration (None when nothing was calibrated)
    ood: dict | None = None  # score, threshold, flagged, features: see ExplorerSession.trust_check


class ExplorerSession:
    """A PumaMedNet in eval mode on ``device``, with NumPy-in/NumPy-out batched inference.

    Build it with :func:`load_session` (from a checkpoint folder) or directly from a model.
    """

    def __init__(self, model, device=None, *, kl_per_dim=None, class_names=(), task: str | None = None,
                 name: str = "model", path: str | Path | None = None, card: str = "", metrics: dict | None = None,
                 batch_size: int | None = None, channels_last: bool | None = None, trust=None):
        import torch

        from pumamed.config import select_device

        for method in ("encode", "decode"):
            if not callable(getattr(model, method, None)):
                raise CheckpointError(
                    f"{name} has no {method}() method: the explorer needs a PumaMedNet (a generative model), "
                    "not a classifier-only checkpoint such as the ResNet-18 baseline")
        self.device = torch.device(device) if device is not None else select_device()
        self.model = model.to(self.device).eval()
        on_cpu = self.device.type == "cpu"
        # Measured (python -m pumamed bench explorer, 128 px): on CPU the channels_last layout
        # cuts a decode by about a quarter, and chunks of 16 beat one batch of 72 (the
        # activations of a big batch spill out of the caches) and beat one image per call (the
        # per-call overhead). Accelerators want the whole batch at once.
        self.channels_last = on_cpu if channels_last is None else bool(channels_last)
        batch_size = (CPU_BATCH_SIZE if on_cpu else ACCELERATOR_BATCH_SIZE) if batch_size is None else batch_size
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.config = getattr(model, "config", None)
        self.image_size = int(getattr(self.config, "image_size", 0) or 0)
        self.latent_dim = int(getattr(self.config, "latent_dim", 0) or 0)
        if not self.image_size or not self.latent_dim:
            raise CheckpointError(f"{name}: the model's config does not say its image size and latent size")
        self.kl_per_dim = None if kl_per_dim is None else np.asarray(kl_per_dim, dtype=np.float64).reshape(-1)
        if self.kl_per_dim is not None and self.kl_per_dim.size != self.latent_dim:
            self.kl_per_dim = None  # stale statistics of another latent size: recompute from data
        self.class_names = list(class_names or getattr(self.config, "class_names", []) or [])
        self.task = task or getattr(self.config, "task", None)
        self.name = name
        self.path = None if path is None else Path(path)
        self.card = card
        self.metrics = dict(metrics or {})
        self.batch_size = max(1, int(batch_size))
        self._decode_cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.trust = trust  # pumamed.net.trust.Trust (temperature, OOD score) or None
        self._lock = threading.Lock()  # the cached session is shared by every browser tab

    # ------------------------------------------------------------------ properties
    @property
    def has_classifier(self) -> bool:
        return getattr(self.model, "classifier", None) is not None

    @property
    def has_weight_map(self) -> bool:
        return callable(getattr(self.model, "reconstruction_weights", None))

    def describe(self) -> str:
        return f"{self.name}: {self.image_size}x{self.image_size} px, {self.latent_dim} latent dimensions, {self.device}"

    # ------------------------------------------------------------------ tensors
    def _images_to_tensor(self, images):
        import torch

        array = np.asarray(images, dtype=np.float32)
        if array.ndim == 2:
            array = array[None]
        if array.ndim == 4 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 3:
            raise InputError(f"expected grey images N x S x S (got shape {array.shape})")
        if array.shape[1:] != (self.image_size, self.image_size):
            raise InputError(
                f"the image is {array.shape[2]}x{array.shape[1]} px but {self.name} works at "
                f"{self.image_size}x{self.image_size}; load it at the model's size")
        if not np.isfinite(array).all():
            raise InputError("the image contains NaN or infinite values")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(1).to(self.device)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _codes_to_tensor(self, codes):
        import torch

        array = np.asarray(codes, dtype=np.float32)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != self.latent_dim:
            raise InputError(f"codes must be N x {self.latent_dim} (got shape {array.shape})")
        if not np.isfinite(array).all():
            raise InputError("latent codes contain NaN or infinite values")
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def _batches(self, n: int):
        for start in range(0, n, self.batch_size):
            yield slice(start, min(n, start + self.batch_size))

    @staticmethod
    def _to_numpy(tensor) -> np.ndarray:
        return tensor.detach().float().cpu().numpy()

    # ------------------------------------------------------------------ inference
    def encode(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and log-variances (N x D each) of N x S x S images."""
        from pumamed.net.inference import encode_dataset

        return encode_dataset(self.model, self._images_to_tensor(images), batch_size=self.batch_size,
                              device=self.device)

    @property
    def has_detail(self) -> bool:
        """A hierarchical model: a spatial detail code beside the global code (see the model)."""
        return bool(getattr(self.config, "detail_channels", 0))

    def detail_code(self, image, mode: str = "image", seed: int = 0) -> np.ndarray | None:
        """The detail code (C x R x R) to hold while the global code of one S x S image is edited:
        the image's own (``"image"``), a seeded draw from its posterior (``"resampled"``) or the
        prior mean (``"mean"``, returned as None). For a model whose detail prior is conditional
        on the global code, this is the *residual* (code minus the prior mean given the global
        code), so the predicted part moves with the global code. None for a model without a
        detail code."""
        import torch

        from pumamed.net.model import DETAIL_MODES

        if mode not in DETAIL_MODES:
            raise InputError(f"detail must be one of {', '.join(DETAIL_MODES)} (got {mode!r})")
        if not self.has_detail or mode == "mean":
            return None
        x = self._images_to_tensor(image)
        with torch.inference_mode():
            _, _, d_mu, d_logvar = self.model.encode_all(x[:1])
            if mode == "resampled":
                noise = torch.from_numpy(np.random.default_rng(seed).standard_normal(d_mu.shape).astype(np.float32))
                d_mu = d_mu + noise.to(d_mu.device) * torch.exp(0.5 * d_logvar)
        return self._to_numpy(d_mu)[0]

    def decode(self, codes, detail=None) -> np.ndarray:
        """Images (N x S x S) decoded from N x D codes, in as few decoder calls as the batch size
        allows; codes decoded recently come from the cache. ``detail``: one detail code
        (C x R x R, from :meth:`detail_code`) held for every code, or None (the prior mean)."""
        import torch

        array = np.ascontiguousarray(np.asarray(codes, dtype=np.float32))
        if array.ndim == 1:
            array = array[None]
        self._codes_to_tensor(array[:0] if array.ndim == 2 else array)  # shape check only
        if array.shape[0] == 0:
            raise InputError("no latent codes to decode")
        detail_tensor, detail_key = None, b""
        if detail is not None and self.has_detail:
            detail = np.ascontiguousarray(np.asarray(detail, dtype=np.float32))
            expected = tuple(self.model.decoder.detail_shape)
            if detail.shape != expected or not np.isfinite(detail).all():
                raise InputError(f"the detail code must be a finite {expected} array (got shape {detail.shape})")
            detail_tensor = torch.from_numpy(detail).to(self.device)[None]
            detail_key = hashlib.blake2b(detail.tobytes(), digest_size=16).digest()
        keys = [row.tobytes() + detail_key for row in array]
        with self._lock:
            cached = [self._decode_cache.get(k) for k in keys]
            for k, c in zip(keys, cached):
                if c is not None:
                    self._decode_cache.move_to_end(k)
        missing = [i for i, c in enumerate(cached) if c is None]
        if missing:
            z = self._codes_to_tensor(array[missing])
            outputs = []
            with torch.inference_mode():
                for part in self._batches(z.shape[0]):
                    held = None if detail_tensor is None else detail_tensor.expand(z[part].shape[0], -1, -1, -1)
                    decoded_part = self.model.decode(z[part], held) if held is not None else self.model.decode(z[part])
                    outputs.append(self._to_numpy(decoded_part)[:, 0])
            decoded = np.concatenate(outputs)
            with self._lock:
                for i, image in zip(missing, decoded):
                    image.setflags(write=False)  # shared through the cache: never edited in place
                    cached[i] = image
                    self._decode_cache[keys[i]] = image
                while len(self._decode_cache) > DECODE_CACHE_SIZE:
                    self._decode_cache.popitem(last=False)
        return np.stack(cached).astype(np.float32, copy=False)

    def reconstruct_batch(self, images) -> np.ndarray:
        """Decoded posterior means of N x S x S images (one encoder and one decoder call per batch)."""
        import torch

        x = self._images_to_tensor(images)
        outputs = []
        with torch.inference_mode():
            for part in self._batches(x.shape[0]):
                outputs.append(self._to_numpy(self._reconstruct(x[part]))[:, 0])
        return np.concatenate(outputs)

    def _reconstruct(self, x):
        """D(mu, detail_mu) for PumaMedNet (its own method); D(mu) for any other encode/decode model."""
        if callable(getattr(self.model, "reconstruct", None)):
            return self.model.reconstruct(x)
        return self.model.decode(self.model.encode(x)[0])

    def analyse(self, image) -> ImageAnalysis:
        """Reconstruction, error map, loss-weight map and class probabilities of one S x S image."""
        import torch

        x = self._images_to_tensor(image)
        if x.shape[0] != 1:
            raise InputError("analyse() takes one image")
        with torch.inference_mode():
            mu, logvar = self.model.encode(x)
            recon = self._reconstruct(x)
            weights = None
            if self.has_weight_map:
                try:
                    weights = self.model.reconstruction_weights(x, recon)
                except TypeError:  # a model whose weights depend on the input only
                    weights = self.model.reconstruction_weights(x)
            probabilities = None
            if self.has_classifier and callable(getattr(self.model, "predict_proba", None)):
                probabilities = self._to_numpy(self.model.predict_proba(x))[0]
        raw_probabilities, ood = None, None
        if self.trust is not None:
            raw_probabilities, ood, calibrated = self.trust_check(x)
            if calibrated is not None and probabilities is not None:
                probabilities = calibrated
        image_np = self._to_numpy(x)[0, 0]
        recon_np = self._to_numpy(recon)[0, 0]
        weights_np = self._to_numpy(weights)[0, 0] if weights is not None else np.ones_like(image_np)
        error = np.abs(recon_np - image_np)
        mse = float(np.mean(error**2))
        return ImageAnalysis(
            image=image_np, mu=self._to_numpy(mu)[0], logvar=self._to_numpy(logvar)[0],
            reconstruction=recon_np, error=error, weights=weights_np, probabilities=probabilities,
            metrics={"mae": float(error.mean()), "rmse": float(np.sqrt(mse)),
                     "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse)),
                     "weighted_mse": float(np.mean(weights_np * error**2))},
            raw_probabilities=raw_probabilities, ood=ood,
        )

    def trust_check(self, x):
        """(uncalibrated probabilities, OOD verdict, calibrated probabilities) of one image tensor
        1 x 1 x S x S, from the checkpoint's trust calibration. The verdict is a dict: ``score``,
        ``threshold``, ``flagged`` and the standardised ``features``; None without an OOD score."""
        from pumamed.net.trust import image_verdict

        return image_verdict(self.model, self.trust, x, self.task)

    # ------------------------------------------------------------------ explanations
    def traverse(self, z, dims, n_steps: int = 9, span: float = 3.0, scale=None, detail=None):
        """A k x m traversal grid from code ``z`` (see :func:`pumamed.explain.traversal.traverse`),
        with the detail code ``detail`` (from :meth:`detail_code`) held fixed."""
        from pumamed.explain.traversal import traverse

        return traverse(lambda codes: self.decode(codes, detail), z, dims, n_steps=n_steps, span=span, scale=scale)

    def masked(self, image, mask, fill: str = "zero", baseline: str = "harmonic", seed: int = 0):
        """Masked reconstruction of one image vs a non-learned baseline (see :mod:`.masking`)."""
        from pumamed.explain.masking import masked_reconstruction

        return masked_reconstruction(self.reconstruct_batch, image, mask, fill=fill, baseline=baseline, seed=seed)

    def sample_prior(self, n: int = 1, seed: int = 0) -> np.ndarray:
        """``n`` codes drawn from the N(0, I) prior, reproducible by seed (decode them to see them)."""
        return np.random.default_rng(seed).standard_normal((int(n), self.latent_dim)).astype(np.float32)

    def dimension_ranking(self, logvar_mu=None):
        """KL per dimension (nats) and dimension order, most informative first.

        Uses the checkpoint's training statistics when it has them, else the KL of the given
        dataset encodings ``(mu, logvar)``, else the natural order."""
        from pumamed.explain.traversal import kl_per_dimension, rank_dimensions

        if self.kl_per_dim is not None:
            kl, source = self.kl_per_dim, "checkpoint (training data)"
        elif logvar_mu is not None:
            mu, logvar = logvar_mu
            kl, source = kl_per_dimension(mu, logvar), "encodings of the chosen dataset"
        else:
            kl, source = np.zeros(self.latent_dim), "none (natural order)"
        return kl, rank_dimensions(kl), source

    def encode_dataset(self, dataset, indices=None, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, logvar)`` of ``dataset[i]`` for ``i`` in ``indices`` (default: all), batched.

        ``dataset[i]`` returns ``(image 1xSxS tensor or array, label)`` at the model's size.
        ``progress(done, total)`` is called after each batch when given."""
        indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        if not indices:
            raise InputError("no images to encode: the filter left the dataset empty")
        # ImagingDataset keeps every decoded image of a split as uint8: one bulk read, no
        # per-item tensor conversion (and no augmentation transform, which must not apply here).
        bulk = dataset.uint8_images() if callable(getattr(dataset, "uint8_images", None)) else None
        mus, logvars = [], []
        for part in self._batches(len(indices)):
            if bulk is not None:
                images = bulk[indices[part]].astype(np.float32) / 255.0
            else:
                images = np.stack([_as_square(dataset[i][0]) for i in indices[part]])
            mu, logvar = self.encode(images)
            mus.append(mu)
            logvars.append(logvar)
            if progress is not None:
                progress(part.stop, len(indices))
        return np.concatenate(mus), np.concatenate(logvars)


def load_session(path, device=None, **kwargs) -> ExplorerSession:
    """An :class:`ExplorerSession` for the checkpoint folder ``path`` (weights are read with
    safetensors by :func:`pumamed.net.load_model`; nothing is unpickled)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; give the checkpoint's folder (it holds model.safetensors and config.json)")
    try:
        from pumamed.net import load_model
    except ImportError as exc:  # the model package is not installed in this checkout
        raise CheckpointError(f"PumaMedNet is not available in this installation ({exc})") from exc
    loaded = load_model(path, device=device)
    return ExplorerSession(
        loaded.model, device=device,
        kl_per_dim=getattr(loaded, "kl_per_dim", None),
        class_names=getattr(loaded, "class_names", None) or (),
        task=getattr(loaded, "task", None),
        name=path.name, path=path, card=getattr(loaded, "card", "") or "",
        metrics=getattr(loaded, "metrics", None) or {}, trust=getattr(loaded, "trust", None), **kwargs,
    )


def _as_square(image) -> np.ndarray:
    """A 1xSxS tensor/array or an SxS array as an SxS float32 array."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise InputError(f"expected a grey image 1 x S x S (got shape {array.shape})")
    return array
