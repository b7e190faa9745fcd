# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 14: Beyond the seed: fine-tuning to 1.58 bits, scale, and more GPUs
#
# The seed project asked one question, at one size, on one CPU: does a
# 0.2M-parameter babyBitNet trained from scratch on Tiny Shakespeare reach
# babyGPT? Lessons 1 to 13 answered it and made the model small and fast. Three
# questions the seed could not test remain, and the BitNet papers make claims
# about all three:
#
# 1. **Fine-tuning to 1.58 bits.** Can a full-precision model that is already
#    trained be turned into a ternary one, instead of training a BitNet from
#    scratch? Hugging Face's blog "Fine-tuning LLMs to 1.58bit" says yes, if the
#    quantization is switched on *gradually*. You write that schedule (the
#    exercises), watch it in a short run, and read a three-seed experiment.
# 2. **Scale.** The BitNet b1.58 paper finds the ternary model behind its
#    full-precision twin at 700M parameters and ahead at 3B. Does the gap close
#    as *our* models grow, from 0.2M to 25M parameters?
# 3. **More GPUs.** `babybitnet train` runs under `torchrun` on several GPUs.
#    What does that buy at nanoGPT's size?
#
# The last two need GPUs and hours, not a CPU and two minutes. This lesson runs
# what fits on a CPU live and reads the rest from results measured with this
# repository's commands; they ship with the package
# (`babybitnet.experiments.study.measured`), and each says which command wrote it and on
# which machine. The lesson ends with an honest list of what is left open.

# %% tags=["imports"]
import matplotlib.pyplot as plt
import torch

torch.set_num_threads(1)  # tiny models: one thread is as fast, and never fights other programs for the cores

# %% [markdown]
# ## 1. Fine-tuning to 1.58 bits
#
# ### Why switching at once hurts
#
# Take a trained babyGPT and copy its weights into a babyBitNet of the same
# shape (`babybitnet.finetune.to_bitnet` does it: every `nn.Linear` inside the
# blocks becomes a BitLinear with the same weight matrix). In the next forward
# pass every weight is rounded to $\{-1, 0, +1\}$ times its layer's scale and
# every activation to 8 bits (lessons 6 and 7). Each layer's error is small
# compared with its weights, but the model was trained with the exact weights:
# its layers expect their inputs as the layers before them made them, and the
# errors of one layer feed the next, through every block. Nothing in the
# training made the model robust to that.
#
# `python -m babybitnet finetune` measured it: three babyGPTs (seeds 1337,
# 1338, 1339; the `recipe` preset with `bias=False`, since BitLinear has no
# bias and a copy at strength 0 must compute exactly what babyGPT computes)
# trained 2,500 steps, then converted, all evaluated on the same validation
# windows:

# %%
import math

from babybitnet.experiments.study import measured
from babybitnet.runtime import describe

ft = measured("finetune")
conv = ft["summary"]["after_conversion"]
print(f"`{ft['command']}` on {describe(ft['machine'])}")
print(f"({ft['note']})\n")
for key, label in [
    ("gpt", "babyGPT after 2,500 steps"),
    ("lam0", "converted, quantization off (lam = 0)"),
    ("lam1", "converted, ternary at once (lam = 1)"),
]:
    e = conv[key]
    print(
        f"{label:40} val loss {e['mean']:.3f} +- {e['std']:.3f}  (seeds: {', '.join(f'{v:.3f}' for v in e['values'])})"
    )
print(f"{'an untrained model, ln(65)':40} val loss {math.log(65):.3f}")
lost = (conv["lam1"]["mean"] - conv["gpt"]["mean"]) / (math.log(65) - conv["gpt"]["mean"])
print(f"\nthe switch undoes {lost:.0%} of the way from an untrained model to babyGPT")

