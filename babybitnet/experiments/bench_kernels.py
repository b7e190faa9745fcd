"""Benchmarks of the ternary matmuls: the CPU add-only versions (lesson 12) and the GPU kernels (lesson 13).

Every contender is checked once against the exact integer product, then all of them are timed
side by side in the same run (interleaved), and the results are ratios against the matmul a user
would otherwise pick (torch float32 on the CPU, cuBLAS bf16 on the GPU).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from babybitnet.addonly import addonly_matmul_packed, lut_matmul
from babybitnet.kernels import tuning
from babybitnet.kernels.cpu import ext_matmul_packed, load_extension
from babybitnet.kernels.triton_bitlinear import CONFIGS as BITLINEAR_CONFIGS
from babybitnet.kernels.triton_bitlinear import MAX_BLOCK_M as BITLINEAR_MAX_M
from babybitnet.kernels.triton_bitlinear import bitlinear_dp4a
from babybitnet.kernels.triton_common import Config, require_triton, triton
from babybitnet.kernels.triton_dp4a import CONFIGS as DP4A_CONFIGS
from babybitnet.kernels.triton_dp4a import dp4a_linear, dp4a_matmul, prepare_activations
from babybitnet.kernels.triton_gemv import CONFIGS, ternary_matmul, triton_packed_linear
from babybitnet.packing import pack_2bit
from babybitnet.quant import quantize_activations, row_scales
from babybitnet.runtime import describe, machine_info


# ---------------------------------------------------------------- the CPU matmuls (lesson 12)
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


# ---------------------------------------------------------------- the GPU kernels (Triton)
VARIANTS = {  # bench_kernel's Triton contenders: label -> what it runs
    "triton int8 add-only": "ternary_matmul, int8 x, selections and additions, rescale fused",
    "triton int8 (code-1)*x": "the same with a multiplication by (code - 1) instead of the selections",
    "triton bf16 x, add-only": "ternary_matmul on bf16 activations (no quantization), float32 sums",
    "triton_packed_linear": "the layer: torch quantize_activations, then the int8 add-only kernel",
    "triton dp4a int8": "triton_dp4a.dp4a_matmul: int32 words of 16 weights, 4 per dp4a instruction, rescale fused",
    "triton dp4a layer": "triton_dp4a.dp4a_linear: the fused quantizer kernel, then the dp4a kernel (2 launches)",
    "triton one-launch layer": "triton_bitlinear.bitlinear_dp4a: quantizer, dp4a GEMV and rescale in one kernel",
}
DP4A = ("triton dp4a int8", "triton dp4a layer")  # the contenders whose configs are (BLOCK_N, BLOCK_W words, warps)


def _variants(m: int) -> list[str]:
    """The Triton contenders for ``m`` tokens: the one-launch layer takes at most 16 (decode)."""
    return [label for label in VARIANTS if label != "triton one-launch layer" or m <= BITLINEAR_MAX_M]


def _configs(label: str, configs: tuple[Config, ...]) -> tuple[Config, ...]:
    """The configs contender ``label`` tries: ``configs`` for this module's kernel, the dp4a kernel's own."""
    if label in DP4A:
        return DP4A_CONFIGS
    if label == "triton one-launch layer":
        return BITLINEAR_CONFIGS
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
        return lambda: dp4a_linear(x, pk, s_w, k, cfg)
    if label == "triton one-launch layer":
        return lambda: bitlinear_dp4a(x, pk, s_w, k, cfg)
    x_i, s_x = quantize_activations(x.float())
    x_q, s_x, rows = x_i.to(torch.int8), s_x.reshape(-1), row_scales(s_w, pk.shape[0])
    if label == "triton dp4a int8":
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
    if not torch.equal(dp4a_matmul(prepare_activations(x_q), packed, k).double(), exact):
        raise RuntimeError(f"the dp4a kernel is wrong at N={n}, K={k}, M={x.shape[0]}")
    scaled = exact / (s_x.double() * row_scales(s_w, n, torch.float64))
    ref = x.double() @ w64.T
    outs = {
        label: (_triton_call(label, x, packed, k, s_w, _configs(label, (cfg,))[0])(), scaled)
        for label in _variants(x.shape[0])
    }
    outs["triton bf16 x, add-only"] = (outs["triton bf16 x, add-only"][0], ref)
    outs["torch bf16"] = (x @ w_t.to(torch.bfloat16).T, ref)
    outs["torch fp16"] = (x.half() @ w_t.half().T, ref)
    for label, (got, want) in outs.items():
        err = float((got.double() - want).norm() / want.norm().clamp(min=1e-30))
        if not err < 1e-2:  # bf16 outputs land near 3e-3
            raise RuntimeError(f"{label} has relative error {err:.2e} at N={n}, K={k}, M={x.shape[0]}")


def bench_kernel_variants(
    sizes: tuple[tuple[int, int], ...] = ((2560, 2560), (4096, 4096), (8192, 8192), (13824, 2560), (20480, 3200)),
    batches: tuple[int, ...] = (1, 8),
    repeats: int = 30,
    configs: tuple[Config, ...] = CONFIGS,
    device: str = "cuda",
) -> dict:
    """Lesson 13's study: microseconds of ``y = x @ W^T`` for W (N, K) in torch bf16, fp16 and every Triton kernel.

    (``bench kernel --variants``; plain ``bench kernel`` is :func:`bench_kernel`, the layer as it ships.)
    ``sizes`` are (N, K) pairs (N outputs, K inputs); ``batches`` the token counts M. Per shape,
    every contender is checked once against the float64 product (the int32 sums exactly), then
    each Triton contender (:data:`VARIANTS`) tries every one of ``configs`` (BLOCK_N, BLOCK_K,
    num_warps) and keeps its fastest (reported). Timing replays CUDA graphs of many calls
    (median of ``repeats``, interleaved), cycling over enough weight copies to overflow the L2
    cache, so that the weights come from GPU memory as in a real model. GB/s counts the weight
    bytes read per call (bf16: 2 bytes per weight; packed: 1/4 byte); speedups are against bf16.
    """
    require_triton()
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        raise RuntimeError("bench_kernel times CUDA kernels: it needs a CUDA GPU (torch.cuda.is_available())")
    dev, l2 = _cuda_device(device)
    gen = torch.Generator().manual_seed(0)
    s_w = torch.tensor([0.5], device=dev)  # one weight scale: its value only rescales
    rows = []
    for n, k in sizes:
        w_t = torch.randint(-1, 2, (n, k), generator=gen).to(torch.int8)
        packed = pack_2bit(w_t).to(dev)
        w_t = w_t.to(dev)
        n_packed, n_dense = tuning.weight_copies(packed.numel(), l2), tuning.weight_copies(2 * n * k, l2)
        packs = [packed.clone() for _ in range(n_packed)]
        dense = {dt: [w_t.to(dt) for _ in range(n_dense)] for dt in (torch.bfloat16, torch.float16)}
        loops = {"packed": max(1, math.ceil(32 / n_packed)), "dense": max(1, math.ceil(32 / n_dense))}
        for m in batches:
            x = torch.randn(m, k, generator=gen).to(dev, torch.bfloat16)
            _check_contenders(x, w_t, packed, s_w, configs[0])
            best: dict[str, Config] = {}
            tuned: dict[str, dict[str, float]] = {}
            for label in _variants(m):  # each Triton contender tries every config and keeps the fastest
                tries = _configs(label, configs)
                fns = {str(c): [_triton_call(label, x, pk, k, s_w, c) for pk in packs] for c in tries}
                us = tuning.graph_us(fns, dict.fromkeys(fns, loops["packed"]), max(5, repeats // 5))
                tuned[label] = us
                best[label] = tries[list(fns).index(min(us, key=us.get))]
            xh = x.half()
            fns = {
                "torch bf16": [functools.partial(torch.matmul, x, w.T) for w in dense[torch.bfloat16]],
                "torch fp16": [functools.partial(torch.matmul, xh, w.T) for w in dense[torch.float16]],
            }
            fns.update(
                {label: [_triton_call(label, x, pk, k, s_w, best[label]) for pk in packs] for label in _variants(m)}
            )
            us = tuning.graph_us(
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
                    "tuning_us": tuned,
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


def _cuda_device(device: str) -> tuple[torch.device, int]:
    """The CUDA device (with its index) and its L2 cache size in bytes."""
    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev, tuning.l2_bytes(dev)


# ---------------------------------------------------------------- the layer as it ships vs its peers (issue 15)
SHAPES = ((2560, 2560), (6912, 2560), (2560, 6912), (8192, 8192), (28672, 8192))  # (N, K): BitNet 2B4T, Llama 70B
BATCHES = (1, 8, 32, 128, 256)
BF16, INT8, OURS = "torch bf16 F.linear", "torch int8 _int_mm", "ours (packed_linear, tuned)"
GEMLITE = ("gemlite A16W158_INT", "gemlite A8W158_INT_dynamic")
PEERS = {
    BF16: "cuBLAS bf16 on bf16 weights (the baseline)",
    INT8: "cuBLAS int8 x int8 -> int32 on int8 weights, the matmul alone (no quantizer, no rescale); M > 16, "
    "N and K multiples of 8",
    OURS: "torch.ops.babybitnet.packed_linear as PackedBitLinear calls it: quantizer + the kernel the tuner chose",
    GEMLITE[0]: "gemlite 0.6, bf16 activations x 2-bit ternary weights (--peers)",
    GEMLITE[1]: "gemlite 0.6, int8 activations quantized per token in the layer x 2-bit ternary weights (--peers)",
}


def _gemlite_layers(w_t: torch.Tensor, s_w: float, copies: int, dev: torch.device) -> tuple[dict, str]:
    """gemlite's two ternary layers, ``copies`` of each, for W = w_t / s_w; ({}, why) if gemlite does not import."""
    try:
        import gemlite  # noqa: F401
        from gemlite.helper import A16W158_INT, A8W158_INT_dynamic
    except Exception as e:  # noqa: BLE001 -- not installed, or built for another torch: a note, not a failure
        return {}, f"gemlite skipped: {type(e).__name__}: {e}"
    w = w_t.to(dev, torch.bfloat16)
    scale = torch.tensor(1.0 / s_w)  # gemlite multiplies by weight_scale: ours divides by s_w
    layers: dict[str, list] = {name: [] for name in GEMLITE}
    for _ in range(copies):
        a16 = A16W158_INT(device=str(dev), dtype=torch.bfloat16).from_weights(w, scale)
        # gemlite 0.6 leaves its scales on the CPU, as a Parameter (so a plain tensor may not replace it)
        a16.scales = torch.nn.Parameter(a16.scales.detach().to(dev), requires_grad=False)
        layers[GEMLITE[0]].append(a16)
        layers[GEMLITE[1]].append(A8W158_INT_dynamic(device=str(dev), dtype=torch.bfloat16).from_weights(w, scale))
    return layers, ""


