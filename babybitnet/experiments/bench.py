"""Benchmarks: commands that time things side by side in one run and print ratios.

Timings depend on the machine and on what else it is doing, so we never
compare numbers from different runs: every benchmark measures all of its
contenders in the same process, interleaved, and reports their ratio.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from babybitnet import decode
from babybitnet.attention import MultiHeadAttention
from babybitnet.bitlinear import BitLinear
from babybitnet.data import CharTokenizer, get_batch, load_dataset, load_text
from babybitnet.files import save_packed
from babybitnet.gpt import GPT
from babybitnet.packed import PackedBitLinear, pack_model
from babybitnet.presets import MODELS, build_model
from babybitnet.runtime import describe, machine_info, resolve_device
from babybitnet.train import make_optimizer


def seed_style_gpt(model: GPT) -> GPT:
    """Turn a babyGPT into the seed project's layout: one module per head, explicit masked softmax.

    Same parameters and same function as our fused attention (the tests prove it),
    only slower: this is how the seed (and "Let's build GPT") computed attention,
    so timing it beside ours says how our babyBitNet compares with the seed's babyGPT.
    """
    for block in model.blocks:
        fused = block.attn
        heads = MultiHeadAttention(fused.n_embd, fused.n_head, fused.dropout_p, fused.scale)
        block.attn = heads.to(fused.qkv.weight.device)
    return model


def bench_train(
    preset: str = "seed", steps: int = 100, repeats: int = 5, warmup: int = 20, device: str = "cpu"
) -> dict:
    """Milliseconds per training step (forward, backward, AdamW) of babyGPT and babyBitNet.

    A third contender, ``seed_gpt``, is babyGPT laid out as the seed project had
    it (a module per attention head, PyTorch's default AdamW). The contenders
    take turns, ``repeats`` rounds of ``steps`` steps each, and we report the
    median round, so a burst of background load hits all of them.
    """
    dev = resolve_device(device)
    tok, train_data, _ = load_dataset()
    runs = {}
    for name in (*MODELS, "seed_gpt"):
        model, tcfg = build_model(preset, "gpt" if name == "seed_gpt" else name, tok.vocab_size)
        if name == "seed_gpt":
            model = seed_style_gpt(model)
            opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr)  # the seed's optimizer, not fused
        else:
            opt = make_optimizer(model, tcfg, dev)
        runs[name] = (model.to(dev).train(), opt, tcfg, torch.Generator().manual_seed(tcfg.seed))

    def run_steps(name: str, n: int) -> float:
        model, opt, tcfg, g = runs[name]
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = get_batch(train_data, tcfg.batch_size, model.config.block_size, g, dev)
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - t0) / n

    for name in runs:
        run_steps(name, warmup)
    rounds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name in runs:
            rounds[name].append(run_steps(name, steps))
    ms = {name: statistics.median(v) for name, v in rounds.items()}
    return {
        "preset": preset,
        "machine": machine_info(dev),
        "steps_per_round": steps,
        "rounds": rounds,
        "ms_per_step": ms,
        "ratio_bitnet_over_gpt": ms["bitnet"] / ms["gpt"],
        "ratio_bitnet_over_seed_gpt": ms["bitnet"] / ms["seed_gpt"],
    }


GENERATE_MODELS = {"gpt": "babyGPT", "bitnet": "babyBitNet", "bitnet_packed": "packed babyBitNet"}


def weight_shapes(model: GPT) -> dict[str, int]:
    """The BitLinear weight matrices of a babyBitNet: 'NxK' (N outputs x K inputs, as ``bench kernel``) -> count."""
    shapes: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, BitLinear):
            key = f"{m.out_features}x{m.in_features}"
            shapes[key] = shapes.get(key, 0) + 1
    return shapes


def bench_generate(
    preset: str = "nanogpt",
    tokens: int = 200,
    prompt: str = "ROMEO:",
    device: str = "cuda",
    dtype: torch.dtype | str = torch.bfloat16,
    repeats: int = 3,
    compile: bool = False,
    threads: int | None = None,
    profile: bool = False,
) -> dict:
    """Tokens per second of greedy generation, batch 1, with the KV cache: babyGPT, babyBitNet, packed babyBitNet.

    The models are freshly initialised (seeded), not trained: the time per token does not
    depend on the weights' values. All three are cast to ``dtype`` (``model.to(dtype)``, as for
    inference); the babyBitNet is packed (2 bits) after the cast, so both babyBitNets hold
    the same ternary weights and scales. On a CUDA GPU the packed layers run the Triton kernel
    of lesson 13; on the CPU the add-only C++ kernel of lesson 12 (in float32: quantization, sums
    and rescale in one C++ call per layer), or, where it cannot be built, unpack and multiply in
    float (``int_linear``). babyGPT runs PyTorch's float matmuls (MKL/oneDNN) in the same process.

    One warm-up generation each, then ``repeats`` interleaved rounds; we report the median
    round. A round is one ``generate`` call: the prompt's prefill and ``tokens`` steps.
    Past ``block_size`` tokens generation drops the cache (see ``GPT.generate``):
    ``tokens_with_cache`` says how many steps had it. ``threads``: torch's CPU threads for the
    run, the same for every model (None: leave torch's setting); the old value comes back after.
    ``profile``: after the timed rounds, to say where a token's time goes: on the CPU ``repeats`` more
    rounds, interleaved, under :func:`module_profile` (ms per token by kind of module); on a GPU one more
    generation per model under
    :func:`kernel_profile` (GPU ms per token by kind of kernel on the critical path, from ``torch.profiler``
    over the graph-captured generation).
    """
    dev = resolve_device(device)
    if profile and dev.type not in ("cpu", "cuda"):
        raise ValueError(f"profile works on the CPU (forward hooks) and on CUDA (torch.profiler), not on {dev.type}")
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if tokens < 1 or repeats < 1:
        raise ValueError(f"tokens and repeats must be at least 1, got {tokens} and {repeats}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None (torch's setting) or an int >= 1, got {threads!r}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench_generate(preset, tokens, prompt, dev, dtype, repeats, compile, profile)
    finally:
        torch.set_num_threads(old_threads)


def _bench_generate(
    preset: str,
    tokens: int,
    prompt: str,
    dev: torch.device,
    dtype: torch.dtype,
    repeats: int,
    compile: bool,
    profile: bool = False,
) -> dict:
    """:func:`bench_generate` once the threads are set."""
    from babybitnet.kernels.cpu import load_extension
    from babybitnet.kernels.triton_common import use_pdl
    from babybitnet.packed import _triton_available

    tok = CharTokenizer.from_text(load_text())
    idx = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=dev)
    if idx.shape[1] == 0:
        raise ValueError("the prompt must hold at least one character")
    gpt, _ = build_model(preset, "gpt", tok.vocab_size)  # seeded: the same weights every run
    bitnet, _ = build_model(preset, "bitnet", tok.vocab_size)
    gpt, bitnet = (m.to(device=dev, dtype=dtype).eval() for m in (gpt, bitnet))
    # .to(dtype) again: pack_model builds the norms inside PackedBitLinear in float32
    models = {"gpt": gpt, "bitnet": bitnet, "bitnet_packed": pack_model(bitnet, "2bit").to(dtype)}
    layers = [m for m in models["bitnet_packed"].modules() if isinstance(m, PackedBitLinear)]
    if dev.type == "cuda" and _triton_available():
        kernel = "triton dp4a" if all(m.in_features % 16 == 0 for m in layers) else "triton (dp4a and gemv)"
    elif dev.type == "cpu" and load_extension() is not None:
        fused = ", norm + quantize + sums + rescale in one call" if dtype == torch.float32 else ""
        kernel = f"C++ add-only kernel ({'AVX2' if load_extension().has_avx2() else 'portable'}{fused})"
    else:
        kernel = "int_linear (unpack, then a float matmul)"

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run(name: str) -> tuple[float, torch.Tensor]:
        sync()
        t0 = time.perf_counter()
        out = models[name].generate(idx, tokens, temperature=0, use_cache=True, compile=compile)
        sync()
        return time.perf_counter() - t0, out

    outputs = {name: run(name)[1] for name in models}  # warm-up (and the Triton compilation)
    rounds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name in models:
            seconds, outputs[name] = run(name)
            rounds[name].append(seconds)
    results = {}
    for name in models:
        seconds = statistics.median(rounds[name])
        results[name] = {
            "tokens_per_s": tokens / seconds,
            "ms_per_token": 1000 * seconds / tokens,
            "rounds_s": rounds[name],
            "text": tok.decode(outputs[name][0]),
        }
    block_size = gpt.config.block_size
    profiles, top_kernels = {}, {}
    if profile and dev.type == "cuda":  # the kernels of the replayed graphs, as in the timed rounds
        steps = min(tokens, block_size - idx.shape[1]) + idx.shape[1] - 1  # decode steps, prompt included
        for name in models:
            profiles[name], top_kernels[name] = kernel_profile(lambda name=name: run(name), steps)
    elif profile:  # after the timed rounds: the hooks slow every module call down a little
        # interleaved rounds, as the timed ones: a machine whose speed drifts slows every model alike
        seconds: dict[str, dict[str, float]] = {name: {} for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                for kind, t in module_profile(model, lambda name=name: run(name)).items():
                    seconds[name][kind] = seconds[name].get(kind, 0.0) + t
        for name, kinds in seconds.items():  # ms per token, the longest first
            profiles[name] = {k: 1000 * t / (tokens * repeats) for k, t in sorted(kinds.items(), key=lambda kv: -kv[1])}
    return {
        "preset": preset,
        "machine": machine_info(dev),
        "dtype": str(dtype).removeprefix("torch."),
        "decode": (
            "static KV cache, one CUDA graph per token (babybitnet.decode)"
            if dev.type == "cuda"
            else "KV cache, eager (GPT.generate)"
        )
        + (", torch.compile" if compile else ""),
        "compile": compile,
        "threads": torch.get_num_threads(),
        "batch": 1,
        "prompt": prompt,
        "tokens": tokens,
        "repeats": repeats,
        "weights": "random init (seeded): speed does not depend on the values",
        "block_size": block_size,
        "tokens_with_cache": max(0, min(tokens, block_size - idx.shape[1] + 1)),
        "kernel": kernel,
        "attention": (
            "one Triton kernel per layer: cache write + attention (kernels.triton_attention)"
            if decode.fused_attention_available(dev)
            else "index_copy_ into the cache, a mask, scaled_dot_product_attention"
        ),
        "pdl": use_pdl(dev),  # programmatic dependent launch of the Triton kernels (Hopper)
        "weight_shapes": weight_shapes(bitnet),
        "params": {"gpt": gpt.num_params(), "bitnet": bitnet.num_params()},
        "models": results,
        "ratio_packed_over_gpt": results["bitnet_packed"]["tokens_per_s"] / results["gpt"]["tokens_per_s"],
        "ratio_packed_over_bitnet": results["bitnet_packed"]["tokens_per_s"] / results["bitnet"]["tokens_per_s"],
        "same_tokens": bool(torch.equal(outputs["bitnet"], outputs["bitnet_packed"])),
        "first_difference": first_difference(outputs["bitnet"][0], outputs["bitnet_packed"][0], idx.shape[1]),
        **({"profile": profiles} if profile else {}),
        **({"profile_method": PROFILE_METHODS[dev.type], "top_kernels": top_kernels} if top_kernels else {}),
    }


def first_difference(a: torch.Tensor, b: torch.Tensor, prompt: int) -> int | None:
    """How many new tokens (after ``prompt`` tokens) two generations (T,) share before they differ; None if equal.

    With random weights the logits are nearly tied, so a difference in the last bit of one float
    (a norm summed in another order, a bf16 rescale) can pick another token after many equal ones.
    """
    n = min(len(a), len(b))
    same = (a[:n] == b[:n]).tolist() + [False] * (max(len(a), len(b)) - n)
    return None if all(same) else same.index(False) - prompt


PROFILE_METHODS = {
    "cpu": "self time per kind of module, forward hooks",
    "cuda": "GPU time per kind of kernel on the critical path, torch.profiler over the graph-captured generation",
}


def kernel_kind(name: str) -> str:
    """What a CUDA kernel of a decode step does, from its name (for :func:`kernel_profile`)."""
    n = name.lower()
    if any(s in n for s in ("ternary_", "bitlinear_dp4a", "quantize_words")):
        return "packed linear (ours)"
    if any(s in n for s in ("flash", "fmha", "attention", "sdpa", "softmax")):
        return "attention"
    if any(s in n for s in ("gemm", "gemv", "nvjet", "cutlass", "xmma", "splitk", "cublas")):
        return "cuBLAS matmul"
    if n.startswith(("triton_", "fused_")):
        return "fused by torch.compile"
    if "memcpy" in n or "memset" in n:
        return "copies"
    return "other (norms, elementwise)"


def critical_path(kernels: list[tuple[str, float, float]]) -> tuple[dict[str, list[float]], float]:
    """Each kernel's share of the GPU's busy time, from (name, start, end) intervals in any order.

    Kernels overlap (with PDL a kernel starts while the one before finishes, and waits), so their
    durations add up to more than the time they took. Walking them by start time, each kernel counts
    only the time by which it extends the busy span so far: a kernel that ends inside another counts
    nothing, one that starts during another counts from where that one ends. The shares add up to the
    union of the intervals. Returns ({name: [share, busy (its own duration), calls]}, idle): idle is
    the time between the first start and the last end when no kernel ran (gaps between kernels: a
    launch not yet done, or the host not yet there).
    """
    per_kernel: dict[str, list[float]] = {}
    if not kernels:
        return per_kernel, 0.0
    ordered = sorted(kernels, key=lambda k: k[1])
    first, end, union = ordered[0][1], ordered[0][1], 0.0
    for name, t0, t1 in ordered:
        share = max(0.0, t1 - max(end, t0))
        union += share
        end = max(end, t1)
        total = per_kernel.setdefault(name, [0.0, 0.0, 0])
        total[0] += share
        total[1] += t1 - t0
        total[2] += 1
    return per_kernel, (end - first) - union


def kernel_profile(run: Callable[[], object], steps: int) -> tuple[dict[str, float], dict[str, list]]:
    """GPU milliseconds per decode step of ``run()`` by kind of kernel (:func:`kernel_kind`), and the top kernels.

    ``run`` is the graph-captured generation: ``torch.profiler`` sees each kernel of the replayed
    graphs. A kind's time is its kernels' share of the critical path (:func:`critical_path`), so the
    kinds add up to the GPU's time per step; "GPU idle" is the gaps between kernels (inside a graph,
    a kernel that waits to be launched; between graphs, the host). The top kernels: (name, ms per step on
    the critical path, calls per step) for the 25 that took longest in all.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    kernels = [
        (e.name, e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    ]
    per_kernel, idle = critical_path(kernels)
    kinds: dict[str, float] = {}
    for name, (us, _, _) in per_kernel.items():
        kind = kernel_kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + us / 1000 / steps
    kinds = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
    kinds[IDLE] = idle / 1000 / steps
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:25]
    return kinds, [[name[:120], us / 1000 / steps, calls / steps] for name, (us, _, calls) in top]


