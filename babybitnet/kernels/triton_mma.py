"""The ternary GEMM on tensor cores: int8 x int8 -> int32 ``tl.dot`` on 2-bit weights unpacked in registers.

The dp4a GEMV (:mod:`babybitnet.kernels.triton_dp4a`) is built for one token: every program
reads its rows of weights once and does a few dp4a per word. With 32 or 256 tokens it reads
the same weights again for every block of 16 tokens and does all the arithmetic on the plain
ALUs, so past a few tokens cuBLAS's bf16 GEMM (tensor cores, weights read once per tile of
tokens) wins. This kernel is a GEMM: a program owns a (BLOCK_M tokens, BLOCK_N outputs) tile
of the result and walks along K, and the multiply-adds run on the tensor cores in int8
(``wgmma`` on Hopper, ``mma`` on Ampere), whose throughput is twice bf16's.

**Unpacking into the dot.** Byte ``i`` of a packed row holds inputs ``4i .. 4i+3`` at bit pairs
0..3 (code = weight + 1, :mod:`babybitnet.packing`), so ``((byte >> 2j) & 3) - 1`` over a tile
of bytes is the weights of inputs ``4i + j``: every 4th input. The activations come from the
dp4a path's quantizer kernel (:func:`babybitnet.kernels.triton_dp4a.quantize_words`) already in
that order: its 4 "planes" of words, read as bytes, are ``x[:, j::4]`` for plane ``j``
(word ``q`` of plane ``j`` holds ``x[16q + 4b + j]`` in byte ``b``, and ``16q + 4b + j = 4(4q + b) + j``).
So one step loads a (BLOCK_K/4, BLOCK_N) tile of packed bytes ONCE and does 4 dots::

    for j in 0..3:   acc += x_plane_j[:, i] @ ((bytes[i, :] >> 2j) & 3) - 1      (int8 -> int32)

no shuffle of bytes in registers, and the unpacked weights never touch memory: the packed tile
is the only weight traffic, 2 bits per weight, once per tile of BLOCK_M tokens.

**Weights first.** The kernel computes ``y^T = W @ x^T``: the unpacked weights are the dot's first
operand, which Hopper's ``wgmma`` reads from registers, where the unpacking leaves them; the
activations go from memory to shared memory untouched; the few tokens are the instruction's N
(8 to 256 wide). The unpacking runs on 32-bit registers, four weights per instruction
(:func:`ternary_operand`, inline PTX): per byte it was the bottleneck. On an H200 both tricks
together took 8192 x 8192 at 32 tokens from 32 to 18 µs (bf16: 42 µs).

**Exact.** The products are int8 x int8 and the sums int32 (at most 127 * K, far from 2**31 for
any K of a model), so the sums equal the integer reference bit for bit; the epilogue divides
each by ``s_x[m] * s_w[n]`` once and stores x's dtype, like every other kernel of the package.

**Split K.** A program per (BLOCK_M, BLOCK_N) tile leaves most of the GPU idle when there are few
tiles and a long K: 128 tokens of a 2560 x 10240 layer are 40 tiles of 128 x 64 for 132 SMs, each
walking 40 steps. A config's 6th number ``split`` gives every tile that many programs, each summing
its share of K into a plane of its own (int32, so still exact); a second small kernel adds the
planes and rescales. More programs at once, for the price of one more launch and the planes' traffic.

**One launch or two** (:func:`mma_linear`): the quantizer kernel then the GEMM, or ``fused``, where
every program computes its tokens' scales and rounds their inputs as it loads them (the same
numbers): no second kernel to wait for, at the price of quantizing x again for every column of
tiles. The tuner (:mod:`babybitnet.kernels.tuning`) times only the two-launch form: on an H200 the one
launch was slower at every shape and batch (:mod:`babybitnet.kernels.dispatch` says by how much).

K must be a multiple of 16 (the quantizer's whole words); any M and N. Configs are
(BLOCK_M tokens, BLOCK_N outputs, BLOCK_K inputs per step, num_warps, num_stages[, split]); BLOCK_K/4
bytes of every row per step and plane, at least 32 (the int8 tensor-core instructions take K = 32).
In Triton's interpreter (the CPU tests) the unpacking is written per byte and ``tl.dot`` is numpy's.
"""

from __future__ import annotations