def _capturable(fn: Callable[[], object]) -> None:
    """Raise if ``fn`` cannot be recorded in a CUDA graph (the timing replays graphs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        fn()


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm().clamp(min=1e-30))


def bench_kernel(
    sizes: tuple[tuple[int, int], ...] = SHAPES,
    batches: tuple[int, ...] = BATCHES,
    repeats: int = 20,
    peers: bool = False,
    retune: bool = False,
    device: str = "cuda",
) -> dict:
    """Microseconds of the packed layer as PackedBitLinear runs it, against cuBLAS bf16 and int8, per shape and batch.

    ``sizes`` are (N, K) pairs, ``batches`` the token counts M. "ours" is
    ``torch.ops.babybitnet.packed_linear`` (activation quantizer included): its first call per shape
    tunes (:mod:`babybitnet.kernels.tuning`; the choice is stored in ~/.cache/babybitnet/tuning.json
    and reused, ``retune`` times again) and the row records the choice. ``peers`` adds gemlite's
    ternary layers if ``import gemlite`` works (else a note). Every contender is checked against
    the float64 product first. Timing as lesson 13's: CUDA graphs of >= 32 calls, median of
    ``repeats`` replays, contenders interleaved, weights cycled over copies that overflow the L2
    cache. Speedups are bf16's time over each contender's (> 1: faster than bf16).
    """
    from babybitnet.kernels import dispatch  # registers torch.ops.babybitnet.packed_linear

    require_triton()
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        raise RuntimeError("bench_kernel times CUDA kernels: it needs a CUDA GPU (torch.cuda.is_available())")
    dev, l2 = _cuda_device(device)
    if retune:
        dispatch.forget()
    gen = torch.Generator().manual_seed(0)
    s_w_value = 0.5
    s_w = torch.tensor([s_w_value], device=dev)
    rows, notes = [], []
    progress = tqdm(total=len(sizes) * len(batches), desc="bench kernel", unit="case")
    for n, k in sizes:
        w_t = torch.randint(-1, 2, (n, k), generator=gen).to(torch.int8)
        packed = pack_2bit(w_t).to(dev)
        w_t = w_t.to(dev)
        n_packed, n_bf16, n_int8 = (
            tuning.weight_copies(packed.numel(), l2),
            tuning.weight_copies(2 * n * k, l2),
            tuning.weight_copies(n * k, l2),
        )
        packs = [packed.clone() for _ in range(n_packed)]
        bf16 = [w_t.to(torch.bfloat16) for _ in range(n_bf16)]
        int8 = [w_t.clone() for _ in range(n_int8)] if n % 8 == 0 and k % 8 == 0 else []
        gem, note = _gemlite_layers(w_t, s_w_value, n_packed, dev) if peers else ({}, "")
        if note and note not in notes:
            notes.append(note)
        for m in batches:
            x = torch.randn(m, k, generator=gen).to(dev, torch.bfloat16)
            x_i, s_x = quantize_activations(x.float())
            x_q = x_i.to(torch.int8)
            exact = x_q.double() @ w_t.double().T
            plain = x.double() @ w_t.double().T  # x @ W_t^T; the float layer computes plain / s_w
            choice = dispatch.choice(x, packed, s_w, k)  # tunes this shape now if it was never tuned
            ours = torch.ops.babybitnet.packed_linear(x, packed, s_w, k)
            err = {
                OURS: _rel_err(ours, exact / (s_x.double() * s_w_value)),
                BF16: _rel_err(F.linear(x, bf16[0]), plain),
            }
            if not err[OURS] < 1e-2:
                raise RuntimeError(f"{OURS} ({choice}) has relative error {err[OURS]:.2e} at N={n}, K={k}, M={m}")
            fns: dict[str, list[Callable[[], object]]] = {
                BF16: [functools.partial(F.linear, x, w) for w in bf16],
                OURS: [functools.partial(torch.ops.babybitnet.packed_linear, x, pk, s_w, k) for pk in packs],
            }
            if int8 and m > 16:
                if not torch.equal(torch._int_mm(x_q, int8[0].T).double(), exact):
                    raise RuntimeError(f"{INT8} is wrong at N={n}, K={k}, M={m}")
                fns[INT8] = [functools.partial(torch._int_mm, x_q, w.T) for w in int8]
            for name, layers in gem.items():
                try:
                    err[name] = _rel_err(layers[0](x), plain / s_w_value)
                    _capturable(functools.partial(layers[0], x))
                    fns[name] = [functools.partial(layer, x) for layer in layers]
                except Exception as e:  # noqa: BLE001 -- a peer that fails at one shape: a note, the rest still runs
                    notes.append(f"{name} failed at N={n}, K={k}, M={m}: {type(e).__name__}: {str(e)[:200]}")
            calls = {name: len(v) for name, v in fns.items()}
            us = tuning.graph_us(fns, {name: max(1, math.ceil(32 / c)) for name, c in calls.items()}, repeats)
            key = tuning.tuning_key(dispatch.KERNEL, n, k, tuning.bucket_m(m), torch.cuda.get_device_name(dev))
            rows.append(
                {
                    "n": n,
                    "k": k,
                    "m": m,
                    "us": us,
                    "speedup_vs_bf16": {name: us[BF16] / t for name, t in us.items()},
                    "choice": choice,
                    "tuning_us": dispatch.TUNER.timings.get(key),
                    "rel_err": err,
                    "copies": calls,
                }
            )
            progress.update()
        del packs, bf16, int8, gem
    progress.close()
    return {
        "kind": "layer",
        "machine": machine_info(dev),
        "triton": triton.__version__,
        "repeats": repeats,
        "l2_bytes": l2,
        "peers": {name: what for name, what in PEERS.items() if name in {c for r in rows for c in r["us"]}},
        "notes": notes,
        "tuning_cache": str(dispatch.TUNER.file()),
        "method": "CUDA graphs of >= 32 calls timed with CUDA events, median of repeats, contenders interleaved; "
        "weights cycled over copies that add up to at least twice the L2 cache; bf16 activations",
        "rows": rows,
    }


def layer_table(results: dict) -> str:
    """A markdown table of :func:`bench_kernel`'s results: one line per shape and batch, µs and speed vs bf16."""
    names = list(dict.fromkeys(name for row in results["rows"] for name in row["us"]))
    lines = [
        f"{describe(results['machine'])}, triton {results['triton']}; median of {results['repeats']} CUDA-graph "
        "replays, weights cold (cycled through more than the L2 cache); speed = bf16's time / its time",
        "",
        "| N x K | M | bf16 µs | " + " | ".join(n for n in names if n != BF16) + " | ours runs |",
        "|---|---:|---:|" + "---:|" * (len(names) - 1) + "---|",
    ]
    for row in results["rows"]:
        cells = []
        for name in names:
            if name == BF16:
                continue
            t = row["us"].get(name)
            cells.append(f"{t:,.1f} µs, {row['speedup_vs_bf16'][name]:.2f}x" if t is not None else "")
        lines.append(
            f"| {row['n']} x {row['k']} | {row['m']} | {row['us'][BF16]:,.1f} | " + " | ".join(cells) + f" | "
            f"{row['choice']} |"
        )
    lines += [""] + [f"- {name}: {what}" for name, what in results["peers"].items()]
    lines += [f"- note: {note}" for note in results["notes"]]
    return "\n".join(lines)


