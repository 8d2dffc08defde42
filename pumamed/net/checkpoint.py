"""Checkpoint I/O: safetensors weights + config.json + model_card.md + metrics.json.

Nothing here ever unpickles: weights are read with safetensors, everything else is JSON or text.
Every file of a checkpoint is written to a temporary file in the same folder and moved into place
with ``os.replace`` (atomic on POSIX and Windows), so an interrupted save leaves the previous
checkpoint readable. The state for ``--resume`` (weights, optimizer moments, epoch, history) is
one file, ``resume_state.safetensors`` (tensors + the rest as JSON in its metadata), so a single
atomic replace moves training from one epoch's state to the next: a kill at any moment leaves one
whole epoch's state. Resume folders of the earlier layout (``model.safetensors`` +
``training_state.safetensors`` + ``training_state.json``) are still read.

config.json layout::

    {"format": "pumamed-checkpoint", "format_version": 1, "arch": "pumamednet" | "resnet18" | "convnet",
     "model": {...architecture...}, "training": {...}, "data": {...}, "kl_per_dim": [...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pumamed.catalog import CARD_FILE, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, read_json_object
from pumamed.errors import CheckpointError
from pumamed.net.baseline import BASELINE_ARCHITECTURES
from pumamed.net.files import (  # noqa: F401 - re-exported: the checkpoint's file API
    _atomic_write,
    _jsonable,
    atomic_save_tensors,
    atomic_write_json,
    atomic_write_text,
    read_tensors,
)

FORMAT = "pumamed-checkpoint"
FORMAT_VERSION = 1
STATE_WEIGHTS_FILE = "training_state.safetensors"
STATE_JSON_FILE = "training_state.json"
RESUME_FILE = "resume_state.safetensors"
RESUME_FORMAT = "pumamed-resume-state"
ARCHITECTURES = ("pumamednet", *BASELINE_ARCHITECTURES)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: dict
    metrics: dict = field(default_factory=dict)
    card: str = ""
    path: Path | None = None

    @property
    def arch(self) -> str:
        return self.config.get("arch", "pumamednet")

    @property
    def class_names(self) -> list[str]:
        return list(self.config.get("model", {}).get("class_names", []))

    @property
    def task(self) -> str:
        return self.config.get("model", {}).get("task", "multiclass")

    @property
    def image_size(self) -> int:
        return int(self.config.get("model", {}).get("image_size", 64))

    @property
    def kl_per_dim(self) -> np.ndarray:
        """Mean KL divergence of each latent dimension on the training data (nats); large =
        active. ``np.argsort(-kl_per_dim)`` ranks the dimensions worth exploring."""
        values = self.config.get("kl_per_dim") or self.metrics.get("kl_per_dim") or []
        return np.asarray(values, dtype=np.float64)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def trust(self):
        """The checkpoint's calibration and OOD score (``trust.json``, see :mod:`pumamed.net.trust`),
        or None before ``python -m pumamed calibrate`` has run on it."""
        if self.path is None:
            return None
        from pumamed.net.trust import load_trust

        return load_trust(self.path)


# Every file name a save writes; an interrupted write leaves ".<name>.<random>.tmp" beside it.
WRITTEN_FILES = (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, CARD_FILE, STATE_WEIGHTS_FILE, STATE_JSON_FILE,
                 RESUME_FILE, "weight_maps.safetensors", "trust.json", "trust.safetensors")


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete the temporary files that saves killed mid-write left in ``folder`` (only our own
    pattern, ``.<one of WRITTEN_FILES>.<random>.tmp``). Call it when a run starts writing into
    the folder, never while another process writes there. Returns the removed names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        name = path.name
        if path.is_file() and name.endswith(".tmp") and any(name.startswith(f".{known}.") for known in WRITTEN_FILES):
            try:
                path.unlink()
                removed.append(name)
            except OSError:
                pass  # not ours to fight over; the next start tries again
    return removed


# --- model construction -----------------------------------------------------------------------
def build_model(config: dict) -> torch.nn.Module:
    """The (untrained) module described by a checkpoint config."""
    arch = config.get("arch", "pumamednet")
    model_cfg = config.get("model")
    if not isinstance(model_cfg, dict):
        raise CheckpointError("config.json has no 'model' section describing the architecture")
    if arch == "pumamednet":
        from pumamed.net.model import PumaMedNet, PumaMedNetConfig

        model_config = PumaMedNetConfig.from_dict(model_cfg)
        try:
            return PumaMedNet(model_config)
        except (RuntimeError, MemoryError) as exc:  # e.g. a config declaring 10**9 latent dimensions
            raise CheckpointError(f"config.json describes a model that cannot be built here ({type(exc).__name__})") from exc
    if arch in BASELINE_ARCHITECTURES:
        from pumamed.net.baseline import ResNetConfig, baseline_class

        return baseline_class(arch)(ResNetConfig.from_dict(model_cfg))
    raise CheckpointError(f"unknown architecture {arch!r} in config.json (known: {', '.join(ARCHITECTURES)})")


def model_config_dict(model: torch.nn.Module) -> dict:
    from pumamed.net.baseline import baseline_arch

    arch = baseline_arch(model) or "pumamednet"
    return {"arch": arch, "model": model.config.to_dict()}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP / compiled wrappers


# --- save ---------------------------------------------------------------------------------------
def save_checkpoint(folder, model: torch.nn.Module, config: dict | None = None, metrics: dict | None = None,
                    card_text: str = "") -> Path:
    """Write ``folder/{model.safetensors, config.json, model_card.md, metrics.json}`` atomically.

    ``config`` may hold ``training``, ``data``, ``kl_per_dim`` etc.; its ``arch`` and ``model``
    entries are always taken from the model itself so they cannot disagree with the weights.
    Weights go first and config last: a reader never sees a config newer than its weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = _unwrap(model)
    full_config = {"format": FORMAT, "format_version": FORMAT_VERSION}
    full_config.update(config or {})
    full_config.update(model_config_dict(model))
    state = model.state_dict()
    atomic_save_tensors(folder / WEIGHTS_FILE, state, metadata={"format": FORMAT, "arch": full_config["arch"]})
    atomic_write_json(folder / METRICS_FILE, metrics or {})
    atomic_write_text(folder / CARD_FILE, card_text or f"# {folder.name}\n\nNo model card was written.\n")
    atomic_write_json(folder / CONFIG_FILE, full_config)
    return folder