import torch

from babybitnet.kernels.triton_common import (
    EPILOGUE_ACTS,
    check_epilogue,
    check_packed_on,
    epilogue,
    finish_tile,
    interpreted,
    pdl_ready,
    pdl_wait,
    require_triton,
    store_outputs,
    tl,
    triton,
    use_pdl,
)
from babybitnet.kernels.triton_dp4a import check_words_k, quantize_words, round_to_int, words_matmul_output
from babybitnet.quant import EPS, check_weight_groups

MmaConfig = tuple[int, ...]  # (BLOCK_M, BLOCK_N, BLOCK_K inputs, num_warps, num_stages[, split]): check_mma_config
DEFAULT_CONFIG: MmaConfig = (64, 64, 256, 4, 3)  # within ~1.3x of the best on an H200 from 32 to 256 tokens
CONFIGS: tuple[MmaConfig, ...] = (  # what the tuner tries (kernels/tuning.py), few tokens first; the 16-token
    # tiles of 32 columns or 512-input steps give K = 10,240 more programs or fewer steps at 8 to 32 tokens
    (16, 64, 256, 4, 4), (16, 32, 256, 2, 4), (16, 32, 512, 4, 4), (16, 64, 512, 4, 3),
    (32, 32, 256, 4, 4), (32, 64, 256, 4, 4), (64, 64, 256, 4, 3), (64, 128, 256, 4, 3),
    (128, 64, 256, 4, 3), (128, 128, 256, 8, 3), (128, 128, 512, 8, 3), (256, 64, 256, 8, 3),
    # split K (a tile in 2 or 4 programs along K): each won at some shape from 8 to 256 tokens where N is
    # 2,560 or 8,192 (an H200 sweep of 18 split configs, session 14); the same compiled kernel for 2 and 4
    (16, 64, 512, 4, 3, 2), (16, 64, 512, 4, 3, 4), (32, 64, 256, 4, 4, 2), (32, 64, 256, 4, 4, 4),
    (64, 64, 256, 4, 3, 4), (64, 128, 256, 4, 3, 4), (128, 64, 256, 4, 3, 2), (128, 128, 512, 8, 3, 2),
    (128, 128, 512, 8, 3, 4),
    # steps of 512 or 1,024 inputs on 16- to 64-token tiles: each won at some shape from 8 to 256 tokens at
    # 2,560^2 or 8,192^2 (an H200 sweep of 112 tiles through the layer, session 15; on an H100 too, in
    # babybitnet/results/tuning_h100_layer.json): fewer, longer steps
    (16, 32, 512, 2, 4), (32, 64, 512, 4, 3), (32, 64, 512, 4, 4), (64, 64, 512, 4, 3), (32, 64, 1024, 4, 3),
    (64, 64, 1024, 4, 3),
)  # fmt: skip

SUM_BLOCK = (16, 128)  # split K's second kernel: (tokens, outputs) per program

