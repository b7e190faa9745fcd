"""Training on several GPUs (or CPU processes) with DistributedDataParallel, launched by torchrun.

``torchrun --nproc_per_node=N -m babybitnet train ...`` starts N copies of the
same command and tells each one its place through environment variables
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``). Every copy builds the same model
(same seed), draws its own ``batch_size / N`` windows of each batch (its own
random generator), and DistributedDataParallel averages the gradients of all
copies during ``backward``: every copy then takes the very same optimizer
step. That is the training of one process with the whole batch, done N times
faster. Without torchrun nothing here does anything: one process, as before.

GPUs talk through NCCL; CPU processes through gloo (how the tests run it).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) unless torchrun started us."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Whether this process is rank 0: the one that prints, shows progress and saves files."""
    return rank_and_world()[0] == 0


def init(device: torch.device) -> torch.device:
    """Join the process group if torchrun started several processes; return this process's device.

    On CUDA each process takes GPU ``LOCAL_RANK``; on the CPU they share the cores.
    """
    rank, world = rank_and_world()
    if world == 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def cleanup() -> None:
    """Leave the process group (if we joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
