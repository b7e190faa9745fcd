"""The fast ternary GEMV: four weights per instruction with ``dp4a``, and a fused activation quantizer.

:mod:`babybitnet.kernels.triton_gemv` decodes every 2-bit weight on its own: a shift, a mask, a
select and an add per weight. At batch 1 the H100 runs out of instructions before it runs
out of memory bandwidth (the profile and the timings are in lesson 13), so that kernel
stays far from the 8x that 2-bit weights allow. This kernel does the same sum with about
one instruction per **four** weights, on the same packed bytes (the package's 2-bit format:
byte ``i`` of a row holds inputs ``4i .. 4i+3`` at bit pairs 0..3, code = weight + 1).

**The trick.** Read the packed row 4 bytes at a time, as one int32 *word* that holds 16
weights (inputs ``16q .. 16q+15``). Shift the word right by ``2j`` and keep the low 2 bits
of every byte (``& 0x03030303``): that is ONE shift and ONE and for four codes, one per byte::

    (word >> 2j) & 0x03030303  ->  bytes  c[16q + j], c[16q + 4 + j], c[16q + 8 + j], c[16q + 12 + j]

The GPU has an instruction that multiplies four byte pairs and adds them to a 32-bit sum:
``dp4a(a, b, acc) = acc + a0*b0 + a1*b1 + a2*b2 + a3*b3``. Give it the four codes as ``a`` and
the four matching int8 activations as ``b``, and four weights cost one instruction. The
activations must sit in the same order, so they are stored as 4 *planes* of words
(:func:`prepare_activations`): word ``q`` of plane ``j`` holds ``x[16q + j], x[16q + 4 + j], ...``.

**Keeping memory busy.** A GEMV has almost no arithmetic left once decoding is cheap, so the
time is memory latency: each step of the loop asks for its weights and waits about a
microsecond for them. The kernel asks for the *next* step's weights before it works on the
current ones (a prefetch, software pipelining by hand), so two steps of loads are in flight.

**Codes, not weights.** The codes are ``w + 1`` in {0, 1, 2}, so ``dp4a`` sums ``(w + 1) * x``;
``sum(w * x) = sum((w + 1) * x) - sum(x)``, and ``sum(x)`` is one more ``dp4a`` per word of
activations with ``a = 0x01010101``, shared by every row of the block. The integer sums are
exact, as in :mod:`babybitnet.kernels.triton_gemv`; one multiplication per output rescales them.

Is it still "add-only"? ``dp4a`` is a multiply-accumulate instruction; with codes in {0, 1, 2}
its multiplications are by 0, 1 or 2, which a chip could do with wiring alone. What matters on
a GPU is that the weights are 8x smaller than bf16 and cost few instructions to decode.

**The layer** (:func:`dp4a_linear`): :func:`quantize_words_kernel` turns float activations into
the transposed int8 words and one scale per token (one program per token, two passes over
the row), then the GEMV kernel rescales as it stores: two kernel launches, nothing in torch.

In Triton's interpreter (``TRITON_INTERPRET=1``, for the CPU tests) there is no inline PTX, so
:func:`dp4a` falls back to the same sum written with shifts and multiplications.
K must be a multiple of 16 (whole words; every layer of the presets is);
:func:`babybitnet.kernels.triton_gemv.ternary_matmul` handles any K.
"""

from __future__ import annotations

import torch

from babybitnet.kernels.triton_common import (
    Config,
    check_config,
    check_epilogue,
    check_packed_on,
    epilogue,
    interpreted,
    pdl_ready,
    pdl_wait,
    program_tile,
    require_triton,
    store_outputs,
    tl,
    triton,
    use_pdl,
)
from babybitnet.quant import EPS, check_weight_groups

MAX_BLOCK_M = 16  # tokens per program
QUANTIZE_BLOCK = 16384  # inputs per block of the quantizer's passes: one block holds a row of up to this many
DEFAULT_CONFIG = (8, 64, 2)  # (BLOCK_N rows, BLOCK_W words of 16 weights per step, num_warps) for one token
CONFIGS = (  # what bench_kernel tries per shape: small tiles and many programs suit batch 1, wider ones batch 8
    (2, 64, 1), (4, 64, 2), (8, 32, 1), (8, 64, 2), (4, 128, 4), (8, 128, 4),
    (16, 64, 4), (16, 128, 8), (32, 64, 4), (32, 128, 4), (16, 256, 8), (16, 512, 4),
)  # fmt: skip