if triton is not None:

    @triton.jit
    def ternary_operand(w, J: tl.constexpr, USE_ASM: tl.constexpr):
        """int8 weights -1/0/+1 of bit pair J of every packed byte in ``w`` (uint8): ``((w >> 2J) & 3) - 1``.

        On the GPU four bytes at a time, in one 32-bit register (as the dp4a kernel reads words): shift,
        mask the 4 codes (``& 0x03030303``), and take 1 from every byte without a borrow crossing bytes
        (``+ 0x7F`` then ``^ 0x80`` per byte: codes 0, 1, 2 -> 0x7F, 0x80, 0x81 -> 0xFF, 0x00, 0x01).
        Four instructions per four weights instead of three per weight: the unpacking was the
        bottleneck (about 2x on an H200 at 8192 x 8192). In the interpreter: the same per byte.
        """
        if USE_ASM:  # inline PTX takes no constexpr in its text: one string per bit pair
            if J == 0:
                out = tl.inline_asm_elementwise(
                    "{.reg .b32 t; and.b32 t, $1, 0x03030303; add.u32 t, t, 0x7F7F7F7F; xor.b32 $0, t, 0x80808080;}",
                    "=r,r", [w], dtype=tl.int8, is_pure=True, pack=4,
                )  # fmt: skip
            elif J == 1:
                out = tl.inline_asm_elementwise(
                    "{.reg .b32 t; shr.b32 t, $1, 2; and.b32 t, t, 0x03030303; add.u32 t, t, 0x7F7F7F7F; "
                    "xor.b32 $0, t, 0x80808080;}",
                    "=r,r", [w], dtype=tl.int8, is_pure=True, pack=4,
                )  # fmt: skip
            elif J == 2:
                out = tl.inline_asm_elementwise(
                    "{.reg .b32 t; shr.b32 t, $1, 4; and.b32 t, t, 0x03030303; add.u32 t, t, 0x7F7F7F7F; "
                    "xor.b32 $0, t, 0x80808080;}",
                    "=r,r", [w], dtype=tl.int8, is_pure=True, pack=4,
                )  # fmt: skip
            else:
                out = tl.inline_asm_elementwise(
                    "{.reg .b32 t; shr.b32 t, $1, 6; and.b32 t, t, 0x03030303; add.u32 t, t, 0x7F7F7F7F; "
                    "xor.b32 $0, t, 0x80808080;}",
                    "=r,r", [w], dtype=tl.int8, is_pure=True, pack=4,
                )  # fmt: skip
        else:
            out = ((w >> (2 * J)) & 3).to(tl.int8) - 1
        return out

    @triton.jit
    def token_scales(x_cols, K, m_ok, eps, BLOCK_M: tl.constexpr, BLOCK_KQ: tl.constexpr):
        """s_x = 127 / max |x| of this program's BLOCK_M tokens (float activations), as the quantizer kernel
        computes it (an IEEE reciprocal, then the product: torch's numbers bit for bit)."""
        amax = tl.zeros((BLOCK_KQ, BLOCK_M), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_KQ):
            kk = k0 + tl.arange(0, BLOCK_KQ)
            v = tl.load(x_cols + kk[:, None], mask=(kk < K)[:, None] & m_ok[None, :], other=0.0)
            amax = tl.maximum(amax, tl.abs(v.to(tl.float32)))
        return tl.math.div_rn(1.0, tl.maximum(tl.max(amax, axis=0), eps)) * 127.0

    @triton.jit
    def ternary_mma_kernel(
        x_ptr,  # (M, K): int8 activations as 4 planes, plane j = x[:, j::4] (quantize_words' bytes); QUANTIZE: float
        w_ptr,  # (N, KB) uint8: the packed 2-bit weights, KB = K / 4 bytes per row
        y_ptr,  # (M, N) output: int32 sums (RESCALE=False), else float; split K: (split, M, N) int32 partial sums
        sx_ptr,  # (M,) float32 activation scales (read only if RESCALE and not QUANTIZE)
        sw_ptr,  # (G,) weight scales, one per group of ROWS consecutive rows (read only if RESCALE)
        r_ptr,  # (M, N) the residual to add (read only if RESIDUAL), rows of y's stride
        M,
        N,
        KB,
        CHUNK,  # bytes of every row per program along the grid's 2nd axis (split K); KB for one program
        ROWS,
        stride_xm,
        stride_wn,
        stride_ym,
        eps,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_B: tl.constexpr,  # bytes of every row per step (4 * BLOCK_B inputs)
        BLOCK_KQ: tl.constexpr,  # inputs per step of the scales' pass (QUANTIZE)
        USE_ASM: tl.constexpr,
        RESCALE: tl.constexpr,
        QUANTIZE: tl.constexpr,  # x is float: quantize it here (one launch for the layer)
        EVEN_K: tl.constexpr,  # KB % BLOCK_B == 0: no masks along K
        ACT: tl.constexpr,  # the epilogue (with RESCALE): triton_common.finish_tile
        RESIDUAL: tl.constexpr,
        USE_PDL: tl.constexpr,  # launched with programmatic dependent launch (triton_common.use_pdl)
    ):
        """y[m, n] = sum_k x[m, k] * w[n, k] (then / (s_x[m] * s_w[n]), then the epilogue) on the tensor cores.

        Computed transposed, y^T = W @ x^T: the unpacked weights are the dot's FIRST operand, which the
        tensor cores (Hopper's wgmma) read straight from registers, where the unpacking leaves them;
        the activations, the second operand, go from memory to shared memory untouched. The few
        tokens become the instruction's N (8 to 256 wide), the many outputs its M.
        """
        # x (or the quantizer's words and scales) is the kernel before's output: wait for it before any read;
        # launched early all the same, the programs are in place when it ends (PDL), as the dp4a GEMV's are
        pdl_wait(USE_PDL)
        pdl_ready(USE_PDL)
        # the programs of one row block of W are neighbours in the launch order: they run together
        # and share the weight tile through the L2 cache, so the weights come from memory once
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        pid_m, pid_n = pid % num_m, pid // num_m
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = offs_m < M, offs_n < N
        # rows past M or N read row 0 instead (always there, results never stored): no masks on them
        x_cols = x_ptr + tl.where(m_ok, offs_m, 0)[None, :] * stride_xm  # (1, BLOCK_M)
        w_rows = w_ptr + tl.where(n_ok, offs_n, 0)[:, None] * stride_wn  # (BLOCK_N, 1)
        if QUANTIZE:  # every program scales its own tokens: x is small and read from the L2 cache
            s_x = token_scales(x_cols, 4 * KB, m_ok, eps, BLOCK_M, BLOCK_KQ)
        offs_b = tl.arange(0, BLOCK_B)
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
        # split K: the programs of axis 1 each sum their own CHUNK bytes of the rows, into their own (M, N) plane
        b_lo = tl.program_id(1) * CHUNK
        y_ptr += tl.program_id(1) * M * stride_ym
        for b0 in range(b_lo, tl.minimum(b_lo + CHUNK, KB), BLOCK_B):
            b = b0 + offs_b
            if EVEN_K:
                w = tl.load(w_rows + b[None, :])  # (BLOCK_N, BLOCK_B) packed bytes
            else:  # past the row's end: code 0b01 in every field, zero weights (and zero activations)
                w = tl.load(w_rows + b[None, :], mask=(b < KB)[None, :], other=0x55)
            for j in tl.static_range(4):
                if QUANTIZE:  # inputs 4b + j, rounded as the quantizer kernel rounds them
                    v = tl.load(x_cols + 4 * b[:, None] + j, mask=(b < KB)[:, None], other=0.0).to(tl.float32)
                    v = tl.minimum(tl.maximum(v * s_x[None, :], -127.0), 127.0)
                    a = round_to_int(v, USE_ASM).to(tl.int8)
                elif EVEN_K:
                    a = tl.load(x_cols + j * KB + b[:, None])  # (BLOCK_B, BLOCK_M) int8: inputs 4b + j
                else:
                    a = tl.load(x_cols + j * KB + b[:, None], mask=(b < KB)[:, None], other=0)
                acc = tl.dot(ternary_operand(w, j, USE_ASM), a, acc, out_dtype=tl.int32)
        if RESCALE:  # one multiplication per output, never per weight
            if not QUANTIZE:
                s_x = tl.load(sx_ptr + offs_m, mask=m_ok, other=1.0)
            s_w = tl.load(sw_ptr + tl.where(n_ok, offs_n, 0) // ROWS).to(tl.float32)
            y = acc.to(tl.float32) / (s_x[None, :] * s_w[:, None])
            # the tile is y^T (outputs, tokens): to finish_tile, its rows are the outputs (unit stride) and its
            # columns the tokens, offset by m * stride_ym in y and in the residual (which has y's strides)
            finish_tile(y, y_ptr, 1, offs_n, offs_m * stride_ym, n_ok, m_ok, r_ptr, 1, ACT, RESIDUAL, USE_ASM)
        else:
            tl.store(y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None], acc, mask=n_ok[:, None] & m_ok[None, :])

    @triton.jit
    def ternary_split_sum_kernel(
        p_ptr, y_ptr, sx_ptr, sw_ptr, r_ptr, M, N, SPLIT, ROWS, stride_ym,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RESCALE: tl.constexpr, ACT: tl.constexpr,
        RESIDUAL: tl.constexpr, USE_ASM: tl.constexpr, USE_PDL: tl.constexpr,
    ):  # fmt: skip
        """Split K's second kernel: y = the sum of the SPLIT planes of partial sums p (SPLIT, M, N) int32
        (exact: int32 adds), rescaled and finished as the GEMM's own epilogue does it (the same numbers)."""
        pdl_wait(USE_PDL)  # the GEMM's partial sums
        pdl_ready(USE_PDL)
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = offs_m < M, offs_n < N
        ptrs = p_ptr + offs_m[:, None] * N + offs_n[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for s in range(0, SPLIT):
            acc += tl.load(ptrs + s * M * N, mask=m_ok[:, None] & n_ok[None, :], other=0)
        store_outputs(
            acc, y_ptr, stride_ym, offs_m, offs_n, m_ok, n_ok, sx_ptr, sw_ptr, ROWS, RESCALE, r_ptr, stride_ym,
            ACT=ACT, RESIDUAL=RESIDUAL, USE_ASM=USE_ASM,
        )  # fmt: skip

else:
    ternary_operand = token_scales = ternary_mma_kernel = ternary_split_sum_kernel = None


def check_mma_config(config: MmaConfig) -> MmaConfig:
    """A config (BLOCK_M, BLOCK_N, BLOCK_K inputs, num_warps, num_stages[, split]): powers of 2, BLOCK_M and
    BLOCK_N at least 16, BLOCK_K at least 128 (32 bytes of every row: the int8 tensor-core step), num_stages
    at least 1; ``split`` (default 1): programs per tile along K (split K: this module's docstring)."""
    if not isinstance(config, tuple) or len(config) not in (5, 6):
        raise ValueError(
            f"an mma config is (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages[, split]), got {config!r}"
        )
    names = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps")
    for name, v, least in zip(names, config, (16, 16, 128, 1), strict=False):
        if not isinstance(v, int) or v < least or v & (v - 1):
            raise ValueError(f"{name} must be a power of 2 and at least {least}, got {v!r} in config {config}")
    for name, v in zip(("num_stages", "split"), config[4:], strict=False):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r} in config {config}")
    return config


