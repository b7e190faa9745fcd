"""The ternary GEMV on a GPU: a Triton kernel that reads 2-bit packed weights and only adds.

At decode time a language model multiplies a handful of tokens (M = 1..16) by every weight
matrix: ``y (M, N) = x (M, K) @ W^T``. Each weight is read once and used M times, so the
time goes into moving the weights from GPU memory, not into arithmetic. Packed at 2 bits
(``babybitnet.packing``) a ternary matrix is 8x smaller than bf16, so a kernel that reads
the packed bytes directly can in principle be up to 8x faster than ``torch`` bf16.

**The kernel** (:func:`ternary_gemv_kernel`). Each program computes ``BLOCK_N`` outputs (rows
of W) for up to ``BLOCK_M`` tokens (:func:`~babybitnet.kernels.triton_common.program_tile`), and
walks along K in steps of ``BLOCK_K`` weights (one small ``@triton.jit`` function per piece, so
that lesson 13 can show them one at a time; Triton inlines them)::

    for each step of BLOCK_K inputs (BLOCK_K // 4 bytes per row):
        load_packed_bytes:        (BLOCK_N, BLOCK_K // 4) uint8, contiguous along each row
        load_planes:              (BLOCK_M, BLOCK_K // 4, 4) activations split into 4 planes:
                                  plane j holds inputs 4i + j, the partners of bit pair j of byte i
        add_plane, j in 0..3:     code = (byte >> 2j) & 0b11        (0b00: -1, 0b01: 0, 0b10: +1)
            acc += where(code == 0b10, x_j, where(code == 0b00, -x_j, 0))
    store_outputs: y = sum(acc over K) / (s_x * s_w)     one multiplication per OUTPUT, not per weight

``acc`` has the shape of the whole tile (BLOCK_M, BLOCK_N, BLOCK_K // 4): every thread adds
into its own registers and the threads combine their sums once, after the loop. Rows past N,
tokens past M and inputs past K (K need not be a multiple of 4 or of BLOCK_K) are masked:
missing bytes read as 0b01010101 (four zero weights) and missing activations as 0.

**Two kinds of activations.** With int8 activations (BitNet b1.58's W1.58A8, the main path)
the sums are int32 and exact: ``|y| <= 127 * K`` fits int32 for any K below 16 million, and the
result equals ``x_q.long() @ w_t.long().T`` bit for bit. The rescale ``1 / (s_x * s_w)`` is fused
into the store. With float activations (fp32, fp16 or bf16; "W1.58A16") the sums are float32.

**Honest note on "add-only".** The source only selects and adds, and ``ADD_ONLY=False`` gives a
second version that computes ``(code - 1) * x`` instead, to measure what the selection costs. The
compiler is free to lower either form as it likes (predicated moves, ``SEL``, ``IMAD``): what runs
is in the SASS (``ternary_gemv_kernel.cache[...].asm["sass"]``), not in this file. On a GPU the
multipliers are there anyway; what ternary weights save is memory traffic.

:func:`triton_packed_linear` is the layer (quantize, GEMV, rescale: the same numbers as
:func:`babybitnet.addonly.packed_linear`); ``bench kernel`` (:mod:`babybitnet.experiments.bench_kernels`)
times it against torch's bf16 and fp16 matmuls. Triton is optional: ``pip install triton``
(a GPU build of torch ships it).
With ``TRITON_INTERPRET=1`` set before this module is imported, the kernel runs in Triton's
interpreter on CPU tensors (slow, for tests: no bf16 there).
"""

from __future__ import annotations

import torch

from babybitnet.kernels.triton_common import (
    Config,
    check_config,
    check_packed_on,
    program_tile,
    require_triton,
    store_outputs,
    tl,
    triton,
)
from babybitnet.quant import quantize_activations, row_scales

MAX_BLOCK_M = 16  # tokens per program; more tokens use more programs along the grid's second axis
DEFAULT_CONFIG = (8, 1024, 4)  # (BLOCK_N rows, BLOCK_K inputs, num_warps) for one token
# What bench_kernel tries per shape, fastest kept: few rows x long rows suit a GEMV (16 bytes per thread)
CONFIGS = ((2, 2048, 2), (4, 1024, 4), (4, 2048, 4), (8, 1024, 4), (8, 2048, 8), (16, 512, 4), (16, 1024, 8))