# --- load ---------------------------------------------------------------------------------------
def read_config(folder) -> dict:
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: {CONFIG_FILE} is missing")
    try:
        return read_json_object(path)
    except ValueError as exc:
        raise CheckpointError(f"{folder}: {exc}") from exc


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Load a state dict, turning missing/unexpected keys and shape mismatches into one clear
    CheckpointError instead of PyTorch's multi-line RuntimeError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensors have the wrong shape (e.g. {'; '.join(wrong[:3])})")
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    if problems:
        raise CheckpointError(f"the weights in {where} do not fit the architecture in its config.json: "
                              + "; ".join(problems) + " -- was it trained with another architecture or size?")
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def load_model(path, device=None) -> LoadedModel:
    """Load a checkpoint folder into an eval-mode model on ``device`` (default: select_device())."""
    from pumamed.config import select_device

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    config = read_config(folder)
    fmt = config.get("format", FORMAT)
    if fmt != FORMAT:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not a PumaMed checkpoint (format {fmt!r})")
    model = build_model(config)
    state = read_tensors(folder / WEIGHTS_FILE)
    load_state_strict(model, state, where=str(folder / WEIGHTS_FILE))
    metrics = {}
    if (folder / METRICS_FILE).is_file():
        try:
            metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{folder / METRICS_FILE} is not valid JSON ({exc})") from exc
    card = (folder / CARD_FILE).read_text(encoding="utf-8", errors="replace") if (folder / CARD_FILE).is_file() else ""
    device = torch.device(device) if device is not None else select_device()
    model = model.to(device).eval()
    return LoadedModel(model=model, config=config, metrics=metrics, card=card, path=folder)


