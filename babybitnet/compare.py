"""Compare: train babyGPT and babyBitNet under one preset, side by side, and report.

Both models see the same data, the same batches (same seed) and the same
number of steps; only the linear layers (and each model's learning rate)
differ. Writes ``results.json`` (everything, machine-readable), ``table.md``
(the summary table) and ``loss_curves.png`` (train and val curves of both).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from babybitnet.bench import machine_info
from babybitnet.data import load_dataset
from babybitnet.presets import MODELS, build_model
from babybitnet.train import resolve_device, train

NAMES = {"gpt": "babyGPT", "bitnet": "babyBitNet"}
MEASURED = Path(__file__).parent / "results"  # results.json of the full-size runs the course quotes


def measured(name: str) -> dict:
    """A measured result shipped with the package (``babybitnet/results/<name>.json``), e.g. "compare_recipe".

    Each file says which command wrote it and on which machine (its "command" and "machine" keys).
    """
    path = MEASURED / f"{name}.json"
    if not path.is_file():
        have = sorted(p.stem for p in MEASURED.glob("*.json"))
        raise FileNotFoundError(f"no measured result {name!r} in {MEASURED}; there are: {have}")
    return json.loads(path.read_text())


def run_record(r: dict, model: torch.nn.Module, cfg) -> dict:
    """A training run's summary (from ``train``) with the model and training configs that made it."""
    return {**r, "model_config": model.config.to_dict(), "train_config": cfg.to_dict()}


def write_results(out: str | Path, results: dict, table: str) -> Path:
    """Write ``results.json`` and ``table.md`` into the folder ``out`` (made if needed); return it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(table)
    return out


def markdown_table(results: dict) -> str:
    """The summary table of a ``compare`` run as markdown."""
    rows = [
        "| model | parameters | learning rate | final val loss | best val loss | train seconds | ms per step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in results["models"].items():
        rows.append(
            f"| {NAMES.get(key, key)} | {r['params']:,} | {r['lr']:g} | {r['final_val']:.4f} | "
            f"{r['best_val']:.4f} (step {r['best_step']}) | {r['train_seconds']:.1f} | {r['ms_per_step']:.1f} |"
        )
    return "\n".join(rows) + "\n"


def plot_curves(results: dict, path: str | Path) -> Path:
    """Train (dashed) and val (solid) loss of every model of ``results`` on one figure."""
    import matplotlib

    matplotlib.use("Agg")  # files only, works without a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (key, r) in enumerate(results["models"].items()):
        h, color = r["history"], f"C{i}"
        ax.plot(h["step"], h["val"], color=color, label=f"{NAMES.get(key, key)} val")
        ax.plot(h["step"], h["train"], color=color, linestyle="--", alpha=0.6, label=f"{NAMES.get(key, key)} train")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats / character)")
    ax.set_title(f"babyGPT vs babyBitNet, preset {results['preset']!r} on {results['device']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
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
) -> dict:
    """Train both models under ``preset``; write results.json, table.md, loss_curves.png into ``out``.

    ``dtype="bfloat16"`` and ``compile=True`` (GPUs) replace the preset's float32 without compile.
    """
    dev = resolve_device(device)
    tok, train_data, val_data = load_dataset(text)
    results: dict = {
        "preset": preset,
        "device": str(dev),
        "torch": torch.__version__,
        "machine": machine_info(dev),
        "data": str(text or "tinyshakespeare"),
        "models": {},
    }
    for model_name in MODELS:
        model, tcfg = build_model(
            preset, model_name, tok.vocab_size, max_iters=iters, seed=seed, dtype=dtype, compile=compile
        )
        r = train(model, train_data, val_data, tcfg, dev, progress=progress, desc=NAMES[model_name])
        results["models"][model_name] = run_record(r, model, tcfg)
    out = write_results(out, results, markdown_table(results))
    plot_curves(results, out / "loss_curves.png")
    return results