# %% [markdown]
# At $\lambda = 0$ the copy computes exactly what babyGPT computes (the same
# loss). Switched on at once, the ternary copy loses more than a third of what
# babyGPT had learned. Training it further recovers, but it starts far from
# where it was.
#
# ### The gradual schedule
#
# The Hugging Face recipe (the blog "Fine-tuning LLMs to 1.58bit") blends the
# quantized values in a little at a time. For a weight matrix $W$ (and the
# same for the activations $x$), with strength $\lambda \in [0, 1]$:
#
# $$W' = W + \lambda \cdot \operatorname{sg}\!\big(q(W) - W\big),$$
#
# where $q$ is the quantizer and $\operatorname{sg}$ ("stop gradient",
# `.detach()` in PyTorch) makes its argument a constant for autograd. The
# forward pass sees $(1 - \lambda)\,W + \lambda\,q(W)$: at $\lambda = 0$ the
# full-precision model, at $\lambda = 1$ the ternary one. The backward pass
# sees $W' = W + \text{constant}$, so $\partial W' / \partial W$ is the
# identity: exactly lesson 8's straight-through estimator, of which this is the
# $\lambda = 1$ case. The strength rises linearly over the first $w$ steps:
#
# $$\lambda_t = \min\!\left(\frac{t}{w},\, 1\right), \qquad \lambda_t = 1 \text{ for all } t \text{ when } w = 0 .$$
#
# The blog reports that $w = 1000$ worked best among the schedules it tried.
# Each step adds only a little quantization error, and the latent weights
# have time to move to where rounding costs less, before the next bit comes.
# $w = 0$ is the abrupt switch, for comparison.


# %% tags=["exercise"]
def lambda_at(step: int, warmup: int) -> float:
    """Exercise 14.1: the quantization strength at fine-tuning step `step` (int, >= 0): a Python float in [0, 1].

    min(step / warmup, 1) for warmup > 0; 1.0 for every step when warmup == 0 (the abrupt switch).
    A negative step or warmup raises ValueError, with a message that says which value was wrong.
    """
    ### BEGIN SOLUTION
    if step < 0 or warmup < 0:
        raise ValueError(f"step and warmup must be >= 0, got step={step}, warmup={warmup}")
    if warmup == 0:
        return 1.0
    return min(step / warmup, 1.0)
    ### END SOLUTION


# %% [markdown]
# Yours against the package's `babybitnet.finetune.lambda_at` (the same name:
# `finetune` calls it before every step), over the fine-tunes' 2,500 steps:

# %%
from babybitnet.finetune import lambda_at as package_lambda_at

steps = range(2500)
for w in (0, 500, 1000):
    same = all(math.isclose(lambda_at(s, w), package_lambda_at(s, w)) for s in steps)
    print(f"warmup {w:>4}: equals the package's at every step: {same};  lambda at steps 0, 250, 1000:", end=" ")
    print(", ".join(f"{lambda_at(s, w):g}" for s in (0, 250, 1000)))

fig, ax = plt.subplots(figsize=(8, 2.8))
for w in (0, 500, 1000):
    ax.plot(steps, [lambda_at(s, w) for s in steps], label=f"warmup {w}" + (" (abrupt)" if w == 0 else ""))
ax.set(xlabel="fine-tuning step", ylabel=r"$\lambda$", title="Quantization strength during fine-tuning")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Now the blend itself. Given a tensor `x` and its quantized version `x_q`
# (computed from `x`, so it may carry a gradient of its own), return the blend
# whose value is $(1 - \lambda)\,x + \lambda\,x_q$ and whose gradient with
# respect to `x` is the identity. One line, with one `.detach()` in the right place.


# %% tags=["exercise"]
def gradual_quant(x: torch.Tensor, x_q: torch.Tensor, lam: float) -> torch.Tensor:
    """Exercise 14.2: blend the quantized x_q into x with strength lam, straight-through gradients.

    x: float tensor of any shape; x_q: a tensor of the same shape and dtype (the quantized x);
    lam: a Python float in [0, 1]. Returns a tensor of x's shape and dtype whose value is
    x + lam * (x_q - x), and through which the gradient reaches x unchanged (d out / d x is the
    identity), while none reaches x_q.
    """
    ### BEGIN SOLUTION
    return x + lam * (x_q - x).detach()
    ### END SOLUTION


# %% [markdown]
# BitLinear does exactly this when its `lam` is below 1 (lesson 9's layer,
# with the `lam` attribute `finetune` sets), with the package's
# `babybitnet.bitlinear.gradual_quant`: to the input with the 8-bit
# quantizer, to the weights with the ternary one. Yours, put into a linear
# layer, against a BitLinear at $\lambda = 0.3$, and the gradient it passes back:

# %%
import torch.nn.functional as F

from babybitnet.bitlinear import BitLinear
from babybitnet.quant import activation_quant, weight_quant