# --- training state (for --resume) ------------------------------------------------------------
def _optimizer_payload(optimizer: torch.optim.Optimizer, info: dict, scheduler=None, scaler=None):
    """(optimizer tensors keyed ``optimizer.<param id>.<name>``, everything else as a JSON-able dict)."""
    tensors: dict[str, torch.Tensor] = {}
    opt_state = optimizer.state_dict()
    scalar_state: dict[str, dict] = {}
    for pid, pstate in opt_state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{key}"] = value
            else:
                scalar_state.setdefault(str(pid), {})[key] = value
    # a capturable optimiser (CUDA graphs) keeps its learning rate in a device tensor
    param_groups = [{k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in group.items()}
                    for group in opt_state["param_groups"]]
    payload = {"info": info, "param_groups": param_groups, "scalar_state": scalar_state,
               "scheduler": scheduler.state_dict() if scheduler is not None else None,
               "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    return tensors, _jsonable(payload)


def _restore_optimizer(optimizer, tensors: dict[str, torch.Tensor], payload: dict, where, scheduler=None,
                       scaler=None) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        parts = key.split(".")
        if parts[0] != "optimizer" or parts[1] == "empty":
            continue
        state.setdefault(int(parts[1]), {})[".".join(parts[2:])] = value
    for pid, values in payload.get("scalar_state", {}).items():
        state.setdefault(int(pid), {}).update(values)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": payload["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot resume from {where}: the optimizer state does not fit ({exc})") from exc
    if scheduler is not None and payload.get("scheduler"):
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    return payload.get("info", {})


def save_resume_state(folder, model: torch.nn.Module, optimizer: torch.optim.Optimizer, info: dict,
                      scheduler=None, scaler=None, averaged: torch.nn.Module | None = None) -> None:
    """Weights, optimizer moments and ``info`` (epoch, history...) in one safetensors file, written
    atomically: the previous epoch's state stays whole until this one replaces it in one step.
    ``averaged``: the running average of the weights (``--ema``), saved beside them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in _unwrap(model).state_dict().items()}
    if averaged is not None:
        tensors.update({f"averaged.{k}": v for k, v in averaged.state_dict().items()})
    optimizer_tensors, payload = _optimizer_payload(optimizer, info, scheduler, scaler)
    tensors.update(optimizer_tensors)
    atomic_save_tensors(folder / RESUME_FILE, tensors,
                        metadata={"format": RESUME_FORMAT, "payload": json.dumps(payload)})
    for name in (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, CARD_FILE, STATE_WEIGHTS_FILE, STATE_JSON_FILE):
        (folder / name).unlink(missing_ok=True)  # the earlier layout, now stale


def has_resume_state(folder) -> bool:
    folder = Path(folder)
    return (folder / RESUME_FILE).is_file() or ((folder / WEIGHTS_FILE).is_file() and (folder / STATE_JSON_FILE).is_file())


def read_resume_state(folder) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, payload) of ``folder/resume_state.safetensors``; CheckpointError if unreadable."""
    from safetensors import safe_open

    path = Path(folder) / RESUME_FILE
    tensors = read_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        if metadata.get("format") != RESUME_FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}")
        payload = json.loads(metadata["payload"])
    except (KeyError, ValueError, OSError) as exc:
        raise CheckpointError(f"cannot resume: {path} is not a resume state ({exc})") from exc
    return tensors, payload


def load_resume_state(folder, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler=None,
                      scaler=None, averaged: torch.nn.Module | None = None) -> dict:
    """Restore weights and optimizer from a resume folder (either layout); returns ``info``.

    ``averaged`` (``--ema``) is restored too; a state saved without one cannot resume with one
    (the average would silently restart), and the reverse is refused as well."""
    folder = Path(folder)
    if not (folder / RESUME_FILE).is_file():
        if not has_resume_state(folder):
            raise CheckpointError(f"cannot resume: {folder} holds no saved training state")
        if averaged is not None:
            raise CheckpointError(f"cannot resume: {folder} was saved without a weight average (`ema`)")
        load_state_strict(model, read_tensors(folder / WEIGHTS_FILE), str(folder))
        return load_training_state(folder, optimizer, scheduler=scheduler, scaler=scaler)
    tensors, payload = read_resume_state(folder)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    load_state_strict(_unwrap(model), model_state, str(folder))
    averaged_state = {k[len("averaged."):]: v for k, v in tensors.items() if k.startswith("averaged.")}
    if (averaged is None) != (not averaged_state):
        saved = "with" if averaged_state else "without"
        raise CheckpointError(f"cannot resume: {folder} was saved {saved} a weight average (`ema`); "
                              f"resume with the same `ema` as the interrupted run")
    if averaged is not None:
        load_state_strict(averaged, averaged_state, str(folder))
    return _restore_optimizer(optimizer, {k: v for k, v in tensors.items() if k.startswith("optimizer.")},
                              payload, folder, scheduler, scaler)