if triton is not None:

    @triton.jit
    def load_packed_bytes(w_ptr, offs_n, n_ok, b, KB, stride_wn):
        """The (BLOCK_N, BLOCK_KB) uint8 tile of packed bytes: rows ``offs_n``, bytes ``b`` of each row.

        Bytes past the edge (rows past N, bytes past KB) read as 0b01010101: four zero weights.
        """
        return tl.load(
            w_ptr + offs_n[:, None] * stride_wn + b[None, :],
            mask=n_ok[:, None] & (b < KB)[None, :],
            other=0b01010101,  # four zero weights
        )

    @triton.jit
    def load_planes(
        x_ptr, offs_m, m_ok, b, K, stride_xm, BLOCK_M: tl.constexpr, BLOCK_KB: tl.constexpr, INT_ACC: tl.constexpr
    ):
        """The activations that bytes ``b`` multiply, as 4 planes (BLOCK_M, BLOCK_KB): plane j holds inputs 4i + j.

        Inputs past K and tokens past M read as 0. int32 for int8 activations (exact sums), else float32.
        """
        k = 4 * b[:, None] + tl.arange(0, 4)[None, :]  # (BLOCK_KB, 4): the inputs of each byte
        x = tl.load(
            x_ptr + offs_m[:, None, None] * stride_xm + k[None, :, :],
            mask=m_ok[:, None, None] & (k < K)[None, :, :],
            other=0,
        )
        if INT_ACC:
            x = x.to(tl.int32)
        else:
            x = x.to(tl.float32)
        # (BLOCK_M, BLOCK_KB, 4) -> 4 planes (BLOCK_M, BLOCK_KB); tl.split halves an axis of size 2
        x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_KB, 2, 2)))  # j = 0, 2 and j = 1, 3
        x0, x2 = tl.split(x_even)
        x1, x3 = tl.split(x_odd)
        return x0, x1, x2, x3

    @triton.jit
    def add_plane(acc, w_bytes, xj, j: tl.constexpr, ADD_ONLY: tl.constexpr):
        """``acc`` plus bit pair j of every byte times its input: +x where the code is 0b10, -x where it is 0b00.

        ``ADD_ONLY=False`` computes ``(code - 1) * x`` instead, to time a multiply against the selection.
        """
        code = ((w_bytes >> (2 * j)) & 0b11)[None, :, :]  # (1, BLOCK_N, BLOCK_KB)
        xj = xj[:, None, :]  # (BLOCK_M, 1, BLOCK_KB)
        if ADD_ONLY:
            acc += tl.where(code == 0b10, xj, tl.where(code == 0b00, -xj, 0))
        else:
            acc += (code.to(acc.dtype) - 1) * xj
        return acc

    @triton.jit
    def ternary_gemv_kernel(
        x_ptr,  # (M, K) int8 or float activations, rows contiguous
        w_ptr,  # (N, KB) uint8 packed weights, KB = ceil(K / 4)
        y_ptr,  # (M, N) output: int32 (RESCALE=False, int8 x), else any float dtype
        sx_ptr,  # (M,) float32 activation scales (read only if RESCALE)
        sw_ptr,  # (N,) float32 weight scales, one per row (read only if RESCALE)
        M,
        N,
        K,
        KB,
        ROWS,  # rows per weight scale (1 here: one scale per row)
        stride_xm,
        stride_wn,
        stride_ym,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_KB: tl.constexpr,  # bytes per row per step = BLOCK_K // 4
        INT_ACC: tl.constexpr,  # int32 sums (int8 x) or float32 sums (float x)
        ADD_ONLY: tl.constexpr,  # select +x / -x / 0 and add; False: multiply by (code - 1)
        RESCALE: tl.constexpr,  # y = sum / (s_x * s_w), else y = sum
    ):
        """y[m, n] = sum_k x[m, k] * w[n, k] (then / (s_x[m] * s_w[n])), w read from its 2-bit codes."""
        offs_m, offs_n, m_ok, n_ok = program_tile(M, N, BLOCK_M, BLOCK_N)
        # one partial sum per token, row and byte of a step: each thread adds into its own registers
        if INT_ACC:
            acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_KB), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_KB), dtype=tl.float32)
        for b0 in range(0, KB, BLOCK_KB):
            b = b0 + tl.arange(0, BLOCK_KB)  # byte i of each row holds inputs 4i .. 4i+3
            w_bytes = load_packed_bytes(w_ptr, offs_n, n_ok, b, KB, stride_wn)
            x0, x1, x2, x3 = load_planes(x_ptr, offs_m, m_ok, b, K, stride_xm, BLOCK_M, BLOCK_KB, INT_ACC)
            acc = add_plane(acc, w_bytes, x0, 0, ADD_ONLY)
            acc = add_plane(acc, w_bytes, x1, 1, ADD_ONLY)
            acc = add_plane(acc, w_bytes, x2, 2, ADD_ONLY)
            acc = add_plane(acc, w_bytes, x3, 3, ADD_ONLY)
        y = tl.sum(acc, axis=2)  # (BLOCK_M, BLOCK_N): the threads combine their partial sums once
        # no epilogue here (ACT 0, no residual): the layers that fuse one use the dp4a kernels
        store_outputs(y, y_ptr, stride_ym, offs_m, offs_n, m_ok, n_ok, sx_ptr, sw_ptr, ROWS, RESCALE,
                      y_ptr, 0, 0, False, False)  # fmt: skip

else:
    load_packed_bytes = load_planes = add_plane = ternary_gemv_kernel = None


# ---------------------------------------------------------------- checks
def _check_inputs(x: torch.Tensor, packed: torch.Tensor, k: int) -> None:
    require_triton()
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        what = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 2-D tensor (tokens M, inputs K), got {what}")
    if x.dtype not in (torch.int8, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"x must be int8 (quantized) or float32/float16/bfloat16, got {x.dtype}")
    if isinstance(k, bool) or not isinstance(k, int) or x.shape[1] != k:
        raise ValueError(f"K mismatch: x has K={x.shape[1]} inputs per token but k={k!r}")
    check_packed_on(packed, k, x.device)


