"""Scale: does the gap between babyBitNet and babyGPT close as the models grow?

The BitNet b1.58 paper (arXiv 2402.17764; ``shared/REFERENCE.md`` section 2)
compares BitNet b1.58 with a full-precision LLaMA at three sizes. The ternary
model is behind at 700M parameters (perplexity 12.87 against 12.33), level at
1.3B (11.29 against 11.25) and ahead at 3B (9.91 against 10.04): its claim is
that the cost of ternary weights shrinks as the models grow. At the seed's
size (0.2M parameters) babyBitNet is clearly behind babyGPT. This study trains
both models at several sizes, from the seed's model to 25M parameters, to see
which way the gap moves at our scale.

The rules, so that the sizes are comparable:

* every size trains on the same number of tokens: ``iters`` steps of
  ``BATCH_SIZE`` windows of ``BLOCK_SIZE`` characters (2500 x 64 x 256 = 41M
  characters by default) from the same seed;
* both models use the ``recipe`` preset's training settings (the two-stage
  schedule, beta2 0.95, squared ReLU, each model's own peak learning rate:
  1e-3 for babyGPT, 3e-3 for babyBitNet) with nanoGPT's gradient clipping and
  weight decay on matrices only, as ``nanogpt_recipe`` does. The learning rates
  were tuned at the seed's size only; the larger sizes might do better with
  smaller ones (the paper lowers BitNet's peak as it grows).

What Tiny Shakespeare limits: it is 1.1M characters, so 41M characters are
about 40 passes over the training split. The small models cannot memorise it;
the large ones can, and their val loss turns up again long before the end
(nanoGPT's 10.7M model, with dropout 0.2, is at its best after about 1/5 of
this budget). A study that reported the final val loss would measure
overfitting, not what the model can learn. So the larger sizes get dropout
(0 for the smallest, rising to 0.2) and every run stops early once its val
loss has not improved for ``patience`` evaluations in a row; the study
compares each run's *best* val loss (and says at which step it was reached).
A larger text (``text=``, any UTF-8 file) removes most of this problem: the
same command then measures the sizes without the overfitting caveat.

The runs are independent: ``jobs`` worker processes train several at once,
on CUDA one GPU each (round-robin when there are more tasks than GPUs). After
every finished run the study rewrites ``results.json``, ``table.md`` and
``scale.png``, so a study cut short keeps what it finished and
``resume=True`` carries on from there.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch

from babybitnet.data import load_dataset
from babybitnet.experiments.study import NAMES, new_figure, ran_on, run_record, run_study, save_figure, write_results
from babybitnet.presets import MODELS, build_model
from babybitnet.runtime import describe, resolve_device
from babybitnet.train import train

BLOCK_SIZE = 256  # nanoGPT's context for Shakespeare: every size sees windows of the same length
BATCH_SIZE = 64

# Roughly x4 parameters from one size to the next. Parameter counts (Tiny Shakespeare's 65 characters,
# block 256, the recipe's biases; counted with GPT.num_params, checked in tests/experiments/test_scale.py):
#   name     babyGPT      babyBitNet
#   0.2M       223,489       221,953   the seed's model (4 layers x 4 heads x 64)
#   0.8M       840,129       837,057
#   2.7M     2,737,793     2,730,881
#   10.8M   10,783,937    10,770,113   nanoGPT's train_shakespeare_char model (6 x 6 x 384)
#   25M     25,396,801    25,372,225
# babyBitNet is a little smaller: BitLinear has no biases.
SIZES: dict[str, dict] = {
    "0.2M": dict(n_layer=4, n_head=4, n_embd=64, dropout=0.0),
    "0.8M": dict(n_layer=4, n_head=4, n_embd=128, dropout=0.05),
    "2.7M": dict(n_layer=6, n_head=6, n_embd=192, dropout=0.1),
    "10.8M": dict(n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    "25M": dict(n_layer=8, n_head=8, n_embd=512, dropout=0.2),
}


def size_overrides(spec: dict) -> dict:
    """The model settings of one size: its shape and dropout, at the study's block size."""
    return {**spec, "block_size": BLOCK_SIZE}


