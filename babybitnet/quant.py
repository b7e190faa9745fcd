"""Quantization: ternary weights (absmean), 8-bit activations (per-token absmax), the STE.

BitNet b1.58 (Ma et al., 2024; the official training-tips FAQ) quantizes

* weights to {-1, 0, +1} times one scale per tensor::

      s_w = 1 / max(mean(|W|), eps)
      W_t = clamp(round(W * s_w), -1, 1)          # ternary integers
      W_q = W_t / s_w                              # what the layer multiplies by

* activations to 8-bit integers times one scale per token (per row)::

      s_x = 127 / max(max_j |x_j|, eps)
      x_i = clamp(round(x * s_x), -128, 127)       # int8 values
      x_q = x_i / s_x

Rounding has a zero gradient almost everywhere, so training uses the
straight-through estimator (STE): the forward pass uses the quantized value,
the backward pass pretends quantization was the identity.

Every function here keeps the dtype it is given (the integers are stored in
float tensors unless a function says otherwise) so it runs on any device.
"""

from __future__ import annotations

import torch

EPS = 1e-5
# 1 bit has no level besides 0 (2**0 - 1 = 0: every activation would quantize to 0, then 0 / 0);
# more than 8 do not fit the int8 that the integer matmuls take
ACT_BITS = range(2, 9)


# ---------------------------------------------------------------- weights
def absmean_scale(w: torch.Tensor, groups: int = 1, eps: float = EPS) -> torch.Tensor:
    """``s_w`` of a weight matrix (out, in): shape (groups, 1, 1), one scale per block of rows.

    ``groups=1`` is the paper's one scale per tensor. ``groups=g`` splits the
    rows into ``g`` equal blocks; a fused q/k/v matrix uses it so that each of
    the original matrices keeps its own scale.
    """
    if w.dim() != 2:
        raise ValueError(f"expected a weight matrix (out_features, in_features), got shape {tuple(w.shape)}")
    if w.shape[0] % groups:
        raise ValueError(f"{w.shape[0]} rows do not split into {groups} equal groups")
    mean_abs = w.abs().reshape(groups, -1).mean(dim=1)
    return (1.0 / mean_abs.clamp(min=eps)).reshape(groups, 1, 1)


