"""Where code runs: the device, the machine a timing was taken on, several processes, worker pools.

Nothing here is a concept of the course; it is the plumbing every other module shares:

- :func:`resolve_device` turns ``--device auto|cpu|cuda|mps`` into a ``torch.device``.
- :func:`machine_info` / :func:`describe` record what a result was measured on.
- Distributed training (``torchrun --nproc_per_node=N -m babybitnet train ...``): torchrun starts N
  copies of the same command and tells each one its place through environment variables (``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``). Every copy builds the same model (same seed), draws its own
  ``batch_size / N`` windows of each batch, and DistributedDataParallel averages the gradients during
  ``backward``: every copy takes the very same optimizer step. Without torchrun nothing here does
  anything. GPUs talk through NCCL; CPU processes through gloo (how the tests run it).
- :func:`training_setup`: DDP, bf16 autocast and ``torch.compile`` for a training loop, in one call,
  so that :func:`babybitnet.train.train` reads as the loop it is.
- :func:`worker_pool`: independent runs side by side (the studies in ``babybitnet.experiments``).
"""

from __future__ import annotations

import os
import platform
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" picks CUDA, then Apple's MPS, then the CPU; other names are checked so a typo fails early."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but this PyTorch sees no CUDA GPU (use --device cpu or auto)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps asked for, but MPS is not available here (use --device cpu or auto)")
    return torch.device(device)


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What a timing was measured on: CPU model and cores, GPU name, torch version, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "device": str(device),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe(info: dict) -> str:
    """One line for humans: 'cpu (Intel Xeon, 2 cores, 2 threads), torch 2.13.0'."""
    where = info.get("gpu") or f"{info['cpu']}, {info['cpu_cores']} cores, {info['torch_threads']} threads"
    return f"{info['device']} ({where}), torch {info['torch']}"


# ---------------------------------------------------------------- several processes (torchrun)
def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) unless torchrun started us."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Whether this process is rank 0: the one that prints, shows progress and saves files."""
    return rank_and_world()[0] == 0


def init_distributed(device: torch.device) -> torch.device:
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


def cleanup_distributed() -> None:
    """Leave the process group (if we joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class TrainingSetup:
    """What a training loop needs from the runtime: how to call the model and how big this process's batch is."""

    forward: torch.nn.Module  # the model, maybe wrapped in DDP and compiled: call this, optimise model's parameters
    amp: AbstractContextManager  # bf16 autocast, or a context that does nothing
    local_batch: int  # windows this process draws per step: batch_size / processes
    rank: int
    world: int


def training_setup(
    model: torch.nn.Module, batch_size: int, device: torch.device, dtype: str = "float32", compile: bool = False
) -> TrainingSetup:
    """Wrap ``model`` for training on ``device``: DDP under torchrun, bf16 autocast, ``torch.compile``.

    Under torchrun each of the N processes draws ``batch_size / N`` windows with its own generator and
    DDP averages the gradients: the same step as one process with the whole batch. bf16 autocast runs
    the matmuls in bfloat16 (the optimizer keeps float32 weights); compile fuses the many small
    element-wise ops (BitLinear's quantizers) into a few kernels.
    """
    rank, world = rank_and_world()
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes ({world})")
    ids = [device.index] if device.type == "cuda" else None
    wrapped = model if world == 1 else DistributedDataParallel(model, device_ids=ids)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    forward = torch.compile(wrapped) if compile else wrapped
    return TrainingSetup(forward=forward, amp=amp, local_batch=batch_size // world, rank=rank, world=world)


# ---------------------------------------------------------------- independent runs side by side
def _one_thread() -> None:
    """Worker initializer: several CPU runs side by side are fastest with one thread each."""
    torch.set_num_threads(1)


def worker_pool(jobs: int, one_thread: bool = True) -> ProcessPoolExecutor:
    """``jobs`` worker processes for independent training runs (``ablate``, ``finetune``, ``scale``).

    Fresh interpreters ("spawn"), so no worker inherits the parent's thread pools or CUDA
    context; with ``one_thread`` each worker uses one CPU thread (CPU runs side by side).
    """
    ctx = torch.multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_one_thread if one_thread else None)
