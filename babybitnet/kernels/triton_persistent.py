"""The one-launch BitLinear for one token as a *persistent* kernel: a few programs per SM, each quantizing x once.

At batch 1 a packed layer is a chain of short kernels, and what they cost is mostly waiting: for the
kernel before, for memory. The two-launch layer (:func:`babybitnet.kernels.triton_dp4a.dp4a_linear`)
waits twice, once per kernel; the one-launch kernel (:mod:`babybitnet.kernels.triton_bitlinear`) waits
once, but each of its hundreds of programs normalises and quantizes all of x again for its few rows. Here
the grid is only a few programs per SM (``programs_per_sm``), so that x is read and quantized a few hundred
times at most, and each program then loops over its share of the row blocks, with all of K in one step:

1. the first row block's weights are requested before the PDL wait (they are nobody's output);
2. x, all K inputs as one block in registers (K at most :data:`MAX_K`): the RMSNorm (with ``norm_weight``),
   the scale ``127 / max |x|``, the int8 words of the four planes, once;
3. for row blocks pid, pid + P, ... (P programs): the next block's weights are requested, this block's dp4a
   sums, the rescale and the epilogue (:func:`babybitnet.kernels.triton_common.finish_tile`) are done.

The numbers are those of the one-launch kernel (the same rounding steps, exact int32 sums). On the GPU the
tuner times it beside the others only when ``BABYBITNET_PERSISTENT=1`` (:func:`offered`): it has not yet
been timed on a GPU, and a candidate that fails there would cost every first generation a warning.
"""

from __future__ import annotations

import os

import torch

from babybitnet.kernels.triton_bitlinear import layer_output, plane_step, planes_of
from babybitnet.kernels.triton_common import (
    act_code,
    finish_tile,
    interpreted,
    pdl_ready,
    pdl_wait,
    tl,
    use_pdl,
)
from babybitnet.kernels.triton_common import triton as triton
from babybitnet.kernels.triton_dp4a import QUANTIZE_BLOCK, as_words, load_words, norm_eps_or_default, rms_normed
from babybitnet.quant import EPS, check_weight_groups

MAX_K = QUANTIZE_BLOCK  # inputs held in registers at once, as the quantizer's one-block path
DEFAULT_CONFIG = (8, 2, 4)  # (BLOCK_N rows per block, programs per SM, num_warps)
INTERPRETER_SMS = 3  # the "SMs" of Triton's interpreter: few programs, so that each loops over several blocks
OPT_IN_ENV = "BABYBITNET_PERSISTENT"

