"""The fine-tuning study (lesson 14): gradual vs abrupt quantization vs from scratch, over several seeds.

:mod:`babybitnet.finetune` is the method (convert a babyGPT, blend quantization in with lambda);
this module runs it as an experiment: for each seed a babyGPT, then its gradual and abrupt
fine-tunes and a babyBitNet trained from scratch on the same budget, in worker processes, with
mean +- std; and ``finetune CKPT``, the fine-tune of a learner's own checkpoint. Both train on
Tiny Shakespeare, a UTF-8 file (``text``) or a dataset written by ``prepare`` (``data``, a folder,
read from disk: each worker opens it by its path, and the vocabulary is its tokenizer's).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from babybitnet.bitlinear import set_quant_strength
from babybitnet.experiments.study import loss_plot, ran_on, run_record, run_study, write_results
from babybitnet.files import write_json
from babybitnet.finetune import finetune, lambda_at, to_bitnet, val_loss
from babybitnet.prepare import check_tokenizer, data_record, load_corpus, load_prepared
from babybitnet.train import train

NAMES = {"gpt": "babyGPT", "gradual": "gradual", "abrupt": "abrupt", "scratch": "babyBitNet from scratch"}
CONVERSION = ("gpt", "lam0", "lam1")  # val loss of babyGPT, and of its copy at lam = 0 and lam = 1, untrained


def _stats(values: list[float], seeds: list[int]) -> dict:
    """Mean, sample standard deviation (0 for one value) and the values themselves, with their seeds."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
        "seeds": seeds,
    }


def summarize(runs: dict, seeds: Sequence[int]) -> dict:
    """Mean and spread over seeds of every model's final and best val loss and of the conversion losses.

    ``runs`` is :func:`compare_finetune`'s ``results["runs"]``. Only what has finished counts, so
    while a run is going on (or after it was cut short) two entries may cover different seeds;
    each entry's ``seeds`` says which ``values`` belong to which seed.
    """
    summary: dict = {}
    for key in NAMES:
        have = [s for s in seeds if key in runs.get(str(s), {}).get("models", {})]
        if have:
            summary[key] = {
                stat: _stats([runs[str(s)]["models"][key][stat] for s in have], have)
                for stat in ("final_val", "best_val")
            }
    have = [s for s in seeds if "after_conversion" in runs.get(str(s), {})]
    if have:
        summary["after_conversion"] = {
            k: _stats([runs[str(s)]["after_conversion"][k] for s in have], have) for k in CONVERSION
        }
    return summary


def markdown_table(results: dict) -> str:
    """The summary table of a :func:`compare_finetune` run as markdown: mean +- sample std over seeds.

    A row appears once one of its seeds has finished; its ``seeds`` column says over how many.
    """
    s1, s2, summary = results["s1"], results["s2"], results["summary"]

    def cell(entry: dict) -> str:
        return f"{entry['mean']:.4f} +- {entry['std']:.4f}"

    rows = [
        "| model | steps | seeds | final val loss | best val loss |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {
        "gpt": ("babyGPT (fp, bias=False)", f"{s1}"),
        "gradual": (f"gradual (lambda warm-up {results['warmup']}, peak LR {results['lr']:g})", f"{s1} + {s2}"),
        "abrupt": (f"abrupt (lambda = 1 at once, peak LR {results['lr']:g})", f"{s1} + {s2}"),
        "scratch": ("babyBitNet from scratch (recipe LR)", f"{s1 + s2}"),
    }
    conversion = {
        "gpt": "babyGPT, on the conversion's val windows",
        "lam0": "converted, lam=0 (no training)",
        "lam1": "converted, lam=1 (no training)",
    }
    for key, (label, steps) in labels.items():
        if key in summary:
            e = summary[key]
            n = len(e["final_val"]["values"])
            rows.append(f"| {label} | {steps} | {n} | {cell(e['final_val'])} | {cell(e['best_val'])} |")
        if key == "gpt" and "after_conversion" in summary:  # the conversion's cost, right below babyGPT
            for k, label_k in conversion.items():
                e = summary["after_conversion"][k]
                rows.append(f"| {label_k} | {s1} | {len(e['values'])} | {cell(e)} | |")
    seeds = ", ".join(str(s) for s in results["seeds"])
    caption = f"\nmean +- sample standard deviation over the finished seeds (of {seeds})\n"
    return "\n".join(rows) + "\n" + caption


