"""Attention: causal self-attention, one head, many heads, and all heads in one matmul.

Each position of a sequence emits a query ("what am I looking for"), a key
("what do I contain") and a value ("what I pass on"). A position's output is
the average of the values of the positions before it (and itself), weighted
by the softmax of query . key. The causal mask hides the future: a language
model must predict the next character without seeing it.

``Head`` and ``MultiHeadAttention`` are the readable versions built in the
lessons; ``CausalSelfAttention`` computes the same thing with one matmul for
every head's q, k and v and PyTorch's fused attention kernel, which is what
the GPT uses (proven equal by the tests).

For generation, ``CausalSelfAttention`` can keep a ``KVCache``: the keys and
values of the tokens it has already seen, so that each new token computes
only its own q, k, v instead of rerunning the whole context.

Every class takes a ``linear`` factory, called as
``linear(in_features, out_features, bias=..., weight_groups=...)``, so the
same code builds babyGPT (``nn.Linear``) and babyBitNet (``BitLinear``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LinearFactory = Callable[..., nn.Module]


def full_precision_linear(in_features: int, out_features: int, bias: bool = True, weight_groups: int = 1) -> nn.Linear:
    """``nn.Linear`` behind the factory signature (``weight_groups`` only matters to BitLinear)."""
    return nn.Linear(in_features, out_features, bias=bias)


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) bool, True where position t may look at position s (s <= t)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def causal_average(x: torch.Tensor) -> torch.Tensor:
    """Running mean over time: out[..., t, :] = mean of x[..., :t+1, :], as one matmul.

    x: (..., T, C) float. Returns (..., T, C), same dtype. The (T, T) weight matrix is
    the causal mask with each row divided by its length, so row t averages
    positions 0..t: the simplest attention, every past position weighted equally.
    """
    if x.dim() < 2:
        raise ValueError(f"x must be (..., T, C), got shape {tuple(x.shape)}")
    T = x.shape[-2]
    wei = causal_mask(T, x.device).to(x.dtype)
    wei = wei / wei.sum(dim=-1, keepdim=True)
    return wei @ x


def attention_weights(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Masked softmax of ``q k^T * scale``: (..., T, T), each row sums to 1 over the past."""
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * scale
    scores = scores.masked_fill(~causal_mask(T, q.device), float("-inf"))
    return F.softmax(scores, dim=-1)


class Head(nn.Module):
    """One head of causal self-attention: (B, T, n_embd) -> (B, T, head_size)."""

    def __init__(
        self, n_embd: int, head_size: int, scale: float | None = None, linear: LinearFactory = full_precision_linear
    ):
        super().__init__()
        self.key = linear(n_embd, head_size, bias=False)
        self.query = linear(n_embd, head_size, bias=False)
        self.value = linear(n_embd, head_size, bias=False)
        self.scale = head_size**-0.5 if scale is None else scale  # keeps the softmax from saturating

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wei = attention_weights(self.query(x), self.key(x), self.scale)
        return wei @ self.value(x)


class MultiHeadAttention(nn.Module):
    """Several heads side by side, concatenated, then projected back to n_embd."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        dropout: float = 0.0,
        scale: float | None = None,
        linear: LinearFactory = full_precision_linear,
    ):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        head_size = n_embd // n_head
        self.heads = nn.ModuleList([Head(n_embd, head_size, scale, linear) for _ in range(n_head)])
        self.proj = linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)
        return self.dropout(self.proj(out))


class KVCache:
    """One attention layer's keys and values of the tokens seen so far, for generation.

    Generating token t+1 needs the keys and values of tokens 0..t, and those of
    tokens 0..t-1 do not change when token t arrives (causal attention: a token
    never looks ahead). So we keep them and compute only the new token's. ``k``
    and ``v`` are (B, H, T_past, head_size), or None before the first call.
    """

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        """T_past: how many tokens are cached (the position of the next one)."""
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' k, v (B, H, T_new, head_size); return all of them, past and new."""
        # torch.cat copies the cache each step: simple, and cheap at block_size <= 256
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    """``MultiHeadAttention`` in one matmul for q, k, v and one fused attention call.

    The q, k, v weights of all heads are stacked into one (3 * n_embd, n_embd)
    matrix, rows ordered [q of head 0..H-1, k of head 0..H-1, v of head 0..H-1].
    ``weight_groups=3 * n_head`` tells a BitLinear to keep one weight scale per
    original (head_size, n_embd) matrix, exactly as separate layers would.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        dropout: float = 0.0,
        scale: float | None = None,
        linear: LinearFactory = full_precision_linear,
    ):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.n_head, self.n_embd, self.dropout_p = n_head, n_embd, dropout
        self.scale = (n_embd // n_head) ** -0.5 if scale is None else scale
        self.qkv = linear(n_embd, 3 * n_embd, bias=False, weight_groups=3 * n_head)
        self.proj = linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x: (B, T, n_embd) -> (B, T, n_embd).

        With a ``cache`` (generation), x holds only the new tokens: their k, v are
        appended to the cache and their queries attend to every cached token.
        """
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, H, T, head_size) tensors
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        is_causal = True
        if cache is not None:
            if T > 1 and len(cache):
                # is_causal=True would align the mask to the top left (query i sees keys 0..i), which is wrong
                # once keys of past tokens come first; generation never needs it, so we do not build that mask
                raise ValueError(
                    f"a KV cache takes several new tokens only when empty (a prefill): got {T} new tokens "
                    f"on top of {len(cache)} cached ones; feed them one at a time"
                )
            k, v = cache.append(k, v)
            # one new token may look at every cached one (all are in its past): no mask needed
            is_causal = T > 1
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=is_causal, dropout_p=self.dropout_p if self.training else 0.0, scale=self.scale
        )
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.dropout(self.proj(y))

    @torch.no_grad()
    def load_from_heads(self, mha: MultiHeadAttention) -> None:
        """Copy the weights of a ``MultiHeadAttention`` (same sizes) into this fused layer."""
        for i, part in enumerate(("query", "key", "value")):
            w = torch.cat([getattr(h, part).weight for h in mha.heads], dim=0)
            self.qkv.weight[i * self.n_embd : (i + 1) * self.n_embd] = w
        self.proj.load_state_dict(mha.proj.state_dict())