IDLE = "GPU idle"  # kernel_profile's name for the time between kernels

OUTSIDE = "(outside any module)"  # module_profile's name for the time not spent in a module's forward


def module_profile(model: torch.nn.Module, run: Callable[[], object]) -> dict[str, float]:
    """Seconds of ``run()`` (on the CPU) spent in each kind of module of ``model``, by class name.

    Self time: a module's time without its children's, so the kinds add up to the whole run;
    :data:`OUTSIDE` is the rest (generate's loop, sampling, concatenating the tokens). Timed with
    forward hooks on every module, which add a microsecond or two to each call: good for where the
    time goes, not for absolute speed. On the CPU a module's call returns when its work is done;
    on a GPU it returns as soon as its kernels are queued, so this would time the queueing.
    """
    stack: list[list[float]] = []  # one [start, children's seconds] per module being run
    totals: dict[str, float] = {}

    def enter(module: torch.nn.Module, args: object) -> None:
        stack.append([time.perf_counter(), 0.0])

    def leave(module: torch.nn.Module, args: object, out: object) -> None:
        start, children = stack.pop()
        spent = time.perf_counter() - start
        kind = type(module).__name__
        totals[kind] = totals.get(kind, 0.0) + spent - children
        if stack:
            stack[-1][1] += spent

    modules = list(model.modules())
    handles = [m.register_forward_pre_hook(enter) for m in modules] + [m.register_forward_hook(leave) for m in modules]
    try:
        t0 = time.perf_counter()
        run()
        whole = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    totals[OUTSIDE] = whole - sum(totals.values())
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def profile_table(r: dict) -> str:
    """Markdown: ms per token by kind of module for each model of a ``bench_generate(profile=True)`` result."""
    prof = r["profile"]
    kinds = list(dict.fromkeys(k for name in GENERATE_MODELS for k in prof[name]))
    method = r.get("profile_method", PROFILE_METHODS["cpu"])
    lines = [
        f"time per token ({method}; ms per token, share of the model's total)",
        "",
        "| module | " + " | ".join(GENERATE_MODELS.values()) + " |",
        "| --- |" + " ---: |" * len(GENERATE_MODELS),
    ]
    totals = {name: sum(prof[name].values()) for name in GENERATE_MODELS}
    for kind in kinds + ["total"]:
        cells = []
        for name in GENERATE_MODELS:
            ms = totals[name] if kind == "total" else prof[name].get(kind)
            cells.append("" if ms is None else f"{ms:.3f} ({100 * ms / totals[name]:.0f}%)")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def generate_table(r: dict) -> str:
    """Markdown: tokens/s and ms/token of each model, the ratios, and what was measured."""
    gpt = r["models"]["gpt"]["tokens_per_s"]
    lines = [
        f"greedy generation, batch 1, {r['tokens']} tokens after {r['prompt']!r}, "
        f"{r.get('decode', 'KV cache')}, {r['dtype']}, preset {r['preset']!r} on {describe(r['machine'])}",
        "",
        "| model | tokens/s | ms/token | vs babyGPT |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, label in GENERATE_MODELS.items():
        m = r["models"][name]
        lines.append(
            f"| {label} | {m['tokens_per_s']:,.1f} | {m['ms_per_token']:.3f} | {m['tokens_per_s'] / gpt:.2f}x |"
        )
    shapes = ", ".join(f"{s} ({n}x)" for s, n in r["weight_shapes"].items())
    lines += [
        "",
        f"packed layers: {r['kernel']}; ternary weight matrices (outputs x inputs): {shapes}",
        *(  # older results (before the attention kernel) do not say
            [f"attention (both models): {r['attention']}; programmatic dependent launch: {'on' if r['pdl'] else 'off'}"]
            if "attention" in r and r["machine"]["device"] == "cuda"
            else []
        ),
        f"packed and unpacked babyBitNet generate the same tokens: {r['same_tokens']}"
        + ("" if r.get("first_difference") is None else f" (the same up to new token {r['first_difference']})"),
        f"{r['tokens_with_cache']} of {r['tokens']} steps used the KV cache (block_size {r['block_size']}); "
        f"median of {r['repeats']} interleaved rounds; {r['weights']}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- how much memory (lesson 11)
def _ternary_weights(model: GPT) -> tuple[int, int]:
    """(number of BitLinear weights, number of BitLinear layers) of an unpacked model."""
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    return sum(m.weight.numel() for m in layers), len(layers)


def memory_report(preset: str) -> dict:
    """Real file sizes of a freshly built babyBitNet of ``preset`` (vocab 65) in four forms.

    Writes, in a temporary folder, the fp32 state dict and an fp16 copy
    (``torch.save``) and the 2-bit and base-3 packed files (``save_packed``),
    and measures them with ``os.path.getsize``. ``bits_per_weight`` counts the
    packed BitLinear weights only: 8 * packed bytes / ternary weights, exactly
    2.0 and 1.6 when every in_features is a multiple of 4 and 5.
    """
    model, _ = build_model(preset, "bitnet", vocab_size=65)
    model.eval()
    tokenizer = CharTokenizer([chr(c) for c in range(32, 32 + 65)])  # 65 characters, as Tiny Shakespeare has
    n_ternary, n_layers = _ternary_weights(model)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    formats: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, os.path.join(tmp, "fp32.pt"))
        formats["fp32"] = {"bytes": os.path.getsize(os.path.join(tmp, "fp32.pt")), "bits_per_weight": 32.0}
        torch.save({k: v.half() for k, v in state.items()}, os.path.join(tmp, "fp16.pt"))
        formats["fp16"] = {"bytes": os.path.getsize(os.path.join(tmp, "fp16.pt")), "bits_per_weight": 16.0}
        for fmt in ("2bit", "base3"):
            packed = pack_model(model, fmt)
            file = save_packed(os.path.join(tmp, f"{fmt}.safetensors"), packed, tokenizer, fmt)
            packed_bytes = sum(m.packed.numel() for m in packed.modules() if isinstance(m, PackedBitLinear))
            formats[fmt] = {
                "bytes": os.path.getsize(file),
                "packed_weight_bytes": packed_bytes,
                "bits_per_weight": 8 * packed_bytes / n_ternary,
            }
    for f in formats.values():
        f["mib"] = f["bytes"] / 2**20
        f["ratio_vs_fp32"] = formats["fp32"]["bytes"] / f["bytes"]
    params = model.num_params()
    return {
        "preset": preset,
        "config": model.config.to_dict(),
        "params": params,
        "ternary_weights": n_ternary,
        "full_precision_params": params - n_ternary,
        "bitlinear_layers": n_layers,
        "formats": formats,
    }


def memory_table(reports: list[dict]) -> str:
    """Markdown table of :func:`memory_report` results, one row per preset and format."""
    rows = [
        "| preset | format | bytes | MiB | ratio vs fp32 | bits per BitLinear weight |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in reports:
        for fmt, f in r["formats"].items():
            rows.append(
                f"| {r['preset']} | {fmt} | {f['bytes']:,} | {f['mib']:.3f} | {f['ratio_vs_fp32']:.2f}x "
                f"| {f['bits_per_weight']:.3f} |"
            )
    return "\n".join(rows)
