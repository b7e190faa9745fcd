"""Fine-tune a trained babyGPT into a babyBitNet, with gradual quantization.

Training a BitNet from scratch is one way to get ternary weights; the other is
to start from a full-precision model that is already trained. Switching such a
model to ternary weights and 8-bit activations at once mostly destroys it:
every weight moves to one of three values in one step, the errors of all the
layers add up, and the loss jumps back towards that of an untrained model. The
Hugging Face blog "Fine-tuning LLMs to 1.58bit" (``shared/REFERENCE.md``
section 2) quantizes gradually instead::

    x' = x + lam * (quant(x) - x).detach(),      lam = min(step / warmup, 1)

At ``lam = 0`` the model is the full-precision one it was converted from; as
``lam`` rises the quantization error grows a little at a time and the latent
weights adapt to it, until at ``lam = 1`` the model is a plain babyBitNet.
``warmup = 0`` is the abrupt switch, for comparison.

* :func:`to_bitnet` copies a trained babyGPT into a babyBitNet of the same size;
* :func:`lambda_at` is the schedule; :func:`finetune` is :func:`babybitnet.train.train`
  with ``lam`` set before every step;
* :func:`compare_finetune` is the experiment: babyGPT then gradual fine-tuning,
  babyGPT then the abrupt switch, and babyBitNet from scratch, for the same
  total number of steps on the same data, over several seeds (mean +- std,
  :func:`summarize`). The fine-tunes' peak learning rate is an option: the
  recipe's 3e-3 is tuned for training from scratch and at first knocks the
  converted model out of its minimum. Each seed is two independent tasks (the
  babyGPT -> fine-tunes chain, and the run from scratch), which ``jobs`` worker
  processes run side by side.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from babybitnet.bitlinear import BitLinear, set_quant_strength
from babybitnet.compare import run_record, write_results
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.train import TrainConfig, estimate_loss, train

NAMES = {"gpt": "babyGPT", "gradual": "gradual", "abrupt": "abrupt", "scratch": "babyBitNet from scratch"}
CONVERSION = ("gpt", "lam0", "lam1")  # val loss of babyGPT, and of its copy at lam = 0 and lam = 1, untrained


def to_bitnet(model: GPT, drop_biases: bool = False) -> GPT:
    """A babyBitNet (``linear="bitnet"``) with the weights of the trained babyGPT ``model``.

    Every ``nn.Linear`` inside the blocks becomes a BitLinear with the same weight matrix
    (the fused q/k/v matrix keeps its row order; BitLinear's ``weight_groups`` only gives
    each head's q, k and v their own scale). Embeddings, norms and ``lm_head`` (with its
    bias, if any) are copied as they are. The new model's BitLinear layers start at
    ``lam = 1``; :func:`finetune` sets ``lam`` itself.

    BitLinear has no bias, so the biases of babyGPT's ``attn.proj``, ``mlp.fc`` and
    ``mlp.proj`` have nowhere to go. Rather than lose them silently this raises unless
    ``drop_biases=True``; train the babyGPT with ``bias=False`` (as :func:`compare_finetune`
    does) and nothing is lost: at ``lam = 0`` the copy then computes exactly what
    ``model`` computes. ``bitlinear_norm`` is set to False: the copy keeps babyGPT's
    norms in the blocks (an RMSNorm inside every BitLinear would add norms babyGPT never had).
    """
    if not isinstance(model, GPT):
        raise TypeError(f"to_bitnet converts a babyGPT (babybitnet.gpt.GPT), got {type(model).__name__}")
    if model.config.linear == "bitnet":
        raise ValueError("this model is already a babyBitNet (config.linear='bitnet'); to_bitnet converts a babyGPT")
    linears = {name: m for name, m in model.blocks.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError("this babyGPT has no nn.Linear inside its blocks (n_layer=0?): there is nothing to convert")
    biases = [f"blocks.{name}.bias" for name, m in linears.items() if m.bias is not None]
    if biases and not drop_biases:
        raise ValueError(
            f"the babyGPT has biases in {len(biases)} linear layers (e.g. {biases[0]}) and BitLinear has none: "
            "train it with bias=False, or pass drop_biases=True to drop them (the loss at lam=0 shows the cost)"
        )
    config = GPTConfig(**{**model.config.to_dict(), "linear": "bitnet", "bitlinear_norm": False})
    with torch.random.fork_rng(devices=[]):  # building the model draws random weights: leave the global RNG alone
        bitnet = GPT(config)
    state = {k: v for k, v in model.state_dict().items() if k not in biases}
    bitnet.load_state_dict(state)  # strict: every other tensor must find its place, with the same shape
    return bitnet.to(model.lm_head.weight.device).train(model.training)


def lambda_at(step: int, warmup: int) -> float:
    """Quantization strength at step ``step``: ``min(step / warmup, 1)``; ``warmup=0`` is 1 from the start."""
    if step < 0 or warmup < 0:
        raise ValueError(f"step and warmup must be >= 0, got step={step}, warmup={warmup}")
    return 1.0 if warmup == 0 else min(step / warmup, 1.0)


def finetune(
    model: GPT,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    cfg: TrainConfig,
    warmup: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "finetune",
) -> dict:
    """Train a babyBitNet with ``lam = lambda_at(step, warmup)`` set before every step and evaluation.

    Returns :func:`babybitnet.train.train`'s summary with ``warmup`` and the ``lam`` of every
    evaluation in ``history["lam"]``. The model ends at ``lam = 1`` once ``warmup <= cfg.max_iters``.
    """
    if not any(isinstance(m, BitLinear) for m in model.modules()):
        raise ValueError("finetune needs a model with BitLinear layers: convert a babyGPT with to_bitnet first")
    lambda_at(0, warmup)  # check warmup before training starts

    def set_lam(step: int) -> None:
        set_quant_strength(model, lambda_at(step, warmup))

    r = train(model, train_data, val_data, cfg, device, progress=progress, desc=desc, on_step=set_lam)
    r["history"]["lam"] = [lambda_at(s, warmup) for s in r["history"]["step"]]
    return {**r, "warmup": warmup}


def val_loss(model: GPT, val_data: torch.Tensor, cfg: TrainConfig, device: str | torch.device = "cpu") -> float:
    """Validation loss on the windows every run's first evaluation uses (eval generator seeded ``cfg.seed + 1``)."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    return estimate_loss(model, val_data, cfg.batch_size, cfg.eval_iters, model.config.block_size, g, device)


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
    import matplotlib

    matplotlib.use("Agg")  # files only, works without a display
    import matplotlib.pyplot as plt

    s1 = results["s1"]
    done = [str(s) for s in results["seeds"] if str(s) in results["runs"]]
    # one seed: plain lines; several: thin ones, so the spread between seeds shows without hiding anything
    width, alpha = (1.5, 1.0) if len(done) <= 1 else (0.9, 0.6)
    fig, ax = plt.subplots(figsize=(8, 5))
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
    ax.set_xlabel("step")
    ax.set_ylabel("val cross-entropy loss (nats / character)")
    seeds = f"seed {done[0]}" if len(done) == 1 else f"{len(done)} seeds, one thin line each"
    ax.set_title(
        f"babyGPT -> babyBitNet: gradual vs abrupt vs scratch\n"
        f"{seeds}, fine-tune peak LR {results['lr']:g} ({results['device']})"
    )
    ax.set_ylim(top=min(ax.get_ylim()[1], 3.5))  # the untrained loss (~4.2) would flatten the interesting part
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _chain(seed: int, settings: dict) -> dict:
    """One seed's babyGPT (``s1`` steps), the conversion's cost, then the gradual and the abrupt fine-tune.

    A top-level function so a worker process can run it; ``settings`` holds plain values only.
    Returns ``{"models": {gpt, gradual, abrupt}, "after_conversion": {gpt, lam0, lam1}}``.
    """
    from babybitnet.data import load_dataset
    from babybitnet.presets import build_model, get_preset

    s1, s2, dev, progress = settings["s1"], settings["s2"], settings["device"], settings["progress"]
    common = {"seed": seed, "eval_iters": settings["eval_iters"]}  # None values keep the preset's
    tok, train_data, val_data = load_dataset(settings["text"])

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
    from babybitnet.data import load_dataset
    from babybitnet.presets import build_model

    tok, train_data, val_data = load_dataset(settings["text"])
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