torch.manual_seed(0)
layer = BitLinear(64, 32)
layer.lam = 0.3
x = torch.randn(5, 64, requires_grad=True)
w = layer.weight
mine = F.linear(gradual_quant(x, activation_quant(x), 0.3), gradual_quant(w, weight_quant(w), 0.3))
print("equals BitLinear at lam = 0.3:", torch.allclose(mine, layer(x), atol=1e-6))
blend = gradual_quant(w, weight_quant(w), 0.3)
blend.sum().backward()
print("gradient of sum(blend) with respect to the weights is all ones:", bool((w.grad == 1).all()))

# %% [markdown]
# What the weights look like on the way: the values of a normally distributed
# weight matrix as the forward pass sees them, at four strengths. At
# $\lambda = 1$ three values are left ($-s$, $0$, $+s$ with $s$ the mean
# absolute weight); in between every weight has moved a fraction $\lambda$ of
# the way to its ternary value.

# %%
torch.manual_seed(0)
w = torch.randn(256, 256) * 0.02
w_q = weight_quant(w)
edges = torch.linspace(-0.07, 0.07, 141).tolist()  # the same bins in every panel
fig, axes = plt.subplots(1, 4, figsize=(12, 2.6), sharex=True)
for ax, lam in zip(axes, (0.0, 0.3, 0.7, 1.0), strict=True):
    ax.hist(gradual_quant(w, w_q, lam).flatten().clamp(-0.07, 0.07).numpy(), bins=edges, color="C0")
    ax.set_title(rf"$\lambda = {lam:g}$")
    ax.set_xlabel("weight value")
    ax.set_yticks([])
axes[0].set_ylabel("count (each panel its own scale)")
fig.suptitle("A weight matrix as the forward pass sees it, by quantization strength", y=1.02)
fig.tight_layout()
plt.show()

# %% [markdown]
# ### A short run you can watch
#
# The whole experiment in miniature, with the package's functions: train a
# babyGPT (the `recipe` preset, `bias=False`) for 500 steps, convert it, look
# at its val loss with the quantization off and fully on, then fine-tune two
# copies for 200 steps: one with $\lambda$ warming up over 100 steps, one
# switched on at once. (`finetune` is lesson 5's `train` with
# `set_quant_strength(model, lambda_at(step, warmup))` called before every
# step.) The loss estimates use 10 batches instead of 200, so they are noisy
# by about 0.02. The fine-tunes use a peak learning rate of 1e-3: 200 steps
# give a model knocked out of its minimum by the recipe's 3e-3 no time to come
# back (the full runs below try both).

# %%
import time

from babybitnet.bitlinear import set_quant_strength
from babybitnet.data import load_dataset
from babybitnet.finetune import finetune, to_bitnet, val_loss
from babybitnet.presets import build_model, get_preset
from babybitnet.train import train

t0 = time.perf_counter()
tok, train_data, val_data = load_dataset()
gpt, gcfg = build_model("recipe", "gpt", tok.vocab_size, {"bias": False}, max_iters=500, eval_iters=10)
gpt_run = train(gpt, train_data, val_data, gcfg, "cpu", progress=False)
fine = dict(max_iters=200, eval_iters=10, eval_interval=25, lr=1e-3, lr_stage2=5e-4)
_, fcfg = get_preset("recipe", "bitnet", tok.vocab_size, {"bias": False}, **fine)

converted = to_bitnet(gpt)
print(f"babyGPT after {gcfg.max_iters} steps:  val {val_loss(gpt, val_data, fcfg):.3f}")
for lam in (0.0, 1.0):
    set_quant_strength(converted, lam)
    print(f"converted, lam = {lam:g}:         val {val_loss(converted, val_data, fcfg):.3f}")

demo = {}
for name, warmup in [("gradual", 100), ("abrupt", 0)]:
    demo[name] = finetune(to_bitnet(gpt), train_data, val_data, fcfg, warmup, "cpu", progress=False)
    h = demo[name]["history"]
    print(f"{name:8} (warmup {warmup:>3}): val {h['val'][0]:.3f} at the start -> {h['val'][-1]:.3f}", end="")
    print(f" after {fcfg.max_iters} steps; highest on the way {max(h['val']):.3f}")
print(f"({time.perf_counter() - t0:.0f} s in all)")

# %%
s1 = gcfg.max_iters
fig, (ax_lam, ax) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, gridspec_kw={"height_ratios": [1, 3]})
h = gpt_run["history"]
ax.plot(h["step"], h["val"], "o-", markersize=3, color="0.4", label="babyGPT (full precision)")
for name, color in [("gradual", "C0"), ("abrupt", "C3")]:
    h = demo[name]["history"]
    shifted = [s1 + s for s in h["step"]]
    ax.plot(shifted, h["val"], "o-", markersize=3, color=color, label=f"{name}, warmup {demo[name]['warmup']}")
    ax_lam.plot(shifted, h["lam"], color=color)
