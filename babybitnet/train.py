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
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from babybitnet.data import get_batch
from babybitnet.runtime import training_setup

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

    constant: ``lr`` after a linear warmup (:func:`constant_lr`). cosine: warmup, then half a
    cosine from ``lr`` down to ``min_lr`` at ``max_iters`` (:func:`cosine_lr`). two_stage
    (BitNet's FAQ): warmup, ``lr`` until ``stage2_frac * max_iters``, then a sudden drop to
    ``lr_stage2`` decaying by cosine to ``min_lr`` (:func:`two_stage_lr`).
    """
    if cfg.schedule == "cosine":
        return cosine_lr(step, cfg.max_iters, cfg.lr, cfg.min_lr, cfg.warmup_iters)
    if cfg.schedule == "two_stage":
        return two_stage_lr(step, cfg)
    return constant_lr(step, cfg.lr, cfg.warmup_iters)


def constant_lr(step: int, lr: float, warmup_iters: int = 0) -> float:
    """``lr``, after a linear warm-up ``lr * (step + 1) / warmup_iters`` over the first ``warmup_iters`` steps."""
    return lr * (step + 1) / warmup_iters if step < warmup_iters else lr


def cosine_lr(step: int, max_iters: int, lr: float, min_lr: float = 0.0, warmup_iters: int = 0) -> float:
    """The cosine schedule (nanoGPT's, lesson 5): a linear warm-up, then half a cosine from ``lr`` to ``min_lr``.

    The progress ``p = (step - warmup_iters) / max(max_iters - warmup_iters, 1)`` is clipped to
    [0, 1], so steps at or past ``max_iters`` get ``min_lr``.
    """
    if step < warmup_iters:
        return constant_lr(step, lr, warmup_iters)
    progress = min(max((step - warmup_iters) / max(max_iters - warmup_iters, 1), 0.0), 1.0)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def two_stage_lr(step: int, cfg: TrainConfig) -> float:
    """The two-stage schedule (BitNet's FAQ, lesson 10): warm-up, the peak ``lr`` in stage 1, then stage 2.

    Stage 2 starts at :func:`stage2_start` with a drop to ``lr_stage2`` (``lr / 2`` if None) and is a
    cosine schedule of its own from there to ``min_lr`` at ``max_iters``. The warm-up comes first,
    even if it runs past the start of stage 2.
    """
    mid = stage2_start(cfg)
    if step < max(cfg.warmup_iters, mid):
        return constant_lr(step, cfg.lr, cfg.warmup_iters)
    peak = cfg.lr / 2 if cfg.lr_stage2 is None else cfg.lr_stage2
    return cosine_lr(step - mid, cfg.max_iters - mid, peak, cfg.min_lr)


def stage2_start(cfg: TrainConfig) -> int:
    """The first step of the two-stage schedule's second stage: ``int(stage2_frac * max_iters)``."""
    return int(cfg.stage2_frac * cfg.max_iters)


def weight_decay_at(step: int, cfg: TrainConfig) -> float:
    """Weight decay for step ``step``: constant, except in stage 2 of the two-stage schedule."""
    return two_stage_weight_decay(step, cfg) if cfg.schedule == "two_stage" else cfg.weight_decay


def two_stage_weight_decay(step: int, cfg: TrainConfig) -> float:
    """``weight_decay`` in stage 1, ``weight_decay_stage2`` from :func:`stage2_start` on (unless that is None)."""
    if cfg.weight_decay_stage2 is not None and step >= stage2_start(cfg):
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
    desc: str | None = None,
) -> float:
    """Mean loss over ``eval_iters * batch_size`` random windows of ``data``, in eval mode.

    Equal to the mean of ``eval_iters`` batch losses (every batch has the same
    size) but computed ``chunk`` windows at a time. With ``desc`` a progress bar shows the
    chunks: an evaluation of a big model on a CPU can take minutes.
    """
    was_training = model.training
    model.eval()
    n, total = eval_iters * batch_size, 0.0
    starts = range(0, n, chunk)
    for start in tqdm(starts, desc=desc, disable=desc is None, leave=False, dynamic_ncols=True):
        size = min(chunk, n - start)
        x, y = get_batch(data, size, block_size, generator, device)
        _, loss = model(x, y)
        total += loss.item() * size
    model.train(was_training)
    return total / n


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`: carries the model's state at the last evaluation, so it can be kept.

    ``state`` is a state dict (on the CPU) of the model as it was evaluated at step ``step``, with
    val loss ``val``; the command line saves it as a checkpoint named for that step.
    """

    def __init__(self, step: int, val: float, state: dict[str, torch.Tensor]):
        super().__init__(f"interrupted; last evaluated at step {step} (val loss {val:.4f})")
        self.step, self.val, self.state = step, val, state


def steady_ms(intervals: list[tuple[int, float]]) -> float | None:
    """Milliseconds per step of the median (steps, seconds) interval after the first; None for none."""
    if not intervals:
        return None
    rest = intervals[1:] or intervals
    per_step = sorted(1000 * seconds / steps for steps, seconds in rest if steps > 0)
    return per_step[len(per_step) // 2] if per_step else None


def train(
    model: torch.nn.Module,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
    keep_last: bool = False,
) -> dict:
    """Train ``model`` in place; return a JSON-ready summary with the eval history.

    Evaluates at step 0, every ``eval_interval`` steps, and after the last
    step. ``seconds`` is the wall time of the whole run; ``train_seconds`` and
    ``ms_per_step`` count only the optimisation steps, not the evaluations.
    ``on_step(step)``, if given, is called before optimizer step ``step`` (0-based) and before the
    evaluation after ``step`` steps, so it can change the model as training goes (``babybitnet.finetune``).
    With ``cfg.patience = N > 0`` training stops early once N evaluations in a row have not beaten the
    best val loss so far; ``stopped_early`` and ``stopped_step`` (steps taken) say whether and where.
    With ``keep_last``, Ctrl-C raises :class:`TrainingInterrupted` holding the model as it was at the
    last evaluation (a copy on the CPU after every evaluation); without, a plain KeyboardInterrupt.
    """
    device = torch.device(device)
    block_size = model.config.block_size
    model.to(device).train()
    opt = make_optimizer(model, cfg, device)
    # several processes (torchrun), bf16 autocast and torch.compile: babybitnet.runtime sets them up
    run = training_setup(model, cfg.batch_size, device, cfg.dtype, cfg.compile)
    forward, amp = run.forward, run.amp
    progress = progress and run.rank == 0
    g_train = torch.Generator().manual_seed(cfg.seed + run.rank)
    g_eval = torch.Generator().manual_seed(cfg.seed + 1)
    history: dict[str, list] = {"step": [], "train": [], "val": [], "lr": []}
    last: dict = {"state": None}

    def evaluate(step: int) -> None:
        if on_step is not None:
            on_step(step)
        for split, data in (("train", train_data), ("val", val_data)):
            with amp:
                loss = estimate_loss(
                    forward, data, cfg.batch_size, cfg.eval_iters, block_size, g_eval, device,
                    desc=f"{desc}: evaluating {split}" if progress else None,
                )  # fmt: skip
            history[split].append(loss)
        history["step"].append(step)
        history["lr"].append(lr_at(min(step, cfg.max_iters - 1), cfg))
        if keep_last:  # what Ctrl-C keeps: the model as it was just evaluated
            last["state"] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    t_start = time.perf_counter()
    train_time = 0.0
    steps_done, stopped_early, since_best = cfg.max_iters, False, 0
    intervals: list[tuple[int, float]] = []  # (steps, seconds) between evaluations
    evaluate(0)
    bar = tqdm(range(cfg.max_iters), desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        t0 = time.perf_counter()  # the steps since the last evaluation are timed together
        for step in bar:
            if on_step is not None:
                on_step(step)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
                group["weight_decay"] = weight_decay_at(step, cfg) if group["decay"] else 0.0
            x, y = get_batch(train_data, run.local_batch, block_size, g_train, device)
            with amp:
                _, loss = forward(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_iters:
                # No synchronisation per step: the CPU queues the next steps while the GPU runs this one
                # (a wait per step would leave the GPU idle while Python launches each kernel). Waiting here,
                # before the evaluation, still times the steps exactly.
                if device.type == "cuda":
                    torch.cuda.synchronize()
                interval = time.perf_counter() - t0
                train_time += interval
                intervals.append((step + 1 - (history["step"][-1] if history["step"] else 0), interval))
                evaluate(step + 1)
                bar.set_postfix(train=f"{history['train'][-1]:.4f}", val=f"{history['val'][-1]:.4f}")
                if cfg.patience > 0:
                    # a big model on a small text overfits: once val stops improving, more steps only hurt
                    since_best = 0 if history["val"][-1] < min(history["val"][:-1]) else since_best + 1
                    if since_best >= cfg.patience and step + 1 < cfg.max_iters:
                        steps_done, stopped_early = step + 1, True
                        break
                t0 = time.perf_counter()
    except KeyboardInterrupt:
        bar.close()
        if last["state"] is None:
            raise
        raise TrainingInterrupted(history["step"][-1], history["val"][-1], last["state"]) from None
    bar.close()

    best = min(range(len(history["val"])), key=history["val"].__getitem__)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "processes": run.world,
        "lr": cfg.lr,
        "iters": cfg.max_iters,
        "final_val": history["val"][-1],
        "best_val": history["val"][best],
        "best_step": history["step"][best],
        "final_train": history["train"][-1],
        "seconds": time.perf_counter() - t_start,
        "train_seconds": train_time,
        "ms_per_step": 1000 * train_time / steps_done,
        # the steady speed: the median interval between evaluations, leaving out the first (compilation,
        # warm-up); the first interval's when there is no other
        "ms_per_step_steady": steady_ms(intervals),
        "stopped_early": stopped_early,
        "stopped_step": steps_done,  # optimizer steps taken: max_iters unless stopped early
        "history": history,
    }
