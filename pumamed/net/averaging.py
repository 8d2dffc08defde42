"""The weight average of a training run (``train --ema``): what is validated and saved when on."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pumamed.errors import InputError


class WeightAverage(nn.Module):
    """Exponential moving average of a model's weights (parameters and floating-point buffers,
    such as batch-norm statistics), updated after every optimizer step.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the average is not
    dominated by the initial weights in a short fine-tuning run. Not
    ``torch.optim.swa_utils.AveragedModel``: that one reads its update counter from the device
    every step, a synchronisation that would stall a CUDA-graph training loop."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise InputError(f"the weight-average decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0  # Python-side, so no step waits for the device
        self._pairs = None  # (model, averaged, current, exact), gathered once: the step is a hot path

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def _tensor_pairs(self, model: nn.Module):
        # the optimizer and load_state_dict update tensors in place, so the lists stay valid
        if self._pairs is None or self._pairs[0] is not model:
            averaged, current, exact = [], [], []
            for mine, theirs in zip([*self.module.parameters(), *self.module.buffers()],
                                    [*model.parameters(), *model.buffers()], strict=True):
                if mine.is_floating_point():
                    averaged.append(mine)
                    current.append(theirs.detach())
                else:
                    exact.append((mine, theirs))  # counters such as num_batches_tracked
            self._pairs = (model, averaged, current, exact)
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averaged, current, exact = self._tensor_pairs(model)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - self.current_decay())
        for mine, theirs in exact:
            mine.copy_(theirs)
        self.updates += 1
