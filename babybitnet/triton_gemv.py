"""The ternary GEMV on a GPU: a Triton kernel that reads 2-bit packed weights and only adds.

At decode time a language model multiplies a handful of tokens (M = 1..16) by every weight
matrix: ``y (M, N) = x (M, K) @ W^T``. Each weight is read once and used M times, so the
time goes into moving the weights from GPU memory, not into arithmetic. Packed at 2 bits
(``babybitnet.packing``) a ternary matrix is 8x smaller than bf16, so a kernel that reads
the packed bytes directly can in principle be up to 8x faster than ``torch`` bf16.

**The kernel** (:func:`ternary_gemv_kernel`). Each program computes ``BLOCK_N`` outputs (rows
of W) for up to ``BLOCK_M`` tokens, and walks along K in steps of ``BLOCK_K`` weights::

    for each step of BLOCK_K inputs (BLOCK_K // 4 bytes per row):
        load the packed bytes     (BLOCK_N, BLOCK_K // 4) uint8, contiguous along each row
        load the activations      (BLOCK_M, BLOCK_K // 4, 4), split into 4 planes: plane j
                                  holds inputs 4i + j, the partners of bit pair j of byte i
        for j in 0..3:            code = (byte >> 2j) & 0b11        (0b00: -1, 0b01: 0, 0b10: +1)
            acc += where(code == 0b10, x_j, where(code == 0b00, -x_j, 0))
    y = sum(acc over K) / (s_x * s_w)     one multiplication per OUTPUT, not per weight

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
:func:`babybitnet.addonly.packed_linear`); :func:`bench_kernel` times it against torch's
bf16 and fp16 matmuls. Triton is optional: ``pip install triton`` (a GPU build of torch ships it).
With ``TRITON_INTERPRET=1`` set before this module is imported, the kernel runs in Triton's
interpreter on CPU tensors (slow, for tests: no bf16 there).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable

import torch

from babybitnet.bitlinear import row_scales
from babybitnet.quant import quantize_activations

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still imports; using the kernel raises _require_triton's error
    triton = None
    tl = None

MAX_BLOCK_M = 16  # tokens per program; more tokens use more programs along the grid's second axis
DEFAULT_CONFIG = (8, 1024, 4)  # (BLOCK_N rows, BLOCK_K inputs, num_warps) for one token
# What bench_kernel tries per shape, fastest kept: few rows x long rows suit a GEMV (16 bytes per thread)
CONFIGS = ((2, 2048, 2), (4, 1024, 4), (4, 2048, 4), (8, 1024, 4), (8, 2048, 8), (16, 512, 4), (16, 1024, 8))

Config = tuple[int, int, int]

if triton is not None:

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
        offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = offs_m < M, offs_n < N
        if INT_ACC:
            acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_KB), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_KB), dtype=tl.float32)
        for b0 in range(0, KB, BLOCK_KB):
            b = b0 + tl.arange(0, BLOCK_KB)  # byte i of each row holds inputs 4i .. 4i+3
            w_bytes = tl.load(
                w_ptr + offs_n[:, None] * stride_wn + b[None, :],
                mask=n_ok[:, None] & (b < KB)[None, :],
                other=0b01010101,  # four zero weights
            )
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
            # (BLOCK_M, BLOCK_KB, 4) -> 4 planes (BLOCK_M, BLOCK_KB): plane j is input 4i + j
            x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_KB, 2, 2)))  # j = 0, 2 and j = 1, 3
            x0, x2 = tl.split(x_even)
            x1, x3 = tl.split(x_odd)
            for j in tl.static_range(4):
                if j == 0:
                    xj = x0
                elif j == 1:
                    xj = x1
                elif j == 2:
                    xj = x2
                else:
                    xj = x3
                code = ((w_bytes >> (2 * j)) & 0b11)[None, :, :]  # (1, BLOCK_N, BLOCK_KB)
                xj = xj[:, None, :]  # (BLOCK_M, 1, BLOCK_KB)
                if ADD_ONLY:
                    acc += tl.where(code == 0b10, xj, tl.where(code == 0b00, -xj, 0))
                else:
                    acc += (code.to(acc.dtype) - 1) * xj
        y = tl.sum(acc, axis=2)  # (BLOCK_M, BLOCK_N): the threads combine their partial sums once
        if RESCALE:
            s_x = tl.load(sx_ptr + offs_m, mask=m_ok, other=1.0)
            s_w = tl.load(sw_ptr + offs_n, mask=n_ok, other=1.0)
            y = y.to(tl.float32) / (s_x[:, None] * s_w[None, :])
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y, mask=m_ok[:, None] & n_ok[None, :])

else:
    ternary_gemv_kernel = None


# ---------------------------------------------------------------- checks
def _require_triton() -> None:
    if triton is None:
        raise ImportError(
            "babybitnet.triton_gemv needs Triton: pip install triton (it comes with torch's CUDA builds on Linux)"
        )


def interpreted() -> bool:
    """True if the kernel runs in Triton's interpreter (TRITON_INTERPRET=1 was set before the import)."""
    _require_triton()
    return type(ternary_gemv_kernel).__name__ == "InterpretedFunction"


