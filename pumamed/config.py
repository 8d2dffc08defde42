"""Configuration in one place: data directory, models directory, compute device, seeds.

Environment variables (all optional):

``PUMAMED_DATA_DIR``
    Folder holding the datasets (``imaging/...``, ``epi/...``). Default: ``data/`` in the current
    working directory when it holds data, else the demo pack shipped inside the package
    (``pumamed/demo/``), so a fresh install shows every page. See :func:`data_dir`.
``PUMAMED_MODELS_DIR``
    Folder holding trained checkpoints. Default: ``models/`` in the project.
``PUMAMED_DEVICE``
    ``cuda``, ``cuda:1``, ``mps`` or ``cpu`` to override the automatic choice (cuda > mps > cpu).
``PUMAMED_SEED``
    Global seed used by :func:`seed_everything` when no seed is given. Default 0.
"""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The demo pack lives inside the package (not beside it) so that an installed package has it too.
DEMO_DATA_DIR = Path(__file__).resolve().parent / "demo"
DATA_DIR_ENV = "PUMAMED_DATA_DIR"
MODELS_DIR_ENV = "PUMAMED_MODELS_DIR"
DEVICE_ENV = "PUMAMED_DEVICE"
SEED_ENV = "PUMAMED_SEED"
DEFAULT_SEED = 0


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data directory, first match of:

    1. ``override`` (a ``--data-dir`` flag), else ``$PUMAMED_DATA_DIR``: used as given, even
       when it does not exist (the pages then say what is missing there);
    2. ``data/`` in the current working directory, when it holds ``imaging/`` or ``epi/``. The
       working directory, not the package's folder: after ``pip install`` the package sits in
       site-packages, where nobody keeps data;
    3. the demo pack ``pumamed/demo/`` (a small sample of the real data, see
       ``pumamed/demo/SOURCES.md``);
    4. ``data/`` in the working directory (empty: where the user is told to put the data).
    """
    return data_source(override)[0]


def data_source(override: str | os.PathLike | None = None) -> tuple[Path, str]:
    """``(folder, origin)`` of :func:`data_dir`; origin is ``"argument"``, ``"environment"``,
    ``"local"``, ``"demo"`` or ``"none"`` (nothing found anywhere)."""
    if override:
        return Path(override).expanduser().resolve(), "argument"
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve(), "environment"
    local = Path.cwd() / "data"
    if holds_data(local):
        return local.resolve(), "local"
    if holds_data(DEMO_DATA_DIR):
        return DEMO_DATA_DIR, "demo"
    return local.resolve(), "none"


def holds_data(folder: Path) -> bool:
    """Whether ``folder`` has a non-empty ``imaging/`` or ``epi/`` subfolder."""
    for group in ("imaging", "epi"):
        try:
            if any((Path(folder) / group).iterdir()):
                return True
        except OSError:  # absent or unreadable
            continue
    return False


def is_demo_data(folder: str | os.PathLike | None = None) -> bool:
    """Whether ``folder`` (default: :func:`data_dir`) is the shipped demo pack."""
    folder = data_dir() if folder is None else Path(folder)
    try:
        return Path(folder).resolve() == DEMO_DATA_DIR.resolve()
    except OSError:
        return False


def models_dir(override: str | os.PathLike | None = None) -> Path:
    """The checkpoints directory: ``override``, else ``$PUMAMED_MODELS_DIR``, else ``models/``."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return PROJECT_ROOT / "models"


def default_seed() -> int:
    try:
        return int(os.environ.get(SEED_ENV, DEFAULT_SEED))
    except ValueError:
        return DEFAULT_SEED


def select_device(preference: str | None = None):
    """Pick the compute device: explicit preference, ``$PUMAMED_DEVICE``, else cuda > mps > cpu.

    An unavailable explicit choice falls back to the CPU rather than failing, because a
    checkpoint trained on a GPU box must still open on a laptop.
    """
    import torch

    wanted = (preference or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if wanted != "auto":
        if wanted.startswith("cuda") and torch.cuda.is_available():
            return torch.device(wanted)
        if wanted == "mps" and _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def device_description(device=None) -> str:
    """Human-readable name of the device, e.g. ``NVIDIA H100 (cuda:0)`` or ``CPU (8 threads)``."""
    import torch

    device = device or select_device()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    if device.type == "mps":
        return "Apple GPU (mps)"
    return f"CPU ({torch.get_num_threads()} threads)"


def autocast(device, cache_enabled: bool = True):
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op elsewhere.
    ``cache_enabled=False`` while capturing a CUDA graph (PyTorch requires it there)."""
    import torch

    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype, cache_enabled=cache_enabled)


def seed_everything(seed: int | None = None) -> int:
    """Seed Python, NumPy and PyTorch (all devices). Returns the seed used."""
    import numpy as np

    seed = default_seed() if seed is None else int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard requirement, but keep config importable
        pass
    return seed