for a in (ax, ax_lam):
    a.axvline(s1, color="0.6", linestyle=":")
    a.grid(alpha=0.3)
ax_lam.set(ylabel=r"$\lambda$", title="Convert at step 500, then fine-tune (CPU, one seed)")
ax.set(xlabel="step", ylabel="val loss (nats per character)", ylim=(2.0, 2.8))
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The abrupt copy starts from the jump and spends its first steps
# climbing back; the gradual one never leaves the neighbourhood of babyGPT's
# loss: it rises a little while $\lambda$ grows and comes down once it is 1.
# After 200 steps the two are close. One seed and 200 steps show the
# mechanism, not which one ends better. That needs longer runs and more seeds.
#
# ### The full experiment, three seeds
#
# `python -m babybitnet finetune` runs it at the seed's size: per seed, (a)
# babyGPT for 2,500 steps, (b) converted and fine-tuned for 2,500 steps with
# $\lambda$ warming up over 1,000 (the blog's setting), (c) the same with the
# abrupt switch, and, as the baseline, (d) babyBitNet **from scratch** with the
# recipe for the same total of 5,000 steps. All on the same data, seeds 1337,
# 1338, 1339. Once with the fine-tunes at babyBitNet's recipe peak learning
# rate 3e-3, once at 1e-3. Mean +- standard deviation over the seeds:

# %%
from babybitnet.course import show_markdown
from babybitnet.experiments.finetune import markdown_table as finetune_table

ft_low = measured("finetune_lr1e-3")
for run in (ft, ft_low):
    print(f"fine-tune peak LR {run['lr']:g}: `{run['command']}`\non {describe(run['machine'])}\n")
    show_markdown(finetune_table(run))

# %% [markdown]
# The curves (mean of the three seeds at every evaluation), and the final val
# losses with the spread between seeds:


# %%
def mean_history(run: dict, key: str) -> tuple[list[int], list[float]]:
    """Steps and val loss averaged over the seeds of one model of a finetune result."""
    hs = [r["models"][key]["history"] for r in run["runs"].values()]
    return hs[0]["step"], [sum(h["val"][i] for h in hs) / len(hs) for i in range(len(hs[0]["step"]))]


fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
s1 = ft["s1"]
for key, color, offset in [("gpt", "0.4", 0), ("scratch", "C2", 0), ("gradual", "C0", s1), ("abrupt", "C3", s1)]:
    for run, style in [(ft, "-"), (ft_low, "--")]:
        if run is ft_low and key in ("gpt", "scratch"):
            continue  # the same runs in both files
        st, val = mean_history(run, key)
        lr = f", LR {run['lr']:g}" if key in ("gradual", "abrupt") else ""
        ax.plot([offset + s for s in st], val, style, color=color, label=f"{key}{lr}")
ax.axvline(s1, color="0.6", linestyle=":")
ax.axvline(s1 + ft["warmup"], color="C0", linestyle=":", alpha=0.6)
ax.text(s1 - 40, 2.45, "conversion", color="0.4", ha="right")
ax.text(s1 + ft["warmup"] + 40, 2.45, r"$\lambda$ reaches 1", color="C0")
ax.set(xlabel="step", ylabel="val loss (mean of 3 seeds)", ylim=(1.75, 3.0), title="babyGPT -> babyBitNet")
ax.grid(alpha=0.3)
ax.legend(fontsize=8, ncol=2, loc="upper right")

bars = [
    (f"{key}\nLR {run['lr']:g}", run["summary"][key]["final_val"])
    for key in ("gradual", "abrupt")
    for run in (ft, ft_low)
]
bars.append(("from scratch\n(recipe)", ft["summary"]["scratch"]["final_val"]))
colors = ["C0", "C0", "C3", "C3", "C2"]
ax_bar.bar(range(len(bars)), [e["mean"] for _, e in bars], yerr=[e["std"] for _, e in bars], capsize=4, color=colors)
for i, (_, e) in enumerate(bars):
    ax_bar.plot([i] * len(e["values"]), e["values"], "k.", markersize=4)
ax_bar.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
ax_bar.set(ylim=(1.79, 1.845), ylabel="final val loss", title="After 5,000 steps in all (dots: seeds)")
ax_bar.grid(alpha=0.3, axis="y")
fig.tight_layout()
plt.show()

