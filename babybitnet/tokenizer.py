"""Tokenizers: the character tokenizer of lesson 1 and a byte-level BPE, behind one interface.

A tokenizer turns text into token ids and back. Every tokenizer here has the same five members,
so training, sampling and the files on disk never ask which kind they hold:

- ``encode(text) -> list[int]`` and ``decode(ids) -> str``;
- ``vocab_size``, the number of distinct ids (the model's embedding has one row per id);
- ``to_dict()`` and ``from_dict(d)``: the tokenizer as plain JSON data, stored in ``meta.json`` of a
  prepared dataset, in every checkpoint and in every packed file; :func:`tokenizer_from_dict` returns
  the right class for a stored dict.

The **character** tokenizer (:class:`babybitnet.data.CharTokenizer`) gives every distinct character of
the corpus its own id: tiny vocabularies, long sequences, and it cannot encode a character it never saw.
The **byte-level BPE** (:class:`BPETokenizer`, GPT-2's scheme, trained locally with the ``tokenizers``
package) starts from the 256 byte values, so it encodes any text, and adds merges of the most frequent
adjacent pairs until it has ``vocab_size`` tokens: a common word becomes one token, so the same context
window sees several times more text. Decoding concatenates the bytes of the tokens, so
``decode(encode(text)) == text`` exactly for every string.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from babybitnet.data import CharTokenizer

BYTE_TOKENS = 256  # a byte-level BPE's first 256 ids are the byte values: any vocabulary has at least these
KINDS = ("char", "bpe")


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer offers (:class:`babybitnet.data.CharTokenizer`, :class:`BPETokenizer`)."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str: ...

    def to_dict(self) -> dict: ...


class BPETokenizer:
    """A byte-level BPE (GPT-2's pre-tokenizer and byte alphabet), wrapping a ``tokenizers.Tokenizer``."""

    def __init__(self, tokenizer: object):
        self._tok = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``texts`` (an iterable of strings, read once, streamed).

        ValueError if ``vocab_size`` is below 257 (the 256 bytes and at least one merge) or larger
        than the texts support: once every adjacent pair is merged there is nothing left to learn.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        check_bpe_vocab_size(vocab_size)
        tok = HFTokenizer(models.BPE())
        # add_prefix_space=False: a leading space would be added to the text, and decode would return it
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the corpus or not
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        got = tok.get_vocab_size()
        if got < vocab_size:
            raise ValueError(
                f"the corpus supports a BPE vocabulary of at most {got} tokens, not {vocab_size}: every pair of "
                f"adjacent tokens is merged already; ask for --vocab-size {got} or less, or use a larger corpus"
            )
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Several strings at once (the ``tokenizers`` package encodes them in parallel)."""
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids -> text. Ids that end inside a multi-byte character (a sample cut short) decode to U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:  # the tokenizers package would silently drop them
            raise ValueError(f"token ids {bad[:5]} are out of range: this tokenizer has ids 0..{self.vocab_size - 1}")
        return self._tok.decode(ids, skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"kind": "bpe", "json": self._tok.to_str()}

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        if d.get("kind") != "bpe" or not isinstance(d.get("json"), str):
            raise ValueError("a BPE tokenizer's dict is {'kind': 'bpe', 'json': '...'}")
        try:
            return cls(HFTokenizer.from_str(d["json"]))
        except Exception as e:  # the Rust side raises its own exception type for malformed JSON
            raise ValueError(f"the BPE tokenizer's JSON does not load: {str(e).splitlines()[0]}") from None


def check_bpe_vocab_size(vocab_size: int) -> int:
    """``vocab_size`` if a byte-level BPE can have it (an int of at least 257), else a ValueError."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= BYTE_TOKENS:
        raise ValueError(
            f"a byte-level BPE needs a vocabulary size of at least {BYTE_TOKENS + 1} (the 256 bytes and one merge), "
            f"got {vocab_size!r}"
        )
    return vocab_size


def tokenizer_kind(tokenizer: Tokenizer) -> str:
    """ "char" or "bpe"."""
    return "bpe" if isinstance(tokenizer, BPETokenizer) else "char"


def tokenizer_from_dict(d: object) -> CharTokenizer | BPETokenizer:
    """The tokenizer that ``to_dict()`` stored as ``d``; ValueError for anything else.

    A character tokenizer's dict is ``{"chars": "..."}`` (no "kind": checkpoints written before BPE
    existed load as they are); a BPE's is ``{"kind": "bpe", "json": "..."}``.
    """
    if not isinstance(d, dict):
        raise ValueError(f"a stored tokenizer is a dict, not {type(d).__name__}")
    kind = d.get("kind", "char")
    if kind == "bpe":
        return BPETokenizer.from_dict(d)
    if kind != "char" or not isinstance(d.get("chars"), str):
        raise ValueError(
            f"a stored tokenizer is {{'chars': '...'}} or {{'kind': 'bpe', 'json': '...'}}, got keys {sorted(d)}"
        )
    return CharTokenizer.from_dict(d)


def fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's dict (canonical JSON): equal fingerprints, equal encodings."""
    return hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def encode_array(tokenizer: Tokenizer, text: str, dtype: np.dtype) -> np.ndarray:
    """``tokenizer.encode(text)`` as a numpy array of ``dtype``, without a Python int per character where possible."""
    if isinstance(tokenizer, CharTokenizer):
        # a character's id is its rank among the sorted characters: a binary search over the code points
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab = np.frombuffer("".join(tokenizer.chars).encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(vocab, codes)
        if len(codes) and (ids.max() >= len(vocab) or (vocab[np.minimum(ids, len(vocab) - 1)] != codes).any()):
            tokenizer.encode(text)  # raises the ValueError that names the unknown characters
        return ids.astype(dtype)
    return np.asarray(tokenizer.encode(text), dtype=dtype)