def plot_finetune(results: dict, path: str | Path) -> Path:
    """Val loss against step, one line per finished seed: babyGPT's fp phase, the two fine-tunes, scratch."""
    s1 = results["s1"]
    done = [str(s) for s in results["seeds"] if str(s) in results["runs"]]
    # one seed: plain lines; several: thin ones, so the spread between seeds shows without hiding anything
    width, alpha = (1.5, 1.0) if len(done) <= 1 else (0.9, 0.6)
    seeds = f"seed {done[0]}" if len(done) == 1 else f"{len(done)} seeds, one thin line each"
    title = (
        f"babyGPT -> babyBitNet: gradual vs abrupt vs scratch\n"
        f"{seeds}, fine-tune peak LR {results['lr']:g} ({results['device']})"
    )
    data = results.get("data")
    per_char = not isinstance(data, dict) or data.get("tokenizer", "char") == "char"
    ylabel = f"val cross-entropy loss (nats / {'character' if per_char else 'token'})"
    with loss_plot(path, title, ylabel) as ax:
        labelled: set[str] = set()
        for seed in done:
            models = results["runs"][seed]["models"]
            for key, color, offset in (
                ("gpt", "0.4", 0),
                ("gradual", "C0", s1),
                ("abrupt", "C3", s1),
                ("scratch", "C2", 0),
            ):
                if key not in models:
                    continue
                h = models[key]["history"]
                label = None if key in labelled else NAMES[key] + (" (fp phase)" if key == "gpt" else "")
                labelled.add(key)
                ax.plot([offset + s for s in h["step"]], h["val"], color=color, lw=width, alpha=alpha, label=label)
        ax.axvline(s1, color="0.6", linestyle=":", label="conversion")
        if results["warmup"]:
            ax.axvline(s1 + results["warmup"], color="C0", linestyle=":", alpha=0.6, label="lambda reaches 1")
        if per_char:  # the untrained loss (~4.2) would flatten the interesting part
            ax.set_ylim(top=min(ax.get_ylim()[1], 3.5))
    return Path(path)


def _chain(seed: int, settings: dict) -> dict:
    """One seed's babyGPT (``s1`` steps), the conversion's cost, then the gradual and the abrupt fine-tune.

    A top-level function so a worker process can run it; ``settings`` holds plain values only.
    Returns ``{"models": {gpt, gradual, abrupt}, "after_conversion": {gpt, lam0, lam1}}``.
    """
    from babybitnet.presets import build_model, get_preset

    s1, s2, dev, progress = settings["s1"], settings["s2"], settings["device"], settings["progress"]
    common = {"seed": seed, "eval_iters": settings["eval_iters"]}  # None values keep the preset's
    tok, train_data, val_data = load_corpus(settings["text"], settings.get("data"))  # opened here, by its path

    # (a) the full-precision model
    gpt, gcfg = build_model("recipe", "gpt", tok.vocab_size, {"bias": False}, max_iters=s1, **common)
    r = train(gpt, train_data, val_data, gcfg, dev, progress=progress, desc=f"babyGPT, seed {seed}")
    models = {"gpt": run_record(r, gpt, gcfg)}

    # The fine-tunes' schedule: babyBitNet's recipe over s2 steps, at its peak or at settings["lr"].
    # The recipe sets lr_stage2 itself, so a new peak needs its own stage 2 (half the peak, as in the
    # recipe); otherwise a lower peak would be followed by a higher stage 2.
    lr = settings["lr"]
    lrs = {} if lr is None else {"lr": lr, "lr_stage2": lr / 2}
    _, fcfg = get_preset("recipe", "bitnet", tok.vocab_size, {"bias": False}, max_iters=s2, **common, **lrs)

    # the cost of conversion, all on the same validation windows
    bitnet = to_bitnet(gpt)
    conv = {"gpt": val_loss(gpt, val_data, fcfg, dev)}
    for lam in (0.0, 1.0):
        set_quant_strength(bitnet, lam)
        conv[f"lam{lam:g}"] = val_loss(bitnet, val_data, fcfg, dev)

    # (b), (c) the fine-tunes, each from its own copy of the converted model
    for key, w in (("gradual", settings["warmup"]), ("abrupt", 0)):
        model = to_bitnet(gpt)
        r = finetune(model, train_data, val_data, fcfg, w, dev, progress=progress, desc=f"{key}, seed {seed}")
        models[key] = run_record(r, model, fcfg)
    return {"models": models, "after_conversion": conv}


