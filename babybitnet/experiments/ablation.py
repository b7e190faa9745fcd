"""Ablation: which change of the recipe gives how much, averaged over seeds.

One run of babyGPT or babyBitNet at the seed's size depends on its random
seed by about +-0.01 in val loss, as much as some of the changes we want to
measure. So a study trains every *variant* (a preset plus a few overrides)
once per seed and reports the mean and spread of the final val loss, and the
difference to a reference variant of the same model.

Two studies:

* ``ablation``: the seed's babyBitNet, the ``recipe`` preset, and the recipe
  with one change taken away (or, for what the official recipe suggests but
  did not help here, added); babyGPT under the seed's and its own best settings.
* ``lr_sweep``: the recipe's schedule at several peak learning rates, for both
  models (the second stage always runs at half the peak).
* ``b2b4t``: BitNet b1.58 2B4T's block (lesson 16): RoPE, SubLN, the gated
  ReLU² feed-forward and grouped-query attention, each added alone to the
  recipe's babyBitNet, then all of them together (the ``b2b4t_block`` preset),
  for babyGPT too.

The runs are independent, so they go to a pool of worker processes with one
thread each: on a 2-core laptop ``--jobs 2`` is fastest; a 16-core machine
runs a whole study in one go. The corpus is Tiny Shakespeare, a UTF-8 file
(``text=``) or a dataset written by ``prepare`` (``data=``, a folder): each
worker opens it by its path (a prepared dataset as a memory map), so nothing
of it is copied to the workers, and the vocabulary is its tokenizer's.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from babybitnet.experiments.study import NAMES, resumed_results, run_study, write_results
from babybitnet.prepare import data_record, load_corpus
from babybitnet.runtime import machine_info


@dataclass(frozen=True)
class Variant:
    name: str  # what the table says
    model: str  # "gpt" or "bitnet"
    preset: str = "recipe"
    model_overrides: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)


def _lr(peak: float) -> dict:
    return dict(lr=peak, lr_stage2=peak / 2)


STUDIES: dict[str, list[Variant]] = {
    "ablation": [
        Variant("seed preset", "gpt", preset="seed"),
        Variant("recipe preset", "gpt"),
        Variant("recipe, plain ReLU", "gpt", model_overrides=dict(activation="relu")),
        Variant("seed preset", "bitnet", preset="seed"),
        Variant("recipe preset", "bitnet"),
        Variant("recipe, constant LR and weight decay", "bitnet", train_overrides=dict(schedule="constant")),
        Variant("recipe, the seed's peak LR 9e-4", "bitnet", train_overrides=_lr(9e-4)),
        Variant("recipe, attention scaled by 1/sqrt(n_embd)", "bitnet", model_overrides=dict(attn_scale="embd")),
        Variant("recipe, plain ReLU", "bitnet", model_overrides=dict(activation="relu")),
        Variant("recipe + RMSNorm inside BitLinear", "bitnet", model_overrides=dict(bitlinear_norm=True)),
        Variant("recipe + no bias in lm_head", "bitnet", model_overrides=dict(bias=False)),
    ],
    # BitNet b1.58 2B4T's block (lesson 16), one change at a time on top of the recipe, then all of them
    "b2b4t": [
        Variant("recipe preset", "gpt"),
        Variant("2B4T block: all four, no biases", "gpt", preset="b2b4t_block"),
        Variant("recipe preset", "bitnet"),
        Variant("recipe + RoPE", "bitnet", model_overrides=dict(pos="rope")),
        Variant("recipe + SubLN", "bitnet", model_overrides=dict(subln=True)),
        Variant("recipe + gated ReLU² feed-forward", "bitnet", model_overrides=dict(ffn="gated")),
        Variant("recipe + grouped-query attention (2 KV heads)", "bitnet", model_overrides=dict(n_kv_head=2)),
        Variant("2B4T block: all four, no biases", "bitnet", preset="b2b4t_block"),
    ],
    "lr_sweep": [
        *(Variant(f"peak LR {lr:g}", "gpt", train_overrides=_lr(lr)) for lr in (1e-3, 3e-3, 6e-3, 1.2e-2)),
        *(Variant(f"peak LR {lr:g}", "bitnet", train_overrides=_lr(lr)) for lr in (1.5e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2)),
    ],
}
REFERENCE = "recipe preset"  # the ablation's deltas are taken against this variant of the same model


def run_one(variant: Variant, seed: int, overrides: dict, text: str | None = None, data: str | None = None) -> dict:
    """Train one variant with one seed (in this process, one thread); return its summary without the model.

    The corpus (``text`` or ``data``, see :func:`babybitnet.prepare.load_corpus`) is opened here, by its path.
    """
    from babybitnet.presets import build_model
    from babybitnet.train import train

    torch.set_num_threads(1)  # many runs side by side: one thread each is fastest
    tok, train_data, val_data = load_corpus(text, data)
    model, tcfg = build_model(
        variant.preset,
        variant.model,
        tok.vocab_size,
        variant.model_overrides,
        **{**variant.train_overrides, **overrides, "seed": seed},
    )
    r = train(model, train_data, val_data, tcfg, "cpu", progress=False)
    return {
        "variant": variant.name,
        "model": variant.model,
        "seed": seed,
        **r,
        "train_config": tcfg.to_dict(),
        "machine": machine_info(torch.device("cpu")),
    }


def summarize(runs: list[dict], variants: list[Variant]) -> list[dict]:
    """One row per variant: mean and spread of final and best val loss over its seeds, delta to the reference."""
    rows = []
    for v in variants:
        mine = [r for r in runs if r["variant"] == v.name and r["model"] == v.model]
        if not mine:
            continue
        final = [r["final_val"] for r in mine]
        rows.append(
            {
                "variant": v.name,
                "model": v.model,
                "seeds": len(mine),
                "params": mine[0]["params"],  # the same for every seed
                "final_val_mean": statistics.fmean(final),
                "final_val_std": statistics.stdev(final) if len(final) > 1 else 0.0,
                "best_val_mean": statistics.fmean(r["best_val"] for r in mine),
                "ms_per_step": statistics.fmean(r["ms_per_step"] for r in mine),
            }
        )
    for row in rows:
        ref = next((r for r in rows if r["variant"] == REFERENCE and r["model"] == row["model"]), None)
        row["delta_vs_recipe"] = None if ref is None else row["final_val_mean"] - ref["final_val_mean"]
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The summary rows as a markdown table (mean +- sample standard deviation over seeds)."""
    lines = [
        "| model | variant | parameters | seeds | final val loss | best val loss | vs recipe |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        delta = "" if r["delta_vs_recipe"] is None else f"{r['delta_vs_recipe']:+.4f}"
        params = f"{r['params']:,}" if "params" in r else ""  # results from before it was recorded have none
        lines.append(
            f"| {NAMES[r['model']]} | {r['variant']} | {params} | {r['seeds']} | {r['final_val_mean']:.4f} "
            f"+- {r['final_val_std']:.4f} | {r['best_val_mean']:.4f} | {delta} |"
        )
    return "\n".join(lines) + "\n"


def _resumed_runs(path: Path, results: dict, overrides: dict, order: dict) -> list[dict]:
    """The runs of an earlier study at ``path`` that this one would repeat; refuses another study's file."""
    # the same study and corpus, and every run with the step budget and evaluation interval of this one
    old = resumed_results(path, results, keys=("data",), run_settings=overrides)
    if old is None:
        return []
    runs = old.get("runs", [])
    for r in runs:  # runs from before per-run machines were recorded ran on the file's machine, one thread each
        r.setdefault("machine", {**old.get("machine", {}), "torch_threads": 1})
    return [r for r in runs if (r["variant"], r["model"], r["seed"]) in order]


def ablate(
    study: str = "ablation",
    seeds: int = 3,
    jobs: int | None = None,
    iters: int | None = None,
    eval_interval: int = 250,
    out: str | Path = "runs/ablation",
    text: str | None = None,
    progress: bool = True,
    data: str | Path | None = None,
    resume: bool = False,
) -> dict:
    """Run every variant of ``study`` for seeds 1337, 1338, ...; write results.json and table.md into ``out``.

    ``text`` (a UTF-8 file) or ``data`` (a folder written by ``prepare``) replaces Tiny Shakespeare.
    The files are rewritten after every finished run, so a study cut short keeps its finished runs, and
    ``resume=True`` trains only the runs that ``out/results.json`` lacks (the same study, corpus, step
    budget and evaluation interval, or it refuses). Every run records the machine it ran on.
    """
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; choose one of {sorted(STUDIES)}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    variants = STUDIES[study]
    load_corpus(text, data)  # here, so a bad corpus fails before any worker starts
    overrides = {"eval_interval": eval_interval}
    if iters is not None:
        overrides["max_iters"] = iters
    tasks = [(v, 1337 + i) for v in variants for i in range(seeds)]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    results = {
        "study": study,
        "seeds": seeds,
        "jobs": jobs,
        "machine": machine_info(torch.device("cpu")),
        "data": data_record(text, data),
        "variants": [asdict(v) for v in variants],
        "summary": [],
        "runs": [],
    }
    order = {(v.name, v.model, s): i for i, (v, s) in enumerate(tasks)}
    if resume:
        done = _resumed_runs(Path(out) / "results.json", results, overrides, order)
        results["runs"] = done
        finished = {(r["variant"], r["model"], r["seed"]) for r in done}
        tasks = [(v, s) for v, s in tasks if (v.name, v.model, s) not in finished]
        results["summary"] = summarize(done, variants)
        write_results(out, results, markdown_table(results["summary"]))

    def record(run: dict) -> None:
        # rewrite the files after every run: an interrupted study keeps what it finished
        results["runs"].append(run)
        results["runs"].sort(key=lambda r: order[(r["variant"], r["model"], r["seed"])])
        results["summary"] = summarize(results["runs"], variants)
        write_results(out, results, markdown_table(results["summary"]))

    text, data = (None if p is None else str(p) for p in (text, data))  # the workers get paths, not arrays
    run = partial(run_one, overrides=overrides, text=text, data=data)
    run_study(tasks, run, record, jobs, desc=study, progress=progress)
    return results
