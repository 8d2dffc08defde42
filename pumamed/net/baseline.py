"""Baseline classifiers trained from scratch on 1-channel images at the same size and on the same
splits as PumaMedNet, so comparisons are like for like:

* ``resnet18``: torchvision's ResNet-18 (the documented baseline, and the judge of faithfulness);
* ``convnet``: a plain VGG-style stack (no residual connections), a second, independent family of
  classifier: a reader for training terms that must not be the judge that scores them.
"""

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


class ConvNetClassifier(nn.Module):
    """A plain convolutional classifier: a stride-2 stem, four stages of two 3x3 convolutions with
    batch norm and ReLU (32, 64, 128, 256 channels), max-pooling between stages, global average
    pooling, dropout and a linear layer. About a third of ResNet-18's FLOPs at the same size, and
    no residual connections, so what it reads is learnt independently of the ResNet judge."""

    WIDTHS = (32, 64, 128, 256)

    def __init__(self, config: ResNetConfig):
        super().__init__()
        if isinstance(config, dict):
            config = ResNetConfig.from_dict(config)
        self.config = config
        layers, channels = [nn.Conv2d(config.in_channels, self.WIDTHS[0], 3, stride=2, padding=1, bias=False),
                            nn.BatchNorm2d(self.WIDTHS[0]), nn.ReLU(inplace=True)], self.WIDTHS[0]
        for stage, width in enumerate(self.WIDTHS):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                                  nn.Linear(channels, config.classifier_outputs))

    def forward(self, x):
        return self.head(self.features(x))

    def classify(self, x):
        return self.forward(x)

    @torch.no_grad()
    def predict_proba(self, x):
        return logits_to_proba(self.forward(x), self.config.task)


# the classifier families of this module by their checkpoint ``arch`` name: (class, display name)
_BASELINES = {"resnet18": (ResNet18Classifier, "ResNet-18"), "convnet": (ConvNetClassifier, "plain ConvNet")}
BASELINE_ARCHITECTURES = tuple(_BASELINES)
BASELINE_NAMES = {arch: name for arch, (_, name) in _BASELINES.items()}


def baseline_class(arch: str):
    """The module class of a baseline ``arch`` (checkpoint name)."""
    return _BASELINES[arch][0]


def baseline_arch(model: nn.Module) -> str | None:
    """The checkpoint ``arch`` name of a baseline model, None for anything else."""
    return next((arch for arch, (cls, _) in _BASELINES.items() if isinstance(model, cls)), None)
