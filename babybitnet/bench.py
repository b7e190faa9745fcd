"""Benchmarks: commands that time things side by side in one run and print ratios.

Timings depend on the machine and on what else it is doing, so we never
compare numbers from different runs: every benchmark measures all of its
contenders in the same process, interleaved, and reports their ratio.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from babybitnet.attention import MultiHeadAttention
from babybitnet.data import get_batch, load_dataset
from babybitnet.gpt import GPT
from babybitnet.presets import MODELS, build_model
from babybitnet.train import make_optimizer, resolve_device


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What a timing was measured on: CPU model and cores, GPU name, torch version, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "device": str(device),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe(info: dict) -> str:
    """One line for humans: 'cpu (Intel Xeon, 2 cores, 2 threads), torch 2.13.0'."""
    where = info.get("gpu") or f"{info['cpu']}, {info['cpu_cores']} cores, {info['torch_threads']} threads"
    return f"{info['device']} ({where}), torch {info['torch']}"


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
