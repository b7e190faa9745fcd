"""The GRPO study (lesson 15): does a ternary policy learn from rewards as fast and as far as a full-precision one?

:mod:`babybitnet.grpo` is the method (the task, the group advantage, the clipped objective, the loop);
this module runs it as an experiment. Per seed and model, the same supervised budget, then GRPO:

* ``gpt``: babyGPT, ``warmup_steps`` of supervised warm-up, then GRPO;
* ``bitnet``: babyBitNet, the same;
* ``finetuned``: babyGPT warmed up for half the budget, converted with lesson 14's
  :func:`babybitnet.finetune.to_bitnet` and fine-tuned for the other half with the gradual
  quantization strength ``lambda_at(step, w)`` (lesson 14's method), then GRPO as a babyBitNet.

Every run is one task of :func:`babybitnet.experiments.study.run_study` (worker processes for
``jobs > 1``); ``results.json``, ``table.md`` and ``reward.png`` are rewritten after each one.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch

from babybitnet import grpo as G
from babybitnet.experiments.study import NAMES, new_figure, ran_on, run_study, save_figure, write_results

MODELS = ("gpt", "bitnet", "finetuned")
LABELS = {**NAMES, "finetuned": "babyBitNet fine-tuned from babyGPT"}
COLORS = {"gpt": "0.35", "bitnet": "C0", "finetuned": "C1"}
# smaller than the seed's model: the task is short (13 tokens) and the study must fit on a CPU
SIZE = {"bias": False, "n_layer": 2, "n_embd": 32, "n_head": 4, "block_size": 16}
HELD_OUT = 128  # prompts of the before/after evaluation (seeded apart from the training prompts)
LAST = 10  # "final reward": the mean sampled reward of the last LAST steps
LEVEL = 0.9  # "how fast": GRPO steps until the mean sampled reward of LAST steps reaches LEVEL


def _stats(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value) and the values."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def build_policy(key: str, seed: int, settings: dict) -> tuple[torch.nn.Module, list[float]]:
    """The warmed-up policy of model ``key`` for ``seed`` and the losses of its supervised steps.

    The same budget for all three: ``warmup_steps`` supervised steps (for ``finetuned``, half as a
    babyGPT, half as the converted babyBitNet with lambda rising over the first half of those).
    """
    from babybitnet.bitlinear import set_quant_strength
    from babybitnet.finetune import lambda_at, to_bitnet
    from babybitnet.presets import build_model

    vocab = G.tokenizer().vocab_size
    g = torch.Generator().manual_seed(seed)
    task, length, steps, lr = settings["task"], settings["length"], settings["warmup_steps"], settings["warmup_lr"]
    if key in ("gpt", "bitnet"):
        model, _ = build_model("recipe", key, vocab, SIZE, seed=seed)
        return model, G.warmup(model, steps, lr=lr, generator=g, task=task, length=length)
    gpt, _ = build_model("recipe", "gpt", vocab, SIZE, seed=seed)
    losses = G.warmup(gpt, steps // 2, lr=lr, generator=g, task=task, length=length)
    model = to_bitnet(gpt)
    ft_steps = steps - steps // 2
    lam_warmup = ft_steps // 2

    def set_lam(step: int) -> None:
        set_quant_strength(model, lambda_at(step, lam_warmup))

    losses += G.warmup(model, ft_steps, lr=lr, generator=g, task=task, length=length, on_step=set_lam)
    set_quant_strength(model, 1.0)  # GRPO trains the ternary model
    return model, losses


def _run(key: str, seed: int, settings: dict) -> tuple[str, int, dict]:
    """One model and seed: warm-up, evaluation, GRPO, evaluation. A top-level function, for worker processes."""
    model, losses = build_policy(key, seed, settings)
    task, length = settings["task"], settings["length"]
    held_out = G.make_prompts(settings["held_out"], torch.Generator().manual_seed(10_000 + seed), length)

    def evaluate() -> dict:  # the same prompts and samples' generator before and after
        return G.evaluate(model, held_out, torch.Generator().manual_seed(20_000 + seed), task=task)

    before = evaluate()
    g = torch.Generator().manual_seed(30_000 + seed)
    keys = ("group_size", "prompts_per_step", "lr", "clip_eps", "kl_coef", "updates")
    h = G.grpo(model, settings["iters"], generator=g, task=task, length=length, **{k: settings[k] for k in keys})
    return key, seed, {"warmup_loss": losses[-1], "before": before, "after": evaluate(), "history": h}


def steps_to(rewards: list[float], level: float = LEVEL, window: int = LAST) -> int | None:
    """The first GRPO step at which the mean sampled reward of the last ``window`` steps reaches ``level`` (or None)."""
    for i in range(window, len(rewards) + 1):
        if statistics.fmean(rewards[i - window : i]) >= level:
            return i
    return None


def summarize(results: dict) -> dict:
    """Per model, over its finished seeds: reward and exact fraction before and after GRPO, final sampled reward."""
    summary = {}
    for key, runs in results["runs"].items():
        done = [runs[s] for s in sorted(runs, key=int)]
        summary[key] = {
            "seeds": [int(s) for s in sorted(runs, key=int)],
            "reward_before": _stats([r["before"]["reward"] for r in done]),
            "reward_after": _stats([r["after"]["reward"] for r in done]),
            "exact_before": _stats([r["before"]["exact"] for r in done]),
            "exact_after": _stats([r["after"]["exact"] for r in done]),
            "final_reward": _stats([statistics.fmean(r["history"]["reward"][-LAST:]) for r in done]),
            "seconds": _stats([r["history"]["seconds"] for r in done]),
        }
        reached = [steps_to(r["history"]["reward"]) for r in done]
        # a seed that never reached the level has no number of steps: then only the values are kept
        summary[key]["steps_to_level"] = (
            _stats([float(v) for v in reached]) if None not in reached else {"values": reached}
        )
    return summary


def markdown_table(results: dict) -> str:
    """The summary as markdown: mean +- sample std over the finished seeds."""

    def cell(e: dict, pct: bool = False) -> str:
        return f"{100 * e['mean']:.1f}% +- {100 * e['std']:.1f}" if pct else f"{e['mean']:.3f} +- {e['std']:.3f}"

    def steps_cell(e: dict) -> str:
        st = e.get("steps_to_level", {})
        if "mean" in st:
            return f"{st['mean']:.0f} +- {st['std']:.0f}"
        return ", ".join("not reached" if v is None else str(v) for v in st.get("values", []))

    rows = [
        "| model | seeds | reward after warm-up | reward after GRPO | exact after warm-up | exact after GRPO "
        f"| GRPO steps to reward {LEVEL:g} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in MODELS:
        if key in results["summary"]:
            e = results["summary"][key]
            rows.append(
                f"| {LABELS[key]} | {len(e['seeds'])} | {cell(e['reward_before'])} | {cell(e['reward_after'])} "
                f"| {cell(e['exact_before'], True)} | {cell(e['exact_after'], True)} | {steps_cell(e)} |"
            )
    caption = (
        f"\n{results['task']} of {results['length']} letters; {results['warmup_steps']} supervised steps, then "
        f"{results['iters']} GRPO steps ({results['prompts_per_step']} prompts x {results['group_size']} samples). "
        f"Reward and exact answers of 4 samples (temperature 1) of {results['held_out']} held-out prompts per seed. "
        f"GRPO steps to reward {LEVEL:g}: until the mean sampled reward of {LAST} steps reaches it. "
        "Mean +- sample standard deviation over the seeds.\n"
    )
    return "\n".join(rows) + "\n" + caption


def mean_curve(results: dict, key: str) -> tuple[list[float], list[float]]:
    """The sampled reward per GRPO step of model ``key``: mean and sample std over its finished seeds."""
    curves = [r["history"]["reward"] for r in results["runs"][key].values()]
    steps = zip(*curves, strict=True)
    per_step = [(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for v in steps]
    return [m for m, _ in per_step], [s for _, s in per_step]


def plot_reward(results: dict, path: str | Path, ax=None) -> Path | None:
    """Mean reward against GRPO step, one line per model (mean over seeds, +- std shaded); to ``path`` or ``ax``."""
    fig = None
    if ax is None:
        fig = new_figure((8, 4.5))
        ax = fig.subplots()
    for key in MODELS:
        if key not in results["runs"]:
            continue
        mean, std = mean_curve(results, key)
        x = range(len(mean))
        n = len(results["runs"][key])
        ax.plot(x, mean, color=COLORS[key], label=f"{LABELS[key]} ({n} seed{'s' * (n > 1)})")
        lo = [m - s for m, s in zip(mean, std, strict=True)]
        hi = [m + s for m, s in zip(mean, std, strict=True)]
        ax.fill_between(x, lo, hi, color=COLORS[key], alpha=0.15, linewidth=0)
    ax.set(xlabel="GRPO step", ylabel="mean reward of the sampled completions", ylim=(0, 1.02))
    ax.set_title(f"GRPO on '{results['task']}' ({results['device']})")
    ax.grid(alpha=0.3)
    ax.legend()
    return None if fig is None else save_figure(fig, path)


def grpo_study(
    models: Sequence[str] = MODELS,
    seeds: Sequence[int] = (1337, 1338, 1339),
    iters: int = 150,
    out: str | Path = "runs/grpo",
    warmup_steps: int = 60,
    task: str = "reverse",
    length: int = G.LENGTH,
    group_size: int = 8,
    prompts_per_step: int = 16,
    lr: float = 2e-3,
    warmup_lr: float = 1e-3,
    clip_eps: float = 0.2,
    kl_coef: float = 0.04,
    updates: int = 2,
    held_out: int = HELD_OUT,
    jobs: int = 1,
    progress: bool = True,
) -> dict:
    """GRPO for every model in ``models`` and seed in ``seeds``; writes results.json, table.md and reward.png.

    CPU only (the models are tiny); ``held_out`` prompts (4 samples each) measure the reward before and
    after GRPO. Returns the results: the settings, ``device``/``torch``/``machine``, ``runs[model][seed]``
    with the warm-up's last loss, the held-out reward and exact fraction ``before`` and ``after`` GRPO and
    the GRPO ``history`` (mean reward per step), and ``summary``.
    """
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ValueError(f"unknown models {bad}; choose from {list(MODELS)}")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of different whole numbers, got {seeds!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs is the number of worker processes, a whole number >= 1, got {jobs!r}")
    if iters < 1 or warmup_steps < 2:
        raise ValueError(f"need iters >= 1 and warmup_steps >= 2, got iters={iters}, warmup_steps={warmup_steps}")
    G.target(G.SEP, task)  # an unknown task fails here, before any training
    settings = dict(
        task=task,
        length=length,
        warmup_steps=warmup_steps,
        warmup_lr=warmup_lr,
        iters=iters,
        group_size=group_size,
        prompts_per_step=prompts_per_step,
        lr=lr,
        clip_eps=clip_eps,
        kl_coef=kl_coef,
        updates=updates,
        held_out=held_out,
    )
    results: dict = {
        **settings,
        "models": list(models),
        "seeds": seeds,
        "model_size": SIZE,
        **ran_on("cpu"),
        "command": (
            f"grpo_study(models={tuple(models)}, seeds={tuple(seeds)}, iters={iters}, warmup_steps={warmup_steps}, "
            f"task={task!r}, jobs={jobs})"
        ),
        "runs": {},
        "summary": {},
    }

    def record(done: tuple[str, int, dict]) -> None:
        key, seed, made = done
        runs = results["runs"].setdefault(key, {})
        runs[str(seed)] = made
        results["runs"] = {k: results["runs"][k] for k in MODELS if k in results["runs"]}  # a fixed order
        results["summary"] = summarize(results)
        write_results(out, results, markdown_table(results), {"reward.png": plot_reward})

    tasks = [(key, seed) for seed in seeds for key in models]
    run_study(tasks, partial(_run, settings=settings), record, jobs, desc="grpo", progress=progress)
    return results