for run in (ft, ft_low):
    g, a = run["summary"]["gradual"]["final_val"], run["summary"]["abrupt"]["final_val"]
    wins = sum(x < y for x, y in zip(g["values"], a["values"], strict=True))
    print(f"peak LR {run['lr']:g}: abrupt - gradual = {a['mean'] - g['mean']:+.4f} (mean), ", end="")
    print(f"gradual lower on {wins} of {len(g['values'])} seeds")
sc = ft["summary"]["scratch"]
g = ft["summary"]["gradual"]
print(
    f"from scratch - gradual (LR {ft['lr']:g}): final {sc['final_val']['mean'] - g['final_val']['mean']:+.4f}, ", end=""
)
print(f"best {sc['best_val']['mean'] - g['best_val']['mean']:+.4f}")

# %% [markdown]
# What it says:
#
# - **Gradual beats abrupt**, by about 0.01 at both learning rates, and on every
#   one of the three seeds at each (the lines above). The spread between seeds
#   is about the same size, so this is a small effect, but a consistent one:
#   the abrupt copy pays for its jump with part of its fine-tuning budget.
# - **Both fine-tunes end below the babyGPT they started from**: they trained
#   2,500 more steps, and the ternary weights cost less than those steps bring.
# - **The recipe's peak 3e-3 is better than 1e-3** for both fine-tunes, even
#   though at first it knocks both fine-tunes, the gradual one too, well above
#   where they started: the fresh optimizer warming up to 3e-3 does that, not
#   $\lambda$, which is still near 0 then. The dashed curves (1e-3) stay lower
#   for most of the run, and end higher.
# - **Against babyBitNet from scratch it is a tie.** Gradual fine-tuning ends
#   about 0.01 lower in *final* val loss, from scratch about 0.01 lower in *best*
#   val loss; with three seeds and a spread of 0.005 to 0.013, neither is a
#   finding. At this size converting a trained model saves nothing over
#   training the ternary one directly for the same number of steps.
#
# Where fine-tuning matters is where training from scratch is not an option:
# a large model that someone has already pre-trained at great cost, which is
# the blog's case. What we can say from our runs is that the mechanism works as
# described: the gradual switch avoids the jump and ends a little better than
# the abrupt one, at the same cost.
#
# ## 2. Does the gap close with scale?
#
# The BitNet b1.58 paper (arXiv 2402.17764, "The Era of 1-bit LLMs")
# trains BitNet b1.58 and a full-precision LLaMA at three sizes and reports
# perplexity on held-out text (lower is better):
#
# | size | LLaMA fp16 | BitNet b1.58 |
# |---|---:|---:|
# | 700M | 12.33 | 12.87 |
# | 1.3B | 11.25 | 11.29 |
# | 3B | 10.04 | 9.91 |
#
# Behind at 700M, level at 1.3B, ahead at 3B: the claim is that the price of
# ternary weights shrinks as the models grow. Our models are a thousand times
# smaller, but the question can be asked at our scale too.
# `python -m babybitnet scale` trains both models at five sizes, each about 4x
# the one before, from the seed's shape (0.2M parameters) to 25M, all with
# the same rules: the recipe's training settings with each model's own peak
# learning rate, context 256, batch 64, 2,500 steps, so every run reads the
# same number of characters. The result, from two H100s:

# %%
from babybitnet.experiments import scale as scale_study

sc_run = measured("scale")
print(f"`{sc_run['command']}`: {sc_run['note']}")
print(f"on {describe(sc_run['machine'])}; {sc_run['tokens_per_run'] / 1e6:.1f}M characters per run, ", end="")
print(f"about {sc_run['tokens_per_run'] / sc_run['data_chars']:.0f} times the whole text\n")
show_markdown(scale_study.markdown_table(sc_run))

# %%
rows = sc_run["summary"]
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
for j, (m, name) in enumerate([("gpt", "babyGPT"), ("bitnet", "babyBitNet")]):
    left.plot([r[f"params_{m}"] for r in rows], [r[f"best_val_{m}"] for r in rows], "o-", color=f"C{j}", label=name)
    for r in rows:
        if r[f"stopped_early_{m}"] or r[f"best_step_{m}"] < sc_run["iters"]:
            left.plot(r[f"params_{m}"], r[f"best_val_{m}"], "o", markersize=11, mfc="none", color=f"C{j}")
