"""Presets: named recipes of model size and training settings for babyGPT and babyBitNet.

* ``seed``: the seed project's comparison, setting for setting (its
  ``compare.ipynb`` and ``train.py``): 64 x 4 heads x 4 layers, block 32,
  batch 16, 5000 steps, constant LR 1e-3 (babyGPT) / 9e-4 (babyBitNet), AdamW
  defaults, attention scaled by 1/sqrt(n_embd) as the seed did, no norm inside
  BitLinear. Takes about 3 minutes per model on a 2-core CPU.
* ``quick``: the seed's model for 600 steps with a cheaper estimate; a smoke
  test of the whole pipeline in well under a minute on a CPU.
* ``recipe``: the seed's size and step budget with what the official recipe
  and our search found for babyBitNet: attention scaled by 1/sqrt(head_size),
  squared-ReLU feed-forward, the two-stage schedule (100 warm-up steps, peak
  LR 3e-3, a drop to 1.5e-3 half way, cosine to 1e-4; weight decay 0.1 then
  0; beta2 0.95). babyGPT gets the same recipe at its own best peak in the
  learning-rate sweep, 1e-3 (then 5e-4). ``python -m babybitnet ablate``
  measures what each change is worth (lesson 10).
* ``b2b4t_block``: the ``recipe`` (size, budget, schedule) with BitNet b1.58
  2B4T's block: RoPE, SubLN, a gated ReLU² feed-forward (8/3 n_embd wide),
  grouped-query attention (2 key/value heads), no biases (lesson 16).
* ``nanogpt``: nanoGPT's ``train_shakespeare_char`` configuration (6 x 6 x 384,
  block 256, batch 64, dropout 0.2, cosine LR 1e-3 -> 1e-4 with 100 warmup
  steps, beta2 0.99, weight decay 0.1 on matrices, gradient clipping 1.0).
  Meant for a GPU.
* ``nanogpt_recipe``: nanoGPT's size, data and budget with the ``recipe``'s
  schedule and squared ReLU (peaks 1e-3 babyGPT, 3e-3 babyBitNet, as at the
  seed's size; not tuned at this size), no norm inside BitLinear. For a GPU.
* ``nanogpt_2b4t``: ``nanogpt_recipe`` with BitNet b1.58 2B4T's block (as
  ``b2b4t_block``; 2 key/value heads for the 6 query heads). For a GPU.
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from babybitnet.gpt import GPT, GPTConfig
from babybitnet.train import TrainConfig

MODELS = ("gpt", "bitnet")
SEED_SIZE = dict(block_size=32, n_embd=64, n_head=4, n_layer=4, dropout=0.0)  # the seed project's model
# nanoGPT's train_shakespeare_char model, and its step budget
NANOGPT_SIZE = dict(block_size=256, n_embd=384, n_head=6, n_layer=6, dropout=0.2, bias=False)
NANOGPT_BUDGET = dict(batch_size=64, max_iters=5000, eval_interval=250, eval_iters=200)
# BitNet b1.58 2B4T's width and depth (hidden 2560, 30 layers, 20 heads of 128): for timing generation at the size
# of the released model, with random weights (babyGPT's block: a 4x MLP, no gating, learned positions)
B2B4T_SIZE = dict(block_size=256, n_embd=2560, n_head=20, n_layer=30, dropout=0.0, bias=False)
# The recipe's schedule (lesson 10): two stages, weight decay off in stage 2, beta2 0.95, babyBitNet's peaks
RECIPE_SCHEDULE = dict(
    schedule="two_stage",
    warmup_iters=100,
    lr=3e-3,
    lr_stage2=1.5e-3,
    min_lr=1e-4,
    weight_decay=0.1,
    weight_decay_stage2=0.0,
    beta2=0.95,
)
RECIPE_GPT = {"train": dict(lr=1e-3, lr_stage2=5e-4)}  # babyGPT's best peak in the sweep
# BitNet b1.58 2B4T's block (lesson 16): RoPE, SubLN, a gated squared-ReLU feed-forward, grouped-query attention
# (2 key/value heads for 4 query heads), no biases; attention scaled by 1/sqrt(head_size) as in the recipe
B2B4T_BLOCK = dict(attn_scale="head", activation="relu2", pos="rope", subln=True, ffn="gated", n_kv_head=2, bias=False)

# Each preset: settings shared by both models, then per-model overrides.
PRESETS: dict[str, dict] = {
    "seed": {
        "model": dict(SEED_SIZE, attn_scale="embd"),
        "train": dict(batch_size=16, max_iters=5000, eval_interval=100, eval_iters=200, schedule="constant"),
        "gpt": {"train": dict(lr=1e-3)},
        "bitnet": {"train": dict(lr=9e-4), "model": dict(bitlinear_norm=False)},
    },
    "quick": {
        "model": dict(SEED_SIZE, attn_scale="embd"),
        "train": dict(batch_size=16, max_iters=600, eval_interval=100, eval_iters=40, schedule="constant"),
        "gpt": {"train": dict(lr=1e-3)},
        "bitnet": {"train": dict(lr=9e-4)},
    },
    "recipe": {
        "model": dict(SEED_SIZE, attn_scale="head", activation="relu2"),
        "train": dict(batch_size=16, max_iters=5000, eval_interval=100, eval_iters=200, **RECIPE_SCHEDULE),
        "gpt": RECIPE_GPT,
        "bitnet": {},
    },
    "nanogpt": {
        "model": NANOGPT_SIZE,
        "train": dict(
            **NANOGPT_BUDGET,
            schedule="cosine",
            warmup_iters=100,
            min_lr=1e-4,
            lr=1e-3,
            beta2=0.99,
            weight_decay=0.1,
            decay_all=False,
            grad_clip=1.0,
        ),
        "gpt": {},
        "bitnet": {"model": dict(bitlinear_norm=True)},
    },
    "2b4t_size": {  # for `bench generate --preset 2b4t_size` on a GPU; too big to train here
        "model": dict(B2B4T_SIZE, activation="relu2"),
        "train": dict(NANOGPT_BUDGET, lr=1e-3),
        "gpt": {},
        "bitnet": {},
    },
    "b2b4t_block": {  # the recipe at the seed's size, with BitNet b1.58 2B4T's block (lesson 16)
        "model": dict(SEED_SIZE, **B2B4T_BLOCK),
        "train": dict(batch_size=16, max_iters=5000, eval_interval=100, eval_iters=200, **RECIPE_SCHEDULE),
        "gpt": RECIPE_GPT,
        "bitnet": {},
    },
    "nanogpt_recipe": {  # nanoGPT's size and budget (with its clipping and matrix-only decay), the recipe's schedule
        "model": dict(NANOGPT_SIZE, activation="relu2"),
        "train": dict(**NANOGPT_BUDGET, **RECIPE_SCHEDULE, decay_all=False, grad_clip=1.0),
        "gpt": RECIPE_GPT,
        "bitnet": {},
    },
    "nanogpt_2b4t": {  # nanogpt_recipe with BitNet b1.58 2B4T's block (2 key/value heads for 6 query heads)
        "model": dict(NANOGPT_SIZE, **B2B4T_BLOCK),
        "train": dict(**NANOGPT_BUDGET, **RECIPE_SCHEDULE, decay_all=False, grad_clip=1.0),
        "gpt": RECIPE_GPT,
        "bitnet": {},
    },
}


def get_preset(
    name: str, model: str, vocab_size: int = 65, model_overrides: dict | None = None, **train_overrides
) -> tuple[GPTConfig, TrainConfig]:
    """The (GPTConfig, TrainConfig) of ``model`` ("gpt" or "bitnet") under preset ``name``.

    ``model_overrides`` replace model settings (e.g. ``{"activation": "relu2"}``);
    ``train_overrides`` replace training settings (e.g. ``max_iters=100``);
    ``None`` values are ignored so command-line defaults can pass straight through.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose 'gpt' (babyGPT) or 'bitnet' (babyBitNet)")
    p = PRESETS[name]
    model_kw = {**p["model"], **p[model].get("model", {}), **(model_overrides or {})}
    known_model = {f.name for f in fields(GPTConfig)} - {"vocab_size", "linear"}
    if set(model_kw) - known_model:
        raise ValueError(f"unknown model settings {sorted(set(model_kw) - known_model)}; known: {sorted(known_model)}")
    train_kw = {**p["train"], **p[model].get("train", {})}
    mcfg = GPTConfig(vocab_size=vocab_size, linear="fp" if model == "gpt" else "bitnet", **model_kw)
    tcfg = TrainConfig(**train_kw)
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(train_overrides) - known
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}")
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    if "max_iters" in overrides:  # keep a short run's eval points inside the run
        overrides.setdefault("eval_interval", min(tcfg.eval_interval, max(1, overrides["max_iters"] // 5)))
    return mcfg, replace(tcfg, **overrides)


def build_model(
    name: str, model: str, vocab_size: int = 65, model_overrides: dict | None = None, **train_overrides
) -> tuple[GPT, TrainConfig]:
    """A freshly initialised GPT for ``model`` under preset ``name``, and its TrainConfig.

    The global RNG is seeded with the training seed first, so the same seed gives
    the same initial weights: both models of a comparison start reproducibly.
    """
    mcfg, tcfg = get_preset(name, model, vocab_size, model_overrides, **train_overrides)
    torch.manual_seed(tcfg.seed)
    return GPT(mcfg), tcfg