def _scratch(seed: int, settings: dict) -> dict:
    """One seed's babyBitNet from scratch for ``s1 + s2`` steps (recipe preset and LR, bias=False)."""
    from babybitnet.presets import build_model

    tok, train_data, val_data = load_corpus(settings["text"], settings.get("data"))
    steps = settings["s1"] + settings["s2"]
    model, cfg = build_model(
        "recipe",
        "bitnet",
        tok.vocab_size,
        {"bias": False},
        max_iters=steps,
        seed=seed,
        eval_iters=settings["eval_iters"],
    )
    desc = f"babyBitNet from scratch, seed {seed}"
    r = train(model, train_data, val_data, cfg, settings["device"], progress=settings["progress"], desc=desc)
    return {"models": {"scratch": run_record(r, model, cfg)}}


TASKS = {"chain": _chain, "scratch": _scratch}


def _run_task(kind: str, seed: int, settings: dict) -> tuple[int, dict]:
    """Run one task (``"chain"`` or ``"scratch"``) for ``seed``; return the seed with what it made."""
    return seed, TASKS[kind](seed, settings)


def finetune_checkpoint(
    path: str | Path,
    out: str | Path,
    s2: int = 2500,
    warmup: int = 1000,
    lr: float | None = None,
    device: str = "auto",
    text: str | Path | None = None,
    drop_biases: bool = False,
    eval_iters: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    data: str | Path | None = None,
) -> dict:
    """Fine-tune YOUR trained babyGPT: load the checkpoint ``path``, convert it, fine-tune, save a babyBitNet.

    The checkpoint must hold a babyGPT (``linear="fp"``) trained on the same text (its tokenizer
    must match), or the prepared dataset ``data`` encoded with its tokenizer. The fine-tune is
    :func:`finetune` with babyBitNet's recipe schedule over ``s2`` steps at peak ``lr`` (None: the
    recipe's 3e-3; stage 2 at half), the checkpoint's batch size if it recorded one. Writes the
    babyBitNet checkpoint to ``out`` (``sample`` and ``pack`` take it) and ``out.json`` with the val
    loss before (the babyGPT), right after the conversion at ``lam = 1``, and after fine-tuning.
    """
    from babybitnet.files import load_checkpoint, save_checkpoint
    from babybitnet.presets import get_preset
    from babybitnet.runtime import resolve_device

    dev = resolve_device(device)
    gpt, ckpt_tok, meta = load_checkpoint(path, dev)
    if gpt.config.linear != "fp":
        raise ValueError(f"{path} holds a babyBitNet already (linear={gpt.config.linear!r}); give a babyGPT checkpoint")
    if text is not None and data is not None:
        raise ValueError("give a text file (--text) or a prepared dataset (--data), not both")
    if data is not None:
        ds = load_prepared(data)
        check_tokenizer(ds, ckpt_tok, f"the checkpoint {path}")
        tok, train_data, val_data = ds.tokenizer, ds.train, ds.val
    else:
        tok, train_data, val_data = load_corpus(text)
    if ckpt_tok.to_dict() != tok.to_dict():
        raise ValueError(
            f"{path} was trained with another vocabulary ({ckpt_tok.vocab_size} characters) than "
            f"{text or 'Tiny Shakespeare'} ({tok.vocab_size}): pass the same --text it was trained on"
        )
    bitnet = to_bitnet(gpt, drop_biases=drop_biases)
    overrides = {"seed": seed, "eval_iters": eval_iters, "batch_size": meta.get("train_config", {}).get("batch_size")}
    lrs = {} if lr is None else {"lr": lr, "lr_stage2": lr / 2}
    _, cfg = get_preset("recipe", "bitnet", tok.vocab_size, max_iters=s2, **overrides, **lrs)
    before = {"gpt": val_loss(gpt, val_data, cfg, dev)}
    set_quant_strength(bitnet, 1.0)
    before["converted, lam=1"] = val_loss(bitnet, val_data, cfg, dev)
    r = finetune(bitnet, train_data, val_data, cfg, warmup, dev, progress=progress, desc="finetune")
    summary = {
        "checkpoint": str(path),
        "data": data_record(text, data),
        "warmup": warmup,
        "lr": cfg.lr,
        "before": before,
        "after": {"final_val": r["final_val"], "best_val": r["best_val"]},
        "train_config": cfg.to_dict(),
    }
    out = save_checkpoint(out, bitnet, tok, {**summary, "finetuned_from": str(path)})
    write_json(str(out) + ".json", {**summary, "history": r["history"]})
    return summary


