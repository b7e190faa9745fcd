"""Prepare: a text corpus -> a tokenizer and token files on disk that training reads without loading them.

nanoGPT's ``prepare.py``, for any text file or folder of text: it trains a tokenizer on the corpus,
encodes it, and writes the token ids as raw little-endian arrays, ``train.bin`` (the first ``train_frac`` of
the corpus, by bytes) and ``val.bin`` (the rest), of ``uint16`` when the vocabulary has at most 65,536
ids and ``uint32`` otherwise. Training maps them into memory with ``numpy.memmap`` and
:func:`babybitnet.data.get_batch` reads only the windows it draws, so a corpus may be larger than the
memory. ``meta.json`` beside them says how to read them back: the tokenizer (its whole data), the
vocabulary size, the dtype, the token counts and a sha256 of each token file, and the corpus record
(which files, their total size in bytes and a sha256 over their names and contents), so a result can
say exactly what it trained on.

The corpus is read twice, in chunks, never whole: once to learn the tokenizer (the characters, or the
BPE merges) and once to encode. Both .bin files are written chunk by chunk to temporary names and
renamed when complete (:func:`babybitnet.files.atomic_path`); ``meta.json`` is removed first and written
last, so a directory with a ``meta.json`` always holds the token files it describes.

The larger corpus on every machine: ``stdlib``, the Python standard library's own source (its ``*.py``
files without the test suites), about 12.6 MB in 799 files for CPython 3.11.7; the exact files, size
and hash of the one used are recorded in ``meta.json``, as for any corpus.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from babybitnet.data import CharTokenizer, load_dataset
from babybitnet.files import atomic_path, write_json
from babybitnet.tokenizer import (
    KINDS,
    BPETokenizer,
    Tokenizer,
    check_bpe_vocab_size,
    encode_array,
    fingerprint,
    tokenizer_from_dict,
    tokenizer_kind,
)

FORMAT = "babybitnet-tokens-v1"
STDLIB = "stdlib"  # the keyword for the Python standard library's source
STDLIB_SKIP = {"test", "tests", "site-packages", "dist-packages", "__pycache__"}  # folders left out of it
META, TRAIN, VAL = "meta.json", "train.bin", "val.bin"
CHUNK_BYTES = 1 << 20  # read and encode the corpus a MiB at a time


# ---------------------------------------------------------------- the corpus: which files, read in pieces
def stdlib_root() -> Path:
    """The folder of this Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``*.py`` files, sorted, without the test suites and installed packages."""
    root = stdlib_root() if root is None else root
    return sorted(
        p for p in root.rglob("*.py") if p.is_file() and not STDLIB_SKIP & set(p.relative_to(root).parts[:-1])
    )


def corpus_files(source: str | Path) -> tuple[Path, list[Path]]:
    """``source`` -> (its root, its files in reading order): a file, every file under a folder, or ``stdlib``.

    A folder's files are read in sorted order of their paths, hidden ones (``.git``, ``.DS_Store``) left out.
    """
    if str(source) == STDLIB:
        return stdlib_root(), stdlib_files()
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"corpus not found: {p} (give a text file, a folder of text files, or {STDLIB!r})")
    if p.is_file():
        return p.parent, [p]
    hidden = lambda f: any(part.startswith(".") for part in f.relative_to(p).parts)
    files = sorted(f for f in p.rglob("*") if f.is_file() and not hidden(f))
    return p, files


def read_pieces(
    files: list[Path], chunk_bytes: int = CHUNK_BYTES, digest: Any = None, root: Path | None = None
) -> Iterator[str]:
    """The text of ``files``, concatenated, as pieces of about ``chunk_bytes`` ending at a newline where possible.

    ValueError naming the file if one is not UTF-8 text or holds a NUL byte (a binary file). With
    ``digest`` (a hashlib object), every file's path relative to ``root``, a NUL and its bytes are fed to it.
    """
    for path in files:
        decoder = codecs.getincrementaldecoder("utf-8")()
        carry, offset = "", 0
        with open(path, "rb") as f:
            if digest is not None:
                digest.update(f"{_relative(path, root or path.parent)}\0".encode())
            while True:
                raw = f.read(chunk_bytes)
                if digest is not None:
                    digest.update(raw)
                try:
                    text = carry + decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:
                    raise ValueError(
                        f"{path} is not UTF-8 text (byte {offset + e.start} is {e.object[e.start]:#04x}): a binary "
                        f"file? remove it from the corpus or convert it, e.g. `iconv -t utf-8`"
                    ) from None
                if "\0" in text:
                    raise ValueError(f"{path} holds NUL bytes: a binary file, not text; remove it from the corpus")
                offset += len(raw)
                if not raw:
                    if text:
                        yield text
                    break
                cut = text.rfind("\n") + 1  # a piece ends at a line's end, so words are not split between pieces
                if cut == 0 and len(text) < 4 * chunk_bytes:
                    carry = text
                    continue
                cut = cut or len(text)
                yield text[:cut]
                carry = text[cut:]


def split_pieces(pieces: Iterator[str], cut: int) -> Iterator[tuple[int, str]]:
    """(0, text) for the corpus's first ``cut`` bytes, then (1, text): the train/val split of a stream."""
    seen = 0
    for piece in pieces:
        raw = piece.encode("utf-8")
        if seen >= cut:
            yield 1, piece
        elif seen + len(raw) <= cut:
            yield 0, piece
        else:
            k = cut - seen
            while k < len(raw) and raw[k] & 0xC0 == 0x80:  # not inside a character
                k += 1
            yield 0, raw[:k].decode("utf-8")
            yield 1, raw[k:].decode("utf-8")
        seen += len(raw)


