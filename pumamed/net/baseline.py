"""The ResNet-18 baseline: torchvision's ResNet-18 trained from scratch on 1-channel images at the
same size and on the same splits as PumaMedNet, so the comparison is like for like."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from pumamed.errors import CheckpointError
from pumamed.net.model import TASKS, logits_to_proba


@dataclass
class ResNetConfig:
    image_size: int = 64
    in_channels: int = 1
    num_classes: int = 2
    task: str = "multiclass"
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")

    @property
    def classifier_outputs(self) -> int:
        return 1 if self.task == "binary" else self.num_classes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ResNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointError(f"unknown ResNet-18 config keys {unknown}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid ResNet-18 config: {exc}") from exc


class ResNet18Classifier(nn.Module):
    """torchvision ResNet-18 with a 1-channel stem; ``predict_proba`` like PumaMedNet's."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        from torchvision.models import resnet18

        if isinstance(config, dict):
            config = ResNetConfig.from_dict(config)
        self.config = config
        self.net = resnet18(weights=None, num_classes=config.classifier_outputs)
        self.net.conv1 = nn.Conv2d(config.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(self, x):
        return self.net(x)

    def classify(self, x):
        return self.net(x)

    @torch.no_grad()
    def predict_proba(self, x):
        return logits_to_proba(self.net(x), self.config.task)
