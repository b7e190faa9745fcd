"""babyGPT and babyBitNet: one GPT class, two kinds of linear layers.

A decoder-only transformer in the style of nanoGPT's ``model.py``: token and
position embeddings, ``n_layer`` pre-norm blocks (attention, then a
feed-forward network, each with a residual connection), a final norm and a
linear head that scores the next character.

``GPTConfig.linear`` picks the factory every linear layer inside the blocks
comes from: ``"fp"`` builds babyGPT with ``nn.Linear``, ``"bitnet"`` builds
babyBitNet with ``BitLinear``. The embeddings and ``lm_head`` stay full
precision in both, as in the paper and the seed project.

``GPT.generate`` keeps a KV cache (``babybitnet.attention.KVCache``, one per
block): the prompt runs through the model once, then each step feeds only
the newest token, so every linear layer multiplies a single row (a GEMV),
the case the packed kernels of lessons 12 and 13 are built for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from babybitnet.attention import CausalSelfAttention, KVCache, LinearFactory, full_precision_linear
from babybitnet.bitlinear import BitLinear

LINEAR_KINDS = ("fp", "bitnet")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "relu2": lambda x: F.relu(x).square()}


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 32  # context length
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 4
    dropout: float = 0.0
    linear: str = "fp"  # "fp": babyGPT (nn.Linear); "bitnet": babyBitNet (BitLinear)
    bitlinear_norm: bool = False  # RMSNorm inside BitLinear (official recipe), replacing the blocks' pre-norm
    attn_scale: str = "head"  # "head": 1/sqrt(head_size); "embd": 1/sqrt(n_embd), what the seed used
    activation: str = "relu"  # feed-forward non-linearity: relu, gelu or relu2 (squared ReLU)
    bias: bool = True  # biases of the nn.Linear layers and lm_head (q, k, v never have one; BitLinear never has one)

    def __post_init__(self):
        if self.linear not in LINEAR_KINDS:
            raise ValueError(f"linear must be one of {LINEAR_KINDS}, got {self.linear!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.attn_scale not in ("head", "embd"):
            raise ValueError(f"attn_scale must be 'head' or 'embd', got {self.attn_scale!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")

    @property
    def norm_in_linear(self) -> bool:
        return self.linear == "bitnet" and self.bitlinear_norm

    def to_dict(self) -> dict:
        return asdict(self)


def make_linear(config: GPTConfig) -> LinearFactory:
    """The factory every linear layer of the blocks comes from."""
    if config.linear == "fp":
        return lambda i, o, bias=True, weight_groups=1: full_precision_linear(i, o, bias=bias and config.bias)

    def bit_linear(i: int, o: int, bias: bool = True, weight_groups: int = 1) -> BitLinear:
        return BitLinear(i, o, bias=False, norm=config.bitlinear_norm, weight_groups=weight_groups)

    return bit_linear


class MLP(nn.Module):
    """Position-wise feed-forward network: n_embd -> 4 n_embd -> n_embd."""

    def __init__(self, config: GPTConfig, linear: LinearFactory):
        super().__init__()
        self.fc = linear(config.n_embd, 4 * config.n_embd)
        self.act = ACTIVATIONS[config.activation]
        self.proj = linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Communication (attention) then computation (MLP), each as x + f(norm(x))."""

    def __init__(self, config: GPTConfig, linear: LinearFactory):
        super().__init__()
        scale = config.n_embd**-0.5 if config.attn_scale == "embd" else None
        # With the norm inside every BitLinear, a second norm in front would be redundant.
        norm = (lambda: nn.Identity()) if config.norm_in_linear else (lambda: nn.RMSNorm(config.n_embd))
        self.ln1 = norm()
        self.attn = CausalSelfAttention(config.n_embd, config.n_head, config.dropout, scale, linear)
        self.ln2 = norm()
        self.mlp = MLP(config, linear)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        # without a cache, call attn(x) exactly as before: a swapped-in attention (lessons) needs no cache argument
        h = self.ln1(x)
        x = x + (self.attn(h) if cache is None else self.attn(h, cache=cache))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        linear = make_linear(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, linear) for _ in range(config.n_layer)])
        self.ln_f = nn.RMSNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)  # full precision in both variants
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Small normal init (GPT-2, nanoGPT, the seed): keeps the first logits near uniform.
        if isinstance(m, (nn.Linear, BitLinear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, (nn.Linear, BitLinear)) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> list[KVCache]:
        """An empty KV cache for ``forward(..., cache=)``: one ``KVCache`` per block."""
        return [KVCache() for _ in self.blocks]

    def supports_cache(self) -> bool:
        """Whether every block is our ``Block`` with our ``CausalSelfAttention`` (lessons swap in their own)."""
        return all(isinstance(b, Block) and isinstance(b.attn, CausalSelfAttention) for b in self.blocks)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: list[KVCache] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) int64 token ids, T <= block_size. Returns logits (B, T, vocab) and the mean
        cross-entropy against ``targets`` (B, T), or None without targets.

        ``cache`` (from ``new_cache()``, for generation): idx holds only the tokens after the cached
        ones, so their positions start at the cache's length, and their keys and values are added to
        it. Several tokens at once only into an empty cache (the prompt); then one at a time.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"cache has {len(cache)} layers, the model {len(self.blocks)}: use model.new_cache()")
        past = 0 if cache is None else len(cache[0])
        if past + T > self.config.block_size:
            cached = f" on top of {past} cached ones" if past else ""
            raise ValueError(
                f"sequence of length {T}{cached} is longer than block_size={self.config.block_size}"
                + (": the position embedding has no room for more" if past else "")
            )
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for i, block in enumerate(self.blocks):
            x = block(x) if cache is None else block(x, cache=cache[i])
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to idx (B, T); ``temperature=0`` is greedy.

        ``use_cache``: keep a KV cache, so that each step runs only the newest token through
        the model. It gives the same tokens as ``use_cache=False`` (up to float rounding) as long
        as the sequence fits in ``block_size``. Past that, the model sees only the last
        ``block_size`` tokens, at positions 0..block_size-1: every step shifts every token's
        position, so every cached key and value (computed at the old positions) is stale. We then
        drop the cache and rerun the last ``block_size`` tokens each step, as without a cache.
        """
        was_training = self.training
        self.eval()  # dropout off
        block_size = self.config.block_size
        use_cache = use_cache and self.supports_cache()
        cache = None
        for _ in range(max_new_tokens):
            if use_cache and idx.shape[1] <= block_size:
                if cache is None:  # prefill: the whole prompt at once
                    cache = self.new_cache()
                    logits, _ = self(idx, cache=cache)
                else:  # the cache holds every token but the newest
                    logits, _ = self(idx[:, -1:], cache=cache)
            else:
                cache = None  # past block_size (or no cache asked for): the sliding window, no cache
                logits, _ = self(idx[:, -block_size:])  # the model sees at most block_size tokens
            logits = logits[:, -1, :]
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        self.train(was_training)
        return idx
