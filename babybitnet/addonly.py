"""The multiplication-free matmul: ternary weights times int8 activations with additions only.

A BitNet b1.58 layer at inference computes ``y = (x_q @ W_t^T) / (s_x * s_w)`` where ``x_q``
holds int8 values in [-127, 127] and every weight of ``W_t`` is -1, 0 or +1. Look at one output::

    y[m, n] = sum_j x_q[m, j] * W_t[n, j]

Each "product" is ``x`` (weight +1), ``-x`` (weight -1) or nothing (weight 0). So::

    y[m, n] = sum of x_q[m, j] over the j where W_t[n, j] = +1
            - sum of x_q[m, j] over the j where W_t[n, j] = -1

No multiplication is left in the inner product: only selections, additions and subtractions,
in exact integer arithmetic (int32 is plenty: |y| <= 127 * K). The one multiplication per
output that remains is the rescale by ``1 / (s_x * s_w)`` at the very end. That is the whole
point of ternary weights: adders are far cheaper than multipliers in silicon and energy, and
2-bit weights move 16x less memory than float32 ones.

This module builds that matmul up in steps, each exactly equal to ``x_q @ W_t^T``:

1. :func:`addonly_dot` and :func:`addonly_matmul_loop`: Python loops, the definition above, for tiny sizes.
2. :func:`addonly_matmul`: the same vectorized with boolean masks (``torch.where`` and ``sum``).
3. :func:`addonly_matmul_packed`: the same straight from 2-bit packed weights (see below).
4. :func:`lut_matmul`: the table look-up idea of T-MAC and bitnet.cpp: for every group of 4
   activations, precompute the 256 possible partial sums once, then each output is a sum of
   look-ups indexed by the packed bytes themselves.
5. :func:`babybitnet.kernels.cpu.ext_matmul_packed`: a small C++ kernel
   (``kernels/csrc/ternary_gemv.cpp``, AVX2 sign/add, built on first use) that beats PyTorch's
   float32 matmul on a CPU.

:func:`packed_linear` puts it together as a layer: quantize, add-only matmul, one rescale.
:func:`babybitnet.experiments.bench_kernels.bench_matmul` times all of them beside PyTorch's
float32 and int8 matmuls.

The 2-bit format (``babybitnet.packing``): ``code = w + 1`` (-1 -> 0b00, 0 -> 0b01, +1 -> 0b10),
packed along the input dimension: weight ``j`` of a row is in byte ``j // 4``, bits
``2*(j%4)`` and ``2*(j%4)+1``; rows are padded to a multiple of 4 with code 0b01 (zero). An
(N, K) ternary matrix packs to uint8 (N, ceil(K/4)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from babybitnet.kernels.cpu import ext_linear, ext_matmul_packed, load_extension
from babybitnet.packing import check_packed_2bit, check_packed_matmul, check_ternary
from babybitnet.quant import check_int8_activations, check_weight_groups, quantize_activations, row_scales

CODE_MINUS, CODE_ZERO, CODE_PLUS = 0b00, 0b01, 0b10  # code = w + 1
_CHUNK_ELEMENTS = 1 << 22  # cap on the (M, rows, K) intermediates of the pure-torch versions (16 MB of int32)


# ---------------------------------------------------------------- checks
def _check_ternary(w_t: torch.Tensor) -> None:
    if not isinstance(w_t, torch.Tensor) or w_t.dtype != torch.int8:
        got = w_t.dtype if isinstance(w_t, torch.Tensor) else type(w_t).__name__
        raise ValueError(f"w_t must be an int8 tensor of ternary weights (w_t.to(torch.int8)), got {got}")
    if w_t.dim() != 2:
        raise ValueError(f"w_t must be 2-D (outputs N, inputs K), got shape {tuple(w_t.shape)}")
    check_ternary(w_t)


def _check_unpacked(x_q: torch.Tensor, w_t: torch.Tensor) -> None:
    check_int8_activations(x_q)
    _check_ternary(w_t)
    if x_q.shape[1] != w_t.shape[1]:
        raise ValueError(f"K mismatch: x_q has K={x_q.shape[1]} inputs per token but w_t has K={w_t.shape[1]}")


def _row_chunk(m: int, k: int) -> int:
    """How many output rows to process at once so that an (M, rows, K) intermediate stays small."""
    return max(1, _CHUNK_ELEMENTS // max(1, m * k))


# ---------------------------------------------------------------- 1. the definition, in Python loops
def addonly_dot(x: list[int] | torch.Tensor, w: list[int] | torch.Tensor) -> int:
    """``sum_j x[j] * w[j]`` for ternary ``w`` without multiplying: add, subtract or skip each ``x[j]``.

    ``x``: K integer activations, ``w``: K weights in {-1, 0, 1} (lists of ints or 1-D tensors).
    A Python int, so that a long sum of int8 values cannot wrap around.
    """
    acc = 0
    for xj, wj in zip(x, w, strict=True):
        if wj == 1:
            acc += int(xj)  # weight +1: add the activation
        elif wj == -1:
            acc -= int(xj)  # weight -1: subtract it
        # weight 0: skip it (that is the sparsity BitNet's zeros buy)
    return acc


def addonly_matmul_loop(x_q: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """``x_q @ w_t^T`` with Python loops and no multiplication: int8 (M, K), int8 (N, K) -> int32 (M, N).

    One :func:`addonly_dot` per token and output. Slow (M * N * K Python steps): for tiny sizes, to read.
    """
    _check_unpacked(x_q, w_t)
    xs, ws = x_q.tolist(), w_t.tolist()
    out = [[addonly_dot(x_row, w_row) for w_row in ws] for x_row in xs]  # token by token, output by output
    return torch.tensor(out, dtype=torch.int32).reshape(len(xs), len(ws))


# ---------------------------------------------------------------- 2. vectorized with masks
def addonly_matmul(x_q: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """``x_q @ w_t^T`` as (sum of x where w = +1) - (sum of x where w = -1): int8 (M, K), (N, K) -> int32 (M, N).

    ``torch.where`` selects, ``sum`` adds: no operand is ever multiplied. The selections are
    (M, rows, K) tensors, so we go through the rows in chunks to bound the memory.
    """
    _check_unpacked(x_q, w_t)
    (m, k), n = x_q.shape, w_t.shape[0]
    x = x_q.to(torch.int32)[:, None, :]  # (M, 1, K): int32 so that the sums cannot overflow
    out = torch.empty(m, n, dtype=torch.int32)
    step = _row_chunk(m, k)
    for n0 in range(0, n, step):
        w = w_t[n0 : n0 + step]  # (rows, K), broadcast against (M, 1, K)
        plus = torch.where(w == 1, x, 0).sum(-1, dtype=torch.int32)
        minus = torch.where(w == -1, x, 0).sum(-1, dtype=torch.int32)
        out[:, n0 : n0 + step] = plus - minus
    return out


# ---------------------------------------------------------------- 3. straight from the 2-bit bytes
def _pad_planes(x_q: torch.Tensor, kb: int) -> torch.Tensor:
    """int8 (M, K) -> int32 (M, kb, 4): zero-padded to 4*kb inputs; [:, i, j] is input 4i + j (byte i, bits 2j)."""
    x = F.pad(x_q.to(torch.int32), (0, 4 * kb - x_q.shape[1]))
    return x.reshape(x_q.shape[0], kb, 4)


def addonly_matmul_packed(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """``x_q @ W_t^T`` from the packed weights: int8 (M, k), uint8 (N, ceil(k/4)), k -> int32 (M, N).

    Bit pair ``j`` of byte ``i`` holds the code of input ``4i + j``. For each of the 4 pairs we
    pull the codes out with a shift and a mask, then add the activations whose code is 0b10 (+1)
    and subtract those whose code is 0b00 (-1). Pure torch, never unpacks the whole matrix.
    """
    check_packed_matmul(x_q, packed, k)
    m, (n, kb) = x_q.shape[0], packed.shape
    planes = _pad_planes(x_q, kb)  # (M, kb, 4)
    out = torch.zeros(m, n, dtype=torch.int32)
    step = _row_chunk(m, kb)
    for n0 in range(0, n, step):
        rows = packed[n0 : n0 + step]  # (rows, kb) uint8
        acc = out[:, n0 : n0 + step]  # a view: += writes into out
        for j in range(4):
            codes = (rows >> (2 * j)) & 0b11  # (rows, kb): code of input 4i + j of each row
            x = planes[:, None, :, j]  # (M, 1, kb): input 4i + j of each token
            acc += torch.where(codes == CODE_PLUS, x, 0).sum(-1, dtype=torch.int32)
            acc -= torch.where(codes == CODE_MINUS, x, 0).sum(-1, dtype=torch.int32)
    return out


# ---------------------------------------------------------------- 4. table look-up (T-MAC, bitnet.cpp "TL")
def lut_tables(x_q: torch.Tensor, kb: int) -> torch.Tensor:
    """int32 (M, kb, 256): entry [m, i, b] is what packed byte ``b`` contributes from inputs 4i..4i+3 of token m.

    Byte ``b = c0 | c1<<2 | c2<<4 | c3<<6`` holds 4 codes, so its partial sum is
    ``v(c0, x[4i]) + v(c1, x[4i+1]) + v(c2, x[4i+2]) + v(c3, x[4i+3])`` with ``v(code, x)`` = -x, 0, +x
    (and 0 for the unused code 0b11). Built by broadcasting additions: no multiplication.
    """
    x = _pad_planes(x_q, kb)  # (M, kb, 4)
    zero = torch.zeros_like(x)
    v = torch.stack([-x, zero, x, zero], dim=-1)  # (M, kb, 4 inputs, 4 codes): v[..., j, c]
    # row-major index (c3, c2, c1, c0) is exactly the byte value c3<<6 | c2<<4 | c1<<2 | c0
    table = (
        v[..., 3, :, None, None, None]
        + v[..., 2, None, :, None, None]
        + v[..., 1, None, None, :, None]
        + v[..., 0, None, None, None, :]
    )
    return table.reshape(x.shape[0], kb, 256)


def lut_matmul(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """``x_q @ W_t^T`` by table look-ups: int8 (M, k), uint8 (N, ceil(k/4)), k -> int32 (M, N).

    The tables cost 256 entries per 4 inputs per token, once, whatever N is; then each output is
    ``sum_i table[m, i, packed[n, i]]``: one look-up and one addition per byte, i.e. per 4
    weights. On a CPU the table lives in registers or L1 (bitnet.cpp uses pshufb on 16-entry
    tables); here ``torch.gather`` does the look-ups.
    """
    check_packed_matmul(x_q, packed, k)
    m, (n, kb) = x_q.shape[0], packed.shape
    table = lut_tables(x_q, kb).reshape(m, kb * 256)  # flat: byte b of group i is at i*256 + b
    base = torch.arange(0, 256 * kb, 256)  # where each group's table starts in the flat view
    out = torch.empty(m, n, dtype=torch.int32)
    step = _row_chunk(m, kb)
    for n0 in range(0, n, step):
        rows = packed[n0 : n0 + step]
        idx = (rows.long() + base).reshape(1, -1).expand(m, -1)  # (M, rows * kb)
        looked_up = torch.gather(table, 1, idx).reshape(m, rows.shape[0], kb)
        out[:, n0 : n0 + step] = looked_up.sum(-1, dtype=torch.int32)
    return out


# ---------------------------------------------------------------- 5. the C++ kernel (babybitnet.kernels.cpu)
def matmul_packed(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """The fastest available add-only matmul: the C++ kernel if it loads, else :func:`addonly_matmul_packed`."""
    if load_extension() is not None:
        return ext_matmul_packed(x_q, packed, k)
    return addonly_matmul_packed(x_q, packed, k)


# ---------------------------------------------------------------- 6. a layer: quantize, add, rescale once
def packed_linear(x: torch.Tensor, packed: torch.Tensor, s_w: torch.Tensor, k: int) -> torch.Tensor:
    """BitLinear inference from packed weights: float (..., k), uint8 (N, ceil(k/4)), s_w (G,) -> float (..., N).

    ``quantize_activations`` gives int8 values and a scale per token; the matmul only adds and
    subtracts; the single multiplication per output is the rescale ``acc / (s_x * s_w)``. Same
    numbers as :func:`babybitnet.bitlinear.int_linear` with the unpacked weights.

    float32 on the CPU with the C++ kernel loaded: all three steps in one C++ call
    (:func:`babybitnet.kernels.cpu.ext_linear`), bit for bit the torch steps below. At babyGPT's size
    those dozen small tensor ops (each a dispatch and an allocation) take far longer than the matmul.
    """
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (..., K), got {x.dtype}")
    if x.shape[-1] != k:
        raise ValueError(f"K mismatch: x has K={x.shape[-1]} features but the packed weights have k={k}")
    n = packed.shape[0]
    if x.dtype == torch.float32 and x.device.type == "cpu" and load_extension() is not None:
        check_packed_2bit(packed, k)
        check_weight_groups(s_w, n)  # the ValueError of the torch path, not the C++ kernel's RuntimeError
        return ext_linear(x, packed, s_w.to(torch.float32))
    scales = row_scales(s_w, n, x.dtype)
    x_i, s_x = quantize_activations(x)  # integers in [-127, 127] as floats, (..., 1)
    acc = matmul_packed(x_i.reshape(-1, k).to(torch.int8), packed, k)  # (M, N) int32, exact
    acc = acc.reshape(*x.shape[:-1], n).to(x.dtype)
    return acc / (s_x * scales)