for r in rows:
    left.annotate(r["size"], (r["params_gpt"], r["best_val_gpt"]), textcoords="offset points", xytext=(4, 6))
left.set(xscale="log", xlabel="parameters", ylabel="best val loss (nats per character)")
left.set_title("Best val loss by size (circled: best before the last step)")
left.grid(alpha=0.3, which="both")
left.legend()
right.axhline(0, color="black", linewidth=0.8)
right.plot([r["params_gpt"] for r in rows], [r["gap"] for r in rows], "o-", color="C2")
for r in rows:
    below = r["gap"] < 0  # the labels of the points under zero go below them
    xy, offset = (r["params_gpt"], r["gap"]), (-4, -14) if below else (4, 6)
    right.annotate(
        f"{r['size']}: {r['gap']:+.3f}", xy, textcoords="offset points", xytext=offset, ha="right" if below else "left"
    )
right.set(xscale="log", xlabel="parameters (babyGPT)", ylabel="babyBitNet - babyGPT")
right.set_title("The gap (> 0: babyBitNet behind)")
right.grid(alpha=0.3, which="both")
for a in (left, right):
    a.set_xlim(1.5e5, 5e7)
fig.suptitle(f"Tiny Shakespeare, {sc_run['tokens_per_run'] / 1e6:.0f}M characters per run, one seed per size")
fig.tight_layout()
plt.show()

nano, nano_recipe = measured("compare_nanogpt"), measured("compare_nanogpt_recipe")
print("At 10.8M parameters (nanoGPT's shape), 5,000 steps each, on", describe(nano_recipe["machine"]))
for label, run in [("nanoGPT's own settings", nano), ("the recipe's schedule", nano_recipe)]:
    g, b = run["models"]["gpt"], run["models"]["bitnet"]
    print(f"  {label:24} best val babyGPT {g['best_val']:.4f} (step {g['best_step']}), ", end="")
    print(f"babyBitNet {b['best_val']:.4f} (step {b['best_step']}): gap {b['best_val'] - g['best_val']:+.4f}")

# %% [markdown]
# How to read it:
#
# - **From 0.2M to 2.7M the gap roughly halves with every 4x in size.** Here
#   both models still improve until the last step (or nearly), so the
#   comparison is what each can learn from the same characters: babyBitNet is
#   behind, less and less. That is the paper's direction, at a thousandth of
#   its scale.
# - **At 10.8M and 25M babyBitNet is slightly ahead**, but these points measure
#   something else as well. babyGPT reaches its best early and then gets worse
#   (it starts to memorize the text), while babyBitNet keeps improving longer:
#   lesson 13 saw the same at nanoGPT's size, where the ternary weights act as
#   a regularizer. And 25M is *worse* than 10.8M for both models: Tiny
#   Shakespeare is too small for them. The two 5,000-step runs at 10.8M agree:
#   with the recipe's schedule babyBitNet's best is clearly below babyGPT's
#   (babyGPT overfits early), with nanoGPT's settings the two are level.
#
# What Tiny Shakespeare (and our budget) limits, so what the plot cannot say:
#
# - **Overfitting.** 1.1M characters, which every run reads dozens of times. The
#   study gives the larger sizes dropout (0 at 0.2M rising to 0.2) and stops a
#   run once its val loss has not improved for 4 evaluations in a row, and
#   compares *best* val losses. That keeps the numbers meaningful, but at the
#   large sizes it compares two models' resistance to overfitting as much as
#   their capacity.
# - **Same tokens per size.** Every size reads the same characters. Larger models
#   usually want more data, not the same; with a small text there is no more.
# - **Learning rates tuned at the seed's size only** (lesson 10's sweep: 1e-3
#   for babyGPT, 3e-3 for babyBitNet). The paper lowers BitNet's peak as its
#   models grow; ours may be too high at 25M.
# - **One seed per size.** At the seed's size two seeds differ by about 0.01
#   (lessons 10 and this one): as large as the gaps at 10.8M and 25M, whose
#   sign is therefore not settled.
#
# ### The same study on a larger corpus
#
# A text the larger sizes cannot memorize removes the first caveat. The
# Python standard library's source is on every machine with Python (about
# 10 to 13 MB of it, depending on the version): `prepare` turns it into a
# byte-level BPE of 2,048 tokens and two token files on disk (lesson 01's
# `get_batch` reads windows straight out of them), and `scale --data` trains
# every size on them. `--epochs 2` sets the budget from the data: each run
# reads the training tokens twice, so no size has time to memorize them, and
# no dropout is needed:
#
# ```
# python -m babybitnet prepare stdlib --tokenizer bpe --vocab-size 2048 --out runs/data/stdlib_bpe2048
# python -m babybitnet scale --data runs/data/stdlib_bpe2048 --seeds 2 --epochs 2 --batch-size 16 \
#     --dropout 0 --eval-iters 50 --dtype bfloat16 --no-compile --jobs 4 --device cuda
# ```
#
# Its result on one H200 (3 minutes for the 20 runs):