# ---------------------------------------------------------------- prepare
def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (half the disk and the reads), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def learn_tokenizer(kind: str, pieces: Iterator[str], vocab_size: int | None) -> CharTokenizer | BPETokenizer:
    """A tokenizer of ``kind`` learnt from ``pieces``: the characters they hold, or ``vocab_size`` BPE tokens."""
    if kind == "bpe":
        return BPETokenizer.train(pieces, check_bpe_vocab_size(vocab_size))
    chars: set[str] = set()
    for piece in pieces:
        chars.update(piece)
    return CharTokenizer(sorted(chars))


def prepare(
    source: str | Path,
    out: str | Path,
    tokenizer: str | Tokenizer = "char",
    vocab_size: int | None = None,
    train_frac: float = 0.9,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict:
    """Tokenize ``source`` (a text file, a folder of them, or ``"stdlib"``) into ``out``; return its meta.json data.

    ``tokenizer`` is ``"char"``, ``"bpe"`` (with ``vocab_size``, at least 257) or a tokenizer to reuse,
    e.g. a checkpoint's, to fine-tune it on new text. One-line ValueErrors for an empty corpus, a binary
    file, a vocabulary size the corpus cannot support, and a vocabulary size given to the char tokenizer.
    """
    if isinstance(tokenizer, str) and tokenizer not in KINDS:
        raise ValueError(f"tokenizer must be one of {KINDS} (or a tokenizer object), got {tokenizer!r}")
    if tokenizer == "char" and vocab_size is not None:
        raise ValueError("the char tokenizer's vocabulary is the corpus's characters; --vocab-size is for bpe")
    if tokenizer == "bpe":
        check_bpe_vocab_size(vocab_size)  # before reading a byte of the corpus
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be between 0 and 1, got {train_frac}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give the directory to write train.bin, val.bin and meta.json into")
    root, files = corpus_files(source)
    total = sum(f.stat().st_size for f in files)
    if total == 0:
        raise ValueError(f"the corpus {source} is empty: it has no text to learn from ({len(files)} files, 0 bytes)")

    # pass 1: check every file and hash it, and learn the tokenizer (or take the one given)
    digest = hashlib.sha256()
    pieces = read_pieces(files, chunk_bytes, digest, root)
    if isinstance(tokenizer, str):
        tok = learn_tokenizer(tokenizer, pieces, vocab_size)
    else:
        tok = tokenizer
    for _ in pieces:  # a given tokenizer (or a BPE trainer that stopped early) leaves the rest unread
        pass
    dtype = token_dtype(tok.vocab_size)

    # pass 2: encode, the first train_frac of the bytes to train.bin, the rest to val.bin
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # from here until the end the directory holds no complete dataset
    counts, hashes = [0, 0], [hashlib.sha256(), hashlib.sha256()]
    with atomic_path(out / TRAIN) as train_tmp, atomic_path(out / VAL) as val_tmp:
        with open(train_tmp, "wb") as f_train, open(val_tmp, "wb") as f_val:
            sinks = (f_train, f_val)
            for split, text in split_pieces(read_pieces(files, chunk_bytes), int(train_frac * total)):
                ids = encode_array(tok, text, dtype).astype(dtype.newbyteorder("<"), copy=False)
                raw = ids.tobytes()
                sinks[split].write(raw)
                hashes[split].update(raw)
                counts[split] += len(ids)
        if min(counts) == 0:
            raise ValueError(
                f"the corpus {source} is too small to split: {counts[0]} train and {counts[1]} val tokens; "
                f"give it more text"
            )
    meta = {
        "format": FORMAT,
        "tokenizer_kind": tokenizer_kind(tok),
        "tokenizer": tok.to_dict(),
        "tokenizer_sha256": fingerprint(tok),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "train_frac": train_frac,
        "tokens": {"train": counts[0], "val": counts[1]},
        "sha256": {TRAIN: hashes[0].hexdigest(), VAL: hashes[1].hexdigest()},
        "corpus": {
            "source": str(source),
            "root": str(root),
            "files": [_relative(f, root) for f in files],
            "bytes": total,
            "sha256": digest.hexdigest(),  # over every file's name and bytes, in this order
        },
    }
    write_json(out / META, meta)
    return meta


# ---------------------------------------------------------------- reading a prepared dataset
@dataclass
class TokenDataset:
    """A prepared dataset: its tokenizer and its splits as read-only ``numpy.memmap`` of token ids."""

    path: Path
    tokenizer: CharTokenizer | BPETokenizer
    train: np.memmap
    val: np.memmap
    meta: dict

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def _meta(path: Path) -> dict:
    hint = f"make one with `python -m babybitnet prepare TEXT_FILE_OR_DIR --out {path}`"
    if not path.is_dir():
        raise FileNotFoundError(f"prepared dataset not found: {path} is not a directory ({hint})")
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a prepared dataset: it has no {META} ({hint})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / META} is not valid JSON ({e}); prepare the dataset again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path / META} is not a babybitnet dataset (expected format {FORMAT!r}); {hint}")
    return meta


