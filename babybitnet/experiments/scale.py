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
  ``batch_size`` windows of ``BLOCK_SIZE`` tokens (2500 x 64 x 256 = 41M
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

A larger corpus removes the caveat: a dataset written by ``prepare``
(``data=``, e.g. the Python standard library with a BPE tokenizer, read from
disk) or any UTF-8 text (``text=``). ``epochs=E`` then sets the step budget
from the data, ``ceil(E * train tokens / (batch_size * BLOCK_SIZE))`` steps,
so every run reads the training split about E times (1 to 2 keeps every size
from memorising it), and ``dropout=0`` can take the sizes' dropout away. Each
run records its ``epochs`` (tokens seen / train tokens) and whether it
``overfit``: its final val loss is more than :data:`OVERFIT_MARGIN` (0.01)
above its best, i.e. the val loss turned up again before the end. The
vocabulary is the corpus's tokenizer's, so the parameter counts follow it (a
2,048-token BPE adds about 2 x 2,048 x width to each size).

``seeds=N`` trains every (size, model) with seeds 1337, 1338, ...; the summary
gives the mean and spread (sample standard deviation) over seeds of the best
and final val loss, and the gap babyBitNet - babyGPT per size, taken seed by
seed, with its spread: the gap is only a finding where it is larger than that.

The runs are independent: ``jobs`` worker processes train several at once,
on CUDA one GPU each (round-robin when there are more tasks than GPUs; on one
GPU they share it). A worker opens the corpus itself, by its path (a prepared
dataset as a memory map), so no data is copied to it. After every finished
run the study rewrites ``results.json``, ``table.md`` and ``scale.png``, so a
study cut short keeps what it finished and ``resume=True`` carries on from
there.
"""

from __future__ import annotations

import math
import statistics
from functools import partial
from pathlib import Path

import torch

from babybitnet.experiments.study import (
    NAMES,
    new_figure,
    ran_on,
    resumed_results,
    run_record,
    run_study,
    save_figure,
    write_results,
)
from babybitnet.prepare import data_record, load_corpus
from babybitnet.presets import MODELS, build_model
from babybitnet.runtime import describe, resolve_device
from babybitnet.train import train

BLOCK_SIZE = 256  # nanoGPT's context for Shakespeare: every size sees windows of the same length
BATCH_SIZE = 64
ITERS = 2500  # the default step budget (Tiny Shakespeare: about 40 passes over its training split)
FIRST_SEED = 1337  # seeds=N trains with FIRST_SEED, FIRST_SEED + 1, ... (ablate's convention)
OVERFIT_MARGIN = 0.01  # a run "overfit" when its final val loss ends more than this above its best

# Roughly x4 parameters from one size to the next. Parameter counts (Tiny Shakespeare's 65 characters,
# block 256, the recipe's biases; counted with GPT.num_params, checked in tests/experiments/test_scale.py):
#   name     babyGPT      babyBitNet
#   0.2M       223,489       221,953   the seed's model (4 layers x 4 heads x 64)
#   0.8M       840,129       837,057
#   2.7M     2,737,793     2,730,881
#   10.8M   10,783,937    10,770,113   nanoGPT's train_shakespeare_char model (6 x 6 x 384)
#   25M     25,396,801    25,372,225
# babyBitNet is a little smaller: BitLinear has no biases. A larger vocabulary (a BPE corpus) adds
# about 2 x vocab x width (token embedding and lm_head) to each size.
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


def train_overrides(
    iters: int, eval_iters: int, patience: int, seed: int, dtype: str, compile: bool, batch_size: int = BATCH_SIZE
) -> dict:
    """The ``recipe`` preset's training settings changed for the study (the same for every size and model)."""
    return dict(
        batch_size=batch_size,
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


def iters_for_epochs(epochs: float, train_tokens: int, batch_size: int = BATCH_SIZE) -> int:
    """Steps for ``epochs`` passes over ``train_tokens``: ceil(epochs * train_tokens / (batch_size * BLOCK_SIZE))."""
    if not (math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"epochs must be a number > 0, got {epochs}")
    return max(1, math.ceil(epochs * train_tokens / (batch_size * BLOCK_SIZE)))


def overfit(run: dict) -> bool:
    """Whether a run's val loss turned up again: its best came before the last fifth of the run and its final
    val loss is more than OVERFIT_MARGIN above it.

    Two estimates close together differ by their noise (about 0.01 with 50 batches): a best reached at
    the end, one evaluation before the final one, is not overfitting.
    """
    steps = run.get("stopped_step") or run["iters"]
    return run["best_step"] < 0.8 * steps and run["final_val"] > run["best_val"] + OVERFIT_MARGIN


def run_one(
    size: str,
    model: str,
    seed: int,
    device: str,
    iters: int,
    text: str | None,
    dtype: str,
    compile: bool,
    eval_iters: int,
    patience: int,
    sizes: dict[str, dict] = SIZES,
    progress: bool = False,
    data: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> dict:
    """Train ``model`` ("gpt" or "bitnet") at ``size`` (a name in ``sizes``) with ``seed`` on ``device``.

    Returns its record: the training summary plus ``epochs`` (tokens seen / train tokens) and
    ``overfit`` (see :func:`overfit`). Top-level so that the spawned worker processes of :func:`scale`
    can run it; the corpus is opened here, by its path (``data``: a memory map of the token files).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)  # torch.compile and autocast then work on this process's GPU
    tok, train_data, val_data = load_corpus(text, data)
    spec = sizes[size]
    net, tcfg = build_model(
        "recipe",
        model,
        tok.vocab_size,
        size_overrides(spec),
        **train_overrides(iters, eval_iters, patience, seed, dtype, compile, batch_size),
    )
    desc = f"{size} {NAMES[model]} seed {seed}"
    r = train(net, train_data, val_data, tcfg, dev, progress=progress, desc=desc)
    tokens_seen = r["stopped_step"] * batch_size * BLOCK_SIZE
    return {
        "size": size,
        "model": model,
        "seed": seed,
        "dropout": spec["dropout"],
        "device": str(dev),
        "tokens_seen": tokens_seen,
        "epochs": tokens_seen / len(train_data),
        "overfit": overfit(r),
        **run_record(r, net, tcfg),
    }


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than 2 values; both None with none)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(runs: list[dict], sizes: dict[str, dict], seed: int = FIRST_SEED) -> list[dict]:
    """One row per size: both models' parameters, best and final val loss (mean, spread over seeds), the gap.

    ``gap`` is babyBitNet - babyGPT best val loss, taken seed by seed over the seeds both have, and
    ``gap_std`` its spread (None with one seed). Runs without a ``seed`` (older results) count as ``seed``.
    """
    rows = []
    for name, spec in sizes.items():
        mine = [r for r in runs if r["size"] == name]
        if not mine:
            continue
        row: dict = {"size": name, **spec}
        by_seed: dict[str, dict[int, dict]] = {m: {} for m in MODELS}
        for r in mine:
            by_seed[r["model"]][r.get("seed", seed)] = r
        for m in MODELS:
            rs = [by_seed[m][s] for s in sorted(by_seed[m])]
            row[f"seeds_{m}"] = len(rs)
            row[f"params_{m}"] = rs[0]["params"] if rs else None
            row[f"best_val_{m}"], row[f"best_val_std_{m}"] = _mean_std([r["best_val"] for r in rs])
            row[f"final_val_{m}"], row[f"final_val_std_{m}"] = _mean_std([r["final_val"] for r in rs])
            row[f"best_step_{m}"] = round(statistics.fmean(r["best_step"] for r in rs)) if rs else None
            row[f"stopped_early_{m}"] = any(r["stopped_early"] for r in rs) if rs else None
            row[f"epochs_{m}"] = statistics.fmean(r["epochs"] for r in rs) if rs and "epochs" in rs[0] else None
            row[f"overfit_{m}"] = sum(r.get("overfit", False) for r in rs) if rs else None  # how many seeds overfit
        paired = sorted(set(by_seed["gpt"]) & set(by_seed["bitnet"]))
        gaps = [by_seed["bitnet"][s]["best_val"] - by_seed["gpt"][s]["best_val"] for s in paired]
        row["gap"], row["gap_std"] = _mean_std(gaps)  # > 0: babyBitNet is behind
        row["gap_seeds"] = len(gaps)
        gpt_best = statistics.fmean(by_seed["gpt"][s]["best_val"] for s in paired) if paired else None
        row["relative_gap"] = row["gap"] / gpt_best if paired else None
        rows.append(row)
    return rows


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    """``mean +- std`` (just the mean without a spread), "-" without a value."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None else f" +- {std:.{digits}f}")


def markdown_table(results: dict) -> str:
    """The summary of a scale study as markdown: one row per size.

    Results written before seeds and epochs (the shipped Tiny Shakespeare study) give the same table
    as they always did; newer ones add the final val loss (flagging runs that overfit), epochs per
    run, and the spread over seeds (``+-``, sample standard deviation) when there are several.
    """
    rows = results["summary"]
    extended = any("final_val_gpt" in row for row in rows) or "seeds" in results
    header = (
        "| size | layers x heads x width | dropout | params babyGPT | params babyBitNet "
        "| best val babyGPT | best val babyBitNet | gap | relative gap |"
    )
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    if extended:
        header += " final val babyGPT | final val babyBitNet | epochs |"
        rule += "---:|---:|---:|"
    lines = [header, rule]

    def num(v: int | None) -> str:
        return "-" if v is None else f"{v:,}"

    def best(row: dict, m: str) -> str:
        if row[f"best_val_{m}"] is None:
            return "-"
        stopped = ", stopped early" if row[f"stopped_early_{m}"] else ""
        return f"{_pm(row[f'best_val_{m}'], row.get(f'best_val_std_{m}'))} (step {row[f'best_step_{m}']}{stopped})"

    def final(row: dict, m: str) -> str:
        cell = _pm(row.get(f"final_val_{m}"), row.get(f"final_val_std_{m}"))
        n_over, n = row.get(f"overfit_{m}"), row.get(f"seeds_{m}")
        if n_over:
            cell += " **overfit**" if n == 1 else f" **overfit {n_over}/{n}**"
        return cell

    for row in rows:
        gap = "-" if row["gap"] is None else f"{row['gap']:+.4f}"
        if row["gap"] is not None and row.get("gap_std") is not None:
            gap += f" +- {row['gap_std']:.4f}"
        rel = "-" if row["relative_gap"] is None else f"{100 * row['relative_gap']:+.1f}%"
        line = (
            f"| {row['size']} | {row['n_layer']} x {row['n_head']} x {row['n_embd']} | {row['dropout']:g} "
            f"| {num(row['params_gpt'])} | {num(row['params_bitnet'])} | {best(row, 'gpt')} | {best(row, 'bitnet')} "
            f"| {gap} | {rel} |"
        )
        if extended:
            epochs = [row.get(f"epochs_{m}") for m in MODELS if row.get(f"epochs_{m}") is not None]
            line += f" {final(row, 'gpt')} | {final(row, 'bitnet')} | {'-' if not epochs else f'{max(epochs):.3g}'} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _data_name(results: dict) -> str:
    data = results.get("data")
    if isinstance(data, dict):
        data = data.get("data") or data.get("text")
    return "Tiny Shakespeare" if data in (None, "tinyshakespeare") else Path(str(data)).name


def plot_scale(results: dict, path: str | Path) -> Path:
    """Best val loss vs parameters for both models (left) and the gap babyBitNet - babyGPT (right), log x.

    With several seeds the points are means and the error bars their spread (sample standard deviation);
    a run that overfit (final val loss above its best, see :func:`overfit`) is circled.
    """
    import matplotlib.ticker

    rows = results["summary"]
    data = results.get("data")
    per = "token" if isinstance(data, dict) and data.get("tokenizer", "char") != "char" else "character"
    fig = new_figure((12, 4.8))
    left, right = fig.subplots(1, 2)
    for i, m in enumerate(MODELS):
        pts = [r for r in rows if r[f"best_val_{m}"] is not None]
        if not pts:
            continue
        xs, ys = [r[f"params_{m}"] for r in pts], [r[f"best_val_{m}"] for r in pts]
        errs = [r.get(f"best_val_std_{m}") or 0.0 for r in pts]
        left.errorbar(xs, ys, yerr=errs if any(errs) else None, fmt="o-", color=f"C{i}", capsize=3, label=NAMES[m])
        over = [(x, y) for x, y, r in zip(xs, ys, pts, strict=True) if r.get(f"overfit_{m}")]
        if over:
            left.plot(*zip(*over, strict=True), "o", markersize=12, mfc="none", color=f"C{i}")
    for r in rows:  # label each size once, at babyGPT's point (or babyBitNet's when babyGPT is missing)
        m = "gpt" if r["best_val_gpt"] is not None else "bitnet"
        left.annotate(r["size"], (r[f"params_{m}"], r[f"best_val_{m}"]), textcoords="offset points", xytext=(4, 6))
    left.set_xscale("log")
    left.set_xlabel("parameters")
    left.set_ylabel(f"best val loss (nats / {per})")
    any_overfit = any(r.get(f"overfit_{m}") for r in rows for m in MODELS)
    left.set_title("best val loss (circled: overfit)" if any_overfit else "best val loss")
    left.grid(alpha=0.3, which="both")
    if rows:
        left.legend()
    gaps = [r for r in rows if r["gap"] is not None]
    right.axhline(0.0, color="black", linewidth=1)
    if gaps:
        xs, ys = [r["params_gpt"] for r in gaps], [r["gap"] for r in gaps]
        errs = [r.get("gap_std") or 0.0 for r in gaps]
        right.errorbar(xs, ys, yerr=errs if any(errs) else None, fmt="o-", color="C2", capsize=3)
        for x, y, r in zip(xs, ys, gaps, strict=True):
            right.annotate(r["size"], (x, y), textcoords="offset points", xytext=(4, 6))
    right.set_xscale("log")
    right.set_xlabel("parameters (babyGPT)")
    right.set_ylabel("babyBitNet - babyGPT best val loss")
    seeds = results.get("seeds", 1)
    right.set_title("the gap (> 0: babyBitNet behind)" + (f", mean +- std over {seeds} seeds" if seeds > 1 else ""))
    right.grid(alpha=0.3, which="both")
    tokens = f"{results['tokens_per_run'] / 1e6:.3g}M tokens"
    if results.get("epochs_per_run") is not None:
        tokens += f" ({results['epochs_per_run']:.2g} epochs)"
    params = [r[f"params_{m}"] for r in rows for m in MODELS if r[f"params_{m}"] is not None]
    for ax in (left, right):
        if params:  # the same x range on both panels, with room for the labels
            ax.set_xlim(min(params) / 1.5, max(params) * 1.5)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # a narrow range labels every minor tick
    # two lines: a long machine description would not fit beside the corpus and the budget
    fig.suptitle(f"babyGPT vs babyBitNet by size on {_data_name(results)}, {tokens} per run\n"
                 f"on {describe(results['machine'])}")  # fmt: skip
    return save_figure(fig, path)


def task_devices(device: torch.device, n_tasks: int, n_gpus: int | None = None) -> list[str]:
    """Where each of ``n_tasks`` parallel runs trains: on CUDA (no index given) task i gets GPU i mod ``n_gpus``."""
    if device.type != "cuda" or device.index is not None:
        return [str(device)] * n_tasks
    n_gpus = torch.cuda.device_count() if n_gpus is None else n_gpus
    return [f"cuda:{i % n_gpus}" for i in range(n_tasks)]


# What must match for a resumed study to mix its old and new runs (more seeds and sizes may be added).
RESUME_KEYS = ("iters", "data", "seed", "eval_iters", "patience", "batch_size", "block_size")


def scale(
    sizes: list[str] | dict[str, dict] | None = None,
    models: tuple[str, ...] | list[str] = MODELS,
    iters: int | None = None,
    text: str | Path | None = None,
    device: str = "auto",
    jobs: int = 1,
    out: str | Path = "runs/scale",
    resume: bool = False,
    dtype: str | None = None,
    compile: bool | None = None,
    seed: int = FIRST_SEED,
    eval_iters: int = 100,
    patience: int = 4,
    progress: bool = True,
    data: str | Path | None = None,
    seeds: int = 1,
    epochs: float | None = None,
    batch_size: int = BATCH_SIZE,
    dropout: float | None = None,
) -> dict:
    """Train every model of ``models`` at every size; write results.json, table.md and scale.png into ``out``.

    ``sizes``: names from :data:`SIZES` (default all), or a dict name -> size of your own. The corpus:
    Tiny Shakespeare, a UTF-8 file ``text``, or a dataset written by ``prepare`` (``data``, a folder;
    the vocabulary, and so the parameter counts, are its tokenizer's). The budget: ``iters`` steps
    (default 2500) or ``epochs`` passes over the training split (:func:`iters_for_epochs`), not both,
    of ``batch_size`` windows of :data:`BLOCK_SIZE` tokens. ``seeds``: runs per (size, model), with
    seeds ``seed``, ``seed + 1``, ...; ``dropout``, when given, replaces every size's dropout.
    Every run records ``epochs`` and ``overfit`` (final val > best val + 0.01, :data:`OVERFIT_MARGIN`).
    On CUDA the runs default to bfloat16 autocast and torch.compile, elsewhere to float32 without compile.
    ``resume=True`` keeps the runs of an earlier study in ``out`` made with the same settings
    and trains only the missing (size, model, seed) runs.
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
    if dropout is not None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        sizes = {name: {**spec, "dropout": dropout} for name, spec in sizes.items()}
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"unknown model {unknown}; choose from {list(MODELS)} (gpt = babyGPT, bitnet = babyBitNet)")
    models = [m for m in MODELS if m in models]
    if iters is not None and epochs is not None:
        raise ValueError("give a step budget in iters or in epochs, not both")
    if (iters is not None and iters < 1) or eval_iters < 1 or jobs < 1 or patience < 0:
        raise ValueError("iters, eval_iters and jobs must be >= 1 and patience >= 0")
    if seeds < 1 or batch_size < 1:
        raise ValueError(f"seeds and batch_size must be >= 1, got seeds={seeds}, batch_size={batch_size}")
    dev = resolve_device(device)
    on_cuda = dev.type == "cuda"
    dtype = dtype or ("bfloat16" if on_cuda else "float32")
    compile = on_cuda if compile is None else compile
    # here, so a bad path fails before any worker starts; the workers open the corpus again by its path
    tok, train_data, val_data = load_corpus(text, data)
    train_tokens, val_tokens = len(train_data), len(val_data)
    del train_data, val_data  # nothing of the corpus goes to the workers
    if epochs is not None:
        iters = iters_for_epochs(epochs, train_tokens, batch_size)
    iters = ITERS if iters is None else iters
    out = Path(out)
    tokens_per_run = iters * batch_size * BLOCK_SIZE

    results: dict = {
        "study": "scale",
        **ran_on(dev),
        "data": data_record(text, data),
        **({"data_chars": train_tokens + val_tokens} if data is None else {}),  # a text: one token per character
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "vocab_size": tok.vocab_size,
        "iters": iters,
        "epochs": epochs,  # the budget asked for in epochs (None: in iters)
        "batch_size": batch_size,
        "block_size": BLOCK_SIZE,
        "tokens_per_run": tokens_per_run,
        "epochs_per_run": tokens_per_run / train_tokens,
        "eval_iters": eval_iters,
        "patience": patience,
        "seed": seed,
        "seeds": seeds,
        "overfit_margin": OVERFIT_MARGIN,
        "dtype": dtype,
        "compile": compile,
        "jobs": jobs,
        "models": models,
        "sizes": sizes,
        "summary": [],
        "runs": [],
    }
    old = resumed_results(out / "results.json", results, RESUME_KEYS, entries={"sizes": sizes}) if resume else None
    if old is not None:
        # keep every finished run, also of sizes, models or seeds not asked for this time
        results["runs"] = [{"seed": old["seed"], **r} for r in old["runs"]]  # older runs: the study's one seed
        results["seeds"] = max(seeds, old.get("seeds", 1))
        merged = {**old["sizes"], **sizes}  # smallest first: the blocks hold about 12 x layers x width^2 weights
        results["sizes"] = dict(sorted(merged.items(), key=lambda kv: kv[1]["n_layer"] * kv[1]["n_embd"] ** 2))
        results["models"] = [m for m in MODELS if m in set(old["models"]) | set(models)]
    done = {(r["size"], r["model"], r["seed"]) for r in results["runs"]}
    seed_list = [seed + i for i in range(seeds)]
    todo = [(s, m, sd) for s in sizes for m in models for sd in seed_list if (s, m, sd) not in done]
    size_order = {s: i for i, s in enumerate(results["sizes"])}

    def write() -> None:
        # after every run: a study cut short keeps what it finished
        results["runs"].sort(key=lambda r: (size_order[r["size"]], MODELS.index(r["model"]), r["seed"]))
        results["summary"] = summarize(results["runs"], results["sizes"], seed)
        write_results(out, results, markdown_table(results), {"scale.png": plot_scale})

    def record(run: dict) -> None:
        results["runs"].append(run)
        write()

    write()  # the settings (and any resumed runs) are on disk before the first run starts
    jobs = min(jobs, len(todo))
    # one job: every run on `dev` with its own progress bar; more: round-robin over the GPUs, one bar for all
    devices = task_devices(dev, len(todo)) if jobs > 1 else [str(dev)] * len(todo)
    tasks = [(s, m, sd, d) for (s, m, sd), d in zip(todo, devices, strict=True)]
    run = partial(
        run_one,
        iters=iters,
        text=None if text is None else str(text),
        data=None if data is None else str(data),
        dtype=dtype,
        compile=compile,
        eval_iters=eval_iters,
        patience=patience,
        sizes=sizes,
        batch_size=batch_size,
        progress=progress and jobs == 1,
    )
    run_study(tasks, run, record, jobs, one_thread=not on_cuda, desc="scale", progress=progress and jobs > 1)
    return results
