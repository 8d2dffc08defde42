"""One optimisation step of training, run eagerly or replayed from a CUDA graph.

Why: PumaMedNet is small (about a million parameters), so on a GPU its training step is bound by
the CPU launching a few hundred small kernels, not by the GPU's arithmetic. On an H100 the eager
step took about as long at batch 64 as at batch 256 (24 vs 26 ms), and ``torch.compile`` did not
change that. Two things remove the CPU from the critical path:

* statistics (loss terms, KL per dimension) are summed **on the device** and read once per epoch,
  so the CPU never waits for the GPU inside an epoch (this helps the eager step too);
* optionally, the whole step (forward, backward, gradient clipping, AdamW) is **captured once into
  a CUDA graph** and replayed, following PyTorch's "whole network capture" recipe: a few eager
  warm-up steps on a side stream, capture, then ``replay()`` with the batch copied into static
  input tensors. The optimiser must be ``capturable`` with a tensor learning rate, and autocast's
  weight cache must be off while capturing. A batch of another shape (the last, partial batch of an
  epoch) runs eagerly with the same parameters and optimiser state.

Not graphed: CPU and MPS, fp16 with a GradScaler (its inf checks synchronise), DDP. If capture
fails, training continues eagerly and says so once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

_LOG = logging.getLogger(__name__)  # where messages go when no `log` is given


class CudaGraphStep:
    """Call ``body(*inputs)`` eagerly for ``warmup`` calls (on a side stream), then capture it once
    into a CUDA graph and replay it for inputs of the captured shapes. ``body`` must read only its
    inputs and long-lived tensors (parameters, optimiser state) and must not synchronise."""

    def __init__(self, body: Callable, warmup: int = 3, before_capture: Callable | None = None,
                 log: Callable[[str], None] | None = None):
        self.body = body
        self.warmup = max(1, warmup)
        self.before_capture = before_capture
        self.log = log or _LOG.info
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: list[torch.Tensor] | None = None
        self.failed = False
        self.calls = 0

    @property
    def active(self) -> bool:
        """Whether steps are being replayed from a captured graph."""
        return self.graph is not None and not self.failed

    def _shapes_match(self, inputs) -> bool:
        return all(s.shape == x.shape and s.dtype == x.dtype for s, x in zip(self.static, inputs))

    def __call__(self, *inputs: torch.Tensor) -> None:
        self.calls += 1
        if self.failed or (self.graph is not None and not self._shapes_match(inputs)):
            self.body(*inputs)
            return
        if self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.body(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return
        if self.graph is None:
            self._capture(inputs)
            if self.failed:
                self.body(*inputs)
                return
        for static, x in zip(self.static, inputs):
            static.copy_(x, non_blocking=True)
        self.graph.replay()

    def _capture(self, inputs) -> None:
        self.static = [x.clone() for x in inputs]
        graph = torch.cuda.CUDAGraph()
        try:
            if self.before_capture is not None:
                self.before_capture()
            with torch.cuda.graph(graph):
                self.body(*self.static)
        except Exception as exc:  # noqa: BLE001 - an op that cannot be captured: keep training, eagerly
            self.failed = True
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
            self.log(f"CUDA graph capture failed, training continues without it: {first_line}")
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001 - the eager step will report a broken device itself
                pass
            return
        self.graph = graph


def clip_norm_for(image_size: int) -> float:
    """Gradient-norm ceiling of a training step: the summed per-pixel loss grows with the image
    area, so its gradients grow with the side length."""
    return 5.0 * max(1.0, math.sqrt(image_size))


def graphs_supported(device: torch.device, scaler=None, world_size: int = 1) -> bool:
    """Whether :class:`TrainStep` can capture on this set-up (see the module docstring)."""
    return (torch.device(device).type == "cuda" and world_size == 1
            and not (scaler is not None and scaler.is_enabled()))


def make_optimizer(params, lr: float, weight_decay: float, device, capturable: bool) -> torch.optim.Optimizer:
    """AdamW; when it will be captured, ``capturable`` with its learning rate as a device tensor
    (so the schedule can change it between replays)."""
    if capturable:
        return torch.optim.AdamW(params, lr=torch.tensor(float(lr), device=device), weight_decay=weight_decay,
                                 capturable=True)
    if torch.device(device).type == "cpu":
        # The fused CPU kernel updates every tensor in one pass: 2 ms against 7-10 ms per step for
        # PumaMedNet's 90 parameter tensors on two cores (the same arithmetic as the default loop).
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a captured graph reads this very tensor
        else:
            group["lr"] = lr


def make_capturable(optimizer: torch.optim.Optimizer, device) -> None:
    """After ``load_state_dict`` (which restores saved floats and flags): tensor learning rates and
    device step counters again, as capture needs."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
        group["capturable"] = True
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(device=device, dtype=torch.float32)


class TrainStep:
    """Forward (``runner``: the training objective, maybe DDP-wrapped), backward, gradient clipping
    and the optimiser step, with the statistics summed on the device. ``graph=True`` replays the
    step from a CUDA graph where :func:`graphs_supported` allows."""

    def __init__(self, runner: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, device,
                 *, scaler=None, clip_norm: float | None = None, graph: bool = False, world_size: int = 1,
                 log: Callable[[str], None] | None = None):
        self.runner, self.model, self.optimizer = runner, model, optimizer
        self.device = torch.device(device)
        self.scaler = scaler
        self.clip_norm = clip_norm
        self.graphed = graph and graphs_supported(self.device, scaler, world_size)
        self._sums: dict[str, torch.Tensor] = {}
        self._steps = 0
        self._beta = torch.zeros((), device=self.device)
        self._capacity = torch.zeros((), device=self.device)
        self._graph = CudaGraphStep(self._body, before_capture=lambda: optimizer.zero_grad(set_to_none=True),
                                    log=log) if self.graphed else None

    def __call__(self, source, target, label, dataset_id, beta_t: float, capacity_t: float) -> None:
        self._steps += 1
        if self._graph is None:
            self._body(source, target, label, dataset_id, beta_t, capacity_t)
            return
        self._beta.fill_(beta_t)
        self._capacity.fill_(capacity_t)
        self._graph(source, target, label, dataset_id)

    @property
    def graph_active(self) -> bool:
        return self._graph is not None and self._graph.active

    def _body(self, source, target, label, dataset_id, beta_t=None, capacity_t=None) -> None:
        from pumamed.config import autocast

        if beta_t is None:  # graph path: the schedule arrives in device tensors
            beta_t, capacity_t = self._beta, self._capacity
        with autocast(self.device, cache_enabled=self._graph is None):
            loss, stats = self.runner(source, target, label, dataset_id, beta_t, capacity_t)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None and self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if self.clip_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.clip_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
            self.optimizer.step()
        self._accumulate({"loss": loss.detach(), **stats})

    def _accumulate(self, stats: dict) -> None:
        for key, value in stats.items():
            value = value.detach().float()
            if key in self._sums:
                self._sums[key].add_(value)  # in place: captured graphs add into these tensors
            else:
                self._sums[key] = value.clone()

    def epoch_stats(self) -> dict:
        """Means over the steps since the last call (one device synchronisation), then reset.
        ``kl_dims`` is a list (KL per latent dimension); the rest are floats."""
        steps = max(1, self._steps)
        out: dict = {}
        for key, total in self._sums.items():
            mean = (total / steps).cpu()
            out[key] = mean.tolist() if key == "kl_dims" else float(mean)
            total.zero_()
        self._steps = 0
        return out
