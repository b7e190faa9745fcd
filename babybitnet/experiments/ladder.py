"""The ladder: from a bigram model to babyGPT, one idea at a time, each rung trained the same way.

Karpathy's "Let's build GPT" grows a character model step by step and reports
the validation loss after each step (block 8, n_embd 32, batch 32, AdamW at
1e-3 for 5000 steps, loss averaged over 200 batches). This module rebuilds
that progression from the parts of this package and trains every rung with
``babybitnet.train.train`` under the same settings, the same seed and the same
batches, so the only thing that changes from one rung to the next is the model:

=============  ==============================================================
rung           model
=============  ==============================================================
bigram         a table of next-character logits (``BigramLanguageModel``)
head           token + position embeddings, one attention ``Head``, lm_head
multihead      ``MultiHeadAttention`` (4 heads of 8) instead of one head
feedforward    + the feed-forward ``MLP`` after the attention
residual       ``n_layer`` blocks (attention, MLP), each as x + f(x), no norm
norm           + RMSNorm before each part and at the end: the full ``GPT``
=============  ==============================================================

Every rung starts from the same kind of initial weights: PyTorch's defaults
(``init="torch"``, as in the video, embeddings N(0, 1)) or the GPT's small
normal init (``init="gpt"``, std 0.02), which slows down the rungs without a
norm. ``python -m babybitnet ladder`` runs it and prints a table; ``--text`` (a
UTF-8 file) or ``--data`` (a dataset written by ``prepare``, read from disk,
its tokenizer's vocabulary) replaces Tiny Shakespeare.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from babybitnet.attention import Head, MultiHeadAttention
from babybitnet.bigram import BigramLanguageModel
from babybitnet.experiments.study import ran_on
from babybitnet.files import write_json
from babybitnet.gpt import GPT, MLP, Block, GPTConfig, make_linear
from babybitnet.prepare import data_record, load_corpus
from babybitnet.runtime import resolve_device
from babybitnet.train import TrainConfig, train

RUNGS = ("bigram", "head", "multihead", "feedforward", "residual", "norm")
TITLES = {
    "bigram": "bigram (lookup table)",
    "head": "+ one attention head",
    "multihead": "+ multi-head attention",
    "feedforward": "+ feed-forward (MLP)",
    "residual": "+ blocks with residuals",
    "norm": "+ RMSNorm: babyGPT",
}
# The setting of "Let's build GPT" at its self-attention stage.
LADDER_MODEL = dict(block_size=8, n_embd=32, n_head=4, n_layer=3, dropout=0.0)
LADDER_TRAIN = dict(batch_size=32, max_iters=5000, lr=1e-3, eval_interval=500, eval_iters=200, schedule="constant")


def ladder_configs(vocab_size: int = 65, **train_overrides) -> tuple[GPTConfig, TrainConfig]:
    """The (GPTConfig, TrainConfig) shared by every rung; ``None`` overrides are ignored."""
    tcfg = TrainConfig(**LADDER_TRAIN)
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    if "max_iters" in overrides:  # keep a few evaluations inside a short run
        overrides.setdefault("eval_interval", min(tcfg.eval_interval, max(1, overrides["max_iters"] // 5)))
    return GPTConfig(vocab_size=vocab_size, **LADDER_MODEL), replace(tcfg, **overrides)


class EmbeddingLM(nn.Module):
    """Token + position embeddings, then ``body`` (B, T, n_embd) -> (B, T, n_embd), then a linear head.

    The rungs between the bigram and the GPT: the GPT's forward without the
    blocks and the final norm.
    """

    def __init__(self, config: GPTConfig, body: nn.Module):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.body = body
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        logits = self.lm_head(self.body(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def residual_blocks(config: GPTConfig) -> nn.Sequential:
    """``n_layer`` of the GPT's blocks with their norms taken out: x + attn(x), then x + mlp(x)."""
    blocks = [Block(config, make_linear(config)) for _ in range(config.n_layer)]
    for block in blocks:
        block.ln1, block.ln2 = nn.Identity(), nn.Identity()
    return nn.Sequential(*blocks)


INITS = ("torch", "gpt")


def initialise(model: nn.Module, init: str) -> nn.Module:
    """Re-draw every weight: PyTorch's default init ("torch") or the GPT's normal(0, 0.02) ("gpt")."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    for m in model.modules():
        if init == "gpt":
            GPT._init_weights(m)
        elif hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


def build_rung(name: str, config: GPTConfig, init: str = "torch") -> nn.Module:
    """The model of rung ``name``: forward(idx, targets) -> (logits, loss), with a ``config.block_size``.

    Rungs other than the bigram are initialised by ``initialise(model, init)``.
    """
    if name not in RUNGS:
        raise ValueError(f"unknown rung {name!r}; choose from {RUNGS}")
    linear = make_linear(config)
    C = config.n_embd
    if name == "bigram":
        return BigramLanguageModel(config.vocab_size, config.block_size)  # starts uniform: all logits 0
    if name == "head":
        model = EmbeddingLM(config, Head(C, C, linear=linear))  # one head as wide as the embedding
    elif name == "multihead":
        model = EmbeddingLM(config, MultiHeadAttention(C, config.n_head, linear=linear))
    elif name == "feedforward":
        model = EmbeddingLM(
            config, nn.Sequential(MultiHeadAttention(C, config.n_head, linear=linear), MLP(config, linear))
        )
    elif name == "residual":
        model = EmbeddingLM(config, residual_blocks(config))
    else:
        model = GPT(config)
    return initialise(model, init)


def ladder(
    iters: int | None = None,
    device: str = "auto",
    seed: int | None = None,
    out: str | Path | None = None,
    text: str | Path | None = None,
    rungs: tuple[str, ...] = RUNGS,
    init: str = "torch",
    progress: bool = True,
    data: str | Path | None = None,
    **train_overrides,
) -> dict:
    """Train every rung under the same settings; return (and write ``out/ladder.json``) the results.

    ``text`` (a UTF-8 file) or ``data`` (a folder written by ``prepare``) replaces Tiny Shakespeare.
    ``train_overrides`` replace training settings, e.g. ``eval_iters=20`` for a quick look.
    """
    dev = resolve_device(device)
    tok, train_data, val_data = load_corpus(text, data)
    mcfg, tcfg = ladder_configs(tok.vocab_size, max_iters=iters, seed=seed, **train_overrides)
    results: dict = {
        "model_config": mcfg.to_dict(),
        "train_config": tcfg.to_dict(),
        **ran_on(dev),
        "data": data_record(text, data),
        "init": init,
        "rungs": {},
    }
    for name in rungs:
        torch.manual_seed(tcfg.seed)
        model = build_rung(name, mcfg, init)
        r = train(model, train_data, val_data, tcfg, dev, progress=progress, desc=name)
        r["title"] = TITLES[name]
        results["rungs"][name] = r
    if out is not None:
        write_json(Path(out) / "ladder.json", results)
    return results


def markdown_table(results: dict) -> str:
    """The ladder's results as a markdown table."""
    rows = [
        "| rung | parameters | train loss | val loss | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results["rungs"].values():
        rows.append(
            f"| {r['title']} | {r['params']:,} | {r['final_train']:.4f} | {r['final_val']:.4f} | {r['seconds']:.1f} |"
        )
    return "\n".join(rows) + "\n"
