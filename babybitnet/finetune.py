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
  total number of steps on the same data.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from babybitnet.bitlinear import BitLinear, set_quant_strength
from babybitnet.compare import run_record, write_results
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.train import TrainConfig, estimate_loss, train

NAMES = {"gpt": "babyGPT", "gradual": "gradual", "abrupt": "abrupt", "scratch": "babyBitNet from scratch"}


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


def markdown_table(results: dict) -> str:
    """The summary table of a :func:`compare_finetune` run as markdown."""
    s1, s2, conv = results["s1"], results["s2"], results["after_conversion"]
    m = results["models"]
    rows = [
        "| model | steps | final val loss | best val loss |",
        "|---|---:|---:|---:|",
        f"| babyGPT (fp, bias=False) | {s1} | {m['gpt']['final_val']:.4f} | {m['gpt']['best_val']:.4f} |",
        f"| babyGPT, on the conversion's val windows | {s1} | {conv['gpt']:.4f} | |",
        f"| converted, lam=0 (no training) | {s1} | {conv['lam0']:.4f} | |",
        f"| converted, lam=1 (no training) | {s1} | {conv['lam1']:.4f} | |",
        f"| gradual (lambda warm-up {results['warmup']}) | {s1} + {s2} | {m['gradual']['final_val']:.4f} | "
        f"{m['gradual']['best_val']:.4f} |",
        f"| abrupt (lambda = 1 at once) | {s1} + {s2} | {m['abrupt']['final_val']:.4f} | "
        f"{m['abrupt']['best_val']:.4f} |",
        f"| babyBitNet from scratch | {s1 + s2} | {m['scratch']['final_val']:.4f} | {m['scratch']['best_val']:.4f} |",
    ]
    return "\n".join(rows) + "\n"


def plot_finetune(results: dict, path: str | Path) -> Path:
    """Val loss against step: babyGPT's fp phase, the two fine-tunes after it, and babyBitNet from scratch."""
    import matplotlib

    matplotlib.use("Agg")  # files only, works without a display
    import matplotlib.pyplot as plt

    s1, m = results["s1"], results["models"]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(m["gpt"]["history"]["step"], m["gpt"]["history"]["val"], color="0.4", label="babyGPT (fp phase)")
    for key, color in (("gradual", "C0"), ("abrupt", "C3")):
        h = m[key]["history"]
        ax.plot([s1 + s for s in h["step"]], h["val"], color=color, label=f"{NAMES[key]} (babyBitNet)")
    h = m["scratch"]["history"]
    ax.plot(h["step"], h["val"], color="C2", label=NAMES["scratch"])
    ax.axvline(s1, color="0.6", linestyle=":", label="conversion")
    if results["warmup"]:
        ax.axvline(s1 + results["warmup"], color="C0", linestyle=":", alpha=0.6, label="lambda reaches 1")
    ax.set_xlabel("step")
    ax.set_ylabel("val cross-entropy loss (nats / character)")
    ax.set_title(f"babyGPT -> babyBitNet: gradual vs abrupt vs scratch ({results['device']})")
    ax.set_ylim(top=min(ax.get_ylim()[1], 3.5))  # the untrained loss (~4.2) would flatten the interesting part
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _scratch_run(s: int, overrides: dict, text: str | None, device: str, progress: bool) -> dict:
    """babyBitNet from scratch for ``s`` steps (recipe preset, bias=False); a top-level function for a worker."""
    from babybitnet.data import load_dataset
    from babybitnet.presets import build_model

    tok, train_data, val_data = load_dataset(text)
    model, cfg = build_model("recipe", "bitnet", tok.vocab_size, {"bias": False}, max_iters=s, **overrides)
    r = train(model, train_data, val_data, cfg, device, progress=progress, desc="babyBitNet from scratch")
    return run_record(r, model, cfg)


