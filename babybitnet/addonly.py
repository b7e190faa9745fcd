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

1. :func:`addonly_matmul_loop`: Python loops, the definition above, for tiny sizes.
2. :func:`addonly_matmul`: the same vectorized with boolean masks (``torch.where`` and ``sum``).
3. :func:`addonly_matmul_packed`: the same straight from 2-bit packed weights (see below).
4. :func:`lut_matmul`: the table look-up idea of T-MAC and bitnet.cpp: for every group of 4
   activations, precompute the 256 possible partial sums once, then each output is a sum of
   look-ups indexed by the packed bytes themselves.
5. :func:`ext_matmul_packed`: a small C++ kernel (``csrc/ternary_gemv.cpp``, AVX2 sign/add,
   built on first use) that beats PyTorch's float32 matmul on a CPU.

:func:`packed_linear` puts it together as a layer: quantize, add-only matmul, one rescale.
:func:`bench_matmul` times all of them beside PyTorch's float32 and int8 matmuls.

The 2-bit format (``babybitnet.packing``): ``code = w + 1`` (-1 -> 0b00, 0 -> 0b01, +1 -> 0b10),
packed along the input dimension: weight ``j`` of a row is in byte ``j // 4``, bits
``2*(j%4)`` and ``2*(j%4)+1``; rows are padded to a multiple of 4 with code 0b01 (zero). An
(N, K) ternary matrix packs to uint8 (N, ceil(K/4)).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from babybitnet.bitlinear import row_scales
from babybitnet.packing import pack_2bit
from babybitnet.quant import quantize_activations

CODE_MINUS, CODE_ZERO, CODE_PLUS = 0b00, 0b01, 0b10  # code = w + 1
NO_EXT_ENV = "BABYBITNET_NO_EXT"  # set to 1 to never build or use the C++ kernel
_CHUNK_ELEMENTS = 1 << 22  # cap on the (M, rows, K) intermediates of the pure-torch versions (16 MB of int32)


# ---------------------------------------------------------------- checks
def _check_x_q(x_q: torch.Tensor) -> None:
    if not isinstance(x_q, torch.Tensor) or x_q.dtype != torch.int8:
        got = x_q.dtype if isinstance(x_q, torch.Tensor) else type(x_q).__name__
        raise ValueError(f"x_q must be an int8 tensor (quantize_activations(x)[0].to(torch.int8)), got {got}")
    if x_q.dim() != 2:
        raise ValueError(f"x_q must be 2-D (tokens M, inputs K), got shape {tuple(x_q.shape)}")


def _check_ternary(w_t: torch.Tensor) -> None:
    if not isinstance(w_t, torch.Tensor) or w_t.dtype != torch.int8:
        got = w_t.dtype if isinstance(w_t, torch.Tensor) else type(w_t).__name__
        raise ValueError(f"w_t must be an int8 tensor of ternary weights (w_t.to(torch.int8)), got {got}")
    if w_t.dim() != 2:
        raise ValueError(f"w_t must be 2-D (outputs N, inputs K), got shape {tuple(w_t.shape)}")
    if w_t.numel() and bool(((w_t < -1) | (w_t > 1)).any()):
        bad = w_t[(w_t < -1) | (w_t > 1)].unique()[:5].tolist()
        raise ValueError(f"w_t must be ternary (values in {{-1, 0, 1}}), found values such as {bad}")


def _check_unpacked(x_q: torch.Tensor, w_t: torch.Tensor) -> None:
    _check_x_q(x_q)
    _check_ternary(w_t)
    if x_q.shape[1] != w_t.shape[1]:
        raise ValueError(f"K mismatch: x_q has K={x_q.shape[1]} inputs per token but w_t has K={w_t.shape[1]}")


