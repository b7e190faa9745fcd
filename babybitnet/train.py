"""Training: the loop, loss estimates on both splits, learning-rate schedules, the history.

The loop is the one from "Let's build GPT" and the seed project: sample a
random batch, compute the loss, backpropagate, take an AdamW step; every
``eval_interval`` steps estimate the loss on both splits. Two changes make it
cheaper without changing what it measures:

* the estimate draws the same number of random windows as the seed
  (``eval_iters`` batches of ``batch_size``) but evaluates them in a few large
  batches instead of many small ones;
* evaluation has its own random generator, so how often you evaluate never
  changes which batches the model trains on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from babybitnet.data import get_batch
from babybitnet.distributed import rank_and_world

SCHEDULES = ("constant", "cosine", "two_stage")
DTYPES = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    batch_size: int = 16
    max_iters: int = 5000
    lr: float = 1e-3  # peak learning rate
    schedule: str = "constant"  # constant | cosine | two_stage
    warmup_iters: int = 0
    min_lr: float = 0.0  # where cosine ends
    lr_stage2: float | None = None  # two_stage: learning rate after the mid-point (default lr / 2)
    stage2_frac: float = 0.5  # two_stage: where stage 2 starts, as a fraction of max_iters
    weight_decay: float = 0.01  # AdamW's default
    weight_decay_stage2: float | None = None  # two_stage: weight decay in stage 2 (the FAQ uses 0)
    decay_all: bool = True  # True: decay every parameter (PyTorch default, the seed); False: only matrices
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0  # 0 = no clipping
    eval_interval: int = 100
    eval_iters: int = 200  # batches of batch_size per split per estimate
    seed: int = 1337
    dtype: str = "float32"  # "bfloat16": bf16 autocast for the forward passes (GPUs); the weights stay float32
    compile: bool = False  # torch.compile the model (GPUs: faster steps after a compile of a minute or so)
    patience: int = 0  # early stopping: stop after this many evaluations in a row without a new best val; 0 = off

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.max_iters < 1 or self.batch_size < 1 or self.eval_interval < 1 or self.eval_iters < 1:
            raise ValueError("max_iters, batch_size, eval_interval and eval_iters must all be >= 1")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 (0 = no early stopping), got {self.patience}")

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) under ``cfg.schedule``.

    constant: ``lr`` after a linear warmup. cosine: warmup, then half a cosine
    from ``lr`` down to ``min_lr`` at ``max_iters``. two_stage (BitNet's FAQ):
    warmup, ``lr`` until ``stage2_frac * max_iters``, then a sudden drop to
    ``lr_stage2`` decaying by cosine to ``min_lr``.
    """
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        start, end, peak = cfg.warmup_iters, cfg.max_iters, cfg.lr
    else:
        mid = stage2_start(cfg)
        if step < mid:
            return cfg.lr
        start, end = mid, cfg.max_iters
        peak = cfg.lr / 2 if cfg.lr_stage2 is None else cfg.lr_stage2
    progress = min(max((step - start) / max(end - start, 1), 0.0), 1.0)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (peak - cfg.min_lr)


def stage2_start(cfg: TrainConfig) -> int:
    """The first step of the two-stage schedule's second stage: ``int(stage2_frac * max_iters)``."""
    return int(cfg.stage2_frac * cfg.max_iters)


def weight_decay_at(step: int, cfg: TrainConfig) -> float:
    """Weight decay for step ``step``: constant, except in stage 2 of the two-stage schedule."""
    if cfg.schedule == "two_stage" and cfg.weight_decay_stage2 is not None and step >= stage2_start(cfg):
        return cfg.weight_decay_stage2
    return cfg.weight_decay


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay_all:
        groups = [{"params": params, "decay": True}]
    else:  # nanoGPT: decay matrices, not norms, biases
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "decay": True},
            {"params": [p for p in params if p.dim() < 2], "decay": False},
        ]
    for group in groups:
        group["weight_decay"] = cfg.weight_decay if group["decay"] else 0.0
    # fused=True runs the whole update in one kernel: much less overhead for many small tensors.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module,
    data: torch.Tensor,
    batch_size: int,
    eval_iters: int,
    block_size: int,
    generator: torch.Generator,
    device: torch.device,
    chunk: int = 1024,
) -> float:
    """Mean loss over ``eval_iters * batch_size`` random windows of ``data``, in eval mode.

    Equal to the mean of ``eval_iters`` batch losses (every batch has the same
    size) but computed ``chunk`` windows at a time.
    """
    was_training = model.training
    model.eval()
    n, total = eval_iters * batch_size, 0.0
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        x, y = get_batch(data, size, block_size, generator, device)
        _, loss = model(x, y)
        total += loss.item() * size
    model.train(was_training)
    return total / n


