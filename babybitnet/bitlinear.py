"""BitLinear: a linear layer with ternary weights and 8-bit activations (BitNet b1.58).

Training path (``module.train()``): the latent weights stay float; each forward
pass quantizes the input per token to 8 bits and the weights to {-1, 0, +1}
times a scale, multiplies the fake-quantized values, and the backward pass
lets the gradients through as if nothing had been rounded (the STE)::

    y = x_q @ W_q^T,   dL/dx = dL/dy @ W_q,   dL/dW = (dL/dy)^T @ x_q

Inference path (``module.eval()`` under ``torch.no_grad()``): the same numbers computed the way a
low-bit kernel would, with integers and one rescale at the end::

    y = (x_i @ W_t^T) / (s_x * s_w)

``x_i`` holds int8 values and ``W_t`` ternary ones, so every product is an
integer and every sum is exact (we keep them in float32, which holds integers
up to 2^24 exactly: 127 * in_features stays far below that).

Quantization strength ``lam`` (in [0, 1], default 1): ``lam=1`` is BitNet as above; below 1
the training forward blends full precision into the quantized values,
``x' = x + lam * (x_q - x)`` and ``W' = W + lam * (W_q - W)`` (the STE still passes the
gradients straight through: :func:`gradual_quant`), so ``lam=0`` is a plain ``F.linear(x, W)``. Ramping ``lam`` from 0
to 1 turns a trained full-precision layer into a ternary one gradually (``babybitnet.finetune``).

Option ``norm=True`` puts an RMSNorm on the input before quantization, as the
official training-tips FAQ does (the block's own pre-norm is then removed).
The seed project had no norm inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from babybitnet.quant import (
    EPS,
    activation_quant,
    check_act_bits,
    quantize_activations,
    row_scales,
    ste,
    ternarize,
    weight_quant,
)


def bitlinear_forward(x: torch.Tensor, weight: torch.Tensor, weight_groups: int = 1, act_bits: int = 8) -> torch.Tensor:
    """The seed's BitLinear forward, written with the detach trick: slow but obviously right."""
    x_q = ste(x, activation_quant(x, act_bits))
    w_q = ste(weight, weight_quant(weight, weight_groups))
    return F.linear(x_q, w_q)