def compare_finetune(
    s1: int = 2500,
    s2: int = 2500,
    warmup: int = 1000,
    device: str = "auto",
    seeds: Sequence[int] = (1337,),
    out: str | Path = "runs/finetune",
    text: str | Path | None = None,
    progress: bool = True,
    eval_iters: int | None = None,
    jobs: int = 1,
    lr: float | None = None,
    data: str | Path | None = None,
) -> dict:
    """The experiment over ``seeds``; writes ``results.json``, ``table.md`` and ``val_loss.png`` into ``out``.

    Per seed: (a) babyGPT, recipe preset with ``bias=False``, ``s1`` steps; (b) converted with
    :func:`to_bitnet` and fine-tuned ``s2`` steps with ``lam`` warming up over ``warmup`` steps;
    (c) the same with the abrupt switch; (d) babyBitNet from scratch, recipe preset, ``bias=False``,
    ``s1 + s2`` steps. All four use the seed for initial weights and batches, and the same data:
    Tiny Shakespeare, ``text`` (a UTF-8 file) or ``data`` (a folder written by ``prepare``).

    The fine-tunes use babyBitNet's recipe schedule over ``s2`` steps (a fresh optimizer, so its LR
    warm-up too) at peak ``lr`` with stage 2 at ``lr / 2``; ``lr=None`` is the recipe's own peak
    (3e-3, then 1.5e-3). The run from scratch always uses the recipe's LR: it is the baseline.

    Each seed is two independent tasks, (a)-(c) (one chain: the fine-tunes need the babyGPT) and (d).
    ``jobs=1`` runs them one after another in this process; ``jobs > 1`` in that many worker
    processes (fresh interpreters, one thread each). The files are rewritten after every finished
    task, so a run cut short keeps what it finished.

    Returns (and saves) ``s1, s2, warmup, lr, seeds, device, torch, machine, data``, ``runs`` (per
    seed: ``models`` with the run records of gpt, gradual, abrupt, scratch, and ``after_conversion``
    with the val loss of babyGPT and of the converted model at ``lam = 0`` and ``lam = 1``) and
    ``summary`` (see :func:`summarize`).
    """
    from babybitnet.presets import get_preset
    from babybitnet.runtime import resolve_device

    # check everything before any training starts
    if min(s1, s2) < 1:
        raise ValueError(f"s1 and s2 must be >= 1, got s1={s1}, s2={s2}")
    lambda_at(0, warmup)  # a negative warmup fails here
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs is the number of worker processes and must be a whole number >= 1, got {jobs!r}")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of whole numbers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be different from each other (each seed is one run), got {seeds}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf):
        raise ValueError(f"lr (the fine-tunes' peak learning rate) must be a positive number, got {lr!r}")

    load_corpus(text, data)  # a bad corpus fails here, before any worker starts
    dev = resolve_device(device)
    recipe_lr = get_preset("recipe", "bitnet")[1].lr
    results: dict = {
        "s1": s1,
        "s2": s2,
        "warmup": warmup,
        "lr": recipe_lr if lr is None else float(lr),
        "seeds": seeds,
        **ran_on(dev),
        "data": data_record(text, data),
        "runs": {},
        "summary": {},
    }
    # per seed the chain first: with one job a seed is complete as early as possible
    tasks = [(kind, seed) for seed in seeds for kind in TASKS]
    jobs = min(jobs, len(tasks))
    settings = {
        "s1": s1,
        "s2": s2,
        "warmup": warmup,
        "lr": lr,
        "eval_iters": eval_iters,
        "text": text and str(text),
        "data": data and str(data),  # paths: each worker opens the corpus itself
        "device": str(dev),
        "progress": progress and jobs == 1,  # workers' bars would write over each other
    }

    def record(done: tuple[int, dict]) -> None:
        # merge the task into its seed's run and rewrite every file: a run cut short keeps what finished
        seed, made = done
        run = results["runs"].setdefault(str(seed), {"models": {}})
        merged = {**run["models"], **made["models"]}
        run["models"] = {k: merged[k] for k in NAMES if k in merged}  # always gpt, gradual, abrupt, scratch
        if "after_conversion" in made:
            run["after_conversion"] = made["after_conversion"]
        results["runs"] = {str(s): results["runs"][str(s)] for s in seeds if str(s) in results["runs"]}
        results["summary"] = summarize(results["runs"], seeds)
        write_results(out, results, markdown_table(results), {"val_loss.png": plot_finetune})

    bar = progress and jobs > 1  # one bar for the tasks; with one job the training bars show instead
    run_study(tasks, partial(_run_task, settings=settings), record, jobs, desc="finetune", progress=bar)
    return results
