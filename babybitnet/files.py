"""Every file babybitnet writes or reads: checkpoints, packed models, and the atomic write under them.

- A **checkpoint** (``train --out``) is a plain dict of tensors, numbers and strings saved with
  ``torch.save``; ``load_checkpoint`` reads it with ``weights_only=True``, which refuses to run
  arbitrary pickled code, so a checkpoint from a stranger cannot execute anything on your machine.
- A **packed model** (``pack``) is one safetensors file: a header of JSON (tensor names, dtypes,
  shapes, and our metadata: the GPTConfig, the tokenizer (its whole data), the packing format, a
  checksum) followed by the raw tensor bytes. Reading it never unpickles anything.
- Both carry a **sha256 checksum** over everything that decides the model's output (every tensor,
  the config, the tokenizer, the packing and layer layout, ``meta``): neither format checks its data
  on its own, so without it a flipped byte in a weight or an edited config would load silently.
  The checksum catches damage, not forgery: whoever edits a file on purpose can recompute it.
- Every file is written next to its target under a temporary name, flushed, then renamed over it
  (:func:`atomic_path`): a crash or Ctrl-C leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import zipfile
from dataclasses import fields
from pathlib import Path

import torch

# the atomic writes live in babybitnet.atomic (the kernels use them too); every caller finds them here as well
from babybitnet.atomic import atomic_path, remove_stale_temporaries, write_json, write_text  # noqa: F401
from babybitnet.bitlinear import BitLinear
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.packed import PackedBitLinear, layer_spec, pack_model, packed_format, replace_module
from babybitnet.packing import check_format
from babybitnet.tokenizer import Tokenizer, tokenizer_from_dict

PACKED_FORMAT = "babybitnet-packed"
VERSION = 2  # 2: the checksum covers the metadata too (version 1 covered the tensors only)
METADATA_KEY = "babybitnet"  # the one safetensors metadata entry we write: a JSON string


# ---------------------------------------------------------------- checks shared by both formats
def _digest(tensors: dict[str, torch.Tensor], data: dict) -> str:
    """sha256 over ``data`` (canonical JSON) and every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"|{name!r}|{t.dtype}|{tuple(tensors[name].shape)}|{t.numel() * t.element_size()}|".encode())
        h.update(t.view(torch.uint8).numpy())  # the buffer itself, no copy
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (a one-line error must not quote a library's essay)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _plain(data: dict | None) -> dict:
    """``data`` as plain JSON data: str subclasses such as ``torch.__version__`` would not load (weights_only)."""
    return json.loads(json.dumps(data or {}))


def _check_file(path: Path, what: str, hint: str) -> None:
    """FileNotFoundError if ``path`` does not exist, ValueError if it is not a readable file."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a {what} file; give the path of the file itself")
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} ({hint})")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def _config(path: Path, config: object) -> GPTConfig:
    """The GPTConfig a file describes, with exactly GPTConfig's keys and valid values, else a ValueError."""
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the config is {type(config).__name__}, not a dict; the file is corrupt")
    names = {f.name for f in fields(GPTConfig)}
    unknown, missing = sorted(set(config) - names), sorted(names - set(config))
    if unknown or missing:
        raise ValueError(
            f"{path}: the config has unknown keys {unknown} and lacks {missing}: the file was edited, or written by "
            f"another babybitnet version (load it with that one)"
        )
    try:
        return GPTConfig(**config)  # GPTConfig checks every value (and refuses sizes too large to allocate)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid config in the file: {e}") from None


def _tokenizer(path: Path, data: object) -> Tokenizer:
    """The tokenizer a file stores (characters or BPE, :func:`babybitnet.tokenizer.tokenizer_from_dict`)."""
    try:
        return tokenizer_from_dict(data)
    except ValueError as e:
        if not isinstance(data, dict) or not (isinstance(data.get("chars"), str) or data.get("kind") == "bpe"):
            raise ValueError(
                f"{path}: the tokenizer is not {{'chars': '...'}} nor {{'kind': 'bpe', 'json': '...'}}; "
                f"the file is corrupt"
            ) from None
        raise ValueError(f"{path}: invalid tokenizer in the file: {e}") from None


def _check_tensors(path: Path, tensors: dict, expected: dict[str, torch.Tensor], dtypes: bool) -> None:
    """The tensors of a file are exactly those its config needs, with their shapes (and dtypes)."""
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: tensors missing {missing}, unexpected {extra}; the file does not fit its config")
    for name, t in tensors.items():
        want = expected[name]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{path}: {name!r} is a {type(t).__name__}, not a tensor; the file is corrupt")
        if t.shape != want.shape or (dtypes and t.dtype != want.dtype):
            raise ValueError(
                f"{path}: tensor {name!r} is {t.dtype} {tuple(t.shape)}, its config needs "
                f"{want.dtype} {tuple(want.shape)}; the file is corrupt"
            )


# ---------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "babybitnet-checkpoint-v1"
_CHECKED = ("format", "config", "tokenizer", "meta")  # with the tensors of "model": what the checksum covers


def save_checkpoint(path: str | Path, model: GPT, tokenizer: Tokenizer, meta: dict | None = None) -> Path:
    """Write model weights, config, tokenizer, ``meta`` (plain JSON-like data) and their checksum to ``path``."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    data = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "meta": _plain(meta),
    }
    payload = {**data, "model": state, "sha256": _digest(state, data)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)`` with its many failures turned into one-line ValueErrors."""
    unreadable = f"{path} is not a readable babybitnet checkpoint"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the very end
        raise ValueError(
            f"{unreadable}: it is not a complete torch.save archive (a truncated copy, or another kind of file)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise ValueError(
                f"{unreadable}: it holds Python objects other than tensors and plain data, which babybitnet "
                f"never unpickles (they could run code)"
            ) from None
        raise ValueError(f"{unreadable}: its pickled data is damaged") from None
    except Exception as e:  # RuntimeError, OSError, KeyError, EOFError...: a damaged archive
        raise ValueError(f"{unreadable}: the archive is damaged ({type(e).__name__})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: (model in eval mode, tokenizer, meta).

    A checkpoint whose checksum does not match is refused. One without a checksum (written before
    checksums existed) loads with a warning: refusing it would throw away a trained model for a check
    it never had, and every structural check below still applies.
    """
    path = Path(path)
    _check_file(path, "checkpoint", f"make one with `python -m babybitnet train --out {path}`")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a babybitnet checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = sorted({"config", "tokenizer", "model"} - set(ckpt))
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {missing}; the file is corrupt")
    state, meta = ckpt["model"], ckpt.get("meta", {})
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError(f"{path}: the checkpoint's 'model' is not a state dict of tensors; the file is corrupt")
    if "sha256" in ckpt:
        try:
            digest = _digest(state, {k: ckpt.get(k, {}) for k in _CHECKED})
        except (TypeError, ValueError):  # json.dumps: a tensor or another object where plain data belongs
            digest = None
        if digest != ckpt["sha256"]:
            raise ValueError(
                f"{path}: the checkpoint does not match its checksum: the file was modified or damaged; "
                f"use another copy or train again"
            )
    else:
        warnings.warn(
            f"{path} has no checksum (written by an older babybitnet), so damage to it cannot be detected; "
            f"save it again with save_checkpoint to add one",
            UserWarning,
            stacklevel=2,
        )
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the checkpoint's meta is {type(meta).__name__}, not a dict; the file is corrupt")
    config, tokenizer = _config(path, ckpt["config"]), _tokenizer(path, ckpt["tokenizer"])
    model = GPT(config)
    _check_tensors(path, state, model.state_dict(), dtypes=False)  # load_state_dict converts dtypes
    model.load_state_dict(state)
    return model.to(device).eval(), tokenizer, meta


# ---------------------------------------------------------------- packed models
def _packed_digest(tensors: dict[str, torch.Tensor], header: dict) -> str:
    """The checksum of a packed file: every tensor and every header entry but the checksum itself."""
    return _digest(tensors, {k: v for k, v in header.items() if k != "sha256"})


def save_packed(
    path: str | Path, model: GPT, tokenizer: Tokenizer, fmt: str = "2bit", meta: dict | None = None
) -> Path:
    """Pack ``model`` (unless it is packed already) and write it to a safetensors file at ``path``.

    The file holds the packed weights (uint8), their scales and every
    full-precision tensor; its metadata holds, as one JSON string, the
    GPTConfig, the tokenizer (``to_dict()``), the format and version, the layout
    of every packed layer, ``meta`` (plain JSON-like data) and a checksum over all of it.
    """
    from safetensors.torch import save_file

    check_format(fmt)
    already = packed_format(model)
    if already is not None and already != fmt:
        raise ValueError(f"the model is already packed as {already!r}; pass fmt={already!r} or the unpacked model")
    packed = model if already is not None else pack_model(model, fmt)
    tensors = {k: v.detach().cpu().contiguous() for k, v in packed.state_dict().items()}
    header = {
        "format": PACKED_FORMAT,
        "version": VERSION,
        "packing": fmt,
        "config": packed.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "layers": {n: layer_spec(m) for n, m in packed.named_modules() if isinstance(m, PackedBitLinear)},
        "meta": _plain(meta),
    }
    header["sha256"] = _packed_digest(tensors, header)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(header)})
    return path


def _read_header(path: Path) -> dict:
    """Our metadata of the safetensors file at ``path``, checked; ValueError if it is not a packed babyBitNet."""
    from safetensors import safe_open

    hint = f"write one with `python -m babybitnet pack CHECKPOINT {path}`"
    with open(path, "rb") as f:
        start = f.read(4)
    if start == b"PK\x03\x04":  # a zip archive: what torch.save writes
        raise ValueError(
            f"{path} looks like a torch checkpoint (from `train`), not a packed model; pack it first with "
            f"`python -m babybitnet pack {path} OUT.safetensors` (or load it with load_checkpoint)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for every kind of malformed file
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {_first_line(e)}; {hint}"
        ) from None
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} is a safetensors file but not a packed babyBitNet (no {METADATA_KEY!r} metadata)")
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the packed model's metadata is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(header, dict) or header.get("format") != PACKED_FORMAT:
        raise ValueError(f"{path} is not a packed babyBitNet file (expected format {PACKED_FORMAT!r})")
    if header.get("version") != VERSION:
        raise ValueError(
            f"{path} has packed-file version {header.get('version')!r}, this babybitnet reads version {VERSION}; "
            f"re-pack the checkpoint with this version: `python -m babybitnet pack CHECKPOINT {path}`"
        )
    missing = {"packing", "config", "tokenizer", "layers", "sha256"} - set(header)
    if missing:
        raise ValueError(f"{path}: the packed model's metadata lacks {sorted(missing)}; the file is corrupt")
    return header


def _packed_layer(path: Path, name: str, spec: object, layer: BitLinear, fmt: str) -> PackedBitLinear:
    """The PackedBitLinear a layer spec of the file describes; it must fit the BitLinear its config builds."""
    want = {k: v for k, v in layer_spec(layer).items() if k not in ("weight_groups", "act_bits")}
    if not isinstance(spec, dict) or set(spec) != set(layer_spec(layer)) or any(spec[k] != v for k, v in want.items()):
        raise ValueError(
            f"{path}: packed layer {name!r} is {spec!r}, its config needs {want} (and weight_groups, act_bits); "
            f"the file is corrupt"
        )
    try:
        return PackedBitLinear(fmt=fmt, **spec)  # checks weight_groups and act_bits
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: packed layer {name!r}: {e}") from None


def load_packed(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """Read a file written by :func:`save_packed`: (packed model in eval mode, tokenizer, meta)."""
    from safetensors.torch import load_file

    path = Path(path)
    _check_file(path, "packed model", f"make one with `python -m babybitnet pack CHECKPOINT {path}`")
    header = _read_header(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot read the tensors (truncated or corrupt?): {_first_line(e)}") from None
    # before anything else: the config in an edited header could describe any model
    if _packed_digest(tensors, header) != header["sha256"]:
        raise ValueError(
            f"{path}: the packed model does not match its checksum: the file was modified or damaged; "
            f"pack the checkpoint again"
        )
    try:
        fmt = check_format(header["packing"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    model, tokenizer = GPT(_config(path, header["config"])), _tokenizer(path, header["tokenizer"])
    meta = header.get("meta", {})
    if not isinstance(meta, dict) or not isinstance(header["layers"], dict):
        raise ValueError(f"{path}: the packed model's meta or layers are not dicts; the file is corrupt")
    bitlinears = {n: m for n, m in model.named_modules() if isinstance(m, BitLinear)}
    if set(header["layers"]) != set(bitlinears):
        raise ValueError(
            f"{path}: the packed layers {sorted(header['layers'])} do not match the BitLinear layers of the model "
            f"its config describes {sorted(bitlinears)}; the file is corrupt"
        )
    for name, spec in header["layers"].items():
        replace_module(model, name, _packed_layer(path, name, spec, bitlinears[name], fmt))
    _check_tensors(path, tensors, model.state_dict(), dtypes=True)
    # assign=True: take the loaded tensors as they are (the scales keep their saved dtype)
    model.load_state_dict(tensors, assign=True)
    return model.to(device).eval(), tokenizer, meta
