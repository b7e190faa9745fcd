"""Hugging Face BitNet checkpoints (``microsoft/bitnet-b1.58-2B-4T``) as babyBitNet models.

A ``transformers`` BitNet checkpoint is a folder with ``config.json`` (``model_type: "bitnet"``)
and ``*.safetensors``. Its block is BitNet b1.58 2B4T's, which our GPT builds with the switches
of lesson 16 (RoPE, SubLN, gated ReLU², grouped-query attention, tied embeddings, no biases).
:func:`from_pretrained` maps it into our GPT; ``babybitnet.packed.pack_model`` and
``babybitnet.files.save_packed`` then pack it into our format (:func:`convert_hf` does both).

The linear layers come in the layouts of ``transformers.integrations.bitnet``, read here exactly
as transformers reads them:

* ``linear_class: "bitlinear"`` (the packed ``2B-4T`` checkpoint): ``weight`` uint8
  (out_features / 4, in_features), 4 ternary codes per byte packed along the OUTPUT dimension
  (row ``i * out/4 + j`` sits in bits ``2i..2i+1`` of byte row ``j``), value = code - 1;
  ``y = (x_i @ W_t^T) / (s_x * weight_scale)``: ``weight_scale`` is our ``s_w`` as it is.
* ``linear_class: "autobitlinear"``, ``quantization_mode: "offline"``: the same ternary weights,
  packed or not, but ``y = x_q @ W_t^T * weight_scale``: our ``s_w`` is ``1 / weight_scale``.
* ``"autobitlinear"`` ``"online"``, or no quantization config (the ``-bf16`` master weights):
  float weights, quantized per matrix on the fly, ``s_w = 1 / mean(|W|)``.

Our BitLinear keeps latent float weights and ternarizes them with one scale per head of q, k, v
(``CausalSelfAttention``), where transformers has one per q, k, v matrix. So every layer is loaded
as the ternary matrix and scale transformers would use, turned into latent weights whose absmean
quantization gives back exactly that ternary matrix and (up to float rounding) that scale: each
group's non-zero weights get magnitude ``1 / (s_w * fraction of non-zeros in the group)``. The
master weights of the bf16 layout are therefore not kept; the model computes what transformers computes.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch

from babybitnet.data import CharTokenizer
from babybitnet.files import atomic_path, save_packed
from babybitnet.gpt import GPT, GPTConfig

VALUES_PER_BYTE = 4  # transformers' VALUES_PER_ITEM: 2-bit codes
SCALE_EPS = 1e-5  # transformers' WeightQuant clamps mean(|W|) at this
# config keys that change the computation, with the values we can build; the rest (ids of special tokens,
# use_cache, torch_dtype, initializer_range, ...) do not change the logits
SUPPORTED_VALUES = {
    "hidden_act": ("relu2", "relu", "gelu"),
    "attention_bias": (False, None),
    "mlp_bias": (False, None),
    "attention_dropout": (0, 0.0, None),
    "rope_scaling": (None,),
    "pretraining_tp": (1, None),
}
ACTS = {"relu2": "relu2", "relu": "relu", "gelu": "gelu"}
LAYER_RE = re.compile(r"model\.layers\.(\d+)\.")


class HFTokenizer:
    """A ``tokenizers`` tokenizer (``tokenizer.json``) behind our tokenizer's ``encode`` / ``decode``."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        self._tok = Tokenizer.from_file(str(path))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> token ids (with the checkpoint's begin-of-text token when its tokenizer adds one)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


# ---------------------------------------------------------------- reading the folder
def read_config(path: str | Path) -> dict:
    """``config.json`` of a checkpoint folder as a dict; ValueError if it is not a BitNet checkpoint."""
    path = Path(path)
    file = path / "config.json"
    if not file.is_file():
        raise ValueError(
            f"{path} has no config.json: pass a Hugging Face checkpoint folder (config.json + safetensors)"
        )
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); download the checkpoint again") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} holds {type(config).__name__}, not a dict of settings")
    if config.get("model_type") != "bitnet":
        raise ValueError(
            f"{path} is a {config.get('model_type')!r} checkpoint, not 'bitnet': only BitNet checkpoints "
            f"(microsoft/bitnet-b1.58-2B-4T and its -bf16 variant) can be loaded"
        )
    return config


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's ``*.safetensors`` files (one file or shards), by name."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path} has no *.safetensors file: only safetensors checkpoints are supported")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except Exception as e:  # safetensors raises its own error types for malformed files
            raise ValueError(f"cannot read {f} (truncated or corrupt?): {str(e).splitlines()[0]}") from None
    return tensors