def _check_inputs(x: torch.Tensor, packed: torch.Tensor, k: int) -> None:
    _require_triton()
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        what = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 2-D tensor (tokens M, inputs K), got {what}")
    if x.dtype not in (torch.int8, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"x must be int8 (quantized) or float32/float16/bfloat16, got {x.dtype}")
    if isinstance(k, bool) or not isinstance(k, int) or x.shape[1] != k:
        raise ValueError(f"K mismatch: x has K={x.shape[1]} inputs per token but k={k!r}")
    _check_packed(packed, k, x.device)


def _check_packed(packed: torch.Tensor, k: int, device: torch.device) -> None:
    """packed must hold the 2-bit codes of k weights per row, on ``device`` (the activations')."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 2:
        what = f"{packed.dtype} {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"packed must be a 2-D uint8 tensor (N, ceil(K/4)) from pack_2bit, got {what}")
    if packed.shape[1] != (k + 3) // 4:
        raise ValueError(
            f"K mismatch: k={k} weights per row pack into {(k + 3) // 4} bytes, but packed rows have "
            f"{packed.shape[1]} bytes (room for K={4 * packed.shape[1]})"
        )
    if device != packed.device:
        raise ValueError(f"x and packed must be on the same device, got {device} and {packed.device}")
    if device.type != "cuda" and not interpreted():
        raise ValueError(
            f"the Triton kernel runs on a CUDA GPU but the tensors are on {device}; to run it on CPU in "
            "Triton's interpreter, set TRITON_INTERPRET=1 before importing babybitnet.triton_gemv"
        )


def _check_config(config: Config) -> Config:
    block_n, block_k, num_warps = config
    for name, v in (("BLOCK_N", block_n), ("BLOCK_K", block_k), ("num_warps", num_warps)):
        if not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of 2, got {v!r} in config {config}")
    if block_k < 8:
        raise ValueError(f"BLOCK_K must be at least 8 (2 bytes per row), got {block_k}")
    return config


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
    block_n, block_k, num_warps = _fit(_check_config(config or DEFAULT_CONFIG), block_m)
    x, packed = x.contiguous(), packed.contiguous()
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    ternary_gemv_kernel[grid](
        x, packed, y, s_x if rescale else y, s_w_rows if rescale else y,
        m, n, k, packed.shape[1], x.stride(0), packed.stride(0), y.stride(0),
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
    _require_triton()
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


# ---------------------------------------------------------------- benchmark
def _graph_us(fns: dict[str, list[Callable[[], object]]], loops: dict[str, int], repeats: int) -> dict[str, float]:
    """Median microseconds per call of each contender, from CUDA-graph replays timed with CUDA events.

    ``fns[name]`` is a list of calls that read different weight copies (so that a replay reads
    more than the L2 cache holds: cold weights, as in a real model); the graph replays them
    ``loops[name]`` times. Contenders are interleaved: a burst of load hits them alike.
    """
    graphs = {}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the graph: compilation, cuBLAS handles
        for calls in fns.values():
            for f in calls:
                f()
    torch.cuda.current_stream().wait_stream(side)
    for name, calls in fns.items():
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(loops[name]):
                for f in calls:
                    f()
        graphs[name] = g
    times: dict[str, list[float]] = {name: [] for name in fns}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for g in graphs.values():
        g.replay()
    for _ in range(repeats):
        for name, g in graphs.items():
            start.record()
            g.replay()
            end.record()
            end.synchronize()
            times[name].append(1e3 * start.elapsed_time(end) / (loops[name] * len(fns[name])))
    return {name: statistics.median(t) for name, t in times.items()}


def _copies(nbytes: int, l2_bytes: int, most: int = 64) -> int:
    """How many copies of a weight buffer add up to twice the L2 cache (1 for large matrices)."""
    return max(1, min(most, math.ceil(2 * l2_bytes / nbytes)))


VARIANTS = {  # bench_kernel's Triton contenders: label -> what it runs
    "triton int8 add-only": "ternary_matmul, int8 x, selections and additions, rescale fused",
    "triton int8 (code-1)*x": "the same with a multiplication by (code - 1) instead of the selections",
    "triton bf16 x, add-only": "ternary_matmul on bf16 activations (no quantization), float32 sums",
    "triton_packed_linear": "the layer: torch quantize_activations, then the int8 add-only kernel",
    "triton dp4a int8": "triton_dp4a.dp4a_matmul: int32 words of 16 weights, 4 per dp4a instruction, rescale fused",
    "triton dp4a layer": "triton_dp4a.dp4a_linear: the fused quantizer kernel, then the dp4a kernel (2 launches)",
}
DP4A = ("triton dp4a int8", "triton dp4a layer")  # the contenders whose configs are (BLOCK_N, BLOCK_W words, warps)


def _configs(label: str, configs: tuple[Config, ...]) -> tuple[Config, ...]:
    """The configs contender ``label`` tries: ``configs`` for this module's kernel, the dp4a kernel's own."""
    if label in DP4A:
        from babybitnet.triton_dp4a import CONFIGS as DP4A_CONFIGS

        return DP4A_CONFIGS
    return configs


def _triton_call(
    label: str, x: torch.Tensor, pk: torch.Tensor, k: int, s_w: torch.Tensor, cfg: Config | None
) -> Callable[[], torch.Tensor]:
    """A no-argument call of Triton contender ``label`` on bf16 activations ``x`` (M, k) and packed weights ``pk``."""
    if label == "triton bf16 x, add-only":
        return lambda: ternary_matmul(x, pk, k, config=cfg)
    if label == "triton_packed_linear":
        return lambda: triton_packed_linear(x, pk, s_w, k, cfg)
    if label == "triton dp4a layer":
        from babybitnet.triton_dp4a import dp4a_linear

        return lambda: dp4a_linear(x, pk, s_w, k, cfg)
    x_i, s_x = quantize_activations(x.float())
    x_q, s_x, rows = x_i.to(torch.int8), s_x.reshape(-1), row_scales(s_w, pk.shape[0])
    if label == "triton dp4a int8":
        from babybitnet.triton_dp4a import dp4a_matmul, prepare_activations

        words = prepare_activations(x_q)
        return lambda: dp4a_matmul(words, pk, k, s_x, rows, torch.bfloat16, cfg)
    add_only = label == "triton int8 add-only"
    return lambda: ternary_matmul(x_q, pk, k, s_x, rows, torch.bfloat16, cfg, add_only)


def _check_contenders(x: torch.Tensor, w_t: torch.Tensor, packed: torch.Tensor, s_w: torch.Tensor, cfg: Config) -> None:
    """Raise if a contender is wrong: the int32 sums exactly, every output within bf16 rounding of float64."""
    n, k = w_t.shape
    x_i, s_x = quantize_activations(x.float())
    x_q, w64 = x_i.to(torch.int8), w_t.double()
    exact = x_q.double() @ w64.T  # integers far below 2**53: exact in float64
    for add_only in (True, False):
        if not torch.equal(ternary_matmul(x_q, packed, k, config=cfg, add_only=add_only).double(), exact):
            raise RuntimeError(f"the Triton kernel (add_only={add_only}) is wrong at N={n}, K={k}, M={x.shape[0]}")
    from babybitnet.triton_dp4a import dp4a_matmul, prepare_activations

    if not torch.equal(dp4a_matmul(prepare_activations(x_q), packed, k).double(), exact):
        raise RuntimeError(f"the dp4a kernel is wrong at N={n}, K={k}, M={x.shape[0]}")
    scaled = exact / (s_x.double() * row_scales(s_w, n, torch.float64))
    ref = x.double() @ w64.T
    outs = {label: (_triton_call(label, x, packed, k, s_w, _configs(label, (cfg,))[0])(), scaled) for label in VARIANTS}
    outs["triton bf16 x, add-only"] = (outs["triton bf16 x, add-only"][0], ref)
    outs["torch bf16"] = (x @ w_t.to(torch.bfloat16).T, ref)
    outs["torch fp16"] = (x.half() @ w_t.half().T, ref)
    for label, (got, want) in outs.items():
        err = float((got.double() - want).norm() / want.norm().clamp(min=1e-30))
        if not err < 1e-2:  # bf16 outputs land near 3e-3
            raise RuntimeError(f"{label} has relative error {err:.2e} at N={n}, K={k}, M={x.shape[0]}")


def bench_kernel(
    sizes: tuple[tuple[int, int], ...] = ((2560, 2560), (4096, 4096), (8192, 8192), (13824, 2560), (20480, 3200)),
    batches: tuple[int, ...] = (1, 8),
    repeats: int = 30,
    configs: tuple[Config, ...] = CONFIGS,
    device: str = "cuda",
) -> dict:
    """Microseconds of ``y = x @ W^T`` for W (N, K) in torch bf16, fp16 and the packed Triton kernel.

    ``sizes`` are (N, K) pairs (N outputs, K inputs); ``batches`` the token counts M. Per shape,
    every contender is checked once against the float64 product (the int32 sums exactly), then
    each Triton contender (:data:`VARIANTS`) tries every one of ``configs`` (BLOCK_N, BLOCK_K,
    num_warps) and keeps its fastest (reported). Timing replays CUDA graphs of many calls
    (median of ``repeats``, interleaved), cycling over enough weight copies to overflow the L2
    cache, so that the weights come from GPU memory as in a real model. GB/s counts the weight
    bytes read per call (bf16: 2 bytes per weight; packed: 1/4 byte); speedups are against bf16.
    """
    from babybitnet.bench import machine_info
    from babybitnet.packing import pack_2bit

    _require_triton()
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        raise RuntimeError("bench_kernel times CUDA kernels: it needs a CUDA GPU (torch.cuda.is_available())")
    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 50 * 2**20)
    gen = torch.Generator().manual_seed(0)
    s_w = torch.tensor([0.5], device=dev)  # one weight scale: its value only rescales
    rows = []
    for n, k in sizes:
        w_t = torch.randint(-1, 2, (n, k), generator=gen).to(torch.int8)
        packed = pack_2bit(w_t).to(dev)
        w_t = w_t.to(dev)
        n_packed, n_dense = _copies(packed.numel(), l2), _copies(2 * n * k, l2)
        packs = [packed.clone() for _ in range(n_packed)]
        dense = {dt: [w_t.to(dt) for _ in range(n_dense)] for dt in (torch.bfloat16, torch.float16)}
        loops = {"packed": max(1, math.ceil(32 / n_packed)), "dense": max(1, math.ceil(32 / n_dense))}
        for m in batches:
            x = torch.randn(m, k, generator=gen).to(dev, torch.bfloat16)
            _check_contenders(x, w_t, packed, s_w, configs[0])
            best: dict[str, Config] = {}
            tuning: dict[str, dict[str, float]] = {}
            for label in VARIANTS:  # each Triton contender tries every config and keeps the fastest
                tries = _configs(label, configs)
                fns = {str(c): [_triton_call(label, x, pk, k, s_w, c) for pk in packs] for c in tries}
                us = _graph_us(fns, dict.fromkeys(fns, loops["packed"]), max(5, repeats // 5))
                tuning[label] = us
                best[label] = tries[list(fns).index(min(us, key=us.get))]
            xh = x.half()
            fns = {
                "torch bf16": [functools.partial(torch.matmul, x, w.T) for w in dense[torch.bfloat16]],
                "torch fp16": [functools.partial(torch.matmul, xh, w.T) for w in dense[torch.float16]],
            }
            fns.update({label: [_triton_call(label, x, pk, k, s_w, best[label]) for pk in packs] for label in VARIANTS})
            us = _graph_us(
                fns, {name: loops["dense" if name.startswith("torch") else "packed"] for name in fns}, repeats
            )
            weight_bytes = {name: (2 * n * k if name.startswith("torch") else packed.numel()) for name in fns}
            rows.append(
                {
                    "n": n,
                    "k": k,
                    "m": m,
                    "us": us,
                    "gb_per_s": {name: weight_bytes[name] / (us[name] * 1e3) for name in us},
                    "speedup_vs_bf16": {name: us["torch bf16"] / us[name] for name in us},
                    "config": {label: list(c) for label, c in best.items()},
                    "tuning_us": tuning,
                    "copies": {"packed": n_packed, "dense": n_dense},
                }
            )
        del packs, dense
    return {
        "machine": machine_info(dev),
        "triton": triton.__version__,
        "repeats": repeats,
        "l2_bytes": l2,
        "variants": VARIANTS,
        "method": "CUDA graphs of >= 32 calls timed with CUDA events, median of repeats, contenders interleaved; "
        "weights cycled over copies that add up to at least twice the L2 cache",
        "rows": rows,
    }


def run_once(n: int, k: int, m: int = 1, calls: int = 3, device: str = "cuda") -> list[str]:
    """Run every contender of :func:`bench_kernel` ``calls`` times at one shape, untimed: for a profiler.

    ``ncu --clock-control none -k regex:"dp4a|ternary_gemv" python -m babybitnet bench kernel --once``
    then reads each kernel's hardware counters (memory and compute throughput, occupancy).
    Each contender uses its default config. Returns the contenders' labels.
    """
    from babybitnet.packing import pack_2bit

    _require_triton()
    if not torch.cuda.is_available():
        raise RuntimeError("run_once runs CUDA kernels: it needs a CUDA GPU (torch.cuda.is_available())")
    gen = torch.Generator().manual_seed(0)
    w_t = torch.randint(-1, 2, (n, k), generator=gen).to(torch.int8)
    packed, w16 = pack_2bit(w_t).to(device), w_t.to(device, torch.bfloat16)
    x = torch.randn(m, k, generator=gen).to(device, torch.bfloat16)
    s_w = torch.tensor([0.5], device=device)
    fns = {label: _triton_call(label, x, packed, k, s_w, None) for label in VARIANTS}  # None: each default config
    fns["torch bf16"] = functools.partial(torch.matmul, x, w16.T)
    for _ in range(calls):
        for f in fns.values():
            f()
    torch.cuda.synchronize()
    return list(fns)


def kernel_table(results: dict) -> str:
    """A markdown table of :func:`bench_kernel`'s results: one line per shape, batch and contender."""
    from babybitnet.bench import describe

    lines = [
        f"{describe(results['machine'])}, triton {results['triton']}; median of {results['repeats']} "
        "CUDA-graph replays, weights cold (cycled through more than the L2 cache)",
        "",
        "| N x K | M | kernel | config (BLOCK_N, BLOCK_K inputs or BLOCK_W words, warps) | µs | weight GB/s "
        "| speed vs bf16 |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for row in results["rows"]:
        for name, us in row["us"].items():
            cfg = row["config"].get(name)
            cfg = ", ".join(map(str, cfg)) if cfg else ""
            lines.append(
                f"| {row['n']} x {row['k']} | {row['m']} | {name} | {cfg} | {us:,.1f} | "
                f"{row['gb_per_s'][name]:,.0f} | {row['speedup_vs_bf16'][name]:.2f} |"
            )
    return "\n".join(lines)