def ternarize(w: torch.Tensor, groups: int = 1, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean quantization: ``(W_t, s_w)`` with ``W_t`` ternary, same shape and dtype as ``w``.

    ``W_t / s_w`` (broadcast per group) approximates ``w``. An all-zero matrix
    gives ``W_t = 0`` and a finite scale, never NaN.
    """
    s = absmean_scale(w, groups, eps)
    # in-place ops on the fresh product: at babyGPT's size, allocations cost as much as arithmetic
    w_t = (w.reshape(groups, -1, w.shape[1]) * s).round_().clamp_(-1, 1)
    return w_t.reshape(w.shape), s.reshape(groups)


def weight_quant(w: torch.Tensor, groups: int = 1, eps: float = EPS) -> torch.Tensor:
    """Fake-quantized weights ``W_q = W_t / s_w``: ternary values times a scale, as floats."""
    w_t, s = ternarize(w, groups, eps)
    return w_t.reshape(groups, -1, w.shape[1]).div_(s.reshape(groups, 1, 1)).reshape(w.shape)


def ternary_quant(w: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Ternary fake quantization at a chosen step ``alpha > 0``: ``alpha * clamp(round(w / alpha), -1, 1)``.

    ``alpha = mean(|W|)`` is absmean (``weight_quant`` up to float rounding), ``alpha = max(|W|)`` is
    absmax; lesson 6 sweeps ``alpha`` to see how the choice moves the quantization error.
    """
    return (w / alpha).round().clamp(-1, 1) * alpha


def binarize(w: torch.Tensor) -> torch.Tensor:
    """Mean-centred binary weights in the style of BitNet (b1): ``sign(W - mean(W)) * mean(|W - mean(W)|)``.

    ``sign`` here is +1 where ``W - mean(W) > 0`` and -1 elsewhere (zero goes to -1), so every
    weight is one of two values. One mean and one scale per tensor; an all-zero matrix stays zero.
    """
    centred = w - w.mean()
    beta = centred.abs().mean()
    return torch.where(centred > 0, beta, -beta)


# ---------------------------------------------------------------- activations
def check_act_bits(bits: int) -> int:
    """``bits`` if activations can be quantized to that many bits (2 to 8), else a ValueError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ACT_BITS:
        raise ValueError(f"activation bits must be an int from {ACT_BITS.start} to {ACT_BITS.stop - 1}, got {bits!r}")
    return bits


def absmax_scale(x: torch.Tensor, bits: int = 8, eps: float = EPS) -> torch.Tensor:
    """``s_x`` per token: shape ``x.shape[:-1] + (1,)``; maps each row's largest |value| to ``2**(bits-1) - 1``."""
    check_act_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    return qmax / x.abs().amax(dim=-1, keepdim=True).clamp(min=eps)


def quantize_activations(x: torch.Tensor, bits: int = 8, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax quantization: ``(x_i, s_x)``; ``x_i`` holds integers in [-2^(b-1), 2^(b-1)-1] (x's dtype).

    The paper clamps ``round(x * s_x)`` to [-128, 127]; in float32 we skip it
    because it can never bite: ``s_x`` maps the largest |x| of the row to 127,
    so every ``|x * s_x| <= 127`` already (the tests check the range). In
    bfloat16 ``s_x`` itself is rounded to 8 bits and ``x * s_x`` can land on
    128, so for bfloat16 and float16 we clamp to [-127, 127].
    """
    s = absmax_scale(x, bits, eps)
    q = (x * s).round_()
    if x.dtype in (torch.float16, torch.bfloat16):
        qmax = 2 ** (bits - 1) - 1
        q.clamp_(-qmax, qmax)
    return q, s


def activation_quant(x: torch.Tensor, bits: int = 8, eps: float = EPS) -> torch.Tensor:
    """Fake-quantized activations ``x_q = x_i / s_x`` (same shape and dtype as ``x``)."""
    x_i, s = quantize_activations(x, bits, eps)
    return x_i.div_(s)


# ---------------------------------------------------------------- the straight-through estimator
def ste(x: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
    """The detach trick: the value of ``x_q``, the gradient of ``x``.

    ``x + (x_q - x).detach()`` equals ``x_q`` in the forward pass; in the
    backward pass the detached part is a constant, so d/dx is the identity.
    """
    return x + (x_q - x).detach()


class RoundSTE(torch.autograd.Function):
    """``round`` whose backward pass is the identity: the STE as an ``autograd.Function``.

    Same gradients as ``ste(x, x.round())`` but one node in the graph instead
    of three operations, which matters when the layers are tiny.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.round()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, pass the gradient straight through in the backward pass."""
    return RoundSTE.apply(x)


def check_int8_activations(x_q: torch.Tensor) -> None:
    """Raise ValueError unless ``x_q`` is a 2-D int8 tensor (tokens M, inputs K), as the integer matmuls take."""
    if not isinstance(x_q, torch.Tensor) or x_q.dtype != torch.int8:
        got = x_q.dtype if isinstance(x_q, torch.Tensor) else type(x_q).__name__
        raise ValueError(f"x_q must be an int8 tensor (quantize_activations(x)[0].to(torch.int8)), got {got}")
    if x_q.dim() != 2:
        raise ValueError(f"x_q must be 2-D (tokens M, inputs K), got shape {tuple(x_q.shape)}")


def check_weight_groups(s_w: torch.Tensor, n: int) -> int:
    """The rows per group, ``n // G``, if weight scales ``s_w`` (G,) fit a matrix of ``n`` output rows; else ValueError.

    Group g covers the n/G consecutive rows from g * n/G (:func:`absmean_scale`'s ``groups``), so
    G must divide n. Every matmul that takes packed weights and their scales checks this one way,
    also those that hand ``s_w`` to a kernel as it is, without expanding it to one scale per row.
    """
    if s_w.dim() > 1 or s_w.numel() == 0 or n % s_w.numel():
        raise ValueError(f"s_w must have shape (groups,) with groups dividing N={n}, got shape {tuple(s_w.shape)}")
    return n // s_w.numel()


def row_scales(s_w: torch.Tensor, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weight scales (G,) -> one per output row (n,): group g covers the n/G consecutive rows from g * n/G."""
    return s_w.reshape(-1).to(dtype).repeat_interleave(check_weight_groups(s_w, n))