def _rope_theta(config: dict) -> float:
    """RoPE's base: ``rope_parameters`` (transformers 5) or the older top-level ``rope_theta``."""
    params = config.get("rope_parameters")
    if params is None:
        return float(config.get("rope_theta", 500000.0))  # transformers' default_theta for BitNet
    if not isinstance(params, dict) or params.get("rope_type", "default") != "default":
        raise ValueError(f"unsupported config value rope_parameters={params!r}: only plain RoPE ('default') is built")
    return float(params.get("rope_theta", config.get("rope_theta", 500000.0)))


def gpt_config(config: dict, block_size: int | None = None) -> GPTConfig:
    """Our GPTConfig (babyBitNet with the 2B4T switches) for a BitNet ``config.json``; ValueError naming the key."""
    for key, allowed in SUPPORTED_VALUES.items():
        if config.get(key, allowed[0]) not in allowed:
            raise ValueError(f"unsupported config value {key}={config[key]!r}: babybitnet builds only {allowed}")
    quant = config.get("quantization_config")
    if quant is not None:
        if not isinstance(quant, dict) or quant.get("quant_method") != "bitnet":
            method = quant.get("quant_method") if isinstance(quant, dict) else quant
            raise ValueError(f"unsupported config value quantization_config.quant_method={method!r}: only 'bitnet'")
        if quant.get("use_rms_norm"):
            raise ValueError("unsupported config value quantization_config.use_rms_norm=True (a norm inside BitLinear)")
        if quant.get("linear_class", "bitlinear") not in ("bitlinear", "autobitlinear"):
            raise ValueError(f"unsupported config value quantization_config.linear_class={quant['linear_class']!r}")
        if quant.get("quantization_mode", "offline") not in ("offline", "online"):
            raise ValueError(
                f"unsupported config value quantization_config.quantization_mode={quant['quantization_mode']!r}"
            )
        skipped = [m for m in quant.get("modules_to_not_convert") or [] if m != "lm_head"]
        if skipped:
            raise ValueError(f"unsupported config value quantization_config.modules_to_not_convert={skipped!r}")
    try:
        n_embd, n_head = int(config["hidden_size"]), int(config["num_attention_heads"])
        kw = dict(
            vocab_size=int(config["vocab_size"]),
            n_embd=n_embd,
            n_head=n_head,
            n_layer=int(config["num_hidden_layers"]),
            ffn_hidden=int(config["intermediate_size"]),
        )
    except KeyError as e:
        raise ValueError(f"config.json lacks the key {e.args[0]!r}; the checkpoint is incomplete") from None
    head_dim = config.get("head_dim")
    if head_dim is not None and n_head and head_dim * n_head != n_embd:
        raise ValueError(
            f"unsupported config value head_dim={head_dim}: we need head_dim * num_attention_heads == hidden_size"
        )
    n_kv = config.get("num_key_value_heads") or n_head
    try:
        return GPTConfig(
            **kw,
            block_size=int(block_size or config.get("max_position_embeddings", 2048)),
            dropout=0.0,
            linear="bitnet",
            attn_scale="head",
            activation=ACTS[config.get("hidden_act", "relu2")],
            bias=False,
            pos="rope",
            rope_theta=_rope_theta(config),
            subln=True,
            ffn="gated",
            n_kv_head=int(n_kv),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        )
    except ValueError as e:
        raise ValueError(f"unsupported BitNet config: {e}") from None


# ---------------------------------------------------------------- the ternary layers
def unpack_weights(packed: torch.Tensor) -> torch.Tensor:
    """transformers' ``unpack_weights``: uint8 (rows, in) -> int8 (4 * rows, in) ternary values.

    Byte row ``j`` holds output rows ``j``, ``rows + j``, ``2 rows + j``, ``3 rows + j`` in bits 0-1, 2-3, 4-5, 6-7.
    """
    chunks = [((packed >> (2 * i)) & 3).to(torch.int8) - 1 for i in range(VALUES_PER_BYTE)]
    return torch.cat(chunks, dim=0)