def train_overrides(iters: int, eval_iters: int, patience: int, seed: int, dtype: str, compile: bool) -> dict:
    """The ``recipe`` preset's training settings changed for the study (the same for every size and model)."""
    return dict(
        batch_size=BATCH_SIZE,
        max_iters=iters,
        # every 250 steps at the default 2500, and always about 10 estimates in a shorter run
        eval_interval=min(250, max(1, iters // 10)),
        eval_iters=eval_iters,
        patience=patience,
        grad_clip=1.0,  # nanoGPT's: the large models' first steps at a high LR need it
        decay_all=False,  # weight decay on matrices only, as nanoGPT (and nanogpt_recipe) do
        seed=seed,
        dtype=dtype,
        compile=compile,
    )


def run_one(
    size: str,
    model: str,
    device: str,
    iters: int,
    text: str | None,
    dtype: str,
    compile: bool,
    seed: int,
    eval_iters: int,
    patience: int,
    sizes: dict[str, dict] = SIZES,
    progress: bool = False,
) -> dict:
    """Train ``model`` ("gpt" or "bitnet") at ``size`` (a name in ``sizes``) on ``device``; return its record.

    Top-level so that the spawned worker processes of :func:`scale` can run it.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)  # torch.compile and autocast then work on this process's GPU
    tok, train_data, val_data = load_dataset(text)
    spec = sizes[size]
    net, tcfg = build_model(
        "recipe",
        model,
        tok.vocab_size,
        size_overrides(spec),
        **train_overrides(iters, eval_iters, patience, seed, dtype, compile),
    )
    r = train(net, train_data, val_data, tcfg, dev, progress=progress, desc=f"{size} {NAMES[model]}")
    return {
        "size": size,
        "model": model,
        "dropout": spec["dropout"],
        "device": str(dev),
        "tokens_seen": r["stopped_step"] * BATCH_SIZE * BLOCK_SIZE,
        **run_record(r, net, tcfg),
    }


def summarize(runs: list[dict], sizes: dict[str, dict]) -> list[dict]:
    """One row per size: both models' parameters and best val loss, and the gap between them."""
    rows = []
    for name, spec in sizes.items():
        mine = {r["model"]: r for r in runs if r["size"] == name}
        if not mine:
            continue
        row: dict = {"size": name, **spec}
        for m in MODELS:
            r = mine.get(m)
            row[f"params_{m}"] = r["params"] if r else None
            row[f"best_val_{m}"] = r["best_val"] if r else None
            row[f"best_step_{m}"] = r["best_step"] if r else None
            row[f"stopped_early_{m}"] = r["stopped_early"] if r else None
        both = row["best_val_gpt"] is not None and row["best_val_bitnet"] is not None
        row["gap"] = row["best_val_bitnet"] - row["best_val_gpt"] if both else None  # > 0: babyBitNet is behind
        row["relative_gap"] = row["gap"] / row["best_val_gpt"] if both else None
        rows.append(row)
    return rows


def markdown_table(results: dict) -> str:
    """The summary of a scale study as markdown: one row per size."""
    lines = [
        "| size | layers x heads x width | dropout | params babyGPT | params babyBitNet "
        "| best val babyGPT | best val babyBitNet | gap | relative gap |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def num(v: int | None) -> str:
        return "-" if v is None else f"{v:,}"

    def best(row: dict, m: str) -> str:
        if row[f"best_val_{m}"] is None:
            return "-"
        stopped = ", stopped early" if row[f"stopped_early_{m}"] else ""
        return f"{row[f'best_val_{m}']:.4f} (step {row[f'best_step_{m}']}{stopped})"

    for row in results["summary"]:
        gap = "-" if row["gap"] is None else f"{row['gap']:+.4f}"
        rel = "-" if row["relative_gap"] is None else f"{100 * row['relative_gap']:+.1f}%"
        lines.append(
            f"| {row['size']} | {row['n_layer']} x {row['n_head']} x {row['n_embd']} | {row['dropout']:g} "
            f"| {num(row['params_gpt'])} | {num(row['params_bitnet'])} | {best(row, 'gpt')} | {best(row, 'bitnet')} "
            f"| {gap} | {rel} |"
        )
    return "\n".join(lines) + "\n"


def plot_scale(results: dict, path: str | Path) -> Path:
    """Best val loss vs parameters for both models (left) and the gap babyBitNet - babyGPT (right)."""
    import matplotlib.ticker

    rows = results["summary"]
    fig = new_figure((12, 4.8))
    left, right = fig.subplots(1, 2)
    for i, m in enumerate(MODELS):
        pts = [(r[f"params_{m}"], r[f"best_val_{m}"], r["size"]) for r in rows if r[f"best_val_{m}"] is not None]
        if pts:
            left.plot([p for p, _, _ in pts], [v for _, v, _ in pts], "o-", color=f"C{i}", label=NAMES[m])
    for r in rows:  # label each size once, at babyGPT's point (or babyBitNet's when babyGPT is missing)
        m = "gpt" if r["best_val_gpt"] is not None else "bitnet"
        left.annotate(r["size"], (r[f"params_{m}"], r[f"best_val_{m}"]), textcoords="offset points", xytext=(4, 6))
    left.set_xscale("log")
    left.set_xlabel("parameters")
    left.set_ylabel("best val loss (nats / character)")
    left.set_title("best val loss (early stopping)")
    left.grid(alpha=0.3, which="both")
    if rows:
        left.legend()
    gaps = [(r["params_gpt"], r["gap"], r["size"]) for r in rows if r["gap"] is not None]
    right.axhline(0.0, color="black", linewidth=1)
    if gaps:
        right.plot([p for p, _, _ in gaps], [g for _, g, _ in gaps], "o-", color="C2")
        for p, g, name in gaps:
            right.annotate(name, (p, g), textcoords="offset points", xytext=(4, 6))
    right.set_xscale("log")
    right.set_xlabel("parameters (babyGPT)")
    right.set_ylabel("babyBitNet - babyGPT best val loss")
    right.set_title("the gap (> 0: babyBitNet behind)")
    right.grid(alpha=0.3, which="both")
    tokens = f"{results['tokens_per_run'] / 1e6:.3g}M tokens"
    params = [r[f"params_{m}"] for r in rows for m in MODELS if r[f"params_{m}"] is not None]
    for ax in (left, right):
        if params:  # the same x range on both panels, with room for the labels
            ax.set_xlim(min(params) / 1.5, max(params) * 1.5)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # a narrow range labels every minor tick
    fig.suptitle(f"babyGPT vs babyBitNet by size, {tokens} per run, on {describe(results['machine'])}")
    return save_figure(fig, path)


def task_devices(device: torch.device, n_tasks: int, n_gpus: int | None = None) -> list[str]:
    """Where each of ``n_tasks`` parallel runs trains: on CUDA (no index given) task i gets GPU i mod ``n_gpus``."""
    if device.type != "cuda" or device.index is not None:
        return [str(device)] * n_tasks
    n_gpus = torch.cuda.device_count() if n_gpus is None else n_gpus
    return [f"cuda:{i % n_gpus}" for i in range(n_tasks)]


# What must match for a resumed study to mix its old and new runs.
RESUME_KEYS = ("iters", "data", "seed", "eval_iters", "patience", "batch_size", "block_size")


def scale(
    sizes: list[str] | dict[str, dict] | None = None,
    models: tuple[str, ...] | list[str] = MODELS,
    iters: int = 2500,
    text: str | Path | None = None,
    device: str = "auto",
    jobs: int = 1,
    out: str | Path = "runs/scale",
    resume: bool = False,
    dtype: str | None = None,
    compile: bool | None = None,
    seed: int = 1337,
    eval_iters: int = 100,
    patience: int = 4,
    progress: bool = True,
) -> dict:
    """Train every model of ``models`` at every size; write results.json, table.md and scale.png into ``out``.

    ``sizes``: names from :data:`SIZES` (default all), or a dict name -> size of your own. On CUDA the
    runs default to bfloat16 autocast and torch.compile, elsewhere to float32 without compile.
    ``resume=True`` keeps the runs of an earlier study in ``out`` made with the same settings
    and trains only the missing (size, model) pairs.
    """
    if sizes is None:
        sizes = dict(SIZES)
    elif not isinstance(sizes, dict):
        unknown = [s for s in sizes if s not in SIZES]
        if unknown:
            raise ValueError(f"unknown size {', '.join(map(repr, unknown))}; choose from {list(SIZES)}")
        sizes = {s: SIZES[s] for s in SIZES if s in sizes}  # smallest first, whatever order they came in
    if not sizes:
        raise ValueError("no sizes to train")
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"unknown model {unknown}; choose from {list(MODELS)} (gpt = babyGPT, bitnet = babyBitNet)")
    models = [m for m in MODELS if m in models]
    if iters < 1 or eval_iters < 1 or jobs < 1 or patience < 0:
        raise ValueError("iters, eval_iters and jobs must be >= 1 and patience >= 0")
    dev = resolve_device(device)
    on_cuda = dev.type == "cuda"
    dtype = dtype or ("bfloat16" if on_cuda else "float32")
    compile = on_cuda if compile is None else compile
    tok, train_data, val_data = load_dataset(text)  # here, so a bad path fails before any worker starts
    out = Path(out)

    results: dict = {
        "study": "scale",
        **ran_on(dev),
        "data": str(text) if text else "tinyshakespeare",
        "data_chars": len(train_data) + len(val_data),
        "vocab_size": tok.vocab_size,
        "iters": iters,
        "batch_size": BATCH_SIZE,
        "block_size": BLOCK_SIZE,
        "tokens_per_run": iters * BATCH_SIZE * BLOCK_SIZE,
        "eval_iters": eval_iters,
        "patience": patience,
        "seed": seed,
        "dtype": dtype,
        "compile": compile,
        "jobs": jobs,
        "models": models,
        "sizes": sizes,
        "summary": [],
        "runs": [],
    }
    if resume and (out / "results.json").is_file():
        old = json.loads((out / "results.json").read_text())
        differ = [f"{k} {old.get(k)!r} there, {results[k]!r} now" for k in RESUME_KEYS if old.get(k) != results[k]]
        differ += [
            f"size {name!r} is {old['sizes'][name]} there, {spec} now"
            for name, spec in sizes.items()
            if name in old.get("sizes", {}) and old["sizes"][name] != spec
        ]
        if differ:
            raise ValueError(
                f"cannot resume {out / 'results.json'}: it was made with other settings ({'; '.join(differ)})"
            )
        # keep every finished run, also of sizes or models not asked for this time
        results["runs"] = old["runs"]
        merged = {**old["sizes"], **sizes}  # smallest first: the blocks hold about 12 x layers x width^2 weights
        results["sizes"] = dict(sorted(merged.items(), key=lambda kv: kv[1]["n_layer"] * kv[1]["n_embd"] ** 2))
        results["models"] = [m for m in MODELS if m in set(old["models"]) | set(models)]
    done = {(r["size"], r["model"]) for r in results["runs"]}
    todo = [(s, m) for s in sizes for m in models if (s, m) not in done]
    size_order = {s: i for i, s in enumerate(results["sizes"])}

    def write() -> None:
        # after every run: a study cut short keeps what it finished
        results["runs"].sort(key=lambda r: (size_order[r["size"]], MODELS.index(r["model"])))
        results["summary"] = summarize(results["runs"], results["sizes"])
        write_results(out, results, markdown_table(results), {"scale.png": plot_scale})

    def record(run: dict) -> None:
        results["runs"].append(run)
        write()

    write()  # the settings (and any resumed runs) are on disk before the first run starts
    jobs = min(jobs, len(todo))
    # one job: every run on `dev` with its own progress bar; more: round-robin over the GPUs, one bar for all
    devices = task_devices(dev, len(todo)) if jobs > 1 else [str(dev)] * len(todo)
    tasks = [(s, m, d) for (s, m), d in zip(todo, devices, strict=True)]
    run = partial(
        run_one,
        iters=iters,
        text=None if text is None else str(text),
        dtype=dtype,
        compile=compile,
        seed=seed,
        eval_iters=eval_iters,
        patience=patience,
        sizes=sizes,
        progress=progress and jobs == 1,
    )
    run_study(tasks, run, record, jobs, one_thread=not on_cuda, desc="scale", progress=progress and jobs > 1)
    return results
