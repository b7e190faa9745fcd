"""Bigram models: predict the next character from the current one alone.

A bigram model is a (V, V) table: row ``i`` is a probability distribution over
the character that follows character ``i``. There are two ways to get the table:

* **count** it: ``counts[i, j]`` = how often ``j`` follows ``i`` in the
  training text, then normalise each row (with add-k smoothing, so no
  character pair has probability zero);
* **learn** it: ``BigramLanguageModel`` holds a (V, V) table of logits in an
  ``nn.Embedding`` and trains it by gradient descent on the cross-entropy.

Both minimise the same quantity, the average negative log-likelihood of the
next character, so they end up at (nearly) the same table; the neural one is
the template every later model of the course follows: ``forward(idx, targets)
-> (logits, loss)`` and ``generate``, trained by ``babybitnet.train.train``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _check_tokens(tokens: torch.Tensor, vocab_size: int | None = None, name: str = "tokens") -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"{name} must be a 1-D tensor of token ids, got {shape}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if vocab_size is not None and tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"{name} ids must lie in [0, {vocab_size}), got values from {tokens.min().item()} to {tokens.max().item()}"
        )


def _check_probs(probs: torch.Tensor) -> None:
    if probs.dim() != 2 or probs.shape[0] != probs.shape[1]:
        raise ValueError(f"probs must be a square (V, V) matrix, got shape {tuple(probs.shape)}")


def count_bigrams(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Count how often each token follows each other token.

    tokens: (N,) int64 token ids in [0, vocab_size).
    Returns counts: (V, V) int64 with ``counts[i, j]`` = number of t with
    ``tokens[t] == i`` and ``tokens[t + 1] == j``. The N - 1 pairs are all
    counted, so ``counts.sum() == max(N - 1, 0)``.
    """
    _check_tokens(tokens, vocab_size)
    tokens = tokens.long()
    # Pair (i, j) -> the single index i * V + j; one bincount counts all pairs at once.
    pair_ids = tokens[:-1] * vocab_size + tokens[1:]
    return torch.bincount(pair_ids, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


def bigram_probs(counts: torch.Tensor, k: float = 1.0) -> torch.Tensor:
    """Turn counts into next-token probabilities with add-k smoothing.

    counts: (V, V) counts (any numeric dtype). k >= 0 is added to every count
    before normalising, so with k > 0 no pair has probability zero.
    Returns probs: (V, V) float32, ``probs[i, j] = (counts[i, j] + k) / sum_j (counts[i, j] + k)``;
    every row sums to 1. A row with no counts and k = 0 (a token never seen
    as a predecessor) gets the uniform distribution, the limit of smoothing as k -> 0.
    """
    _check_probs(counts)
    if k < 0:
        raise ValueError(f"the smoothing constant k must be >= 0, got {k}")
    V = counts.shape[0]
    smoothed = counts.float() + k
    totals = smoothed.sum(dim=1, keepdim=True)
    return torch.where(totals > 0, smoothed / totals.clamp_min(1e-30), torch.full_like(smoothed, 1.0 / V))


def bigram_nll(tokens: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Average negative log-likelihood of a token sequence under a bigram table.

    tokens: (N,) int64, N >= 2. probs: (V, V) float, rows are distributions.
    Returns a float scalar tensor ``-(1 / (N - 1)) * sum_t log probs[tokens[t], tokens[t + 1]]``
    (natural log, in nats). It is ``inf`` if a pair in ``tokens`` has probability 0.
    """
    _check_probs(probs)
    _check_tokens(tokens, probs.shape[0])
    if tokens.numel() < 2:
        raise ValueError(f"the NLL needs at least 2 tokens (one pair), got {tokens.numel()}")
    tokens = tokens.long()
    return -probs[tokens[:-1], tokens[1:]].log().mean()


@torch.no_grad()
def sample_bigrams(
    probs: torch.Tensor, start: int, max_new_tokens: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample a sequence from a bigram table: each next token is drawn from row ``probs[current]``.

    probs: (V, V) float. Returns (1 + max_new_tokens,) int64 token ids, starting with ``start``.
    """
    _check_probs(probs)
    if not 0 <= start < probs.shape[0]:
        raise ValueError(f"start must be a token id in [0, {probs.shape[0]}), got {start}")
    out = [start]
    for _ in range(max_new_tokens):
        out.append(torch.multinomial(probs[out[-1]], 1, generator=generator).item())
    return torch.tensor(out, dtype=torch.long)


@dataclass
class BigramConfig:
    vocab_size: int = 65
    block_size: int = 8  # training window length; the model itself looks at one token only

    def to_dict(self) -> dict:
        return asdict(self)


class BigramLanguageModel(nn.Module):
    """The bigram table as a neural network: row ``i`` of an ``nn.Embedding(V, V)`` holds the logits of
    the token that follows token ``i``.

    Same interface as ``babybitnet.gpt.GPT`` (``config``, ``forward``, ``generate``), so
    ``babybitnet.train.train`` trains it unchanged.
    """

    def __init__(self, vocab_size: int, block_size: int = 8):
        super().__init__()
        self.config = BigramConfig(vocab_size=vocab_size, block_size=block_size)
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)
        # All logits 0: the model starts as uniform guessing, loss ln(V).
        nn.init.zeros_(self.token_embedding_table.weight)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) int64 token ids. Returns logits (B, T, V) float32 and the mean cross-entropy
        against ``targets`` (B, T) int64, or None without targets."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        logits = self.token_embedding_table(idx)  # (B, T, V): row idx[b, t] of the table
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def probs(self) -> torch.Tensor:
        """The (V, V) table of next-token probabilities the model has learned (softmax of each row)."""
        return F.softmax(self.token_embedding_table.weight.detach(), dim=-1)

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to idx (B, T) int64; returns (B, T + max_new_tokens)."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -1:])  # a bigram model only needs the last token
            nxt = torch.multinomial(F.softmax(logits[:, -1, :], dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