def pack_weights(w_t: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`unpack_weights` (out_features a multiple of 4): what transformers' packing writes."""
    if w_t.shape[0] % VALUES_PER_BYTE:
        raise ValueError(f"out_features={w_t.shape[0]} must be a multiple of {VALUES_PER_BYTE} to pack")
    codes = (w_t.to(torch.int16) + 1).to(torch.uint8).chunk(VALUES_PER_BYTE, dim=0)
    packed = torch.zeros_like(codes[0])
    for i, c in enumerate(codes):
        packed |= c << (2 * i)
    return packed


def ternary_layer(
    name: str, tensors: dict[str, torch.Tensor], quant: dict | None, out_features: int, in_features: int
) -> tuple[torch.Tensor, float]:
    """Linear layer ``name`` (without ``.weight``) as (W_t int8 (out, in), s_w) with ``y = x_i W_t^T / (s_x s_w)``."""
    w = tensors[f"{name}.weight"]
    linear_class = (quant or {}).get("linear_class", "bitlinear")
    online = quant is None or (linear_class == "autobitlinear" and quant.get("quantization_mode") == "online")
    if w.dtype == torch.uint8:
        if online:
            raise ValueError(f"{name}.weight is packed uint8 but the config asks for online quantization of floats")
        if tuple(w.shape) != (out_features // VALUES_PER_BYTE, in_features) or out_features % VALUES_PER_BYTE:
            raise ValueError(
                f"{name}.weight has shape {tuple(w.shape)}, packed it should be ({out_features // 4}, {in_features})"
            )
        w_t = unpack_weights(w)
    else:
        if tuple(w.shape) != (out_features, in_features):
            raise ValueError(f"{name}.weight has shape {tuple(w.shape)}, expected ({out_features}, {in_features})")
        w = w.float()
        if online:  # transformers' WeightQuant, in float32 as it computes it
            s = 1.0 / w.abs().mean().clamp(min=SCALE_EPS)
            return (w * s).round().clamp(-1, 1).to(torch.int8), float(s)
        if not bool(((w == -1) | (w == 0) | (w == 1)).all()):
            raise ValueError(f"{name}.weight holds values other than -1, 0, 1 in an offline-quantized checkpoint")
        w_t = w.to(torch.int8)
    if f"{name}.weight_scale" not in tensors:
        raise ValueError(f"the checkpoint lacks the tensor {name}.weight_scale (offline-quantized layers need one)")
    scale = float(tensors[f"{name}.weight_scale"].float().reshape(-1)[0])
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{name}.weight_scale is {scale}, not a positive number")
    # bitlinear divides by weight_scale (it is our s_w); autobitlinear offline multiplies by it
    return w_t, (scale if linear_class == "bitlinear" else 1.0 / scale)


def latent_weight(w_t: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Float weights whose absmean ternarization (one scale per equal block of rows) is ``(w_t, scales)``.

    In a group with a fraction f of non-zeros, non-zero weights of magnitude 1 / (s f) have mean |W| = 1 / s,
    and W * s = +-1 / f rounds and clamps to +-1; zeros stay zero.
    """
    groups = scales.numel()
    w = w_t.float().reshape(groups, -1)
    frac = (w != 0).float().mean(dim=1, keepdim=True).clamp(min=1.0 / w.shape[1])
    return (w / (scales.float().reshape(groups, 1) * frac)).reshape(w_t.shape)


# ---------------------------------------------------------------- the model
def _check_names(tensors: dict[str, torch.Tensor], config: GPTConfig) -> None:
    needed = ["model.embed_tokens.weight", "model.norm.weight"]
    if not config.tie_embeddings:
        needed.append("lm_head.weight")
    for i in range(config.n_layer):
        p = f"model.layers.{i}."
        needed += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        needed += [p + f"self_attn.{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj", "attn_sub_norm")]
        needed += [p + f"mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj", "ffn_sub_norm")]
    missing = [n for n in needed if n not in tensors]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"the checkpoint lacks the tensors {missing[:5]}{more}: it is incomplete or not a BitNet")
    deeper = sorted({int(m.group(1)) for n in tensors if (m := LAYER_RE.match(n))} - set(range(config.n_layer)))
    if deeper:
        raise ValueError(f"the checkpoint has layers {deeper[:5]} beyond num_hidden_layers={config.n_layer}")


def _copy(param: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"{name} has shape {tuple(value.shape)}, the config needs {tuple(param.shape)}")
    param.copy_(value.float())


@torch.no_grad()
def from_pretrained(path: str | Path, block_size: int | None = None) -> tuple[GPT, HFTokenizer | None]:
    """A BitNet checkpoint folder as (our GPT in eval mode, float32, its tokenizer or None).

    The model maps token ids (B, T) to logits (B, T, vocab) as transformers' ``BitNetForCausalLM``
    does, and packs with ``babybitnet.packed.pack_model``. ``block_size`` (default: the config's
    ``max_position_embeddings``) is the longest context the KV caches hold. The tokenizer is a
    :class:`HFTokenizer` when the folder has ``tokenizer.json`` and ``tokenizers`` is installed.
    """
    path = Path(path)
    hf = read_config(path)
    config = gpt_config(hf, block_size)
    tensors = read_tensors(path)
    _check_names(tensors, config)
    emb = tensors["model.embed_tokens.weight"]
    if emb.shape[0] != config.vocab_size:
        raise ValueError(
            f"vocabulary mismatch: config.json says vocab_size={config.vocab_size}, "
            f"the embedding has {emb.shape[0]} rows"
        )
    tokenizer = _tokenizer(path)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"vocabulary mismatch: tokenizer.json has {tokenizer.vocab_size} tokens, the model only "
            f"{config.vocab_size}: the tokenizer belongs to another model"
        )
    quant = hf.get("quantization_config")
    model = GPT(config)
    e, hs, kv = config.n_embd, config.n_embd // config.n_head, config.kv_heads
    _copy(model.tok_emb.weight, emb, "model.embed_tokens.weight")
    _copy(model.ln_f.weight, tensors["model.norm.weight"], "model.norm.weight")
    if not config.tie_embeddings:
        _copy(model.lm_head.weight, tensors["lm_head.weight"], "lm_head.weight")
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        _copy(block.ln1.weight, tensors[p + "input_layernorm.weight"], p + "input_layernorm.weight")
        _copy(block.ln2.weight, tensors[p + "post_attention_layernorm.weight"], p + "post_attention_layernorm.weight")
        _copy(block.attn.sub_norm.weight, tensors[p + "self_attn.attn_sub_norm.weight"], p + "attn_sub_norm.weight")
        _copy(block.mlp.sub_norm.weight, tensors[p + "mlp.ffn_sub_norm.weight"], p + "mlp.ffn_sub_norm.weight")
        # q, k, v: one scale per matrix there, repeated for each of its heads (our weight groups)
        parts = [("q_proj", config.n_head), ("k_proj", kv), ("v_proj", kv)]
        w_ts, scales = [], []
        for name, heads in parts:
            w_t, s = ternary_layer(p + "self_attn." + name, tensors, quant, heads * hs, e)
            w_ts.append(w_t)
            scales += [s] * heads
        block.attn.qkv.weight.copy_(latent_weight(torch.cat(w_ts), torch.tensor(scales)))
        layers = [
            (block.attn.proj, "self_attn.o_proj"),
            (block.mlp.gate, "mlp.gate_proj"),
            (block.mlp.up, "mlp.up_proj"),
            (block.mlp.down, "mlp.down_proj"),
        ]
        for layer, name in layers:
            w_t, s = ternary_layer(p + name, tensors, quant, layer.out_features, layer.in_features)
            layer.weight.copy_(latent_weight(w_t, torch.tensor([s])))
    return model.eval(), tokenizer


def _tokenizer(path: Path) -> HFTokenizer | None:
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    try:
        return HFTokenizer(file)
    except ImportError:  # `tokenizers` is not installed: the model still loads
        return None


def convert_hf(path: str | Path, out: str | Path, fmt: str = "2bit") -> Path:
    """Load the BitNet checkpoint folder ``path`` and write it packed to ``out`` (our safetensors format).

    Our packed files store a character tokenizer only; the checkpoint's ``tokenizer.json`` is copied
    beside ``out`` (``OUT.tokenizer.json``) and named in the file's meta. Returns ``out``.
    """
    model, tokenizer = from_pretrained(path)
    out = Path(out)
    meta = {"source": "huggingface", "model_type": "bitnet", "checkpoint": str(Path(path).resolve())}
    if tokenizer is not None:
        beside = out.with_name(out.name + ".tokenizer.json")
        with atomic_path(beside) as tmp:
            shutil.copyfile(tokenizer.path, tmp)
        meta["tokenizer_json"] = beside.name
    # the file format wants a CharTokenizer: a placeholder, the real tokenizer is the JSON file in meta
    return save_packed(out, model, CharTokenizer("?"), fmt=fmt, meta=meta)