def run_once(n: int, k: int, m: int = 1, calls: int = 3, device: str = "cuda") -> list[str]:
    """Run every contender of :func:`bench_kernel` ``calls`` times at one shape, untimed: for a profiler.

    ``ncu --clock-control none -k regex:"dp4a|ternary|quantize" python -m babybitnet bench kernel --once``
    then reads each kernel's hardware counters (memory and compute throughput, occupancy).
    Each Triton variant uses its default config; the layer as PackedBitLinear runs it uses the stored
    tuning choice for this shape (run ``bench kernel`` at the shape first, or its tuning is profiled too).
    Returns the contenders' labels.
    """
    from babybitnet.kernels import dispatch  # registers torch.ops.babybitnet.packed_linear

    require_triton()
    if not torch.cuda.is_available():
        raise RuntimeError("run_once runs CUDA kernels: it needs a CUDA GPU (torch.cuda.is_available())")
    gen = torch.Generator().manual_seed(0)
    w_t = torch.randint(-1, 2, (n, k), generator=gen).to(torch.int8)
    packed, w16 = pack_2bit(w_t).to(device), w_t.to(device, torch.bfloat16)
    x = torch.randn(m, k, generator=gen).to(device, torch.bfloat16)
    s_w = torch.tensor([0.5], device=device)
    fns = {label: _triton_call(label, x, packed, k, s_w, None) for label in _variants(m)}  # None: each default config
    fns["torch bf16"] = functools.partial(torch.matmul, x, w16.T)
    fns[f"{OURS}: {dispatch.choice(x, packed, s_w, k)}"] = functools.partial(
        torch.ops.babybitnet.packed_linear, x, packed, s_w, k
    )
    for _ in range(calls):
        for f in fns.values():
            f()
    torch.cuda.synchronize()
    return list(fns)


def kernel_table(results: dict) -> str:
    """A markdown table of :func:`bench_kernel_variants`' results (one line per shape, batch and contender),
    or of :func:`bench_kernel`'s (:func:`layer_table`)."""
    if results.get("kind") == "layer":
        return layer_table(results)
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
