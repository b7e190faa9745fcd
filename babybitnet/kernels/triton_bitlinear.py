"""A whole BitLinear at decode in ONE kernel: quantize the activations, the dp4a GEMV, the rescale.

:func:`babybitnet.kernels.triton_dp4a.dp4a_linear` takes two launches per layer: one kernel turns
the float activations into int8 words and a scale per token, the GEMV kernel reads them. At batch
1 both kernels last a few microseconds and the second waits for the first, so a layer costs two
kernels' latency. Here every program of the GEMV quantizes the activations itself:

1. **the scale**: one pass over its tokens' K inputs gives ``s_x = 127 / max |x|`` (x is a few
   kilobytes, read from the L2 cache by every program; the weights are read once, from memory);
2. **the loop**: each step loads BLOCK_W words of packed weights (16 weights each) and the 16 *
   BLOCK_W matching inputs, rounds ``x * s_x`` to int8, packs four of them per int32 word in the
   order of the codes (the "planes" of ``prepare_activations``) and feeds ``dp4a``;
3. **the store**: ``(sum (w + 1) x - sum x) / (s_x * s_w)``, in the output's dtype.

The numbers are those of ``dp4a_linear`` (and of ``quantize_activations(x.float())``): the same
rounding (``cvt.rni`` on the GPU), the same IEEE reciprocal, exact int32 sums. The redundant
quantization costs arithmetic that a latency-bound GEMV has to spare.

K must be a multiple of 16 (whole words), as for the dp4a kernel; at most 16 tokens per program.
"""

from __future__ import annotations

import torch

from babybitnet.kernels.triton_common import Config, check_config, check_packed_on, interpreted, require_triton, tl
from babybitnet.kernels.triton_common import triton as triton
from babybitnet.kernels.triton_dp4a import as_words, check_words_k, dp4a, load_words, round_to_int
from babybitnet.quant import EPS, row_scales

MAX_BLOCK_M = 16  # tokens per program: past that, use the two-kernel path or a GEMM
DEFAULT_CONFIG = (8, 32, 2)  # (BLOCK_N rows, BLOCK_W words per step, num_warps)
CONFIGS = ((4, 32, 1), (8, 32, 2), (8, 64, 2), (16, 32, 4), (16, 64, 4), (32, 32, 4))

if triton is not None:

    @triton.jit
    def quantized_planes(x_rows, q0, K, s, m_ok, j, BLOCK_W: tl.constexpr, USE_ASM: tl.constexpr):
        """Plane j of one step as int32 words (BLOCK_M, BLOCK_W): byte b of word q is round(x[16q + 4b + j] * s)."""
        q = q0 + tl.arange(0, BLOCK_W)
        b = tl.arange(0, 4)
        k = 16 * q[None, :, None] + 4 * b[None, None, :] + j  # (1, BLOCK_W, 4)
        v = tl.load(x_rows[:, :, None] + k, mask=m_ok[:, None, None] & (k < K), other=0.0).to(tl.float32)
        byte = round_to_int(tl.minimum(tl.maximum(v * s[:, None, None], -127.0), 127.0), USE_ASM) & 0xFF
        return tl.sum(byte << (8 * b)[None, None, :], axis=2)  # the 4 bytes never overlap: sum = or

    @triton.jit
    def bitlinear_dp4a_kernel(
        x_ptr,  # (M, K) float activations
        w_ptr,  # (N, KW) int32: the packed 2-bit weights, 16 per word (KW = K / 16)
        y_ptr,  # (M, N) float output
        sw_ptr,  # (N,) float32 weight scales, one per row
        M,
        N,
        KW,
        stride_xm,
        stride_wn,
        stride_ym,
        eps,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_W: tl.constexpr,
        BLOCK_K: tl.constexpr,  # inputs per step of the scale's pass
        USE_ASM: tl.constexpr,
        EVEN: tl.constexpr,  # N % BLOCK_N == 0 and KW % BLOCK_W == 0
    ):
        offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = offs_m < M, offs_n < N
        K = KW * 16
        x_rows = x_ptr + offs_m[:, None] * stride_xm  # (BLOCK_M, 1)
        # 1. the scale of each token: 127 / max |x|, as torch computes it (IEEE reciprocal, then the product)
        amax = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & (k < K)[None, :], other=0.0)
            amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
        s = tl.math.div_rn(1.0, tl.maximum(tl.max(amax, axis=1), eps)) * 127.0  # (BLOCK_M,)
        # 2. the GEMV, quantizing each step's inputs on the fly
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_W), dtype=tl.int32)
        x_sum = tl.zeros((BLOCK_M, BLOCK_W), dtype=tl.int32)
        w_rows = w_ptr + offs_n[:, None] * stride_wn
        for q0 in range(0, KW, BLOCK_W):
            words = load_words(w_rows, q0, KW, n_ok, BLOCK_W, EVEN)
            for j in tl.static_range(4):
                xj = quantized_planes(x_rows, q0, K, s, m_ok, j, BLOCK_W, USE_ASM)
                codes = (words >> (2 * j)) & 0x03030303
                acc = dp4a(codes[None, :, :], xj[:, None, :], acc, USE_ASM)
                x_sum = dp4a(0x01010101, xj, x_sum, USE_ASM)
        # 3. codes are w + 1: subtract sum x; then one rescale per output
        y = tl.sum(acc, axis=2) - tl.sum(x_sum, axis=1)[:, None]
        s_w = tl.load(sw_ptr + offs_n, mask=n_ok, other=1.0)
        y = y.to(tl.float32) / (s[:, None] * s_w[None, :])
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y, mask=m_ok[:, None] & n_ok[None, :])

else:
    quantized_planes = bitlinear_dp4a_kernel = None


def bitlinear_dp4a(
    x: torch.Tensor, packed: torch.Tensor, s_w: torch.Tensor, k: int, config: Config | None = None
) -> torch.Tensor:
    """BitLinear inference in one launch: float (M, k) with M <= 16, uint8 (N, k/4), s_w (G,) -> (M, N) in x's dtype.

    The same numbers as :func:`babybitnet.kernels.triton_dp4a.dp4a_linear` on the same inputs.
    No data-dependent checks: it never synchronizes, so a CUDA graph can capture it.
    """
    require_triton()
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point() or x.shape[1] != k:
        raise ValueError(
            f"x must be a 2-D float tensor (M, K={k}), got {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}"
        )
    m = x.shape[0]
    if m > MAX_BLOCK_M:
        raise ValueError(f"bitlinear_dp4a takes at most {MAX_BLOCK_M} tokens (decode), got {m}; use dp4a_linear")
    check_words_k(k)
    check_packed_on(packed, k, x.device)
    n = packed.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_()
    block_n, block_w, num_warps = check_config(config or DEFAULT_CONFIG)
    block_m = triton.next_power_of_2(m)
    x, w = x.contiguous(), as_words(packed)
    scales = row_scales(s_w, n, torch.float32).to(x.device)
    kw = k // 16
    bitlinear_dp4a_kernel[(triton.cdiv(n, block_n), 1)](
        x, w, y, scales, m, n, kw, x.stride(0), w.stride(0), y.stride(0), EPS,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_K=min(1024, triton.next_power_of_2(k)),
        USE_ASM=not interpreted(), EVEN=n % block_n == 0 and kw % block_w == 0,
        num_warps=num_warps,
    )  # fmt: skip
    return y