def train(
    model: torch.nn.Module,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Train ``model`` in place; return a JSON-ready summary with the eval history.

    Evaluates at step 0, every ``eval_interval`` steps, and after the last
    step. ``seconds`` is the wall time of the whole run; ``train_seconds`` and
    ``ms_per_step`` count only the optimisation steps, not the evaluations.
    ``on_step(step)``, if given, is called before optimizer step ``step`` (0-based) and before the
    evaluation after ``step`` steps, so it can change the model as training goes (``babybitnet.finetune``).
    With ``cfg.patience = N > 0`` training stops early once N evaluations in a row have not beaten the
    best val loss so far; ``stopped_early`` and ``stopped_step`` (steps taken) say whether and where.
    """
    device = torch.device(device)
    block_size = model.config.block_size
    model.to(device).train()
    opt = make_optimizer(model, cfg, device)
    # Under torchrun (babybitnet.distributed) each of the N processes draws batch_size / N windows with
    # its own generator and DDP averages the gradients: the same step as one process with the whole batch.
    rank, world = rank_and_world()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world})")
    local_batch = cfg.batch_size // world
    ids = [device.index] if device.type == "cuda" else None
    wrapped = model if world == 1 else DistributedDataParallel(model, device_ids=ids)
    progress = progress and rank == 0
    # bf16 autocast runs the matmuls in bfloat16 (the optimizer keeps float32 weights); compile fuses
    # the many small element-wise ops (BitLinear's quantizers) into a few kernels.
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.dtype == "bfloat16" else nullcontext()
    forward = torch.compile(wrapped) if cfg.compile else wrapped
    g_train = torch.Generator().manual_seed(cfg.seed + rank)
    g_eval = torch.Generator().manual_seed(cfg.seed + 1)
    history: dict[str, list] = {"step": [], "train": [], "val": [], "lr": []}

    def evaluate(step: int) -> None:
        if on_step is not None:
            on_step(step)
        for split, data in (("train", train_data), ("val", val_data)):
            with amp:
                loss = estimate_loss(forward, data, cfg.batch_size, cfg.eval_iters, block_size, g_eval, device)
            history[split].append(loss)
        history["step"].append(step)
        history["lr"].append(lr_at(min(step, cfg.max_iters - 1), cfg))

    t_start = time.perf_counter()
    train_time = 0.0
    steps_done, stopped_early, since_best = cfg.max_iters, False, 0
    evaluate(0)
    bar = tqdm(range(cfg.max_iters), desc=desc, disable=not progress, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        if on_step is not None:
            on_step(step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
            group["weight_decay"] = weight_decay_at(step, cfg) if group["decay"] else 0.0
        x, y = get_batch(train_data, local_batch, block_size, g_train, device)
        with amp:
            _, loss = forward(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_iters:
            evaluate(step + 1)
            bar.set_postfix(train=f"{history['train'][-1]:.4f}", val=f"{history['val'][-1]:.4f}")
            if cfg.patience > 0:
                # a big model on a small text overfits: once val stops improving, more steps only hurt
                since_best = 0 if history["val"][-1] < min(history["val"][:-1]) else since_best + 1
                if since_best >= cfg.patience and step + 1 < cfg.max_iters:
                    steps_done, stopped_early = step + 1, True
                    break
    bar.close()

    best = min(range(len(history["val"])), key=history["val"].__getitem__)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "processes": world,
        "lr": cfg.lr,
        "iters": cfg.max_iters,
        "final_val": history["val"][-1],
        "best_val": history["val"][best],
        "best_step": history["step"][best],
        "final_train": history["train"][-1],
        "seconds": time.perf_counter() - t_start,
        "train_seconds": train_time,
        "ms_per_step": 1000 * train_time / steps_done,
        "stopped_early": stopped_early,
        "stopped_step": steps_done,  # optimizer steps taken: max_iters unless stopped early
        "history": history,
    }


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" picks CUDA, then Apple's MPS, then the CPU; other names are checked so a typo fails early."""
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