def _run_task(kind: str, seed: int, settings: dict) -> tuple[str, int, dict]:
    """Run one task (``"chain"`` or ``"scratch"``) for ``seed``; return it with what it made."""
    return kind, seed, TASKS[kind](seed, settings)


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
) -> dict:
    """Fine-tune YOUR trained babyGPT: load the checkpoint ``path``, convert it, fine-tune, save a babyBitNet.

    The checkpoint must hold a babyGPT (``linear="fp"``) trained on the same text (its tokenizer
    must match). The fine-tune is :func:`finetune` with babyBitNet's recipe schedule over ``s2``
    steps at peak ``lr`` (None: the recipe's 3e-3; stage 2 at half), the checkpoint's batch size
    if it recorded one. Writes the babyBitNet checkpoint to ``out`` (``sample`` and ``pack`` take
    it) and ``out.json`` with the val loss before (the babyGPT), right after the conversion at
    ``lam = 1``, and after fine-tuning.
    """
    from babybitnet.checkpoint import load_checkpoint, save_checkpoint
    from babybitnet.data import load_dataset
    from babybitnet.presets import get_preset
    from babybitnet.train import resolve_device

    dev = resolve_device(device)
    gpt, ckpt_tok, meta = load_checkpoint(path, dev)
    if gpt.config.linear != "fp":
        raise ValueError(f"{path} holds a babyBitNet already (linear={gpt.config.linear!r}); give a babyGPT checkpoint")
    tok, train_data, val_data = load_dataset(text)
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
        "warmup": warmup,
        "lr": cfg.lr,
        "before": before,
        "after": {"final_val": r["final_val"], "best_val": r["best_val"]},
        "train_config": cfg.to_dict(),
    }
    out = save_checkpoint(out, bitnet, tok, {**summary, "finetuned_from": str(path)})
    Path(str(out) + ".json").write_text(json.dumps({**summary, "history": r["history"]}, indent=2))
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
) -> dict:
    """The experiment over ``seeds``; writes ``results.json``, ``table.md`` and ``val_loss.png`` into ``out``.

    Per seed: (a) babyGPT, recipe preset with ``bias=False``, ``s1`` steps; (b) converted with
    :func:`to_bitnet` and fine-tuned ``s2`` steps with ``lam`` warming up over ``warmup`` steps;
    (c) the same with the abrupt switch; (d) babyBitNet from scratch, recipe preset, ``bias=False``,
    ``s1 + s2`` steps. All four use the seed for initial weights and batches, and the same data.

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
    from concurrent.futures import as_completed

    from tqdm.auto import tqdm

    from babybitnet.ablation import worker_pool
    from babybitnet.bench import machine_info
    from babybitnet.presets import get_preset
    from babybitnet.train import resolve_device

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

    dev = resolve_device(device)
    recipe_lr = get_preset("recipe", "bitnet")[1].lr
    results: dict = {
        "s1": s1,
        "s2": s2,
        "warmup": warmup,
        "lr": recipe_lr if lr is None else float(lr),
        "seeds": seeds,
        "device": str(dev),
        "torch": torch.__version__,
        "machine": machine_info(dev),
        "data": str(text or "tinyshakespeare"),
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
        "device": str(dev),
        "progress": progress and jobs == 1,  # workers' bars would write over each other
    }

    def record(kind: str, seed: int, made: dict) -> None:
        # merge the task into its seed's run and rewrite every file: a run cut short keeps what finished
        run = results["runs"].setdefault(str(seed), {"models": {}})
        merged = {**run["models"], **made["models"]}
        run["models"] = {k: merged[k] for k in NAMES if k in merged}  # always gpt, gradual, abrupt, scratch
        if "after_conversion" in made:
            run["after_conversion"] = made["after_conversion"]
        results["runs"] = {str(s): results["runs"][str(s)] for s in seeds if str(s) in results["runs"]}
        results["summary"] = summarize(results["runs"], seeds)
        folder = write_results(out, results, markdown_table(results))
        plot_finetune(results, folder / "val_loss.png")

    if jobs == 1:
        for kind, seed in tasks:
            record(*_run_task(kind, seed, settings))
        return results

    pool = worker_pool(jobs)
    bar = tqdm(total=len(tasks), desc=f"finetune ({jobs} jobs)", disable=not progress, dynamic_ncols=True)
    try:
        futures = [pool.submit(_run_task, kind, seed, settings) for kind, seed in tasks]
        for f in as_completed(futures):
            record(*f.result())
            bar.update()
    finally:
        # on an error, drop the tasks not yet started rather than run them for nothing
        pool.shutdown(cancel_futures=True)
        bar.close()
    return results
