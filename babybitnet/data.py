"""Data: the text, a character tokenizer, the train/val split and random batches.

A character-level language model sees text as a sequence of integers, one per
character. This module turns the shipped Tiny Shakespeare (or any UTF-8 text
file) into such a sequence and serves random windows of it for training:
the input ``x`` is a window of ``block_size`` tokens, the target ``y`` is the
same window shifted one token to the right, so position ``t`` of ``y`` is the
character that follows ``x[:t+1]``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

SHAKESPEARE = "tinyshakespeare.txt"


def shakespeare_path() -> Path:
    """Path of the Tiny Shakespeare file shipped inside the package."""
    return Path(str(resources.files("babybitnet") / "data" / SHAKESPEARE))


def load_text(path: str | Path | None = None) -> str:
    """Read a UTF-8 text file; with no path, the shipped Tiny Shakespeare.

    Raises ``FileNotFoundError`` or ``ValueError`` with a message saying what is
    wrong and what to do, instead of failing later with an obscure error.
    """
    p = shakespeare_path() if path is None else Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"text file not found: {p} (give the path of a UTF-8 text file, or no path for Tiny Shakespeare)"
        )
    if p.is_dir():
        raise ValueError(f"{p} is a directory, not a text file")
    raw = p.read_bytes()
    if not raw:
        raise ValueError(f"text file is empty: {p} (a language model needs at least a few characters to learn from)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{p} is not UTF-8 text (byte {e.start} is {raw[e.start]:#04x}); convert it, e.g. `iconv -t utf-8 {p.name}`"
        ) from None


def build_vocab(text: str | list[str]) -> list[str]:
    """The distinct characters of ``text``, sorted: the same text gives the same ids on every run and machine."""
    return sorted(set(text))


class CharTokenizer:
    """Maps each distinct character of a text to an integer, its index in :func:`build_vocab` of the text."""

    def __init__(self, chars: str | list[str]):
        self.chars: list[str] = build_vocab(chars)
        if not self.chars:
            raise ValueError("a tokenizer needs at least one character")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """String -> list of token ids. Unknown characters are an error that names them."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise ValueError(
                f"characters not in the vocabulary: {unknown!r}; use only these: {''.join(self.chars)!r}"
            ) from None

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """List (or 1-D tensor) of token ids -> string."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)

    # Checkpoints store the tokenizer as plain data so they load without unpickling.
    def to_dict(self) -> dict:
        return {"chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        return cls(d["chars"])


def train_val_split(data: torch.Tensor, train_frac: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``train_frac`` of the tokens for training, the rest for validation.

    A contiguous split (not a random one) so that validation text is text the
    model never saw, not shuffled neighbours of training windows.
    """
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be between 0 and 1, got {train_frac}")
    n = int(train_frac * len(data))
    return data[:n], data[n:]


def get_batch(
    data: torch.Tensor | np.ndarray,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: ``x`` and ``y`` of shape (batch_size, block_size), int64, ``y`` = ``x`` shifted by one.

    ``data`` is a tensor in memory or a numpy array such as the ``numpy.memmap`` of a prepared token
    file (:mod:`babybitnet.prepare`): then only the windows drawn are read from the disk, so the file
    may be larger than the memory. The same generator state draws the same windows from either.
    """
    if len(data) <= block_size:
        raise ValueError(f"the data has {len(data)} tokens; it needs more than block_size={block_size}")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    if isinstance(data, np.ndarray):  # fancy indexing copies just these windows out of the map
        rows = (ix[:, None] + offsets).numpy()
        x, y = torch.from_numpy(data[rows].astype(np.int64)), torch.from_numpy(data[rows + 1].astype(np.int64))
    else:
        x = data[ix[:, None] + offsets]  # one gather instead of a Python loop over the batch
        y = data[ix[:, None] + offsets + 1]
    if torch.device(device).type == "cuda":
        # from pinned memory the copy runs in the background: the CPU goes on queueing work meanwhile
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def load_dataset(path: str | Path | None = None) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """Text -> (tokenizer, train tokens, val tokens), the 90/10 split as int64 tensors."""
    text = load_text(path)
    tok = CharTokenizer.from_text(text)
    data = torch.tensor(tok.encode(text), dtype=torch.long)
    train, val = train_val_split(data)
    return tok, train, val
