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

import torch
from torch import nn

from babybitnet.addonly import packed_linear
from babybitnet.bitlinear import BitLinear, check_linear_args, int_linear
from babybitnet.gpt import GPT
from babybitnet.kernels.cpu import CPU_ACTS, ext_linear, load_extension
from babybitnet.kernels.dispatch import packed_linear as gpu_packed_linear
from babybitnet.kernels.triton_common import EPILOGUE_ACTS, epilogue
from babybitnet.packing import ZERO_BYTE, check_format, pack, packed_shape, unpack

_FLOAT32_EPS = torch.finfo(torch.float32).eps  # nn.RMSNorm's eps where it has none (as _kernel_norm)


class PackedBitLinear(nn.Module):
    """BitLinear for inference only, its ternary weights packed (uint8) in format ``fmt``.

    Buffers: ``packed`` uint8, (out_features, ceil(in_features / 4)) for "2bit"
    (row by row), (ceil(out_features * in_features / 5),) for "base3" (the
    matrix flattened, so 1.6 bits per weight up to 4 trits of padding);
    ``scale`` float32 (weight_groups,), the ``s_w`` of ``BitLinear.quantized_weight()``.
    Sub-module ``norm`` (nn.RMSNorm) when the BitLinear had ``norm=True``. Build it with :meth:`from_bitlinear`.

    ``applies_its_norm``: its kernels apply the ``norm`` themselves, with no torch call of its own,
    so :func:`babybitnet.decode.fold_prenorms` may move a block's pre-norm into it. Likewise the
    epilogue: ``activation`` (a name of ``EPILOGUE_ACTS``, '' for none: set on a view by
    :func:`babybitnet.decode.fold_activations`) and ``forward(x, residual)``, which returns
    ``residual + act(layer(x))`` (``adds_residual``: the block's residual add in the layer's store).

    forward(x): x (..., in_features) float -> (..., out_features), the same
    numbers as ``BitLinear.eval()`` under ``torch.no_grad()`` (with a ``norm``,
    up to its float rounding: the C++ and GPU kernels apply it themselves and
    sum its squares in their own order). There is no straight-through
    estimator here: the packed weights cannot be trained.
    """

    applies_its_norm = True
    # The epilogue (decode's views set it; see decode.fold_activations): the activation that follows the
    # layer, applied to its outputs, and forward's ``residual``, added to them: residual + act(layer(x)).
    activation = ""
    epilogue_activations = tuple(EPILOGUE_ACTS)
    adds_residual = True

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
        check_linear_args(in_features, out_features, weight_groups, act_bits)
        self.in_features, self.out_features = in_features, out_features
        self.fmt, self.weight_groups, self.act_bits = check_format(fmt), weight_groups, act_bits
        # 2 bits: row by row (a kernel decodes one row at a time, lesson 12). Base 3 is a storage
        # format: the whole matrix as one row, so the padding is at most 4 trits per matrix, not per row.
        self.shape = (out_features, in_features) if fmt == "2bit" else (out_features * in_features,)
        shape = packed_shape(self.shape, fmt)
        self.register_buffer("packed", torch.full(shape, ZERO_BYTE[fmt], dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(weight_groups))
        self.norm = nn.RMSNorm(in_features) if norm else None
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_bitlinear(cls, layer: BitLinear, fmt: str = "2bit") -> PackedBitLinear:
        """Pack a (trained) BitLinear: its ternary weights, scales, norm and bias."""
        if not isinstance(layer, BitLinear):
            raise ValueError(f"from_bitlinear expects a BitLinear, got {type(layer).__name__}")
        bad = int((~torch.isfinite(layer.weight)).sum())
        if bad:  # absmean of a NaN is NaN: the scale would be NaN and the ternary weights garbage
            raise ValueError(
                f"the latent weights hold {bad} NaN/inf values of {layer.weight.numel()} (the training diverged?); "
                f"they cannot be ternarized: pack a checkpoint from before the divergence"
            )
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

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"PackedBitLinear({self.in_features} -> {self.out_features}) expects inputs whose last dimension "
                f"is {self.in_features}, got shape {tuple(x.shape)}"
            )
        if residual is not None and (residual.shape[:-1] != x.shape[:-1] or residual.shape[-1] != self.out_features):
            raise ValueError(
                f"residual must have the layer's output shape {(*x.shape[:-1], self.out_features)}, "
                f"got {tuple(residual.shape)}"
            )
        if x.dtype is torch.float32 and x.is_cpu and not torch.is_grad_enabled():
            y = self._cpu_decode(x, residual)
            if y is not None:
                return y
        fast = self.fmt == "2bit" and self.act_bits == 8  # what the kernels take
        bias, act = self.bias, self.activation
        if x.is_cuda and fast and _triton_available():
            if bias is None and (residual is None or residual.dtype == x.dtype):
                return self._gpu_linear(x, act, residual)  # norm, layer and epilogue in one kernel where it can be
            y = self._gpu_linear(x)
            return epilogue(y if bias is None else y + bias, act, residual)
        ext = load_extension() if fast and x.device.type == "cpu" else None
        if ext is not None and x.dtype == torch.float32 and self.scale.dtype == torch.float32:
            # (norm,) quantize, add-only GEMV, rescale (and bias, activation, residual) in one C++ call,
            # kernels.cpu.ext_linear, where addonly.packed_linear also ends (with gradients, or another dtype)
            x, w, eps = self._kernel_norm(x)
            grads = torch.is_grad_enabled()  # the C++ call has no backward: what needs a gradient stays in torch
            c_bias = bias is not None and bias.dtype == torch.float32 and not (bias.requires_grad and grads)
            c_res = residual is None or (residual.dtype == torch.float32 and not (residual.requires_grad and grads))
            if (c_bias or bias is None) and c_res and act in CPU_ACTS:
                return ext_linear(
                    x, self.packed, self.scale, bias, ext=ext, norm_weight=w, norm_eps=eps, activation=act,
                    residual=residual,
                )  # fmt: skip
            y = ext_linear(x, self.packed, self.scale, bias if c_bias else None, ext=ext, norm_weight=w, norm_eps=eps)
            return epilogue(y if c_bias or bias is None else y + bias, act, residual)
        if self.norm is not None:
            x = self.norm(x)
        if ext is not None:  # other dtypes: the torch steps around the same kernel
            y = packed_linear(x, self.packed, self.scale, self.in_features)
        else:
            # Unpacking on every call keeps memory small; the kernels decode inside the matmul instead.
            # (no value checks here: they would wait for the GPU every call; the file's checksum and
            # ternary_weight() check the bytes)
            w_t = unpack(self.packed, self.shape[-1], self.fmt, check=False)
            y = int_linear(x, w_t.reshape(self.out_features, self.in_features), self.scale, self.act_bits)
        return epilogue(y if bias is None else y + bias, act, residual)

    def _cpu_decode(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor | None:
        """The hot path of generation on the CPU (float32, no gradients): the whole layer in one C++ call,
        or None where that call does not apply (then :meth:`forward` goes on).

        At the seed's width a layer's arithmetic takes a microsecond or two, about what each Python step
        around it costs, so this path reads the layer's tensors straight from the module's dicts (each
        ``self.name`` of a parameter, buffer or child goes through ``nn.Module.__getattr__``) and calls the
        C++ layer at once: about half the time of the general path per call. The shapes
        were checked by the caller and at construction; the C++ side checks dtypes and shapes again.
        """
        if self.fmt != "2bit" or self.act_bits != 8:
            return None
        act = self.activation
        buffers, norm, bias = self._buffers, self._modules.get("norm"), self._parameters.get("bias")
        scale, f32 = buffers["scale"], torch.float32
        if act not in CPU_ACTS or scale.dtype is not f32 or (bias is not None and bias.dtype is not f32):
            return None
        if residual is not None and residual.dtype is not f32:
            return None
        w, eps = None, 0.0
        if norm is not None:
            w = norm._parameters.get("weight")
            if w is None or w.dtype is not f32:
                return None  # a norm the C++ layer cannot take: the general path runs it in torch
            eps = norm.eps if norm.eps is not None else _FLOAT32_EPS
        ext = load_extension()
        if ext is None:
            return None
        return ext_linear(
            x, buffers["packed"], scale, bias, ext=ext, norm_weight=w, norm_eps=eps, activation=act, residual=residual
        )

    def _gpu_linear(self, x: torch.Tensor, activation: str = "", residual: torch.Tensor | None = None) -> torch.Tensor:
        """On a GPU a Triton kernel decodes the packed bytes inside the matmul (lesson 13).

        ``babybitnet.kernels.dispatch.packed_linear`` picks it per shape (N, K, range of batch sizes):
        the first call times every candidate (the one-launch dp4a GEMV, quantizer + dp4a GEMV, the
        int8 tensor-core GEMM, cuBLAS on weights unpacked on the fly) and keeps the fastest, in
        memory and in ``~/.cache/babybitnet/tuning.json`` (:mod:`babybitnet.kernels.tuning`).
        The RMSNorm in front (``norm``) goes to the kernel too: the one-launch kernel applies it as it
        reads x, so it costs no launch of its own; and so do ``activation`` and ``residual`` (the
        epilogue ``residual + act(y)``), which the dp4a kernels apply to their outputs as they store them.
        """
        x, w, eps = self._kernel_norm(x)
        x2 = x.reshape(-1, self.in_features)
        r2 = None if residual is None else residual.reshape(-1, self.out_features)
        y = gpu_packed_linear(x2, self.packed, self.scale, self.in_features, w, eps, activation, r2)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _kernel_norm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(x, weight, eps) for a kernel that applies the RMSNorm in front itself: the norm's weight and eps
        (eps None is torch's default for x's dtype), or (norm(x), None, 0.0) when there is no norm the kernel
        can take (none, or one without a weight in x's dtype: torch runs it here)."""
        norm = self.norm
        if norm is not None and norm.weight is not None and norm.weight.dtype == x.dtype:
            return x, norm.weight, norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
        return (x if norm is None else norm(x)), None, 0.0

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


def layer_spec(layer: PackedBitLinear) -> dict:
    """What it takes to rebuild a PackedBitLinear before loading its tensors (plain data, for the file)."""
    return {
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "weight_groups": layer.weight_groups,
        "act_bits": layer.act_bits,
        "norm": layer.norm is not None,
        "bias": layer.bias is not None,
    }


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
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
        try:
            layer = PackedBitLinear.from_bitlinear(packed.get_submodule(name), fmt)
        except ValueError as e:
            raise ValueError(f"cannot pack layer {name!r}: {e}") from None
        replace_module(packed, name, layer)
    return packed
