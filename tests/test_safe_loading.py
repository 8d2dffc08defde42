"""Safe loading: nothing under ``pumamed/`` or ``views/`` unpickles a file, and a planted malicious
pickle is refused by every loader a user can point at it.

1. A source scan (Python ``ast``, so comments and strings do not count) forbids
   ``torch.load`` without ``weights_only=True``, ``pickle``/``dill``/``cloudpickle``/``joblib``
   loaders, ``pd.read_pickle``, ``np.load(..., allow_pickle=True)``, ``torch.jit.load``, ``marshal``,
   ``shelve`` and ``yaml.load`` without a safe loader.
2. A pickle whose ``__reduce__`` would create a marker file is planted as ``model.safetensors``,
   as ``resume_state.safetensors`` / ``training_state.safetensors`` (``--resume``), as a ``weight_maps.safetensors`` and as a ``.pt``
   next to a checkpoint; every loader refuses it with :class:`CheckpointError` and the marker
   never appears. The explorer's session loader and the ``evaluate`` CLI refuse it too.
3. ``.npz`` files with object arrays (which need pickle) are refused as data, not unpickled.
"""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pumamed.errors import CheckpointError, DataError

ROOT = Path(__file__).resolve().parent.parent
SCANNED = [ROOT / "pumamed", ROOT / "pages", ROOT / "app.py"]

UNSAFE_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cPickle", "load"), ("cPickle", "loads"),
    ("dill", "load"), ("dill", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
    ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle"), ("marshal", "load"),
    ("marshal", "loads"), ("shelve", "open"), ("jit", "load"), ("_pickle", "loads"), ("_pickle", "load"),
}


