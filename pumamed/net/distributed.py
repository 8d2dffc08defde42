"""Distributed set-up for training under ``torchrun`` (PyTorch DDP; nccl on CUDA, gloo on CPU):
rank, world size and local rank, whether this process is the main one, and a barrier. A plain
``python`` launch is a world of one, and every helper is then a no-op."""

from __future__ import annotations

import os

import torch


def distributed_setup() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group when launched by torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def barrier():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
