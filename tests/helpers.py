"""What several test files need: random ternary matmul problems and their exact answer, a small prepared dataset.

The test folders are on pytest's path (``pythonpath`` in pyproject.toml), so any test file, and the
graders in tests/exercises/, can ``from helpers import ...``.
"""

from __future__ import annotations

from pathlib import Path

import torch


def ternary_case(m: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random int8 activations x_q (m, k) in [-127, 127] and ternary int8 weights w_t (n, k), seeded."""
    g = torch.Generator().manual_seed(seed)
    x_q = torch.randint(-127, 128, (m, k), generator=g).to(torch.int8)
    w_t = torch.randint(-1, 2, (n, k), generator=g).to(torch.int8)
    return x_q, w_t


def exact(x_q: torch.Tensor, w_t: torch.Tensor, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """``x_q @ w_t^T`` computed in int64, where nothing can overflow, returned as ``dtype``."""
    return (x_q.long() @ w_t.long().T).to(dtype)


def small_bpe_dataset(folder: Path, vocab_size: int = 300) -> Path:
    """``prepare`` the first 40,000 characters of Tiny Shakespeare with a BPE of ``vocab_size`` into folder/ds."""
    from babybitnet.data import load_text
    from babybitnet.prepare import prepare

    (folder / "text.txt").write_text(load_text(None)[:40_000], encoding="utf-8")
    prepare(folder / "text.txt", folder / "ds", tokenizer="bpe", vocab_size=vocab_size)
    return folder / "ds"