def _fit(config: Config, block_m: int) -> Config:
    """Shrink BLOCK_K as tokens grow so that the accumulator tile (BLOCK_M x BLOCK_N x BLOCK_K/4) stays in registers."""
    block_n, block_k, num_warps = config
    return block_n, max(64, block_k // block_m), num_warps


# ---------------------------------------------------------------- the launcher
def ternary_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    k: int,
    s_x: torch.Tensor | None = None,
    s_w_rows: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    config: Config | None = None,
    add_only: bool = True,
) -> torch.Tensor:
    """``x @ W_t^T`` on the GPU from 2-bit packed weights: (M, k), uint8 (N, ceil(k/4)) -> (M, N).

    x int8 (values in [-127, 127]): exact int32 sums. x float32/float16/bfloat16: float32 sums.
    With ``s_x`` (M,) and ``s_w_rows`` (N,) (float32, one scale per token and per output row)
    the kernel returns ``sums / (s_x[m] * s_w_rows[n])`` instead, in ``out_dtype`` (float32 by
    default). ``config`` = (BLOCK_N, BLOCK_K, num_warps), powers of 2 (default
    :data:`DEFAULT_CONFIG`, BLOCK_K shrunk for several tokens). No data-dependent checks: it
    never synchronizes, so it can be captured in a CUDA graph.
    """
    _check_inputs(x, packed, k)
    rescale = s_x is not None or s_w_rows is not None
    m, n = x.shape[0], packed.shape[0]
    if rescale:
        if s_x is None or s_w_rows is None:
            raise ValueError("pass both s_x (M,) and s_w_rows (N,) to rescale, or neither")
        if s_x.shape != (m,) or s_w_rows.shape != (n,):
            raise ValueError(
                f"s_x must have shape ({m},) and s_w_rows ({n},), got {tuple(s_x.shape)} and {tuple(s_w_rows.shape)}"
            )
        out_dtype = out_dtype or torch.float32
        if not out_dtype.is_floating_point:
            raise ValueError(f"a rescaled output must be a float dtype, got {out_dtype}")
        s_x, s_w_rows = s_x.to(x.device, torch.float32).contiguous(), s_w_rows.to(x.device, torch.float32).contiguous()
    else:
        default = torch.int32 if x.dtype == torch.int8 else torch.float32
        if out_dtype not in (None, default):
            raise ValueError(f"without scales the output is {default} (the raw sums), got out_dtype={out_dtype}")
        out_dtype = default
    y = torch.empty(m, n, dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_()
    block_m = min(MAX_BLOCK_M, triton.next_power_of_2(m))
    block_n, block_k, num_warps = _fit(check_config(config or DEFAULT_CONFIG), block_m)
    x, packed = x.contiguous(), packed.contiguous()
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    ternary_gemv_kernel[grid](
        x, packed, y, s_x if rescale else y, s_w_rows if rescale else y,
        m, n, k, packed.shape[1], 1, x.stride(0), packed.stride(0), y.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_KB=block_k // 4,
        INT_ACC=x.dtype == torch.int8, ADD_ONLY=add_only, RESCALE=rescale,
        num_warps=num_warps,
    )  # fmt: skip
    return y


# ---------------------------------------------------------------- the layer
def triton_packed_linear(
    x: torch.Tensor, packed: torch.Tensor, s_w: torch.Tensor, k: int, config: Config | None = None
) -> torch.Tensor:
    """BitLinear inference on the GPU: float (..., k), uint8 (N, ceil(k/4)), s_w (G,) -> float (..., N).

    Same numbers as :func:`babybitnet.addonly.packed_linear` (up to float rounding of the
    rescale): ``quantize_activations`` gives int8 values and one scale per token, the kernel sums
    exactly in int32 and divides each output by ``s_x * s_w`` once. The output has x's dtype.
    Activations are quantized in float32 whatever x's dtype: for float32 x exactly as
    ``packed_linear``; for bf16 x the scale is more precise and no value rounds up to 128.
    """
    require_triton()
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (..., K), got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"K mismatch: x has shape {tuple(x.shape)} but the packed weights have k={k}")
    if not isinstance(packed, torch.Tensor) or packed.dim() != 2:
        raise ValueError(f"packed must be a 2-D uint8 tensor (N, ceil(K/4)) from pack_2bit, got {packed!r:.80}")
    n = packed.shape[0]
    scales = row_scales(s_w, n, torch.float32)  # (N,): validates the groups
    # quantize in float32: in bf16, round(x * s_x) can reach 128, which wraps to -128 in int8
    x_i, s_x = quantize_activations(x.float())  # integers in [-127, 127] as floats, (..., 1) scales
    y = ternary_matmul(
        x_i.reshape(-1, k).to(torch.int8),
        packed,
        k,
        s_x=s_x.reshape(-1),
        s_w_rows=scales,
        out_dtype=x.dtype,
        config=config,
    )
    return y.reshape(*x.shape[:-1], n)