def _python_files() -> list[Path]:
    files = []
    for base in SCANNED:
        files += [base] if base.is_file() else sorted(base.rglob("*.py"))
    return files


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def unsafe_calls(source: str, filename: str = "<string>") -> list[str]:
    """Every unsafe deserialisation call in ``source`` (``file:line: what``)."""
    found = []
    tree = ast.parse(source, filename)
    imported = {}  # local name -> module it came from ("from pickle import loads")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imported[alias.asname or alias.name] = (node.module.split(".")[-1], alias.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if len(name) == 1 and name[0] in imported:
            name = imported[name[0]]
        where = f"{filename}:{node.lineno}"
        tail = name[-2:] if len(name) >= 2 else name
        if tail in UNSAFE_CALLS:
            found.append(f"{where}: {'.'.join(name)}")
        elif tail == ("torch", "load"):
            weights_only = _keyword(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        elif tail[-1:] == ("load",) and len(tail) == 2 and tail[0] in ("np", "numpy"):
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{where}: np.load with allow_pickle")
        elif tail == ("yaml", "load"):
            loader = _keyword(node, "Loader")
            if loader is None or "Safe" not in ".".join(_dotted(loader)):
                found.append(f"{where}: yaml.load without SafeLoader")
    return found


def test_scanner_catches_unsafe_patterns():
    """The scanner itself must fail on each forbidden pattern (else the scan proves nothing)."""
    bad = [
        "import torch\ntorch.load('m.pt')",
        "import torch\ntorch.load('m.pt', weights_only=False)",
        "import pickle\npickle.load(open('x', 'rb'))",
        "import pickle\npickle.loads(b'')",
        "from pickle import loads\nloads(b'')",
        "import joblib\njoblib.load('m.joblib')",
        "import numpy as np\nnp.load('x.npz', allow_pickle=True)",
        "import pandas as pd\npd.read_pickle('x.pkl')",
        "import torch\ntorch.jit.load('m.pt')",
        "import yaml\nyaml.load(open('x'))",
    ]
    for source in bad:
        assert unsafe_calls(source), f"not caught: {source!r}"
    good = [
        "import torch\ntorch.load('m.pt', weights_only=True)",
        "import numpy as np\nnp.load('x.npz', allow_pickle=False)\nnp.load('x.npy')",
        "import yaml\nyaml.load(open('x'), Loader=yaml.SafeLoader)",
        "# pickle.load(x) in a comment\ns = 'torch.load(x)'",
    ]
    for source in good:
        assert not unsafe_calls(source), f"false alarm: {source!r}"


def test_no_unsafe_deserialisation_in_the_code():
    problems = []
    files = _python_files()
    assert len(files) > 30, "the scan found too few files: wrong root?"
    for path in files:
        problems += unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems, "unsafe deserialisation:\n" + "\n".join(problems)


# =============================================================================== planted pickle
class Planted:
    """Unpickling this creates ``path`` (harmless proof of code execution)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "a"))


def _malicious_pickle(marker: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    return pickle.dumps({"state_dict": Planted(str(marker))}, protocol=protocol)


def _malicious_torch_save(marker: Path, path: Path) -> None:
    """A real ``torch.save`` zip archive whose pickle creates ``marker`` when unpickled."""
    torch.save({"state_dict": Planted(str(marker))}, path)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_planted_pickle_really_would_run(tmp_path, protocol):
    """Sanity check of the trap: a naive unpickle does create the marker."""
    marker = tmp_path / "MARKER"
    pickle.loads(_malicious_pickle(marker, protocol))["state_dict"].close()
    assert marker.exists()


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    model = PumaMedNet(PumaMedNetConfig(image_size=32, latent_dim=4, widths=(4, 8, 8), num_classes=2))
    return save_checkpoint(tmp_path / "ckpt", model, card_text="# tiny\n")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_as_model_safetensors_is_refused(checkpoint, tmp_path, protocol):
    from pumamed.net import load_model

    marker = tmp_path / "MARKER"
    (checkpoint / "model.safetensors").write_bytes(_malicious_pickle(marker, protocol))
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_model(checkpoint, device="cpu")
    assert not marker.exists()


def test_torch_save_archive_as_model_safetensors_is_refused(checkpoint, tmp_path):
    from pumamed.net import load_model

    marker = tmp_path / "MARKER"
    _malicious_torch_save(marker, checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError):
        load_model(checkpoint, device="cpu")
    assert not marker.exists()


def test_pt_file_beside_a_checkpoint_is_never_read(checkpoint, tmp_path):
    """A checkpoint folder holding only ``model.pt`` (a pickle) and config.json is not loadable."""
    from pumamed.net import load_model

    marker = tmp_path / "MARKER"
    (checkpoint / "model.safetensors").unlink()
    _malicious_torch_save(marker, checkpoint / "model.pt")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(checkpoint, device="cpu")
    assert not marker.exists()


def test_pickle_in_resume_state_and_weight_maps_is_refused(checkpoint, tmp_path):
    from pumamed.net.checkpoint import read_tensors
    from pumamed.net.checkpoint import load_weight_maps

    marker = tmp_path / "MARKER"
    for name in ("resume_state.safetensors", "training_state.safetensors", "weight_maps.safetensors"):
        (checkpoint / name).write_bytes(_malicious_pickle(marker))
        with pytest.raises(CheckpointError):
            read_tensors(checkpoint / name)
    with pytest.raises(CheckpointError):
        load_weight_maps(checkpoint)
    assert not marker.exists()


def test_explorer_session_refuses_pickle(checkpoint, tmp_path):
    from pumamed.explain.session import load_session

    marker = tmp_path / "MARKER"
    (checkpoint / "model.safetensors").write_bytes(_malicious_pickle(marker))
    with pytest.raises(CheckpointError):
        load_session(str(checkpoint))
    assert not marker.exists()


def test_cli_refuses_pickle(checkpoint, tmp_path, data_root):
    marker = tmp_path / "MARKER"
    _malicious_torch_save(marker, checkpoint / "model.safetensors")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PUMAMED_DATA_DIR=str(data_root))
    proc = subprocess.run([sys.executable, "-m", "pumamed", "evaluate", "--model", str(checkpoint),
                           "--dataset", "breastmnist"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and "safetensors" in proc.stderr
    assert not marker.exists()


# =============================================================================== npz object arrays
def test_npz_with_object_arrays_is_refused(tmp_path):
    from pumamed.imaging import load_dataset

    marker = tmp_path / "MARKER"
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = Planted(str(marker)), Planted(str(marker))
    np.savez(tmp_path / "evil.npz", train_images=objects, train_labels=np.array([0, 1]))
    with pytest.raises(DataError):
        load_dataset(tmp_path / "evil.npz", split="all", size=32)
    assert not marker.exists()


def test_npy_pickle_renamed_npz_is_refused(tmp_path):
    from pumamed.imaging import load_dataset

    marker = tmp_path / "MARKER"
    (tmp_path / "evil.npz").write_bytes(_malicious_pickle(marker))
    with pytest.raises(DataError):
        load_dataset(tmp_path / "evil.npz", split="all", size=32)
    assert not marker.exists()


def test_decoded_image_cache_refuses_pickles(tmp_path):
    """The on-disk decode cache (``$PUMAMED_CACHE_DIR``) is read with allow_pickle=False: a planted
    pickle under the cache's file name is ignored (rebuilt), never unpickled."""
    from PIL import Image

    from pumamed.imaging import clear_image_cache, load_dataset
    from pumamed.imaging.dataset import CACHE_FORMAT_VERSION

    root = tmp_path / "folder"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(root / label / f"{i}.png")
    cache = tmp_path / "cache"
    cache.mkdir()
    marker = tmp_path / "MARKER"
    clear_image_cache()
    first = load_dataset(root, split="all", size=16, cache_dir=cache)
    name = f"{first.table.name}_16_{first.table.fingerprint}_v{CACHE_FORMAT_VERSION}.npy"
    (cache / name).write_bytes(_malicious_pickle(marker))
    clear_image_cache()
    again = load_dataset(root, split="all", size=16, cache_dir=cache)
    assert again.uint8_images().shape == (8, 16, 16)
    assert not marker.exists()
    clear_image_cache()