if triton is not None:

    @triton.jit
    def row_block_words(w_ptr, block, N, KW, stride_wn, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
        """The (BLOCK_N, BLOCK_W) words of row block ``block``: all of a row in one step (nothing past N or KW)."""
        offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
        return load_words(w_ptr + offs_n[:, None] * stride_wn, 0, KW, offs_n < N, BLOCK_W, False)

    @triton.jit
    def persistent_bitlinear_kernel(
        x_ptr,  # (1, K) float activations: one token
        w_ptr,  # (N, KW) int32: the packed 2-bit weights, 16 per word (KW = K / 16)
        y_ptr,  # (1, N) out, in x's dtype
        sw_ptr,  # (N / ROWS,) float weight scales, one per group of ROWS rows
        g_ptr,  # (K,) float: the RMSNorm's weight (read only if NORM)
        r_ptr,  # (1, N) the residual to add to the outputs (read only if RESIDUAL)
        N,
        KW,
        ROWS,
        stride_wn,
        eps,
        norm_eps,
        BLOCK_N: tl.constexpr,
        BLOCK_W: tl.constexpr,  # a power of 2 >= KW: every row in one step
        NORM: tl.constexpr,
        USE_ASM: tl.constexpr,
        ACT: tl.constexpr,
        RESIDUAL: tl.constexpr,
        USE_PDL: tl.constexpr,
    ):
        pid, programs = tl.program_id(0), tl.num_programs(0)
        K = KW * 16
        q, t = tl.arange(0, BLOCK_W), tl.arange(0, 16)
        k = 16 * q[None, :, None] + t[None, None, :]  # (1, BLOCK_W, 16): input t = 4b + j of word q
        ok = k < K
        # 1. nobody's output, so read while the kernel before still runs: the first weights and the norm's weight
        words = row_block_words(w_ptr, pid, N, KW, stride_wn, BLOCK_N, BLOCK_W)
        g = 0.0
        if NORM:
            g = tl.load(g_ptr + k, mask=ok, other=0.0)
        pdl_wait(USE_PDL)
        pdl_ready(USE_PDL)
        # 2. the token, once: (norm,) scale, the four planes of int8 words
        x = tl.load(x_ptr + k, mask=ok, other=0.0)
        v = x.to(tl.float32)
        if NORM:  # the sum of squares in float32, as torch's RMSNorm
            r = tl.math.rsqrt(tl.sum(tl.sum(v * v, axis=2), axis=1) / K + norm_eps)  # (1,)
            v = rms_normed(x, r[:, None, None], g)
        s = tl.math.div_rn(1.0, tl.maximum(tl.max(tl.max(tl.abs(v), axis=2), axis=1), eps)) * 127.0  # (1,)
        x0, x1, x2, x3 = planes_of(v, s, 1, BLOCK_W, USE_ASM)
        offs_m = tl.arange(0, 1)
        m_ok = offs_m < 1
        # 3. this program's row blocks; the next one's weights are requested before this one's sums
        for block in range(pid, tl.cdiv(N, BLOCK_N), programs):
            nxt = row_block_words(w_ptr, block + programs, N, KW, stride_wn, BLOCK_N, BLOCK_W)
            acc = tl.zeros((1, BLOCK_N, BLOCK_W), dtype=tl.int32)
            x_sum = tl.zeros((1, BLOCK_W), dtype=tl.int32)
            acc, x_sum = plane_step(words, x0, 0, acc, x_sum, USE_ASM)
            acc, x_sum = plane_step(words, x1, 1, acc, x_sum, USE_ASM)
            acc, x_sum = plane_step(words, x2, 2, acc, x_sum, USE_ASM)
            acc, x_sum = plane_step(words, x3, 3, acc, x_sum, USE_ASM)
            y = tl.sum(acc, axis=2) - tl.sum(x_sum, axis=1)[:, None]  # codes are w + 1: subtract sum x
            offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = offs_n < N
            s_w = tl.load(sw_ptr + offs_n // ROWS, mask=n_ok, other=1.0).to(tl.float32)
            y = y.to(tl.float32) / (s[:, None] * s_w[None, :])
            finish_tile(y, y_ptr, 0, offs_m, offs_n, m_ok, n_ok, r_ptr, 0, ACT, RESIDUAL, USE_ASM)
            words = nxt

else:
    row_block_words = persistent_bitlinear_kernel = None


def offered(k: int) -> bool:
    """Whether the tuner should time this kernel for a layer of ``k`` inputs: opted in, and x fits registers."""
    return os.environ.get(OPT_IN_ENV, "") not in ("", "0") and 0 < k <= MAX_K and k % 16 == 0


def check_persistent_config(config: tuple[int, int, int]) -> tuple[int, int, int]:
    """(BLOCK_N, programs per SM, num_warps): BLOCK_N and num_warps powers of 2, at least one program per SM."""
    block_n, per_sm, num_warps = config
    for name, v in (("BLOCK_N", block_n), ("num_warps", num_warps)):
        if not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of 2, got {v!r} in config {config}")
    if not isinstance(per_sm, int) or per_sm < 1:
        raise ValueError(f"programs per SM must be a positive int, got {per_sm!r} in config {config}")
    return config


def persistent_bitlinear(
    x: torch.Tensor,
    packed: torch.Tensor,
    s_w: torch.Tensor,
    k: int,
    config: tuple[int, int, int] | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float | None = None,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """BitLinear for one token in one persistent launch: float (1, k), uint8 (N, k/4), s_w (G,) -> (1, N).

    The arguments and numbers of :func:`babybitnet.kernels.triton_bitlinear.bitlinear_dp4a` (the RMSNorm
    ``norm_weight``, the epilogue ``residual + act(y)``), for M = 1 and k <= :data:`MAX_K`. ``config`` =
    (BLOCK_N, programs per SM, num_warps). Never synchronizes: a CUDA graph can capture it.
    """
    y, done = layer_output(x, packed, k, norm_weight, activation, residual, 1, "persistent_bitlinear")
    if done:
        return y
    if k > MAX_K:
        raise ValueError(f"persistent_bitlinear holds all K inputs in registers: K <= {MAX_K}, got {k}")
    block_n, per_sm, num_warps = check_persistent_config(config or DEFAULT_CONFIG)
    n, kw = packed.shape[0], k // 16
    sms = INTERPRETER_SMS if interpreted() else torch.cuda.get_device_properties(x.device).multi_processor_count
    programs = min(triton.cdiv(n, block_n), per_sm * sms)
    norm_eps = norm_eps_or_default(norm_eps, x.dtype)
    residual = None if residual is None else residual.contiguous()
    rows = check_weight_groups(s_w, n)
    x, w = x.contiguous(), as_words(packed)
    pdl = use_pdl(x.device)
    persistent_bitlinear_kernel[(programs,)](
        x, w, y, s_w.reshape(-1).to(x.device), x if norm_weight is None else norm_weight.contiguous(),
        y if residual is None else residual, n, kw, rows, w.stride(0), EPS, norm_eps,
        BLOCK_N=block_n, BLOCK_W=triton.next_power_of_2(kw), NORM=norm_weight is not None,
        USE_ASM=not interpreted(), ACT=act_code(activation), RESIDUAL=residual is not None, USE_PDL=pdl,
        num_warps=num_warps, **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip
    return y