class BitLinearFunction(torch.autograd.Function):
    """Quantize-and-multiply as one autograd node.

    Same values and gradients as :func:`bitlinear_forward`, but autograd
    records one node instead of a dozen small ones, and the backward pass is
    exactly a linear layer's backward on the quantized tensors. At babyGPT's
    size the per-operation overhead is most of the cost, so this matters.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, weight_groups: int, act_bits: int) -> torch.Tensor:  # noqa: D102
        x_q = activation_quant(x, act_bits)
        w_q = weight_quant(weight, weight_groups)
        ctx.save_for_backward(x_q, w_q)
        return F.linear(x_q, w_q)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # noqa: D102
        x_q, w_q = ctx.saved_tensors
        # under autocast (bf16) the forward's matmul ran in grad_y's dtype: do the same here
        x_q, w_q = x_q.to(grad_y.dtype), w_q.to(grad_y.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ w_q  # straight through: d x_q / d x = identity
        if ctx.needs_input_grad[1]:
            grad_w = grad_y.reshape(-1, grad_y.shape[-1]).T @ x_q.reshape(-1, x_q.shape[-1])
        return grad_x, grad_w, None, None


def int_linear(x: torch.Tensor, w_t: torch.Tensor, s_w: torch.Tensor, act_bits: int = 8) -> torch.Tensor:
    """Inference with pre-quantized weights: ``(x_i @ W_t^T) / (s_x * s_w)``.

    x: (..., in) float. w_t: (out, in) ternary values (any dtype, int8 to save
    memory). s_w: (groups,) weight scales, one per equal block of output rows.
    """
    x_i, s_x = quantize_activations(x, act_bits)
    acc = F.linear(x_i, w_t.to(x.dtype))  # integer sums, exact in float32
    return acc / (s_x * row_scales(s_w, w_t.shape[0], x.dtype))


def gradual_quant(x: torch.Tensor, x_q: torch.Tensor, lam: float) -> torch.Tensor:
    """``x + lam * (x_q - x)`` in the forward pass, the identity for the gradient (the STE at strength ``lam``).

    ``lam = 1`` is :func:`babybitnet.quant.ste`; ``lam = 0`` is ``x`` itself. No gradient reaches ``x_q``.
    """
    return x + lam * (x_q - x).detach()


def check_linear_args(in_features: int, out_features: int, weight_groups: int = 1, act_bits: int = 8) -> None:
    """Raise ValueError unless these describe a BitLinear (or its packed form), before anything is allocated."""
    for name, value in (("in_features", in_features), ("out_features", out_features), ("weight_groups", weight_groups)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if out_features % weight_groups:
        raise ValueError(f"out_features={out_features} must split into weight_groups={weight_groups} equal blocks")
    check_act_bits(act_bits)


class BitLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` with ternary weights and int8 activations.

    Args:
        in_features, out_features: as ``nn.Linear``.
        bias: BitNet has none (the seed's BitLinear too); kept as an option.
        norm: RMSNorm on the input before quantizing it (official recipe).
        weight_groups: number of equal blocks of output rows with their own
            weight scale; 1 is the paper's per-tensor scale.
        act_bits: bits of the activation quantizer (8 in BitNet b1.58).

    Attribute ``lam`` (float in [0, 1], default 1.0): the quantization strength, see the module docstring.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        norm: bool = False,
        weight_groups: int = 1,
        act_bits: int = 8,
    ):
        super().__init__()
        check_linear_args(in_features, out_features, weight_groups, act_bits)
        self.in_features, self.out_features = in_features, out_features
        self.weight_groups, self.act_bits = weight_groups, act_bits
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.norm = nn.RMSNorm(in_features) if norm else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default init
        self.lam = 1.0

    @property
    def lam(self) -> float:
        """Quantization strength in [0, 1]: 1 is BitNet, 0 a full-precision linear layer without bias."""
        return self._lam

    @lam.setter
    def lam(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"BitLinear quantization strength lam must be a number in [0, 1], got {value!r}")
        self._lam = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"BitLinear({self.in_features} -> {self.out_features}) expects inputs whose last dimension is "
                f"{self.in_features}, got shape {tuple(x.shape)}"
            )
        if self.norm is not None:
            x = self.norm(x)
        if self.lam < 1.0:
            # gradual quantization: blend full precision into the quantized values, so a trained fp layer
            # is not switched to ternary at once; the detached difference keeps the STE's gradients
            x_q = activation_quant(x.detach(), self.act_bits)
            w_q = weight_quant(self.weight.detach(), self.weight_groups)
            y = F.linear(gradual_quant(x, x_q, self.lam), gradual_quant(self.weight, w_q, self.lam))
        elif self.training or torch.is_grad_enabled():
            # differentiable path (the integer path below has no STE, so its gradients would be wrong)
            y = BitLinearFunction.apply(x, self.weight, self.weight_groups, self.act_bits)
        else:
            w_t, s_w = self.quantized_weight()
            y = int_linear(x, w_t, s_w, self.act_bits)
        return y if self.bias is None else y + self.bias

    @torch.no_grad()
    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights as inference stores them: (W_t int8 (out, in), s_w float (groups,))."""
        w_t, s_w = ternarize(self.weight, self.weight_groups, EPS)
        return w_t.to(torch.int8), s_w

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"norm={self.norm is not None}, weight_groups={self.weight_groups}, act_bits={self.act_bits}"
        ) + ("" if self.lam == 1.0 else f", lam={self.lam:g}")


def set_quant_strength(model: nn.Module, lam: float) -> int:
    """Set the quantization strength ``lam`` of every BitLinear inside ``model``; return how many there are."""
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    for m in layers:
        m.lam = lam  # the setter checks lam is in [0, 1]
    return len(layers)