def _launch(
    x: torch.Tensor,
    packed: torch.Tensor,
    k: int,
    y: torch.Tensor,
    s_x: torch.Tensor | None,
    s_w: torch.Tensor | None,
    config: MmaConfig | None,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the kernel: x int8 bytes (M, k) in planes, or float (M, k) to quantize; s_w (G,) or None;
    the epilogue (``activation``, ``residual`` (M, N) of y's strides, as check_epilogue returns it) only with s_w."""
    m, n = x.shape[0], packed.shape[0]
    if m == 0 or n == 0:
        return y
    if k == 0:
        return epilogue(y.zero_(), activation, residual)
    block_m, block_n, block_k, num_warps, num_stages, *split = check_mma_config(config or DEFAULT_CONFIG)
    quantize, rescale = x.is_floating_point(), s_w is not None
    w, kb, block_b = packed.contiguous(), k // 4, block_k // 4
    steps = triton.cdiv(kb, block_b)
    chunk = triton.cdiv(steps, split[0] if split else 1) * block_b  # whole steps per program along K
    splits = triton.cdiv(kb, chunk)  # at most the config's split (fewer if K has fewer steps)
    if splits > 1 and splits * m * n >= 2**31:  # the planes' offsets are int32 in the kernels: one program per tile
        chunk, splits = kb, 1
    if splits > 1 and quantize:
        raise ValueError("split K needs the quantizer kernel's scales: use the two-launch layer (fused=False)")
    out = y if splits == 1 else torch.empty(splits, m, n, dtype=torch.int32, device=y.device)  # partial sums
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n), splits)
    pdl = use_pdl(x.device)
    launch = {"launch_pdl": True} if pdl else {}
    act, r, use_asm = EPILOGUE_ACTS[activation], y if residual is None else residual, not interpreted()
    one = splits == 1  # the GEMM stores the outputs itself (else the second kernel does, epilogue and all)
    ternary_mma_kernel[grid](
        x, w, out, s_x if s_x is not None else y, s_w if rescale else y, r,
        m, n, kb, chunk, n // s_w.numel() if rescale else 1, x.stride(0), w.stride(0), out.stride(-2), EPS,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_B=block_b, BLOCK_KQ=max(16, min(1024, 4096 // block_m)),
        USE_ASM=use_asm, RESCALE=rescale and one, QUANTIZE=quantize, EVEN_K=kb % block_b == 0,
        ACT=act if one else 0, RESIDUAL=residual is not None and one,
        USE_PDL=pdl, num_warps=num_warps, num_stages=num_stages, **launch,
    )  # fmt: skip
    if not one:  # the second kernel adds the planes, rescales and finishes
        grid = (triton.cdiv(m, SUM_BLOCK[0]), triton.cdiv(n, SUM_BLOCK[1]))
        ternary_split_sum_kernel[grid](
            out, y, s_x if rescale else y, s_w if rescale else y, r, m, n, splits,
            n // s_w.numel() if rescale else 1, y.stride(0), BLOCK_M=SUM_BLOCK[0], BLOCK_N=SUM_BLOCK[1],
            RESCALE=rescale, ACT=act, RESIDUAL=residual is not None, USE_ASM=use_asm, USE_PDL=pdl, num_warps=4,
            **launch,
        )  # fmt: skip
    return y