# %%
std_run = measured("scale_stdlib")
corpus = std_run["data"]["corpus"]
print(f"{corpus['source']}: {corpus['files']} files, {corpus['bytes'] / 1e6:.1f} MB; ", end="")
print(f"{std_run['train_tokens']:,} training tokens, {std_run['iters']:,} steps per run, {std_run['seeds']} seeds")
print(f"on {describe(std_run['machine'])}\n")
show_markdown(scale_study.markdown_table(std_run))

# %% [markdown]
# (Loss in nats per BPE token, so not comparable with the character-level
# numbers above.) No run overfits: every val loss is still falling at the
# end. And the gap moves the *other* way: babyBitNet is ahead at the small
# shapes and behind from 12M parameters on. Before reading this as "ternary
# weights get worse with size", look at what else changed: 6M tokens are a
# short budget for these sizes (the 27M babyGPT is worse than the 12M one:
# it is under-trained, not over-fitted), and each model keeps the peak
# learning rate found at the seed's size (3e-3 for babyBitNet, 1e-3 for
# babyGPT), which helps a small model most in a short run. A fair answer
# needs a longer budget and a learning-rate sweep per size: with
# `--epochs`, `--seeds` and `--resume` the command is ready for it.
#
# (`--jobs N` trains N runs at once, round-robin over the GPUs; `--iters` or
# `--epochs` sets the steps per run, `--sizes` picks sizes, `--text PATH`
# takes any UTF-8 file, and `--resume` carries on a study cut short, since the
# results are rewritten after every run.)
#
# ## 3. More GPUs
#
# `babybitnet train` can run as several processes, one per GPU, with PyTorch's
# **DistributedDataParallel** (DDP). `torchrun` starts N copies of the same
# command and tells each its rank (0 to N-1). Every copy builds the same model
# from the same seed; each draws its own `batch_size / N` windows of every batch,
# with a random generator seeded `seed + rank`, so the copies see different
# text; during `backward` DDP **averages the gradients** of all copies (an
# all-reduce over NCCL), so every copy takes the very same optimizer step, as
# one process with the whole batch would. Rank 0 alone prints, shows
# progress and saves the checkpoint (every rank evaluates, on the same
# windows; see `babybitnet/runtime.py` and `babybitnet/train.py`). The commands:
#
# ```
# python -m babybitnet train --preset nanogpt --model bitnet --out one.pt
# torchrun --standalone --nproc_per_node=2 -m babybitnet train --preset nanogpt --model bitnet --out two.pt
# ```
#
# (`--nproc_per_node=N` for N GPUs; the batch must divide by N. On a CPU the
# processes talk through gloo instead, which is how the tests run it.)
# Measured with nanoGPT's shape, 1,000 steps, a global batch of 64 windows:

# %%
ddp = measured("ddp")
print(f"`{ddp['command']}`\n({ddp['note']})\n")
for key, label in [("one_gpu", "1 GPU"), ("two_gpus", "2 GPUs (DDP)")]:
    r = ddp[key]
    print(
        f"{label:13} {r['processes']} process(es), {r['ms_per_step']:.1f} ms per step, final val {r['final_val']:.4f}"
    )
print(f"throughput of 2 GPUs relative to 1: {ddp['throughput_ratio']:.2f}")

fig, (ax, ax_ms) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [3, 1]})
for key, label, style in [("one_gpu", "1 GPU", "o-"), ("two_gpus", "2 GPUs", "s--")]:
    h = ddp[key]["history"]
    ax.plot(h["step"], h["val"], style, markersize=4, label=label)
