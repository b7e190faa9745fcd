"""Compare: train babyGPT and babyBitNet under one preset, side by side, and report.

Both models see the same data, the same batches (same seed) and the same
number of steps; only the linear layers (and each model's learning rate)
differ. Writes ``results.json`` (everything, machine-readable), ``table.md``
(the summary table) and ``loss_curves.png`` (train and val curves of both).
"""

from __future__ import annotations

from pathlib import Path

from babybitnet.experiments.study import NAMES, loss_plot, ran_on, run_record, write_results
from babybitnet.prepare import data_record, load_corpus
from babybitnet.presets import MODELS, build_model
from babybitnet.runtime import resolve_device
from babybitnet.train import train


def markdown_table(results: dict) -> str:
    """The summary table of a ``compare`` run as markdown.

    "ms per step" averages every step, the compilation's included; "steady" is the median between two
    evaluations after the first (babybitnet.train.steady_ms).
    """
    rows = [
        "| model | parameters | learning rate | final val loss | best val loss | train seconds | ms per step "
        "| steady ms per step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in results["models"].items():
        steady = r.get("ms_per_step_steady")  # absent in results from before it was recorded
        rows.append(
            f"| {NAMES.get(key, key)} | {r['params']:,} | {r['lr']:g} | {r['final_val']:.4f} | "
            f"{r['best_val']:.4f} (step {r['best_step']}) | {r['train_seconds']:.1f} | {r['ms_per_step']:.1f} | "
            f"{'' if steady is None else f'{steady:.1f}'} |"
        )
    return "\n".join(rows) + "\n"


def plot_curves(results: dict, path: str | Path) -> Path:
    """Train (dashed) and val (solid) loss of every model of ``results`` on one figure."""
    title = f"babyGPT vs babyBitNet, preset {results['preset']!r} on {results['device']}"
    with loss_plot(path, title, "cross-entropy loss (nats / character)") as ax:
        for i, (key, r) in enumerate(results["models"].items()):
            h, color, name = r["history"], f"C{i}", NAMES.get(key, key)
            ax.plot(h["step"], h["val"], color=color, label=f"{name} val")
            ax.plot(h["step"], h["train"], color=color, linestyle="--", alpha=0.6, label=f"{name} train")
    return Path(path)


def compare(
    preset: str = "seed",
    iters: int | None = None,
    device: str = "auto",
    seed: int | None = None,
    out: str | Path = "runs/compare",
    text: str | Path | None = None,
    progress: bool = True,
    dtype: str | None = None,
    compile: bool | None = None,
    eval_iters: int | None = None,
    eval_interval: int | None = None,
    data: str | Path | None = None,
) -> dict:
    """Train both models under ``preset``; write results.json, table.md, loss_curves.png into ``out``.

    ``dtype="bfloat16"`` and ``compile=True`` (GPUs) replace the preset's float32 without compile;
    ``eval_iters`` and ``eval_interval`` the preset's evaluation settings (None keeps them).
    ``data``: a dataset written by ``prepare`` (read from disk) instead of the text ``text``.
    """
    dev = resolve_device(device)
    tok, train_data, val_data = load_corpus(text, data)
    results: dict = {
        "preset": preset,
        **ran_on(dev),
        "data": data_record(text, data),
        "models": {},
    }
    try:
        for model_name in MODELS:
            model, tcfg = build_model(
                preset, model_name, tok.vocab_size, max_iters=iters, seed=seed, dtype=dtype, compile=compile,
                eval_iters=eval_iters, eval_interval=eval_interval,
            )  # fmt: skip
            r = train(model, train_data, val_data, tcfg, dev, progress=progress, desc=NAMES[model_name])
            results["models"][model_name] = run_record(r, model, tcfg)
    except KeyboardInterrupt:
        # Ctrl-C: keep the runs that finished (a table of one model), then stop
        if results["models"]:
            results["interrupted"] = True
            write_results(out, results, markdown_table(results), {"loss_curves.png": plot_curves})
        raise
    write_results(out, results, markdown_table(results), {"loss_curves.png": plot_curves})
    return results
