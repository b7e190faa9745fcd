"""A babyBitNet whose BitLinear weights are stored packed: 2 or 1.6 bits per weight.

Training keeps a float "latent" weight behind every BitLinear; inference only
needs its ternary form ``W_t`` and the scales ``s_w`` (``BitLinear.quantized_weight()``).
``pack_model`` replaces every BitLinear by a :class:`PackedBitLinear` that
holds exactly that, packed with :mod:`babybitnet.packing`, and computes the
same numbers as the eval-mode BitLinear (both call ``int_linear``).

``save_packed`` writes such a model to one safetensors file: a header of JSON
(tensor names, dtypes, shapes, and our metadata: the GPTConfig, the
tokenizer's characters, the packing format, a checksum) followed by the raw
tensor bytes. Reading it never unpickles anything, unlike ``torch.load``.
The embeddings, ``lm_head`` and the norms stay full precision (float32), as
in the paper; at babyGPT's tiny size they are a large share of the file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from babybitnet.bitlinear import BitLinear, int_linear
from babybitnet.data import CharTokenizer
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.packing import check_format, pack, packed_shape, unpack

FORMAT = "babybitnet-packed"
VERSION = 1
METADATA_KEY = "babybitnet"  # the one safetensors metadata entry we write: a JSON string


class PackedBitLinear(nn.Module):
    """BitLinear for inference only, its ternary weights packed (uint8) in format ``fmt``.

    Buffers: ``packed`` uint8, (out_features, ceil(in_features / 4)) for "2bit"
    (row by row), (ceil(out_features * in_features / 5),) for "base3" (the
    matrix flattened, so 1.6 bits per weight up to 4 trits of padding);
    ``scale`` float32 (weight_groups,), the ``s_w`` of ``BitLinear.quantized_weight()``.
    Sub-module ``norm`` (nn.RMSNorm) when the BitLinear had ``norm=True``. Build it with :meth:`from_bitlinear`.

    forward(x): x (..., in_features) float -> (..., out_features), the same
    numbers as ``BitLinear.eval()`` under ``torch.no_grad()``. There is no
    straight-through estimator here: the packed weights cannot be trained.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fmt: str = "2bit",
        weight_groups: int = 1,
        act_bits: int = 8,
        norm: bool = False,
        bias: bool = False,
    ):
        super().__init__()
        if out_features % weight_groups:
            raise ValueError(f"out_features={out_features} must split into weight_groups={weight_groups} equal blocks")
        self.in_features, self.out_features = in_features, out_features
        self.fmt, self.weight_groups, self.act_bits = check_format(fmt), weight_groups, act_bits
        # 0x55 = 0b01010101: four zero weights in 2-bit codes; 121 = 11111 in base 3: five zero weights
        zero = 0x55 if fmt == "2bit" else 121
        # 2 bits: row by row (a kernel decodes one row at a time, lesson 12). Base 3 is a storage
        # format: the whole matrix as one row, so the padding is at most 4 trits per matrix, not per row.
        self.shape = (out_features, in_features) if fmt == "2bit" else (out_features * in_features,)
        shape = packed_shape(self.shape, fmt)
        self.register_buffer("packed", torch.full(shape, zero, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(weight_groups))
        self.norm = nn.RMSNorm(in_features) if norm else None
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_bitlinear(cls, layer: BitLinear, fmt: str = "2bit") -> PackedBitLinear:
        """Pack a (trained) BitLinear: its ternary weights, scales, norm and bias."""
        if not isinstance(layer, BitLinear):
            raise ValueError(f"from_bitlinear expects a BitLinear, got {type(layer).__name__}")
        w_t, s_w = layer.quantized_weight()  # int8 (out, in), float (groups,)
        packed = cls(
            layer.in_features,
            layer.out_features,
            fmt,
            layer.weight_groups,
            layer.act_bits,
            norm=layer.norm is not None,
            bias=layer.bias is not None,
        ).to(layer.weight.device)
        packed.packed.copy_(pack(w_t.reshape(packed.shape), fmt))
        packed.scale = s_w.detach().clone()  # keep s_w's dtype: the same numbers as the BitLinear
        if layer.norm is not None:
            packed.norm.load_state_dict(layer.norm.state_dict())
        if layer.bias is not None:
            packed.bias.copy_(layer.bias)
        return packed

    def ternary_weight(self) -> torch.Tensor:
        """The unpacked ternary weights: int8 (out_features, in_features)."""
        return unpack(self.packed, self.shape[-1], self.fmt).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"PackedBitLinear({self.in_features} -> {self.out_features}) expects inputs whose last dimension "
                f"is {self.in_features}, got shape {tuple(x.shape)}"
            )
        if self.norm is not None:
            x = self.norm(x)
        if x.is_cuda and self.fmt == "2bit" and self.act_bits == 8 and _triton_available():
            # on a GPU a Triton kernel decodes the packed bytes inside the matmul (lesson 13): the
            # dp4a one, 4 weights per instruction, when rows are whole 16-weight words
            if self.in_features % 16 == 0:
                from babybitnet.triton_dp4a import dp4a_linear as gpu_linear
            else:
                from babybitnet.triton_gemv import triton_packed_linear as gpu_linear

            y = gpu_linear(x, self.packed, self.scale, self.in_features)
        else:
            # Unpacking on every call keeps memory small; the kernels decode inside the matmul instead.
            y = int_linear(x, self.ternary_weight(), self.scale, self.act_bits)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt!r}, "
            f"bias={self.bias is not None}, norm={self.norm is not None}, weight_groups={self.weight_groups}, "
            f"act_bits={self.act_bits}"
        )