def compare_finetune(
    s1: int = 2500,
    s2: int = 2500,
    warmup: int = 1000,
    device: str = "auto",
    seed: int | None = None,
    out: str | Path = "runs/finetune",
    text: str | Path | None = None,
    progress: bool = True,
    eval_iters: int | None = None,
    jobs: int = 1,
) -> dict:
    """The experiment; writes ``results.json``, ``table.md`` and ``val_loss.png`` into ``out``.

    (a) babyGPT, recipe preset with ``bias=False``, ``s1`` steps; (b) converted with :func:`to_bitnet`
    and fine-tuned ``s2`` steps with ``lam`` warming up over ``warmup`` steps; (c) the same with the
    abrupt switch; (d) babyBitNet from scratch, recipe preset, ``bias=False``, ``s1 + s2`` steps.
    Every run uses the same data and seed. The fine-tunes use babyBitNet's recipe schedule over
    ``s2`` steps (a fresh optimizer, so its LR warm-up too): the model they end as is a babyBitNet.
    ``jobs=2`` runs (d) in a second process beside (a)-(c).
    """
    from concurrent.futures import ProcessPoolExecutor

    from babybitnet.bench import machine_info
    from babybitnet.data import load_dataset
    from babybitnet.presets import build_model, get_preset
    from babybitnet.train import resolve_device

    if min(s1, s2) < 1:
        raise ValueError(f"s1 and s2 must be >= 1, got s1={s1}, s2={s2}")
    lambda_at(0, warmup)  # a negative warmup fails here, before any training
    if jobs not in (1, 2):
        raise ValueError(f"jobs must be 1 or 2 (the scratch run beside the rest), got {jobs}")
    dev = resolve_device(device)
    overrides = {k: v for k, v in {"seed": seed, "eval_iters": eval_iters}.items() if v is not None}
    tok, train_data, val_data = load_dataset(text)
    results: dict = {
        "s1": s1,
        "s2": s2,
        "warmup": warmup,
        "device": str(dev),
        "torch": torch.__version__,
        "machine": machine_info(dev),
        "data": str(text or "tinyshakespeare"),
        "models": {},
    }
    pool = scratch = None
    if jobs == 2:  # a fresh interpreter ("spawn"), so it inherits none of this process's thread pools
        pool = ProcessPoolExecutor(max_workers=1, mp_context=torch.multiprocessing.get_context("spawn"))
        scratch = pool.submit(_scratch_run, s1 + s2, overrides, text and str(text), str(dev), False)

    # (a) the full-precision model
    gpt, gcfg = build_model("recipe", "gpt", tok.vocab_size, {"bias": False}, max_iters=s1, **overrides)
    r = train(gpt, train_data, val_data, gcfg, dev, progress=progress, desc="babyGPT")
    results["models"]["gpt"] = run_record(r, gpt, gcfg)

    # the cost of conversion, all on the same validation windows
    _, fcfg = get_preset("recipe", "bitnet", tok.vocab_size, {"bias": False}, max_iters=s2, **overrides)
    bitnet = to_bitnet(gpt)
    conv = {"gpt": val_loss(gpt, val_data, fcfg, dev)}
    for lam in (0.0, 1.0):
        set_quant_strength(bitnet, lam)
        conv[f"lam{lam:g}"] = val_loss(bitnet, val_data, fcfg, dev)
    results["after_conversion"] = conv

    # (b), (c) the fine-tunes, each from its own copy of the converted model
    for key, w in (("gradual", warmup), ("abrupt", 0)):
        model = to_bitnet(gpt)
        r = finetune(model, train_data, val_data, fcfg, w, dev, progress=progress, desc=key)
        results["models"][key] = run_record(r, model, fcfg)

    # (d) from scratch
    if pool is not None:
        results["models"]["scratch"] = scratch.result()
        pool.shutdown()
    else:
        results["models"]["scratch"] = _scratch_run(s1 + s2, overrides, text, dev, progress)

    out = write_results(out, results, markdown_table(results))
    plot_finetune(results, out / "val_loss.png")
    return results
