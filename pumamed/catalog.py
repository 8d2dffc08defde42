"""Discovery of trained checkpoints in the models directory (no torch needed).

A checkpoint is a folder holding ``model.safetensors`` (weights), ``config.json`` (architecture
and training settings), ``model_card.md`` (training data, metrics, licence) and optionally
``metrics.json``. Loading the weights is :mod:`pumamed.net.checkpoint`'s job; this module only
lists what is there, so the home page can show it without importing PyTorch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "model_card.md"
METRICS_FILE = "metrics.json"
TRUST_FILE = "trust.json"


@dataclass
class CheckpointInfo:
    name: str
    path: Path
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    card: str = ""
    problem: str = ""
    trust: dict = field(default_factory=dict)  # trust.json (calibration, OOD score), when calibrated

    @property
    def usable(self) -> bool:
        return not self.problem

    # What the config says, read in one place (pages never parse a checkpoint's config).
    @property
    def arch(self) -> str:
        return str(self.config.get("arch", "pumamednet"))

    @property
    def model_config(self) -> dict:
        model = self.config.get("model", {})
        return model if isinstance(model, dict) else {}

    @property
    def datasets(self) -> list[str]:
        """Registered datasets the checkpoint was trained (or fine-tuned) on."""
        from pumamed.imaging.matching import trained_datasets

        return trained_datasets(self.config)

    @property
    def modality(self) -> str:
        """Its imaging modality, from its datasets, else guessed from its name (or ``unknown``)."""
        from pumamed.imaging.matching import model_modality

        return model_modality(self.datasets, self.name)

    def summary(self) -> dict:
        """Name, path, architecture, problem, image and latent size, datasets and modality."""
        model = self.model_config
        return {"name": self.name, "path": str(self.path), "arch": self.arch, "problem": self.problem,
                "image_size": model.get("image_size"), "latent_dim": model.get("latent_dim"),
                "datasets": self.datasets, "modality": self.modality}


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object; ValueError (naming the file) otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} must hold a JSON object")
    return value


def describe_checkpoint(folder: Path) -> CheckpointInfo:
    folder = Path(folder)
    info = CheckpointInfo(name=folder.name, path=folder)
    problems = []
    if not (folder / WEIGHTS_FILE).is_file():
        problems.append(f"no {WEIGHTS_FILE}")
    try:
        info.config = read_json_object(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
        if not info.config:
            problems.append(f"no {CONFIG_FILE}")
    except ValueError as exc:
        problems.append(str(exc))
    if (folder / METRICS_FILE).is_file():
        try:
            info.metrics = read_json_object(folder / METRICS_FILE)
        except ValueError as exc:
            problems.append(str(exc))
    if (folder / TRUST_FILE).is_file():
        try:
            info.trust = read_json_object(folder / TRUST_FILE)
        except ValueError:
            info.trust = {}  # an unreadable trust file only hides the figures; loading reports it
    if (folder / CARD_FILE).is_file():
        info.card = (folder / CARD_FILE).read_text(encoding="utf-8", errors="replace")
    else:
        problems.append(f"no {CARD_FILE}")
    info.problem = "; ".join(problems)
    return info


def list_checkpoints(models_root: Path) -> list[CheckpointInfo]:
    """Every sub-folder of ``models_root`` that looks like a checkpoint, sorted by name."""
    models_root = Path(models_root)
    if not models_root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in models_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any((folder / f).exists() for f in (WEIGHTS_FILE, CONFIG_FILE)):
            found.append(describe_checkpoint(folder))
    return found