def _triton_available() -> bool:
    """Whether triton can be imported (the GPU path of PackedBitLinear needs it)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _layer_spec(layer: PackedBitLinear) -> dict:
    """What it takes to rebuild a PackedBitLinear before loading its tensors (plain data, for the file)."""
    return {
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "weight_groups": layer.weight_groups,
        "act_bits": layer.act_bits,
        "norm": layer.norm is not None,
        "bias": layer.bias is not None,
    }


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the sub-module called ``name`` ("blocks.0.attn.qkv") of ``model`` to ``new``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def packed_format(model: nn.Module) -> str | None:
    """The packing format of a packed model, or None if it has no PackedBitLinear."""
    fmts = {m.fmt for m in model.modules() if isinstance(m, PackedBitLinear)}
    if len(fmts) > 1:
        raise ValueError(f"model mixes packing formats {sorted(fmts)}; pack it from the unpacked model")
    return fmts.pop() if fmts else None


def pack_model(model: GPT, fmt: str = "2bit") -> GPT:
    """A copy of ``model`` in eval mode with every BitLinear replaced by a PackedBitLinear in format ``fmt``."""
    check_format(fmt)
    names = [name for name, m in model.named_modules() if isinstance(m, BitLinear)]
    if not names:
        kind = getattr(getattr(model, "config", None), "linear", "?")
        raise ValueError(
            f"this model has no BitLinear layer to pack (linear={kind!r}): only babyBitNet (linear='bitnet') "
            f"can be packed; babyGPT's weights are not ternary"
        )
    packed = copy.deepcopy(model).eval()
    for name in names:
        _replace(packed, name, PackedBitLinear.from_bitlinear(packed.get_submodule(name), fmt))
    return packed


# ---------------------------------------------------------------- the file
def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order.

    safetensors checks the header's layout, not the data: a flipped byte in a
    weight would load silently. The checksum catches it.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_packed(
    path: str | Path, model: GPT, tokenizer: CharTokenizer, fmt: str = "2bit", meta: dict | None = None
) -> Path:
    """Pack ``model`` (unless it is packed already) and write it to a safetensors file at ``path``.

    The file holds the packed weights (uint8), their scales and every
    full-precision tensor; its metadata holds, as one JSON string, the
    GPTConfig, the tokenizer's characters, the format and version, the layout
    of every packed layer, ``meta`` (plain JSON-like data) and a checksum.
    """
    from safetensors.torch import save_file

    check_format(fmt)
    already = packed_format(model)
    if already is not None and already != fmt:
        raise ValueError(f"the model is already packed as {already!r}; pass fmt={already!r} or the unpacked model")
    packed = model if already is not None else pack_model(model, fmt)
    tensors = {k: v.detach().cpu().contiguous() for k, v in packed.state_dict().items()}
    header = {
        "format": FORMAT,
        "version": VERSION,
        "packing": fmt,
        "config": packed.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "layers": {n: _layer_spec(m) for n, m in packed.named_modules() if isinstance(m, PackedBitLinear)},
        "meta": json.loads(json.dumps(meta or {})),  # plain data only (see checkpoint.py)
        "sha256": _checksum(tensors),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(header)})
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
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}; {hint}") from None
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} is a safetensors file but not a packed babyBitNet (no {METADATA_KEY!r} metadata)")
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the packed model's metadata is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a packed babyBitNet file (expected format {FORMAT!r})")
    if header.get("version") != VERSION:
        raise ValueError(
            f"{path} has packed-file version {header.get('version')!r}, this babybitnet reads version {VERSION}; "
            f"re-pack the checkpoint with this version: `python -m babybitnet pack CHECKPOINT {path}`"
        )
    missing = {"packing", "config", "tokenizer", "layers", "sha256"} - set(header)
    if missing:
        raise ValueError(f"{path}: the packed model's metadata lacks {sorted(missing)}; the file is corrupt")
    return header


def load_packed(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, CharTokenizer, dict]:
    """Read a file written by :func:`save_packed`: (packed model in eval mode, tokenizer, meta)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"packed model not found: {path} (make one with `python -m babybitnet pack CHECKPOINT {path}`)"
        )
    header = _read_header(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot read the tensors (truncated or corrupt?): {e}") from None
    if _checksum(tensors) != header["sha256"]:
        raise ValueError(
            f"{path}: the tensor data does not match its checksum: the file was modified or damaged; "
            f"pack the checkpoint again"
        )
    try:
        fmt = check_format(header["packing"])
        model = GPT(GPTConfig(**header["config"]))
        tokenizer = CharTokenizer.from_dict(header["tokenizer"])
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: invalid config or tokenizer in the packed model's metadata: {e}") from None
    bitlinears = {n for n, m in model.named_modules() if isinstance(m, BitLinear)}
    if set(header["layers"]) != bitlinears:
        raise ValueError(
            f"{path}: the packed layers {sorted(header['layers'])} do not match the BitLinear layers of the model "
            f"its config describes {sorted(bitlinears)}; the file is corrupt"
        )
    for name, spec in header["layers"].items():
        _replace(model, name, PackedBitLinear(fmt=fmt, **spec))
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: tensors missing {missing}, unexpected {extra}; the file does not fit its config")
    for name, t in tensors.items():
        want = expected[name]
        if t.shape != want.shape or t.dtype != want.dtype:
            raise ValueError(
                f"{path}: tensor {name!r} is {t.dtype} {tuple(t.shape)}, its config needs "
                f"{want.dtype} {tuple(want.shape)}; the file is corrupt"
            )
    # assign=True: take the loaded tensors as they are (the scales keep their saved dtype)
    model.load_state_dict(tensors, assign=True)
    return model.to(device).eval(), tokenizer, header.get("meta", {})


# ---------------------------------------------------------------- how much memory
def _ternary_weights(model: GPT) -> tuple[int, int]:
    """(number of BitLinear weights, number of BitLinear layers) of an unpacked model."""
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    return sum(m.weight.numel() for m in layers), len(layers)


def memory_report(preset: str) -> dict:
    """Real file sizes of a freshly built babyBitNet of ``preset`` (vocab 65) in four forms.

    Writes, in a temporary folder, the fp32 state dict and an fp16 copy
    (``torch.save``) and the 2-bit and base-3 packed files (``save_packed``),
    and measures them with ``os.path.getsize``. ``bits_per_weight`` counts the
    packed BitLinear weights only: 8 * packed bytes / ternary weights, exactly
    2.0 and 1.6 when every in_features is a multiple of 4 and 5.
    """
    from babybitnet.presets import build_model

    model, _ = build_model(preset, "bitnet", vocab_size=65)
    model.eval()
    tokenizer = CharTokenizer([chr(c) for c in range(32, 32 + 65)])  # 65 characters, as Tiny Shakespeare has
    n_ternary, n_layers = _ternary_weights(model)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    formats: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, os.path.join(tmp, "fp32.pt"))
        formats["fp32"] = {"bytes": os.path.getsize(os.path.join(tmp, "fp32.pt")), "bits_per_weight": 32.0}
        torch.save({k: v.half() for k, v in state.items()}, os.path.join(tmp, "fp16.pt"))
        formats["fp16"] = {"bytes": os.path.getsize(os.path.join(tmp, "fp16.pt")), "bits_per_weight": 16.0}
        for fmt in ("2bit", "base3"):
            packed = pack_model(model, fmt)
            file = save_packed(os.path.join(tmp, f"{fmt}.safetensors"), packed, tokenizer, fmt)
            packed_bytes = sum(m.packed.numel() for m in packed.modules() if isinstance(m, PackedBitLinear))
            formats[fmt] = {
                "bytes": os.path.getsize(file),
                "packed_weight_bytes": packed_bytes,
                "bits_per_weight": 8 * packed_bytes / n_ternary,
            }
    for f in formats.values():
        f["mib"] = f["bytes"] / 2**20
        f["ratio_vs_fp32"] = formats["fp32"]["bytes"] / f["bytes"]
    params = model.num_params()
    return {
        "preset": preset,
        "config": model.config.to_dict(),
        "params": params,
        "ternary_weights": n_ternary,
        "full_precision_params": params - n_ternary,
        "bitlinear_layers": n_layers,
        "formats": formats,
    }


def memory_table(reports: list[dict]) -> str:
    """Markdown table of :func:`memory_report` results, one row per preset and format."""
    rows = [
        "| preset | format | bytes | MiB | ratio vs fp32 | bits per BitLinear weight |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in reports:
        for fmt, f in r["formats"].items():
            rows.append(
                f"| {r['preset']} | {fmt} | {f['bytes']:,} | {f['mib']:.3f} | {f['ratio_vs_fp32']:.2f}x "
                f"| {f['bits_per_weight']:.3f} |"
            )
    return "\n".join(rows)