def save_training_state(folder, optimizer: torch.optim.Optimizer, info: dict,
                        scheduler=None, scaler=None) -> None:
    """The earlier resume layout's optimizer part: moments as tensors (safetensors) and every
    non-tensor part as JSON. Training now writes :func:`save_resume_state`; this stays for
    optimizer-only state and for tests of resuming folders written in that layout."""
    folder = Path(folder)
    tensors, payload = _optimizer_payload(optimizer, info, scheduler, scaler)
    if not tensors:
        tensors["optimizer.empty"] = torch.zeros(1)
    atomic_save_tensors(folder / STATE_WEIGHTS_FILE, tensors)
    atomic_write_json(folder / STATE_JSON_FILE, payload)


def load_training_state(folder, optimizer: torch.optim.Optimizer, scheduler=None, scaler=None) -> dict:
    """Restore what :func:`save_training_state` wrote; returns its ``info`` dict."""
    folder = Path(folder)
    if not (folder / STATE_JSON_FILE).is_file():
        raise CheckpointError(f"cannot resume: {folder} has no {STATE_JSON_FILE} (was it written by an older run?)")
    try:
        payload = json.loads((folder / STATE_JSON_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot resume: {folder / STATE_JSON_FILE} is not valid JSON ({exc})") from exc
    tensors = read_tensors(folder / STATE_WEIGHTS_FILE)
    return _restore_optimizer(optimizer, tensors, payload, folder, scheduler, scaler)


# --- what a training epoch writes ----------------------------------------------------------------
def save_epoch(out_dir: Path, model: torch.nn.Module, config: dict, metrics: dict, card: str | None) -> None:
    """A training epoch's checkpoint: the whole folder (weights, config, metrics, model card) when
    the model improved (``card`` given), else ``metrics.json`` alone, which keeps it in step with
    the history while the best weights stay."""
    if card is not None:
        save_checkpoint(out_dir, model, config, metrics, card)
    else:
        atomic_write_json(Path(out_dir) / METRICS_FILE, metrics)


def read_metrics(folder: Path, *, strict: bool = False) -> dict:
    """``metrics.json`` of a checkpoint folder; ``{}`` when there is none, or (unless ``strict``)
    when it cannot be read."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        if strict:
            raise
        return {}


# --- weight-map snapshots (written by training, read by the explorer) ---------------------------
WEIGHT_MAPS_FILE = "weight_maps.safetensors"


def save_weight_maps(folder: Path, images: torch.Tensor, before: torch.Tensor, now: torch.Tensor,
                     before_label: str, now_label: str) -> None:
    """``weight_maps.safetensors``: reference images and the loss weight map of each, at the
    start of training ("before") and in the saved model ("now")."""
    if before.numel() == 0:
        return
    atomic_save_tensors(Path(folder) / WEIGHT_MAPS_FILE,
                             {"images": images.float().div(255.0).half(), "before": before.half(), "now": now.half()},
                             metadata={"before": before_label, "now": now_label})


def load_weight_maps(folder) -> dict | None:
    """{"images", "before", "now"} (float32 tensors N x 1 x S x S) and their labels, or None."""
    from safetensors import safe_open

    path = Path(folder) / WEIGHT_MAPS_FILE
    if not path.is_file():
        return None
    tensors = read_tensors(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return {**{k: v.float() for k, v in tensors.items()}, "labels": meta}
