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

Two options of BitNet b1.58 2B4T's attention (lesson 16): rotary position embeddings (:func:`rope`,
applied to q and k, so attention scores depend only on how far apart two tokens are) and
grouped-query attention (``n_kv_head < n_head``: fewer key/value heads, each shared by
``n_head // n_kv_head`` query heads, so the KV cache is that many times smaller).

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


def rope_frequencies(head_size: int, theta: float, device: torch.device | str | None = None) -> torch.Tensor:
    """RoPE's angular frequencies: (head_size // 2,) float32, ``theta ** (-2i / head_size)``.

    Written exactly as ``transformers`` writes them (Llama, BitNet), so a loaded checkpoint gets the same angles.
    """
    return 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.float, device=device) / head_size))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1), halves of the last dimension: pairs channel i with channel i + head_size / 2."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding: rotate each pair (x[i], x[i + d/2]) of x by ``position * freq_i``.

    x: (..., T, head_size) queries or keys (head_size even); positions: (T,) integer positions.
    Returns the same shape and dtype. Rotating q by angle a and k by angle b makes
    ``q . k`` depend on ``a - b`` only: attention sees how far apart two tokens are, not where they are.
    The "rotate half" pairing is the one of ``transformers``' Llama and BitNet (not interleaved pairs).
    """
    head_size = x.shape[-1]
    if head_size % 2:
        raise ValueError(f"rope needs an even head size, got {head_size}")
    freqs = positions.to(x.device)[:, None].float() * rope_frequencies(head_size, theta, x.device)  # (T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


class KVCache:
    """One attention layer's keys and values of the tokens seen so far, for generation.

    Generating token t+1 needs the keys and values of tokens 0..t, and those of
    tokens 0..t-1 do not change when token t arrives (causal attention: a token
    never looks ahead). So we keep them and compute only the new token's. ``k``
    and ``v`` are (B, H_kv, T_past, head_size), or None before the first call
    (H_kv = n_kv_head: with grouped-query attention the cache holds only the shared heads;
    with RoPE the keys are stored already rotated, at their own positions).
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

    The q, k, v weights of all heads are stacked into one ((n_head + 2 n_kv_head) * head_size, n_embd)
    matrix, rows ordered [q of head 0..H-1, k of head 0..K-1, v of head 0..K-1].
    ``weight_groups=n_head + 2 * n_kv_head`` tells a BitLinear to keep one weight scale per
    original (head_size, n_embd) matrix, exactly as separate layers would.

    Options (BitNet b1.58 2B4T, lesson 16): ``n_kv_head`` key/value heads (None: n_head; fewer:
    grouped-query attention, each shared by n_head // n_kv_head query heads); ``rope_theta``
    (None: no rotation; a number: :func:`rope` on q and k, at positions that start at the cache's
    length); ``subln`` (an RMSNorm with eps ``norm_eps`` on the heads' output before ``proj``).
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        dropout: float = 0.0,
        scale: float | None = None,
        linear: LinearFactory = full_precision_linear,
        n_kv_head: int | None = None,
        rope_theta: float | None = None,
        subln: bool = False,
        norm_eps: float | None = None,
    ):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_kv_head < 1 or n_head % n_kv_head:
            raise ValueError(f"n_kv_head={n_kv_head} must be >= 1 and divide n_head={n_head}")
        self.n_head, self.n_kv_head, self.n_embd, self.dropout_p = n_head, n_kv_head, n_embd, dropout
        self.head_size = n_embd // n_head
        self.rope_theta = rope_theta
        self.scale = self.head_size**-0.5 if scale is None else scale
        n_qkv = n_head + 2 * n_kv_head
        self.qkv = linear(n_embd, n_qkv * self.head_size, bias=False, weight_groups=n_qkv)
        # SubLN: the heads' concatenated output varies a lot in scale; normalising it keeps the
        # activations that proj quantizes to 8 bits in a steady range
        self.sub_norm = nn.RMSNorm(n_embd, eps=norm_eps) if subln else None
        self.proj = linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, n_embd) -> q (B, n_head, T, hs), k and v (B, n_kv_head, T, hs), not rotated yet."""
        B, T, _ = x.shape
        hs, H, K = self.head_size, self.n_head, self.n_kv_head
        q, k, v = self.qkv(x).split([H * hs, K * hs, K * hs], dim=-1)
        return tuple(t.view(B, T, -1, hs).transpose(1, 2) for t in (q, k, v))

    def rotate(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k with RoPE at ``positions`` (T,), or unchanged without rope_theta."""
        if self.rope_theta is None:
            return q, k
        return rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)

    def expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Repeat each of the n_kv_head heads for its n_head // n_kv_head query heads (query head h uses h // rep)."""
        rep = self.n_head // self.n_kv_head
        if rep == 1:
            return k, v
        return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)

    def concat_heads(self, y: torch.Tensor) -> torch.Tensor:
        """The heads' outputs (B, n_head, T, hs) side by side again, (SubLN,): (B, T, n_embd), proj's input."""
        B, _, T, _ = y.shape
        y = y.transpose(1, 2).reshape(B, T, self.n_embd)
        return y if self.sub_norm is None else self.sub_norm(y)

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """The heads' outputs (B, n_head, T, hs) merged: ``proj(concat_heads(y))``, (B, T, n_embd)."""
        return self.proj(self.concat_heads(y))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x: (B, T, n_embd) -> (B, T, n_embd).

        With a ``cache`` (generation), x holds only the new tokens: their k, v are
        appended to the cache and their queries attend to every cached token.
        """
        T = x.shape[1]
        q, k, v = self.split_heads(x)
        is_causal = True
        past = 0
        if cache is not None:
            past = len(cache)
            if T > 1 and past:
                # is_causal=True would align the mask to the top left (query i sees keys 0..i), which is wrong
                # once keys of past tokens come first; generation never needs it, so we do not build that mask
                raise ValueError(
                    f"a KV cache takes several new tokens only when empty (a prefill): got {T} new tokens "
                    f"on top of {past} cached ones; feed them one at a time"
                )
        if self.rope_theta is not None:  # the new tokens sit after the cached ones
            q, k = self.rotate(q, k, torch.arange(past, past + T, device=x.device))
        if cache is not None:
            k, v = cache.append(k, v)
            # one new token may look at every cached one (all are in its past): no mask needed
            is_causal = T > 1
        k, v = self.expand_kv(k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=is_causal, dropout_p=self.dropout_p if self.training else 0.0, scale=self.scale
        )
        return self.dropout(self.merge_heads(y))

    @torch.no_grad()
    def load_from_heads(self, mha: MultiHeadAttention) -> None:
        """Copy the weights of a ``MultiHeadAttention`` (same sizes) into this fused layer."""
        if self.n_kv_head != self.n_head:
            raise ValueError("load_from_heads needs n_kv_head == n_head: a MultiHeadAttention has no shared heads")
        for i, part in enumerate(("query", "key", "value")):
            w = torch.cat([getattr(h, part).weight for h in mha.heads], dim=0)
            self.qkv.weight[i * self.n_embd : (i + 1) * self.n_embd] = w
        self.proj.load_state_dict(mha.proj.state_dict())