ax.set(xlabel="step", ylabel="val loss", title="babyBitNet, nanoGPT's shape, global batch 64")
ax.grid(alpha=0.3)
ax.legend()
ms = [ddp["one_gpu"]["ms_per_step"], ddp["two_gpus"]["ms_per_step"]]
ax_ms.bar(["1 GPU", "2 GPUs"], ms, color=["C0", "C1"])
ax_ms.set(ylabel="ms per step", title="Time per step")
ax_ms.grid(alpha=0.3, axis="y")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Two GPUs were slower than one.** Both runs train alike (the curves
# differ only because the two runs draw different windows), but a step took
# longer with two GPUs, so the throughput ratio is below 1. The reason is the
# size of the job, not DDP:
#
# - **The step is launch-bound.** Without `torch.compile`, a babyBitNet step is
#   many small kernels (every BitLinear quantizes its input and its
#   weights with several element-wise operations, forward and backward), each
#   launched from Python. At 10.8M parameters and 32 or 64 windows, the GPU
#   finishes each kernel faster than the next one is launched, so the time per
#   step is set by the number of launches, which does not change when each GPU
#   gets half the batch. The step barely shrinks.
# - **The all-reduce adds to it.** Averaging 10.8M gradients between the GPUs
#   costs time every step, and there is no compute to hide it behind.
#
# DDP pays off when a step is **compute-bound**: larger models, larger
# batches (or `torch.compile`, which fuses the small kernels so there is less
# launching and the arithmetic dominates). Then halving each GPU's share of
# the batch halves the step, and N GPUs approach N times the throughput. For
# babyBitNet at nanoGPT's size, one GPU is the right choice.
#
# ## 4. What is left open
#
# An honest list of what these experiments did not settle:
#
# - **Learning rate per size.** Both scaling studies used the seed size's peaks
#   at every size (3e-3 for babyBitNet, 1e-3 for babyGPT). A sweep at each size
#   would show whether babyBitNet's best peak drops as it grows, as in the
#   paper, and how the gap moves when each model gets its own.
# - **A longer budget on the larger corpus.** The standard-library study above
#   trains 2 epochs of 3M tokens: enough that nothing overfits, too few for its
#   27M babyGPT to beat its 12M one. `scale --data DIR --epochs E --resume` is
#   there for a longer run; the GPU hours were not.
# - **Fine-tuning at scale, and other schedules.** We fine-tuned only at the
#   seed's size, with one warm-up (1,000 steps) at two learning rates. Longer
#   or shorter warm-ups, and a fine-tune of a larger model (where it would save
#   real compute), are untried.
# - **Faster end to end on a GPU.** Generation captures each decode step in a
#   CUDA graph with attention in one kernel per layer (lesson 13), and packed
#   babyBitNet is 1.81x babyGPT's tokens per second at nanoGPT's size and 2.68x
#   at BitNet b1.58 2B4T's, where the BitNet team reports about 3x. At 2B4T's
#   size a packed block is a chain of eight kernels of a few µs each, which
#   read the packed weights at under a third of cuBLAS's bandwidth (lesson 13):
#   fewer kernels per block (the quantizer's work done by the kernel before it)
#   or one persistent kernel per layer are what is left to try (a first
#   persistent kernel ran out of registers and was far slower).
# - **DDP where it pays.** We measured one size, without `torch.compile`; the
#   crossover where two GPUs beat one (larger batch, larger model, compiled)
#   is not measured.
# - **The S-shaped loss curve** the BitNet team reports at billions of
#   parameters (lesson 10 did not see it at our size).
#
# ## What we have
#
# - **Gradual quantization**: $x' = x + \lambda\,\operatorname{sg}(q(x) - x)$
#   with $\lambda = \min(t / w, 1)$ turns a trained babyGPT into a babyBitNet
#   without the jump of the abrupt switch. It ends about 0.01 better
#   than the abrupt switch on every seed, and level with a babyBitNet trained
#   from scratch at this size.
# - **Scale**: the gap babyBitNet - babyGPT roughly halves with each 4x in size
#   from 0.2M to 2.7M parameters and is within noise of zero from 10.8M on,
#   where Tiny Shakespeare's size, not the models, sets the limit.
# - **More GPUs**: DDP splits every batch between the GPUs and averages the
#   gradients; at nanoGPT's size each step is launch-bound and two GPUs are not
#   faster than one.
#
# The reference is `babybitnet/finetune.py` (`lambda_at`, `to_bitnet`,
# `finetune`), `babybitnet/bitlinear.py` (`gradual_quant`, `BitLinear.lam`),
# `babybitnet/experiments/finetune.py`, `babybitnet/experiments/scale.py`
# and `babybitnet/runtime.py`.
# Check your exercises with:
#
# ```
# python -m babybitnet check 14
# ```