def mma_matmul(
    x_words: torch.Tensor,
    packed: torch.Tensor,
    k: int,
    s_x: torch.Tensor | None = None,
    s_w_rows: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    config: MmaConfig | None = None,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W^T`` on the tensor cores from activation words int32 (M, k/4) and packed weights uint8 (N, k/4).

    ``x_words`` is laid out as :func:`babybitnet.kernels.triton_dp4a.prepare_activations` (and the
    quantizer kernel) write it. Without scales: the exact int32 sums. With ``s_x`` (M,) and
    ``s_w_rows`` (N,): ``sums / (s_x[m] * s_w_rows[n])`` in ``out_dtype`` (float32 by default), then
    the epilogue ``residual + act(y)`` (``residual`` (M, N) in ``out_dtype``) in the kernel's store, as
    :func:`babybitnet.kernels.triton_dp4a.dp4a_matmul` does it.
    ``config``: see :func:`check_mma_config` (default :data:`DEFAULT_CONFIG`). Never synchronizes,
    so a CUDA graph can capture it.
    """
    y = words_matmul_output(x_words, packed, k, s_x, s_w_rows, out_dtype)
    _, residual = check_epilogue(activation, residual, y, s_x is not None)
    x_bytes = x_words.contiguous().view(torch.int8)  # (M, K): plane j is bytes j*K/4 .. (j+1)*K/4 of a row
    return _launch(x_bytes, packed, k, y, s_x, s_w_rows, config, activation, residual)


def mma_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    s_w: torch.Tensor,
    k: int,
    config: MmaConfig | None = None,
    fused: bool = False,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float | None = None,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """BitLinear inference for many tokens: float (..., k), uint8 (N, k/4), s_w (G,) -> (..., N) in x's dtype.

    Two launches: the dp4a path's quantizer kernel (int8 per token, s_x = 127 / max|x|), then the
    tensor-core GEMM with the rescale fused. ``fused``: one launch, every program quantizing its own
    tokens on the fly (no second launch to wait for; costs re-quantizing x once per column of tiles,
    which pays for few tokens and small N). Either way the numbers of
    :func:`babybitnet.kernels.triton_dp4a.dp4a_linear`: the same scales, the same rounding, exact int32 sums;
    and its fusions: ``norm_weight`` (k,), the RMSNorm before the layer, in the quantizer kernel (two
    launches only); the epilogue ``residual + act(y)`` (``residual`` (..., N) in x's dtype) in the store.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(
            f"x must be a float tensor (..., K={k}), got {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}"
        )
    require_triton()
    check_words_k(k)
    x2 = x.reshape(-1, k)
    check_packed_on(packed, k, x2.device)
    n = packed.shape[0]
    check_weight_groups(s_w, n)  # the kernel takes s_w per group (G,), not expanded to one scale per row
    s_w = s_w.reshape(-1).to(x2.device).contiguous()
    y = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x2.device)
    r = residual.reshape(-1, n) if residual is not None and residual.shape == (*x.shape[:-1], n) else residual
    _, r = check_epilogue(activation, r, y, True)
    if fused:
        if norm_weight is not None:
            raise ValueError("the one-launch layer (fused=True) takes no norm: use the two-launch layer (fused=False)")
        _launch(x2.contiguous(), packed, k, y, None, s_w, config, activation, r)
    else:
        words, s_x = quantize_words(x2, EPS, norm_weight, norm_eps)
        _launch(words.view(torch.int8), packed, k, y, s_x, s_w, config, activation, r)
    return y.reshape(*x.shape[:-1], n)