if triton is not None:

    @triton.jit
    def dp4a(a, b, acc, USE_ASM: tl.constexpr):
        """``acc + sum_i a_i * b_i`` over the 4 bytes of int32 words: ``a`` unsigned, ``b`` signed."""
        if USE_ASM:  # one instruction on the GPU
            out = tl.inline_asm_elementwise(
                "dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, acc], dtype=tl.int32, is_pure=True, pack=1
            )
        else:  # the interpreter: byte i of a (0..255) times byte i of b, sign-extended by the shifts
            out = acc
            for i in tl.static_range(4):
                out += ((a >> (8 * i)) & 0xFF) * ((b << (24 - 8 * i)) >> 24)
        return out

    @triton.jit
    def round_to_int(v, USE_ASM: tl.constexpr):
        """float32 -> int32, rounding half to even like torch.round."""
        if USE_ASM:  # the GPU's own conversion; the float trick below can be optimized away there
            out = tl.inline_asm_elementwise(
                "cvt.rni.s32.f32 $0, $1;", "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1
            )
        else:  # adding and taking away 1.5 * 2**23 rounds a float32 |v| < 2**22 to the nearest, ties to even
            out = ((v + 12582912.0) - 12582912.0).to(tl.int32)
        return out

    @triton.jit
    def load_words(w_rows, q0, KW, n_ok, BLOCK_W: tl.constexpr, EVEN: tl.constexpr):
        """The (BLOCK_N, BLOCK_W) int32 words of one step. Weights are read once, so the
        caches are told to drop them first ("evict_first"); EVEN needs no masks."""
        q = q0 + tl.arange(0, BLOCK_W)
        if EVEN:
            words = tl.load(w_rows + q[None, :], eviction_policy="evict_first")
        else:
            words = tl.load(
                w_rows + q[None, :], mask=n_ok[:, None] & (q < KW)[None, :], other=0, eviction_policy="evict_first"
            )
        return words

    @triton.jit
    def rms_normed(x, r, g):
        """The RMSNorm of inputs ``x`` (in their own dtype): ``(x * r) * g`` in float32 (r = 1 / rms of the
        token, g the norm's weight), rounded to x's dtype as torch's norm returns it, as float32."""
        return ((x.to(tl.float32) * r) * g.to(tl.float32)).to(x.dtype).to(tl.float32)

    @triton.jit
    def load_inputs(x_rows, k, ok, g_ptr, r, NORM: tl.constexpr):
        """The layer's inputs at positions ``k`` as float32: x itself, or with NORM :func:`rms_normed` x."""
        x = tl.load(x_rows + k, mask=ok, other=0.0)
        if NORM:
            return rms_normed(x, r, tl.load(g_ptr + k, mask=ok, other=0.0))
        return x.to(tl.float32)

    @triton.jit
    def dp4a_step(
        words, x_rows, q0, KW, m_ok, acc, x_sum, BLOCK_W: tl.constexpr, EVEN: tl.constexpr, USE_ASM: tl.constexpr
    ):
        """acc += codes * x and x_sum += x for one step of BLOCK_W words (16 * BLOCK_W inputs)."""
        q = q0 + tl.arange(0, BLOCK_W)
        for j in tl.static_range(4):
            # plane j of the activations: the partners of bit pair j (missing inputs read as 0)
            if EVEN:
                xj = tl.load(x_rows + j * KW + q[None, :], mask=m_ok[:, None], other=0)
            else:
                xj = tl.load(x_rows + j * KW + q[None, :], mask=m_ok[:, None] & (q < KW)[None, :], other=0)
            codes = (words >> (2 * j)) & 0x03030303  # 4 codes, one per byte: one shift, one and
            acc = dp4a(codes[None, :, :], xj[:, None, :], acc, USE_ASM)
            x_sum = dp4a(0x01010101, xj, x_sum, USE_ASM)
        return acc, x_sum

    @triton.jit
    def ternary_gemv_dp4a_kernel(
        xw_ptr,  # (M, 4 * KW) int32: the int8 activations as 4 planes of KW words (prepare_activations)
        w_ptr,  # (N, KW) int32: the packed 2-bit weights read 16 at a time (KW = K / 16)
        y_ptr,  # (M, N) output: int32 sums (RESCALE=False), else float
        sx_ptr,  # (M,) float32 activation scales (read only if RESCALE)
        sw_ptr,  # (N / ROWS,) float weight scales, one per group of ROWS rows (read only if RESCALE)
        r_ptr,  # (M, N) the residual to add to the outputs (read only if RESIDUAL)
        M,
        N,
        KW,
        ROWS,
        stride_xm,
        stride_wn,
        stride_ym,
        stride_rm,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_W: tl.constexpr,  # words (16 weights each) per row per step
        USE_ASM: tl.constexpr,
        RESCALE: tl.constexpr,
        EVEN: tl.constexpr,  # N % BLOCK_N == 0 and KW % BLOCK_W == 0: no masks needed
        ACT: tl.constexpr,  # the epilogue (only with RESCALE): an activation (EPILOGUE_ACTS) ...
        RESIDUAL: tl.constexpr,  # ... and a residual to add
        USE_PDL: tl.constexpr,  # launched with programmatic dependent launch (triton_common.use_pdl)
    ):
        """y[m, n] = sum_k x[m, k] * w[n, k] (then / (s_x[m] * s_w[n])), 16 weights per loaded word."""
        offs_m, offs_n, m_ok, n_ok = program_tile(M, N, BLOCK_M, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_W), dtype=tl.int32)  # sum of code * x, per thread
        x_sum = tl.zeros((BLOCK_M, BLOCK_W), dtype=tl.int32)  # sum of x, to turn codes into weights
        w_rows = w_ptr + offs_n[:, None] * stride_wn
        x_rows = xw_ptr + offs_m[:, None] * stride_xm
        # Software pipelining by hand: the next step's weights are requested before this step's
        # arithmetic, so two steps of loads are in flight (else every step waits for memory).
        # The last step is done after the loop, so nothing is ever loaded past the end.
        last = ((KW - 1) // BLOCK_W) * BLOCK_W  # where the last step starts
        words = load_words(w_rows, 0, KW, n_ok, BLOCK_W, EVEN)
        # with PDL the first weights are requested while the quantizer kernel before this one still runs
        pdl_wait(USE_PDL)
        pdl_ready(USE_PDL)
        for q0 in range(0, last, BLOCK_W):
            nxt = load_words(w_rows, q0 + BLOCK_W, KW, n_ok, BLOCK_W, EVEN)
            acc, x_sum = dp4a_step(words, x_rows, q0, KW, m_ok, acc, x_sum, BLOCK_W, EVEN, USE_ASM)
            words = nxt
        acc, x_sum = dp4a_step(words, x_rows, last, KW, m_ok, acc, x_sum, BLOCK_W, EVEN, USE_ASM)
        y = tl.sum(acc, axis=2) - tl.sum(x_sum, axis=1)[:, None]  # sum (w + 1) x - sum x = sum w x
        store_outputs(y, y_ptr, stride_ym, offs_m, offs_n, m_ok, n_ok, sx_ptr, sw_ptr, ROWS, RESCALE,
                      r_ptr, stride_rm, ACT, RESIDUAL, USE_ASM)  # fmt: skip

    @triton.jit
    def quantize_words_kernel(
        x_ptr,  # (M, K) float activations
        g_ptr,  # (K,) float: the RMSNorm's weight (read only if NORM)
        xw_ptr,  # (M, K / 4) int32 out: the int8 values as words, transposed per 16
        sx_ptr,  # (M,) float32 out: the scales 127 / max |x|
        K,
        stride_xm,
        eps,
        norm_eps,
        BLOCK_W: tl.constexpr,  # words (16 inputs) per block of the passes: all of the row where it fits
        NORM: tl.constexpr,  # an RMSNorm first (the layer's own, or the block's pre-norm folded in)
        USE_ASM: tl.constexpr,
        USE_PDL: tl.constexpr,
    ):
        """One token per program: (with NORM ``x * r * g``, r = 1 / rms(x)), s = 127 / max|x|, x_i = round(x * s),
        stored 4 int8 per int32 word. Where BLOCK_W covers the row, it is read once and kept in registers (a
        decode step waits for this kernel: each pass over a longer row is one more wait for memory)."""
        row = tl.program_id(0)
        x_row = x_ptr + row * stride_xm
        KW = K // 16
        q, j, b = tl.arange(0, BLOCK_W), tl.arange(0, 4), tl.arange(0, 4)
        # (BLOCK_W, 4 planes j, 4 bytes b): input 16q + 4b + j goes to byte b of word (q, j)
        at = 16 * q[:, None, None] + 4 * b[None, None, :] + j[None, :, None]
        g = 0.0
        if NORM:  # the norm's weight is nobody's output: read while the kernel before still runs (PDL; in a
            # decode step this took 0.2-0.3 us off each of the 90 quantizers; a longer row's passes reload it)
            g = tl.load(g_ptr + at, mask=at < K, other=0.0)
        pdl_wait(USE_PDL)  # x is the previous kernel's output
        pdl_ready(USE_PDL)  # the GEMV after this kernel may start and request its weights
        if KW <= BLOCK_W:  # the whole row in one block
            x = tl.load(x_row + at, mask=at < K, other=0.0)
            v = x.to(tl.float32)
            if NORM:  # the sum of squares in float32, as torch's RMSNorm
                r = tl.math.rsqrt(tl.sum(v * v) / K + norm_eps)
                v = rms_normed(x, r, g)
            s = tl.math.div_rn(1.0, tl.maximum(tl.max(tl.abs(v)), eps)) * 127.0  # as torch: reciprocal, product
            store_words(v * s, xw_ptr + row * (K // 4), 0, KW, USE_ASM)
        else:  # block by block: the sum of squares, the largest |x|, then the words
            r = 1.0
            if NORM:
                sumsq = 0.0
                for k0 in range(0, K, 16 * BLOCK_W):
                    v = load_inputs(x_row, k0 + at, k0 + at < K, g_ptr, r, False)
                    sumsq += tl.sum(v * v)
                r = tl.math.rsqrt(sumsq / K + norm_eps)
            amax = 0.0
            for k0 in range(0, K, 16 * BLOCK_W):
                amax = tl.maximum(amax, tl.max(tl.abs(load_inputs(x_row, k0 + at, k0 + at < K, g_ptr, r, NORM))))
            s = tl.math.div_rn(1.0, tl.maximum(amax, eps)) * 127.0
            for q0 in range(0, KW, BLOCK_W):
                v = load_inputs(x_row, 16 * q0 + at, 16 * q0 + at < K, g_ptr, r, NORM)
                store_words(v * s, xw_ptr + row * (K // 4), q0, KW, USE_ASM)
        tl.store(sx_ptr + row, s)

    @triton.jit
    def store_words(v, xw_row, q0, KW, USE_ASM: tl.constexpr):
        """Round the (BLOCK_W, 4 planes j, 4 bytes b) block ``v`` of words q0.. to int8 and store it as words."""
        byte = round_to_int(tl.minimum(tl.maximum(v, -127.0), 127.0), USE_ASM) & 0xFF
        b = tl.arange(0, 4)
        word = tl.sum(byte << (8 * b)[None, None, :], axis=2)  # the 4 bytes never overlap: sum = or
        q = q0 + tl.arange(0, v.shape[0])
        jq = tl.arange(0, 4)[None, :] * KW + q[:, None]  # word q of plane j
        tl.store(xw_row + jq, word, mask=(q < KW)[:, None])

else:
    dp4a = round_to_int = load_words = rms_normed = load_inputs = dp4a_step = ternary_gemv_dp4a_kernel = None
    quantize_words_kernel = store_words = None


# ---------------------------------------------------------------- layouts
def prepare_activations(x_q: torch.Tensor) -> torch.Tensor:
    """int8 (M, K) -> int32 (M, K / 4): 4 planes of K / 16 words, each word 4 int8 activations.

    Word ``q`` of plane ``j`` holds ``x[16q + j], x[16q + 4 + j], x[16q + 8 + j], x[16q + 12 + j]``
    in bytes 0..3: the partners of the 4 codes that ``(packed_word_q >> 2j) & 0x03030303`` lines
    up. Plane-major, so that the kernel reads each plane as one contiguous vector.
    """
    if x_q.dtype != torch.int8 or x_q.dim() != 2:
        raise ValueError(f"x_q must be a 2-D int8 tensor (M, K), got {x_q.dtype} {tuple(x_q.shape)}")
    m, k = x_q.shape
    check_words_k(k)
    # (m, q, b, j) -> (m, j, q, b): plane j, word q, byte b = input 16q + 4b + j
    planes = x_q.reshape(m, k // 16, 4, 4).permute(0, 3, 1, 2).contiguous()
    return planes.view(torch.int32).reshape(m, k // 4)


def check_words_k(k: int) -> None:
    """Raise unless ``k`` is a whole number of 16-weight words (what the dp4a and tensor-core kernels read)."""
    if k % 16:
        raise ValueError(
            f"the dp4a kernel reads 16 weights per word, so K must be a multiple of 16, got K={k}; "
            "babybitnet.kernels.triton_gemv.ternary_matmul handles any K"
        )


def as_words(packed: torch.Tensor) -> torch.Tensor:
    """The packed bytes (N, K / 4) seen as int32 words (N, K / 16): no copy."""
    return packed.contiguous().view(torch.int32)


# ---------------------------------------------------------------- launchers
def words_matmul_output(
    x_words: torch.Tensor,
    packed: torch.Tensor,
    k: int,
    s_x: torch.Tensor | None,
    s_w_rows: torch.Tensor | None,
    out_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Check the arguments of a matmul from activation words (this module's and the tensor-core one's);
    return its empty output (M, N): int32 without scales, else ``out_dtype`` (float32 by default)."""
    require_triton()
    check_words_k(k)
    if not isinstance(x_words, torch.Tensor) or x_words.dtype != torch.int32 or x_words.dim() != 2:
        what = f"{x_words.dtype} {tuple(x_words.shape)}" if isinstance(x_words, torch.Tensor) else type(x_words)
        raise ValueError(f"x_words must be int32 (M, K/4) from quantize_words or prepare_activations, got {what}")
    if x_words.shape[1] != k // 4:
        raise ValueError(f"K mismatch: x_words has {x_words.shape[1]} words per token, K={k} needs {k // 4}")
    check_packed_on(packed, k, x_words.device)
    m, n = x_words.shape[0], packed.shape[0]
    if s_x is not None or s_w_rows is not None:
        groups_ok = s_w_rows is not None and s_w_rows.dim() == 1 and s_w_rows.numel() and n % s_w_rows.numel() == 0
        if s_x is None or s_x.shape != (m,) or not groups_ok:
            raise ValueError(
                f"pass both s_x ({m},) and s_w_rows ({n},) or group scales (G,), G dividing {n}, to rescale; or neither"
            )
        out_dtype = out_dtype or torch.float32
    elif out_dtype not in (None, torch.int32):
        raise ValueError(f"without scales the output is int32 (the raw sums), got out_dtype={out_dtype}")
    return torch.empty(m, n, dtype=out_dtype or torch.int32, device=x_words.device)


def dp4a_matmul(
    x_words: torch.Tensor,
    packed: torch.Tensor,
    k: int,
    s_x: torch.Tensor | None = None,
    s_w_rows: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    config: Config | None = None,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W^T`` from prepared activation words (M, k/4) and 2-bit packed weights uint8 (N, k/4).

    Without scales: the exact int32 sums. With ``s_x`` (M,) and ``s_w_rows`` (N,):
    ``sums / (s_x[m] * s_w_rows[n])`` in ``out_dtype`` (float32 by default); ``s_w_rows`` may also
    be the (G,) group scales of ``absmean_scale`` (group g: rows g*N/G ..), read in place. ``config`` =
    (BLOCK_N, BLOCK_W words, num_warps), powers of 2 (default :data:`DEFAULT_CONFIG`).
    With scales, the epilogue: ``residual + act(y)`` (:func:`babybitnet.kernels.triton_common.epilogue`'s
    numbers), ``residual`` (M, N) in ``out_dtype``, in the kernel's store.
    Never synchronizes, so it can be captured in a CUDA graph.
    """
    y = words_matmul_output(x_words, packed, k, s_x, s_w_rows, out_dtype)
    m, n, rescale = y.shape[0], y.shape[1], s_x is not None
    act, residual = check_epilogue(activation, residual, y, rescale)  # the kernel reads rows of unit stride
    if m == 0 or n == 0:
        return y
    if k == 0:
        return epilogue(y.zero_(), activation, residual)
    block_n, block_w, num_warps = check_config(config or DEFAULT_CONFIG)
    block_m = min(MAX_BLOCK_M, triton.next_power_of_2(m))
    block_w = max(8, block_w // block_m)  # keep the (M, N, W) accumulator in registers as tokens grow
    x_words, w = x_words.contiguous(), as_words(packed)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    pdl = use_pdl(x_words.device)
    ternary_gemv_dp4a_kernel[grid](
        x_words, w, y, s_x if rescale else y, s_w_rows if rescale else y, y if residual is None else residual,
        m, n, k // 16, n // s_w_rows.numel() if rescale else 1, x_words.stride(0), w.stride(0), y.stride(0),
        0 if residual is None else residual.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_W=block_w, USE_ASM=not interpreted(), RESCALE=rescale,
        EVEN=n % block_n == 0 and (k // 16) % block_w == 0, ACT=act, RESIDUAL=residual is not None,
        USE_PDL=pdl, num_warps=num_warps, **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip
    return y


def check_norm_weight(norm_weight: torch.Tensor | None, k: int, device: torch.device) -> None:
    """Raise unless ``norm_weight`` is None or an RMSNorm's weight: shape (k,), on ``device``."""
    if norm_weight is not None and (norm_weight.shape != (k,) or norm_weight.device != device):
        raise ValueError(
            f"norm_weight must be the norm's weight, shape ({k},) on {device}, "
            f"got {tuple(norm_weight.shape)} on {norm_weight.device}"
        )


def norm_eps_or_default(norm_eps: float | None, dtype: torch.dtype) -> float:
    """The RMSNorm's eps: ``norm_eps``, or None for nn.RMSNorm's default (the eps of the inputs' dtype)."""
    return torch.finfo(dtype).eps if norm_eps is None else float(norm_eps)


def quantize_words(
    x: torch.Tensor, eps: float = EPS, norm_weight: torch.Tensor | None = None, norm_eps: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """float (M, K) -> (int32 words (M, K/4) as :func:`prepare_activations` lays them out, float32 s_x (M,)).

    The same numbers as ``quantize_activations(x.float())``: s_x = 127 / max|x| per token,
    round half to even. One Triton program per token. ``norm_weight`` (K,): of
    ``F.rms_norm(x, (K,), norm_weight, norm_eps)`` instead (None: torch's default eps for x's dtype),
    up to the float rounding of the norm's sum of squares.
    """
    require_triton()
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D float tensor (M, K), got {getattr(x, 'dtype', type(x))}")
    m, k = x.shape
    check_words_k(k)
    check_norm_weight(norm_weight, k, x.device)
    norm_eps = norm_eps_or_default(norm_eps, x.dtype)
    x = x.contiguous()
    words = torch.empty(m, k // 4, dtype=torch.int32, device=x.device)
    s_x = torch.empty(m, dtype=torch.float32, device=x.device)
    if m and k:
        pdl = use_pdl(x.device)
        block_w = min(QUANTIZE_BLOCK // 16, triton.next_power_of_2(k // 16))
        quantize_words_kernel[(m,)](
            x, x if norm_weight is None else norm_weight.contiguous(), words, s_x, k, x.stride(0), eps, norm_eps,
            BLOCK_W=block_w, NORM=norm_weight is not None, USE_ASM=not interpreted(), USE_PDL=pdl,
            num_warps=max(1, min(8, 16 * block_w // 1024)), **({"launch_pdl": True} if pdl else {}),
        )  # fmt: skip
    return words, s_x


def dp4a_linear(
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
    """BitLinear inference in two kernels: float (..., k), uint8 (N, k/4), s_w (G,) -> (..., N) in x's dtype.

    The same numbers as :func:`babybitnet.kernels.triton_gemv.triton_packed_linear` (the activations are
    quantized in float32, the sums are exact int32), up to the float rounding of the rescale. The same
    arguments as :func:`babybitnet.kernels.triton_bitlinear.bitlinear_dp4a`: ``norm_weight`` (k,), the
    RMSNorm before the layer, in the quantizer kernel; the epilogue ``residual + act(y)`` (``residual``
    (..., N) in x's dtype) in the GEMV's store. On Hopper the two kernels overlap (PDL): the GEMV asks
    for its weights while the quantizer runs.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(
            f"x must be a float tensor (..., K={k}), got {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}"
        )
    n = packed.shape[0]
    check_weight_groups(s_w, n)
    words, s_x = quantize_words(x.reshape(-1, k), EPS, norm_weight, norm_eps)
    r = residual.reshape(-1, n) if residual is not None and residual.shape == (*x.shape[:-1], n) else residual
    s_w = s_w.reshape(-1).to(x.device)  # (G,): read in place, no copy per call
    y = dp4a_matmul(words, packed, k, s_x, s_w, x.dtype, config, activation, r)
    return y.reshape(*x.shape[:-1], n)
