"""The files of a checkpoint, written and read safely: every write goes to a temporary file that
is renamed over the target (a reader never sees half a file), and tensors are only ever read
from safetensors (never unpickled). Below :mod:`pumamed.net.checkpoint` and
:mod:`pumamed.net.trust`, which both store files.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from pumamed.errors import CheckpointError
from pumamed.jsonsafe import to_jsonable


# --- atomic writes ----------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600 files (and writers may recreate them): give the final file the mode
        # of any other new file, so a shared server's other accounts can read checkpoints.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    _atomic_write(path, write)


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(_jsonable(value), indent=2, sort_keys=False) + "\n")


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=metadata))


def _jsonable(value):
    """Checkpoint files keep NaN as JSON ``NaN`` (what they always held) and string keys."""
    return to_jsonable(value, finite=False, str_keys=True)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a truncated file) is a CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    with open(path, "rb") as fh:
        head = fh.read(16)
    # A safetensors file starts with a little-endian u64 header length then '{'. Pickles and
    # zip archives (torch.save) start with other bytes: refuse them before any parser sees them.
    if len(head) < 9 or head[8:9] != b"{" or head[:2] in (b"\x80\x02", b"PK"):
        raise CheckpointError(f"{path.name} is not a safetensors file (pickled or corrupt checkpoints are "
                              f"never loaded); re-save the weights with safetensors")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {path.name} as safetensors: {exc}") from exc
