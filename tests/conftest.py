"""Shared fixtures.

Real-data tests read ``PUMAMED_DATA_DIR`` (``.ci/run`` points it at ``../shared/data``). When it
is absent they skip with a reason, except under CI (``CI`` set), where a missing data directory
is a failure: CI must never go green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pumamed import config

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()

# Default the data directory for the whole run (the browser test's server inherits it too).
if not os.environ.get(config.DATA_DIR_ENV) and SHARED_DATA.exists():
    os.environ[config.DATA_DIR_ENV] = str(SHARED_DATA)


# The smallest PumaMedNet the model tests build (32 px, three levels, 8 latent dimensions).
TINY_PUMAMEDNET = dict(image_size=32, latent_dim=8, widths=(8, 16, 32), attention_resolution=8, groups=4)
#: The image size of the training tests.
TRAIN_SIZE = 32


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine a second thread mostly spins and waits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path} (set PUMAMED_DATA_DIR to the shared data folder)"
    if os.environ.get("CI"):
        pytest.fail(message + " -- CI must not skip real-data tests")
    pytest.skip(message)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data directory (``$PUMAMED_DATA_DIR``, else ``../shared/data`` beside the project)."""
    env = os.environ.get(config.DATA_DIR_ENV)
    root = Path(env).resolve() if env else SHARED_DATA
    return _require(root, "data directory")


@pytest.fixture(scope="session")
def imaging_root(data_root: Path) -> Path:
    return _require(data_root / "imaging", "imaging data")


@pytest.fixture(scope="session")
def epi_root(data_root: Path) -> Path:
    return _require(data_root / "epi", "epidemiological data")


@pytest.fixture(scope="module")
def real_images(imaging_root):
    """32 real BreastMNIST training images (binary labels) at 32 px, via the data layer."""
    from pumamed.net.data import load_arrays

    return load_arrays(["breastmnist"], "train", TRAIN_SIZE).subset(32, seed=0)


def tiny_model(data, seed: int = 0):
    """The tiny PumaMedNet (:data:`TINY_PUMAMEDNET`) for the classes of ``data`` (an ArrayData)."""
    import torch

    from pumamed.net import PumaMedNet, PumaMedNetConfig

    torch.manual_seed(seed)
    return PumaMedNet(PumaMedNetConfig(**{**TINY_PUMAMEDNET, "image_size": TRAIN_SIZE},
                                       num_classes=len(data.class_names), task=data.task,
                                       class_names=list(data.class_names)))


def save_tiny_checkpoint(folder: Path, class_names, datasets, kl_per_dim, card_text: str) -> Path:
    """A randomly initialised 64 px, 8-dimension PumaMedNet saved as a checkpoint (the page tests'
    models): ``class_names`` for its head, ``datasets`` it claims to be trained on."""
    import torch

    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    torch.manual_seed(0)
    model = PumaMedNet(PumaMedNetConfig(image_size=64, latent_dim=8, widths=(8, 16, 16, 16),
                                        num_classes=len(class_names), class_names=list(class_names)))
    save_checkpoint(folder, model, config={"data": {"datasets": list(datasets)}, "kl_per_dim": list(kl_per_dim)},
                    card_text=card_text)
    return folder


def interrupted_fit(monkeypatch, fit_once) -> None:
    """Run ``fit_once()`` killed (KeyboardInterrupt) during its second epoch, after that epoch's
    training steps and before its checkpoint, then restore the training loop."""
    import pumamed.net.train as train_module

    real_validate = train_module.validate
    calls = {"n": 0}

    def validate_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(train_module, "validate", validate_then_crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit_once()
    finally:
        monkeypatch.setattr(train_module, "validate", real_validate)
