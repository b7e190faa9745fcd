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

With ``norm_weight`` the kernel also applies the RMSNorm that comes before the layer (BitLinear's
own with ``bitlinear_norm``, or the block's pre-norm, which :func:`babybitnet.decode.fold_prenorms`
moves into the layer): one more pass over x gives each token's ``1 / rms``, and every input is
normalised where it is read. A norm then costs no kernel of its own, which at decode is one launch
(a few microseconds) per layer that babyGPT still pays. So do the activation after a layer and the
residual add after the block's last layers (the *epilogue*, ``activation`` and ``residual``): they are
done to the outputs in the store (:func:`babybitnet.kernels.triton_common.finish_tile`).

K must be a multiple of 16 (whole words), as for the dp4a kernel; at most 16 tokens per program.
"""

from __future__ import annotations

import torch

from babybitnet.kernels.triton_common import (
    Config,
    act_code,
    check_config,
    check_packed_on,
    check_residual,
    epilogue,
    finish_tile,
    interpreted,
    pdl_ready,
    pdl_wait,
    require_triton,
    tl,
    use_pdl,
)
from babybitnet.kernels.triton_common import triton as triton
from babybitnet.kernels.triton_dp4a import (
    as_words,
    check_norm_weight,
    check_words_k,
    dp4a,
    load_inputs,
    load_words,
    norm_eps_or_default,
    rms_normed,
    round_to_int,
)
from babybitnet.quant import EPS, check_weight_groups

MAX_BLOCK_M = 16  # tokens per program: past that, use the two-kernel path or a GEMM
SCALE_INPUTS_PER_WARP = 2048  # the scale's pass holds up to this many inputs (of all tokens) per warp at once
DEFAULT_CONFIG = (16, 32, 4)  # (BLOCK_N rows, BLOCK_W words per step, num_warps)
CONFIGS = (
    (4, 32, 1), (8, 32, 2), (8, 64, 2), (16, 32, 4), (16, 64, 4), (32, 32, 4), (8, 128, 4), (8, 256, 8),
    (4, 256, 4), (16, 256, 8), (16, 128, 4), (32, 64, 8), (32, 32, 8),
)  # fmt: skip

if triton is not None:

    @triton.jit
    def quantized_planes(
        x_rows, q0, K, s, m_ok, g_ptr, r, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, NORM: tl.constexpr,
        USE_ASM: tl.constexpr,
    ):  # fmt: skip
        """The 4 planes of one step as int32 words, each (BLOCK_M, BLOCK_W): byte b of word q of plane j is
        round(x[16q + 4b + j] * s). The step's 16 * BLOCK_W inputs are read as ONE contiguous block and
        regrouped in registers: read plane by plane (every 4th input), the same bytes cost four strided
        reads, and the profile showed the cache busier with them than memory with the weights."""
        q = q0 + tl.arange(0, BLOCK_W)
        t = tl.arange(0, 16)
        k = 16 * q[None, :, None] + t[None, None, :]  # (1, BLOCK_W, 16): input t = 4b + j of word q
        v = load_inputs(x_rows[:, :, None], k, m_ok[:, None, None] & (k < K), g_ptr, r[:, None, None], NORM)
        return planes_of(v, s, BLOCK_M, BLOCK_W, USE_ASM)

    @triton.jit
    def planes_of(v, s, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, USE_ASM: tl.constexpr):
        """(BLOCK_M, BLOCK_W, 16) float inputs (t = 4b + j of word q) and their (BLOCK_M,) scales -> the 4 planes
        as int32 words, each (BLOCK_M, BLOCK_W): byte b of word q of plane j is round(v[..., q, 4b + j] * s)."""
        byte = round_to_int(tl.minimum(tl.maximum(v * s[:, None, None], -127.0), 127.0), USE_ASM) & 0xFF
        byte = tl.reshape(byte, (BLOCK_M, BLOCK_W, 4, 4))  # [..., b, j]
        b = tl.arange(0, 4)
        words = tl.sum(byte << (8 * b)[None, None, :, None], axis=2)  # (BLOCK_M, BLOCK_W, 4 planes j); sum = or
        even, odd = tl.split(tl.reshape(words, (BLOCK_M, BLOCK_W, 2, 2)))  # j = 2 j1 + j0: split on j0
        x0, x2 = tl.split(even)
        x1, x3 = tl.split(odd)
        return x0, x1, x2, x3

    @triton.jit
    def plane_step(words, xj, j: tl.constexpr, acc, x_sum, USE_ASM: tl.constexpr):
        """acc += codes of bit pair j * xj, x_sum += xj: one plane of one step."""
        codes = (words >> (2 * j)) & 0x03030303
        acc = dp4a(codes[None, :, :], xj[:, None, :], acc, USE_ASM)
        x_sum = dp4a(0x01010101, xj, x_sum, USE_ASM)
        return acc, x_sum

    @triton.jit
    def quantized_step(
        words, x_rows, q0, K, s, m_ok, acc, x_sum, g_ptr, r,
        BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, NORM: tl.constexpr, USE_ASM: tl.constexpr,
    ):  # fmt: skip
        """acc += codes * x_i and x_sum += x_i for one step, x_i quantized from the float inputs here."""
        x0, x1, x2, x3 = quantized_planes(x_rows, q0, K, s, m_ok, g_ptr, r, BLOCK_M, BLOCK_W, NORM, USE_ASM)
        acc, x_sum = plane_step(words, x0, 0, acc, x_sum, USE_ASM)
        acc, x_sum = plane_step(words, x1, 1, acc, x_sum, USE_ASM)
        acc, x_sum = plane_step(words, x2, 2, acc, x_sum, USE_ASM)
        acc, x_sum = plane_step(words, x3, 3, acc, x_sum, USE_ASM)
        return acc, x_sum

    @triton.jit
    def bitlinear_dp4a_kernel(
        x_ptr,  # (M, K) float activations
        w_ptr,  # (N, KW) int32: the packed 2-bit weights, 16 per word (KW = K / 16)
        y_ptr,  # (M, N) float output
        sw_ptr,  # (N / ROWS,) float weight scales, one per group of ROWS rows
        g_ptr,  # (K,) float: the RMSNorm's weight (read only if NORM)
        r_ptr,  # (M, N) the residual to add to the outputs (read only if RESIDUAL)
        M,
        N,
        KW,
        ROWS,
        stride_xm,
        stride_wn,
        stride_ym,
        stride_rm,
        eps,
        norm_eps,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_W: tl.constexpr,
        BLOCK_K: tl.constexpr,  # inputs per read of the scale's pass (all of x where registers allow)
        NORM: tl.constexpr,  # an RMSNorm first (the layer's own, or the block's pre-norm folded in)
        USE_ASM: tl.constexpr,
        EVEN: tl.constexpr,  # N % BLOCK_N == 0 and KW % BLOCK_W == 0
        ACT: tl.constexpr,  # the epilogue: the activation after the layer (EPILOGUE_ACTS) ...
        RESIDUAL: tl.constexpr,  # ... and the residual stream to add
        USE_PDL: tl.constexpr,  # launched with programmatic dependent launch (triton_common.use_pdl)
    ):
        offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = offs_m < M, offs_n < N
        K = KW * 16
        x_rows = x_ptr + offs_m[:, None] * stride_xm  # (BLOCK_M, 1)
        w_rows = w_ptr + offs_n[:, None] * stride_wn
        # The first step's weights are requested now, so they arrive from memory while the scale is
        # worked out: at decode the kernel is a chain of waits, and this takes one wait off it.
        last = ((KW - 1) // BLOCK_W) * BLOCK_W  # where the last step starts
        words = load_words(w_rows, 0, KW, n_ok, BLOCK_W, EVEN)
        # With PDL this kernel may have started before the previous one ended: the weights are nobody's
        # output, so their first read above may overlap it; x and the residual are read after the wait
        pdl_wait(USE_PDL)
        pdl_ready(USE_PDL)
        # 0-1. the scale of each token: 127 / max |x| (with NORM, of the normalised inputs, with
        # r = 1 / sqrt(mean(x^2) + norm_eps) as torch's RMSNorm, float32 sums). The first BLOCK_K inputs are
        # read once and kept in registers: where they are all of x (BLOCK_K >= K, as the launcher picks
        # it), the scale costs ONE read of x from the cache, issued with the weights' first read; a loop of
        # reads would wait for each in turn (at 2560 inputs, six waits of a few hundred ns with the norm).
        k = tl.arange(0, BLOCK_K)
        x0 = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & (k < K)[None, :], other=0.0)
        v0 = x0.to(tl.float32)
        r = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
        if NORM:
            g0 = tl.load(g_ptr + k, mask=k < K, other=0.0)
            sumsq = tl.sum(v0 * v0, axis=1)
            for k0 in range(BLOCK_K, K, BLOCK_K):  # the rest of x, if any
                kk = k0 + tl.arange(0, BLOCK_K)
                v = load_inputs(x_rows, kk[None, :], m_ok[:, None] & (kk < K)[None, :], g_ptr, r[:, None], False)
                sumsq += tl.sum(v * v, axis=1)
            r = tl.math.rsqrt(sumsq / K + norm_eps)
            v0 = rms_normed(x0, r[:, None], g0[None, :])
        amax = tl.max(tl.abs(v0), axis=1)
        for k0 in range(BLOCK_K, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            v = load_inputs(x_rows, kk[None, :], m_ok[:, None] & (kk < K)[None, :], g_ptr, r[:, None], NORM)
            amax = tl.maximum(amax, tl.max(tl.abs(v), axis=1))
        # as torch computes 127 / t: an IEEE reciprocal, then the product
        s = tl.math.div_rn(1.0, tl.maximum(amax, eps)) * 127.0  # (BLOCK_M,)
        # 2. the GEMV, quantizing each step's inputs on the fly; the next step's weights are requested
        # before this step's arithmetic (as in the dp4a kernel), and the last step comes after the loop
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_W), dtype=tl.int32)
        x_sum = tl.zeros((BLOCK_M, BLOCK_W), dtype=tl.int32)
        for q0 in range(0, last, BLOCK_W):
            nxt = load_words(w_rows, q0 + BLOCK_W, KW, n_ok, BLOCK_W, EVEN)
            acc, x_sum = quantized_step(
                words, x_rows, q0, K, s, m_ok, acc, x_sum, g_ptr, r, BLOCK_M, BLOCK_W, NORM, USE_ASM
            )
            words = nxt
        acc, x_sum = quantized_step(
            words, x_rows, last, K, s, m_ok, acc, x_sum, g_ptr, r, BLOCK_M, BLOCK_W, NORM, USE_ASM
        )
        # 3. codes are w + 1: subtract sum x; then one rescale per output, and the epilogue
        y = tl.sum(acc, axis=2) - tl.sum(x_sum, axis=1)[:, None]
        s_w = tl.load(sw_ptr + offs_n // ROWS, mask=n_ok, other=1.0).to(tl.float32)
        y = y.to(tl.float32) / (s[:, None] * s_w[None, :])
        finish_tile(y, y_ptr, stride_ym, offs_m, offs_n, m_ok, n_ok, r_ptr, stride_rm, ACT, RESIDUAL, USE_ASM)

else:
    quantized_planes = planes_of = plane_step = quantized_step = bitlinear_dp4a_kernel = None


def scale_block(k: int, block_m: int, num_warps: int) -> int:
    """Inputs per read of the scale's pass: all K where they fit (SCALE_INPUTS_PER_WARP per warp, for all tokens)."""
    return min(max(16, SCALE_INPUTS_PER_WARP * num_warps // block_m), triton.next_power_of_2(k))


def layer_output(
    x: torch.Tensor,
    packed: torch.Tensor,
    k: int,
    norm_weight: torch.Tensor | None,
    activation: str,
    residual: torch.Tensor | None,
) -> tuple[torch.Tensor, bool]:
    """Check the arguments of :func:`bitlinear_dp4a` (at most :data:`MAX_BLOCK_M` tokens) and return its empty
    output (M, N) in x's dtype, and whether that is already the answer (no tokens, no rows, or K = 0)."""
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
    check_norm_weight(norm_weight, k, x.device)
    y = torch.empty(m, packed.shape[0], dtype=x.dtype, device=x.device)
    act_code(activation)  # a clear error for an unknown name
    check_residual(residual, y)
    if m == 0 or y.shape[1] == 0:
        return y, True
    if k == 0:
        return epilogue(y.zero_(), activation, residual), True
    return y, False


def bitlinear_dp4a(
    x: torch.Tensor,
    packed: torch.Tensor,
    s_w: torch.Tensor,
    k: int,
    config: Config | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float | None = None,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """BitLinear inference in one launch: float (M, k) with M <= 16, uint8 (N, k/4), s_w (G,) -> (M, N) in x's dtype.

    The same numbers as :func:`babybitnet.kernels.triton_dp4a.dp4a_linear` on the same inputs.
    ``norm_weight`` (k,): first the RMSNorm ``F.rms_norm(x, (k,), norm_weight, norm_eps)`` (None:
    torch's default eps for x's dtype), inside the same kernel, so that a norm before a layer costs no
    launch of its own. Its numbers are torch's up to the float rounding of the norm (the order of
    its sum of squares), which can move an input across a rounding boundary of the 8-bit quantizer.
    The epilogue: ``residual + act(y)`` with ``activation`` one of ``EPILOGUE_ACTS`` and ``residual``
    (M, N) in x's dtype (:func:`babybitnet.kernels.triton_common.epilogue`'s numbers), in the store:
    the activation and the residual add after a layer cost no kernels of their own either.
    No data-dependent checks: it never synchronizes, so a CUDA graph can capture it.
    """
    y, done = layer_output(x, packed, k, norm_weight, activation, residual)
    if done:
        return y
    m, n = y.shape
    norm_eps = norm_eps_or_default(norm_eps, x.dtype)
    act = act_code(activation)
    residual = None if residual is None else residual.contiguous()  # the kernel reads rows of unit stride
    block_n, block_w, num_warps = check_config(config or DEFAULT_CONFIG)
    block_m = triton.next_power_of_2(m)
    x, w = x.contiguous(), as_words(packed)
    rows = check_weight_groups(s_w, n)  # s_w read as it is (G,), in its dtype: no per-call copy (two kernels)
    kw = k // 16
    pdl = use_pdl(x.device)
    bitlinear_dp4a_kernel[(triton.cdiv(n, block_n), 1)](
        x, w, y, s_w.reshape(-1).to(x.device), x if norm_weight is None else norm_weight.contiguous(),
        y if residual is None else residual,
        m, n, kw, rows, x.stride(0), w.stride(0), y.stride(0), 0 if residual is None else residual.stride(0),
        EPS, norm_eps,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_K=scale_block(k, block_m, num_warps),
        NORM=norm_weight is not None, USE_ASM=not interpreted(), EVEN=n % block_n == 0 and kw % block_w == 0,
        ACT=act, RESIDUAL=residual is not None, USE_PDL=pdl, num_warps=num_warps,
        **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip
    return y