def load_prepared(path: str | Path, verify: bool = False) -> TokenDataset:
    """Open a directory written by :func:`prepare`; ValueError if its files do not match its ``meta.json``.

    The sizes of the token files are always checked against the token counts and dtype; ``verify``
    also re-hashes them (a full read: cheap for megabytes, slow for a corpus larger than memory).
    """
    path = Path(path)
    meta = _meta(path)
    try:
        tok = tokenizer_from_dict(meta["tokenizer"])
        dtype = np.dtype(meta["dtype"])
        counts = {TRAIN: int(meta["tokens"]["train"]), VAL: int(meta["tokens"]["val"])}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path / META} is damaged ({e}); prepare the dataset again") from None
    if (
        tok.vocab_size != meta.get("vocab_size")
        or fingerprint(tok) != meta.get("tokenizer_sha256")
        or dtype != token_dtype(tok.vocab_size)
    ):
        raise ValueError(f"{path / META}: the tokenizer, vocab_size and dtype disagree; prepare the dataset again")
    splits = {}
    for name, n in counts.items():
        file = path / name
        size = file.stat().st_size if file.is_file() else None
        if size != n * dtype.itemsize:
            raise ValueError(
                f"{file} has {size} bytes, {META} says {n:,} {dtype.name} tokens ({n * dtype.itemsize:,} bytes): the "
                f"token files are from another prepare run or tokenizer; prepare the dataset again"
            )
        if verify and _file_sha256(file) != meta.get("sha256", {}).get(name):
            raise ValueError(f"{file} does not match its sha256 in {META}: it was modified; prepare the dataset again")
        splits[name] = np.memmap(file, dtype=dtype.newbyteorder("<"), mode="r")
    return TokenDataset(path, tok, splits[TRAIN], splits[VAL], meta)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            h.update(block)
    return h.hexdigest()


def check_tokenizer(dataset: TokenDataset, tokenizer: Tokenizer, what: str = "the model") -> None:
    """ValueError unless ``dataset`` was encoded with ``tokenizer`` (e.g. a checkpoint's, to train it further)."""
    if fingerprint(tokenizer) != dataset.meta["tokenizer_sha256"]:
        raise ValueError(
            f"{dataset.path} was prepared with another tokenizer ({dataset.meta['tokenizer_kind']}, "
            f"{dataset.vocab_size} tokens) than {what} ({tokenizer_kind(tokenizer)}, {tokenizer.vocab_size} tokens); "
            f"prepare the text with that tokenizer (prepare(..., tokenizer=its_tokenizer))"
        )


def data_record(text: str | Path | None = None, data: str | Path | None = None) -> dict:
    """What a run trained on, for its results: the text file, or the prepared dataset with its corpus record."""
    if data is None:
        return {"text": str(text) if text is not None else "tinyshakespeare"}
    meta = _meta(Path(data))
    corpus = meta.get("corpus", {})
    return {
        "data": str(data),
        "tokenizer": meta.get("tokenizer_kind"),
        "vocab_size": meta.get("vocab_size"),
        "tokens": meta.get("tokens"),
        "corpus": {k: corpus.get(k) for k in ("source", "bytes", "sha256")} | {"files": len(corpus.get("files", []))},
    }


def load_corpus(
    text: str | Path | None = None, data: str | Path | None = None
) -> tuple[CharTokenizer | BPETokenizer, torch.Tensor | np.memmap, torch.Tensor | np.memmap]:
    """(tokenizer, train tokens, val tokens) from a text file (``--text``) or a prepared dataset (``--data``).

    What ``train``, ``compare`` and ``scale`` call: a text is read and split in memory (int64 tensors,
    :func:`babybitnet.data.load_dataset`); a prepared dataset is mapped from disk (numpy memmaps).
    Both work with :func:`babybitnet.train.train`. Neither given: Tiny Shakespeare.
    """
    if text is not None and data is not None:
        raise ValueError("give a text file (--text) or a prepared dataset (--data), not both")
    if data is None:
        return load_dataset(text)
    ds = load_prepared(data)
    return ds.tokenizer, ds.train, ds.val