def _check_packed(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> None:
    _check_x_q(x_q)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 2:
        what = f"{packed.dtype} {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"packed must be a 2-D uint8 tensor (N, ceil(K/4)) from pack_2bit, got {what}")
    if x_q.shape[1] != k:
        raise ValueError(f"K mismatch: x_q has K={x_q.shape[1]} inputs per token but k={k}")
    if packed.shape[1] != (k + 3) // 4:
        raise ValueError(
            f"K mismatch: k={k} weights per row pack into {(k + 3) // 4} bytes, but packed rows have "
            f"{packed.shape[1]} bytes (room for K={4 * packed.shape[1]})"
        )


def _row_chunk(m: int, k: int) -> int:
    """How many output rows to process at once so that an (M, rows, K) intermediate stays small."""
    return max(1, _CHUNK_ELEMENTS // max(1, m * k))


# ---------------------------------------------------------------- 1. the definition, in Python loops
def addonly_matmul_loop(x_q: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """``x_q @ w_t^T`` with Python loops and no multiplication: int8 (M, K), int8 (N, K) -> int32 (M, N).

    Slow (M * N * K Python steps): for tiny sizes, to read.
    """
    _check_unpacked(x_q, w_t)
    xs, ws = x_q.tolist(), w_t.tolist()
    out = []
    for x_row in xs:  # one token
        out_row = []
        for w_row in ws:  # one output feature
            acc = 0
            for x, w in zip(x_row, w_row, strict=True):
                if w == 1:
                    acc += x  # weight +1: add the activation
                elif w == -1:
                    acc -= x  # weight -1: subtract it
                # weight 0: skip it (that is the sparsity BitNet's zeros buy)
            out_row.append(acc)
        out.append(out_row)
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
    _check_packed(x_q, packed, k)
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
    _check_packed(x_q, packed, k)
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


# ---------------------------------------------------------------- 5. the C++ kernel
_SOURCE = Path(__file__).resolve().parent / "csrc" / "ternary_gemv.cpp"
_ext: ModuleType | None = None
_ext_tried = False


def _build_directory() -> Path:
    """Where the compiled kernel lives: per torch version and CPU model, since we compile with -march=native."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("model name")), "")
    except OSError:
        cpu = ""
    tag = hashlib.sha1(f"{sys.platform} {cpu} {sys.version_info[:2]}".encode()).hexdigest()[:10]
    name = f"torch-{torch.__version__.replace('+', '_')}-{tag}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "babybitnet" / "ext" / name
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK):
            return cache
    except OSError:
        pass
    tmp = Path(tempfile.gettempdir()) / f"babybitnet-ext-{os.getuid() if hasattr(os, 'getuid') else 0}" / name
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def _compile_flags() -> list[str]:
    if sys.platform == "win32":
        return ["/O2"]  # MSVC: the portable scalar path (no __AVX2__ unless /arch:AVX2)
    flags = ["-O3", "-march=native"]
    # at::parallel_for's OpenMP backend is header code (#pragma omp parallel): without -fopenmp it runs on one thread
    if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info():
        flags.append("-fopenmp")
    return flags


def load_extension() -> ModuleType | None:
    """The compiled C++ kernel, built on first use (20 s to a minute) and cached, or None if it cannot be built.

    None comes with one warning saying why (no compiler, no ninja, a build error); callers then
    use the pure-torch code. ``BABYBITNET_NO_EXT=1`` skips the kernel without trying.
    """
    global _ext, _ext_tried
    if os.environ.get(NO_EXT_ENV, "") not in ("", "0"):
        return None
    if _ext_tried:
        return _ext
    _ext_tried = True
    try:
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            raise RuntimeError("ninja is not installed (pip install ninja)")
        compiler = os.environ.get("CXX", "cl" if sys.platform == "win32" else "c++")
        if not any(map(shutil.which, (compiler, "g++", "clang++"))):
            raise RuntimeError(f"no C++ compiler found ({compiler}, g++ or clang++)")
        _ext = cpp_extension.load(
            name="babybitnet_ternary_gemv",
            sources=[str(_SOURCE)],
            extra_cflags=_compile_flags(),
            build_directory=str(_build_directory()),
            verbose=False,
        )
    except Exception as e:  # any failure means "use the fallback", and we say why
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(
            f"babybitnet: the C++ add-only kernel is unavailable, using pure torch instead ({first_line}). "
            f"Set {NO_EXT_ENV}=1 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        _ext = None
    return _ext


def ext_matmul_packed(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """``x_q @ W_t^T`` with the C++ kernel: int8 (M, k) in [-127, 127], uint8 (N, ceil(k/4)), k -> int32 (M, N).

    Raises RuntimeError if the extension is unavailable (see :func:`load_extension`).
    """
    _check_packed(x_q, packed, k)
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"the C++ kernel is unavailable ({NO_EXT_ENV} is set or it failed to build)")
    if k % 4:
        x_q = F.pad(x_q, (0, 4 * packed.shape[1] - k))  # the kernel wants K_pad = 4 * bytes per row; zeros add nothing
    # the kernel itself rejects -128 (ValueError): it negates int8 values, and -(-128) does not fit in int8
    return ext.ternary_matmul_packed(x_q, packed)


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
    """
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (..., K), got {x.dtype}")
    if x.shape[-1] != k:
        raise ValueError(f"K mismatch: x has K={x.shape[-1]} features but the packed weights have k={k}")
    n = packed.shape[0]
    scales = row_scales(s_w, n, x.dtype)
    x_i, s_x = quantize_activations(x)  # integers in [-127, 127] as floats, (..., 1)
    acc = matmul_packed(x_i.reshape(-1, k).to(torch.int8), packed, k)  # (M, N) int32, exact
    acc = acc.reshape(*x.shape[:-1], n).to(x.dtype)
    return acc / (s_x * scales)


# ---------------------------------------------------------------- 7. benchmark
def _int8_matmul() -> tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """torch's int8 x int8 -> int32 matmul if this build has it on CPU, else a labelled int32 matmul."""
    a, b = torch.ones(1, 32, dtype=torch.int8), torch.ones(32, 8, dtype=torch.int8)
    try:
        if torch.equal(torch._int_mm(a, b), torch.full((1, 8), 32, dtype=torch.int32)):
            return "torch int8 (_int_mm)", lambda x_q, w_t: torch._int_mm(x_q, w_t.T)
    except (AttributeError, RuntimeError):
        pass
    return "torch int32 matmul (no CPU _int_mm)", lambda x_q, w_t: x_q.int() @ w_t.int().T


def _contenders(
    x_q: torch.Tensor, w_t: torch.Tensor, packed: torch.Tensor, int8_name: str, int8_mm: Callable, lut: bool, ext: bool
) -> dict[str, Callable[[], torch.Tensor]]:
    """The matmuls to time, each a no-argument function of the same (M, N) problem."""
    k, x_f, w_f = x_q.shape[1], x_q.float(), w_t.float()  # x_f integer-valued: the fp32 product is exact too
    fns = {
        "torch fp32 F.linear": lambda: F.linear(x_f, w_f),
        int8_name: lambda: int8_mm(x_q, w_t),
        "addonly_matmul_packed (pure torch)": lambda: addonly_matmul_packed(x_q, packed, k),
    }
    if lut:
        fns["lut_matmul (pure torch)"] = lambda: lut_matmul(x_q, packed, k)
    if ext:
        fns["C++ kernel (ternary_matmul_packed)"] = lambda: ext_matmul_packed(x_q, packed, k)
    return fns


def bench_matmul(
    sizes: tuple[int, ...] = (1024, 4096),
    batches: tuple[int, ...] = (1, 8),
    repeats: int = 20,
    threads: int | None = None,
    lut_max_size: int = 4096,
) -> dict:
    """Microseconds of an (M, N) x (N, N) ternary matmul for each backend, interleaved, median of ``repeats``.

    Contenders: torch float32 ``F.linear`` (the baseline), torch's int8 matmul, the pure-torch
    add-only and look-up versions (look-up only for N <= ``lut_max_size``: it gathers M * N * N/4
    table entries) and the C++ kernel if it builds. Every contender is checked once against the
    exact int64 product before it is timed. ``threads`` sets torch's thread count meanwhile. The
    fast contenders are interleaved, ``repeats`` times; the pure-torch ones are timed after them, 3 times.
    """
    from babybitnet.bench import machine_info

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        ext = load_extension()
        int8_name, int8_mm = _int8_matmul()
        gen = torch.Generator().manual_seed(0)
        rows = []
        for n in sizes:
            w_t = torch.randint(-1, 2, (n, n), generator=gen).to(torch.int8)
            packed = pack_2bit(w_t)
            for m in batches:
                x_q = quantize_activations(torch.randn(m, n, generator=gen))[0].to(torch.int8)
                fns = _contenders(x_q, w_t, packed, int8_name, int8_mm, lut=n <= lut_max_size, ext=ext is not None)
                exact = x_q.long() @ w_t.long().T
                for name, fn in fns.items():
                    if not torch.equal(fn().long(), exact):
                        raise RuntimeError(f"{name} gave a wrong result at N={n}, M={m}")
                # The pure-torch versions are 10-500x slower: timed apart, with fewer repeats, so that
                # their long runs (which flush the caches and park the worker threads) do not slow
                # down the fast contenders, which are interleaved: a burst of load hits them alike.
                slow = [name for name in fns if "pure torch" in name]
                us = {}
                for group, reps in (([n_ for n_ in fns if n_ not in slow], repeats), (slow, min(repeats, 3))):
                    times: dict[str, list[float]] = {name: [] for name in group}
                    for _ in range(reps):
                        for name in group:
                            t0 = time.perf_counter()
                            fns[name]()
                            times[name].append(time.perf_counter() - t0)
                    us.update({name: 1e6 * statistics.median(t) for name, t in times.items()})
                base = us["torch fp32 F.linear"]
                rows.append({"n": n, "m": m, "us": us, "speedup_vs_fp32": {k: base / v for k, v in us.items()}})
        return {"machine": machine_info("cpu"), "repeats": repeats, "extension": ext is not None, "rows": rows}
    finally:
        torch.set_num_threads(old_threads)


def matmul_table(results: dict) -> str:
    """A markdown table of :func:`bench_matmul`'s results, one line per size, batch and backend."""
    from babybitnet.bench import describe

    lines = [
        f"{describe(results['machine'])}; median of {results['repeats']} interleaved runs "
        "(pure-torch versions: of 3 runs, timed apart)",
        "",
        "| N x N | M | backend | µs | speed vs fp32 (> 1 = faster than fp32) |",
        "|---|---:|---|---:|---:|",
    ]
    for row in results["rows"]:
        for name, us in row["us"].items():
            size = f"{row['n']} x {row['n']}"
            lines.append(f"| {size} | {row['m']} | {name} | {us:,.0f} | {row['speedup_vs_fp32'][name]:.2f} |")
    if not results["extension"]:
        lines.append("\n(the C++ kernel did not load: see the warning above)")
    return "\n".join(lines)
