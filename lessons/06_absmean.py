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
# # Lesson 6: ternary weights and the absmean scale
#
# babyGPT stores every weight as a 32-bit float. BitNet b1.58 keeps only
# three values per weight, $\{-1, 0, +1\}$, times one scale per matrix. This
# lesson answers three questions:
#
# - **why** three values (bits, memory, and multiplications that become additions);
# - **how** to map a float matrix to them: the *absmean* scale and RoundClip;
# - **how much** it costs: the quantization error on a real trained layer, and
#   how the choice of scale moves it (absmean, absmax, and the binary
#   $\{-1, +1\}$ weights of the first BitNet).

# %% tags=["imports"]
import math

import torch

from babybitnet import quant

# %% [markdown]
# ## 1. Why ternary
#
# **Bits.** A weight that takes one of 3 values carries at most
# $\log_2 3 \approx 1.58$ bits of information: hence the name b1.58. Lesson 11
# packs 5 such weights into one byte ($3^5 = 243 \le 256$), 1.6 bits per weight,
# close to that limit; a simpler layout spends 2 bits.
#
# **Memory.** Weights dominate the memory of a language model, and reading
# them from memory dominates the time of generating one token. Fewer bits per
# weight means a smaller model and, on hardware limited by memory bandwidth, a
# faster one.

# %%
print(f"log2(3) = {math.log2(3):.4f} bits per ternary weight")
n = 1_000_000_000  # a model with one billion weights
for name, bits in [
    ("float32", 32),
    ("float16 / bfloat16", 16),
    ("int8", 8),
    ("ternary, 2 bits", 2),
    ("ternary, 1.6 bits", 1.6),
]:
    print(f"{name:20} {n * bits / 8 / 2**30:6.2f} GiB  ({32 / bits:4.1f}x smaller than float32)")

# %% [markdown]
# **Arithmetic.** A linear layer computes dot products $\sum_j w_j x_j$. When
# every $w_j \in \{-1, 0, +1\}$, no multiplication is left: add the $x_j$
# whose weight is $+1$, subtract those whose weight is $-1$, skip the zeros.
#
# $$\sum_j w_j x_j = \sum_{j:\,w_j = +1} x_j \;-\; \sum_{j:\,w_j = -1} x_j.$$
#
# The one scale per matrix is applied once to each output, not once per
# weight. (Lesson 12 builds a matmul on this idea.)

# %%
torch.manual_seed(0)
w_t = torch.randint(-1, 2, (8,)).float()  # a ternary row
x = torch.randn(8)
print("w_t =", w_t.tolist())
print(f"multiply and add: {(w_t * x).sum().item():+.4f}")
print(f"add and subtract: {(x[w_t == 1].sum() - x[w_t == -1].sum()).item():+.4f}")

# %% [markdown]
# ## 2. From floats to three values: absmean and RoundClip
#
# A trained matrix $W$ holds small floats of all sizes (section 3 shows
# one). To use three levels we need a scale: we approximate
# $W \approx \alpha\, W_t$ with $W_t \in \{-1, 0, +1\}^{n \times m}$ and one
# number $\alpha > 0$. Given $\alpha$, the closest ternary matrix rounds
# $W / \alpha$ to the nearest integer and clips it to $[-1, 1]$:
#
# $$\operatorname{RoundClip}(x, a, b) = \max(a, \min(b, \operatorname{round}(x))), \qquad
#   W_t = \operatorname{RoundClip}\!\left(\frac{W}{\alpha}, -1, 1\right).$$
#
# So a weight becomes 0 when $|W_{ij}| < \alpha / 2$ and $\pm 1$ otherwise.
# Which $\alpha$? BitNet b1.58 takes the **mean absolute value** of the matrix
# (its *absmean*), and writes the scale as the multiplier $s_w = 1/\alpha$:
#
# $$\gamma = \frac{1}{nm} \sum_{ij} |W_{ij}|, \qquad
#   s_w = \frac{1}{\max(\gamma, \epsilon)}, \qquad
#   W_t = \operatorname{RoundClip}(W s_w, -1, 1), \qquad W \approx \frac{W_t}{s_w}.$$
#
# The $\epsilon = 10^{-5}$ keeps an all-zero matrix from dividing by zero.
# One detail: `torch.round` rounds a tie to the nearest *even* integer
# (`round(0.5) = 0`, `round(1.5) = 2`, `round(-0.5) = -0`), as IEEE floats do.


# %% tags=["exercise"]
def ternarize(w: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 6.1: absmean ternary quantization of a weight matrix.

    w: (out, in) float tensor (any float dtype). Returns (w_t, s_w):
      s_w = 1 / max(mean(|w|), eps): a 0-dimensional tensor (one scale for the whole matrix), w's dtype;
      w_t = clamp(round(w * s_w), -1, 1): same shape and dtype as w, values in {-1, 0, +1}.
    Use torch.round (ties go to the even integer: round(0.5) = 0, round(1.5) = 2).
    """
    raise NotImplementedError("Exercise 6.1: write ternarize(); check it with: python -m babybitnet check 6")


# %% [markdown]
# By hand: $W = \begin{pmatrix} 0.2 & -0.6 & 0 \\ 1.0 & -0.1 & 0.3 \end{pmatrix}$
# has $\gamma = 2.2 / 6 \approx 0.367$, so $s_w \approx 2.73$ and
# $W s_w \approx \begin{pmatrix} 0.55 & -1.64 & 0 \\ 2.73 & -0.27 & 0.82 \end{pmatrix}$,
# which rounds and clips to the matrix below. The package's
# `babybitnet.quant.ternarize` is the reference (it returns the scale with
# shape `(1,)`, because it can also give one scale per group of rows).

# %%
w = torch.tensor([[0.2, -0.6, 0.0], [1.0, -0.1, 0.3]])
w_t, s_w = ternarize(w)
print("W_t =", w_t.tolist(), f" s_w = {s_w.item():.4f}")
ref_t, ref_s = quant.ternarize(w)
print("same as babybitnet.quant.ternarize:", torch.equal(w_t, ref_t) and torch.allclose(s_w, ref_s.squeeze()))
print("W_t / s_w =", [[f"{v:+.3f}" for v in row] for row in (w_t / s_w).tolist()])

# %% [markdown]
# ## 3. A trained layer, before and after
#
# Random matrices are not what we care about: let's look at weights that
# learned something. We train babyBitNet (the seed's model, whose linear layers
# are BitLinear: they ternarize their weights with absmean in every forward
# pass) for 300 steps of the `quick` preset. The float weights it keeps and
# updates are called the *latent* weights; what the layer multiplies by is
# their ternary version.

# %%
import time

from babybitnet.data import load_dataset
from babybitnet.presets import build_model
from babybitnet.train import train

torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and it shares the machine politely
tok, train_data, val_data = load_dataset()
model, train_config = build_model("quick", "bitnet", tok.vocab_size, max_iters=300, eval_iters=20)
t0 = time.perf_counter()
result = train(model, train_data, val_data, train_config, device="cpu", progress=False)
print(f"300 steps in {time.perf_counter() - t0:.1f} s on this machine; val loss {result['final_val']:.3f}")

layer = model.blocks[1].mlp.fc  # a BitLinear(64 -> 256)
W = layer.weight.detach()
W_t, s_w = ternarize(W)
gamma = 1 / s_w.item()
print(f"{layer}: {W.numel()} weights, absmean gamma = {gamma:.4f}, max |W| = {W.abs().max():.4f}")

# %% [markdown]
# The left plot is the distribution of the latent weights, with the two
# rounding thresholds $\pm\gamma/2$: everything between them becomes 0. The
# right plot is what is left after quantization: three values.

# %%
import matplotlib.pyplot as plt

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.hist(W.flatten().numpy(), bins=80, color="C0")
for t in (-gamma / 2, gamma / 2):
    ax1.axvline(t, color="k", ls="--", lw=1)
ax1.set(xlabel="latent weight", ylabel="count", title="blocks[1].mlp.fc: float weights, thresholds $\\pm\\gamma/2$")
values, counts = W_t.unique(return_counts=True)
ax2.bar(values.numpy(), counts.numpy(), width=0.5, color=["C3", "0.6", "C2"])
ax2.set(xticks=[-1, 0, 1], xlabel="ternary value $W_t$", ylabel="count", title="after absmean ternarization")
fig.tight_layout()
plt.show()
for v, c in zip(values.tolist(), counts.tolist(), strict=True):
    print(f"W_t = {v:+.0f}: {c:5d} weights ({c / W.numel():.1%})")

# %% [markdown]
# The ternary matrix keeps the *sign* of every large weight and zeroes the
# small ones; a large share of the weights is zero. (The latent weights are
# not quite bell-shaped: they were trained *through* the quantizer, whose
# thresholds they can feel. Lesson 8 shows how that training works.) The zeros matter: they let
# a layer ignore an input feature altogether, which a binary $\{-1, +1\}$
# matrix cannot do (the BitNet b1.58 paper names this "feature filtering" as
# the reason for adding the 0 to the first BitNet's two values).
#
# ## 4. How good is the approximation, and how does the scale choice matter?
#
# For a step $\alpha$, call $Q_\alpha(W) = \alpha \operatorname{RoundClip}(W/\alpha, -1, 1)$
# the ternary matrix in the units of $W$. We measure the **relative error**
#
# $$e(\alpha) = \frac{\lVert W - Q_\alpha(W) \rVert_F}{\lVert W \rVert_F}$$
#
# (0 is perfect; 1 is as bad as replacing $W$ by zeros) and the fraction of
# zeros. Absmean is $\alpha = \gamma$. The natural alternative,
# **absmax** $\alpha = \max_{ij} |W_{ij}|$, is what int8 quantization uses
# (lesson 7): it never clips. Write $Q_\alpha$ for any step.


# %% tags=["exercise"]
def ternary_quant(w: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Exercise 6.2: ternary fake quantization with step alpha: alpha * clamp(round(w / alpha), -1, 1).

    w: any shape, float. alpha > 0: a Python float or a 0-dimensional tensor.
    Returns a tensor of w's shape and dtype whose values are -alpha, 0 or +alpha
    (round with torch.round: ties go to the even integer).
    """
    raise NotImplementedError("Exercise 6.2: write ternary_quant(); check it with: python -m babybitnet check 6")


# %% [markdown]
# At the absmean step, `ternary_quant` gives what BitLinear multiplies by,
# `babybitnet.quant.weight_quant` (up to float rounding: one divides by
# $\gamma$, the other multiplies by $1/\gamma$).

# %%
print("ternary_quant(W, gamma) == weight_quant(W):", torch.allclose(ternary_quant(W, gamma), quant.weight_quant(W)))


def rel_error(w: torch.Tensor, w_q: torch.Tensor) -> float:
    return ((w - w_q).norm() / w.norm()).item()


def zero_fraction(w_q: torch.Tensor) -> float:
    return (w_q == 0).float().mean().item()


amax = W.abs().max().item()
for name, alpha in [("absmean", gamma), ("absmax", amax)]:
    w_q = ternary_quant(W, alpha)
    print(f"{name:8} alpha = {alpha:.4f}: relative error {rel_error(W, w_q):.3f}, zeros {zero_fraction(w_q):.1%}")

# %% [markdown]
# Absmax is a poor choice for three levels: the largest weight sets the step,
# so nearly every other weight falls below $\alpha/2$ and becomes zero. One
# outlier weight is enough to wipe out a layer.
#
# ### The binary weights of BitNet (b1)
#
# The first BitNet (Wang et al., 2023) used two values. It centres the matrix
# on its mean $\mu$ first, then keeps only the sign, with one scale:
#
# $$W_b = \beta \operatorname{sign}(W - \mu), \qquad \mu = \frac{1}{nm}\sum_{ij} W_{ij}, \qquad
#   \beta = \frac{1}{nm}\sum_{ij} |W_{ij} - \mu|,$$
#
# where $\operatorname{sign}$ is $+1$ for positive numbers and $-1$ otherwise
# (so no weight is 0). ($\beta$ is the mean distance from $\mu$: for a fixed
# sign pattern $S$, the $\beta$ that minimises $\lVert (W - \mu) - \beta S \rVert$
# is exactly that mean.)


# %% tags=["exercise"]
def binarize(w: torch.Tensor) -> torch.Tensor:
    """Exercise 6.3: mean-centred binary weights, BitNet (b1) style.

    w: any shape, float. mu = mean(w) over all entries; beta = mean(|w - mu|).
    Returns a tensor of w's shape and dtype: +beta where w - mu > 0, -beta elsewhere
    (a weight equal to the mean gets -beta). An all-zero w gives all zeros (beta = 0).
    """
    raise NotImplementedError("Exercise 6.3: write binarize(); check it with: python -m babybitnet check 6")


# %%
W_b = binarize(W)
print("values:", W_b.unique().tolist(), " same as babybitnet.quant.binarize:", torch.equal(W_b, quant.binarize(W)))
print(f"binary   relative error {rel_error(W, W_b):.3f}, zeros {zero_fraction(W_b):.1%}")

# %% [markdown]
# ### The error as a function of the step
#
# Now sweep the step $\alpha = m \gamma$ over multipliers $m$ from 0.1 to 6
# and plot the relative error and the fraction of zeros. Absmean sits at
# $m = 1$, absmax at $m = \max|W| / \gamma$.

# %%
mults = torch.linspace(0.1, 6.0, 300)
errors = [rel_error(W, ternary_quant(W, m * gamma)) for m in mults.tolist()]
zeros = [zero_fraction(ternary_quant(W, m * gamma)) for m in mults.tolist()]
best = int(torch.tensor(errors).argmin())
m_max = amax / gamma

fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(mults, errors, label="ternary, step $m\\gamma$: relative error")
ax.plot(mults, zeros, color="0.6", ls=":", label="ternary: fraction of zeros")
ax.axhline(rel_error(W, W_b), color="C4", ls="--", lw=1, label="binary (BitNet b1): relative error")
ax.plot([1.0], [rel_error(W, ternary_quant(W, gamma))], "o", color="C3", ms=8, label="absmean ($m = 1$)")
if m_max <= mults[-1]:
    ax.plot([m_max], [rel_error(W, ternary_quant(W, amax))], "s", color="k", ms=7, label="absmax")
ax.plot([mults[best]], [errors[best]], "*", color="C2", ms=12, label=f"smallest error (m = {mults[best]:.2f})")
ax.set(xlabel="step multiplier $m$ (step = $m$ x absmean)", ylabel="relative error / fraction", ylim=(0, 1.05))
ax.set_title("blocks[1].mlp.fc of babyBitNet after 300 steps")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
print(f"absmean m = 1: error {rel_error(W, ternary_quant(W, gamma)):.3f}, zeros {zero_fraction(W_t):.1%}")
print(f"best    m = {mults[best]:.2f}: error {errors[best]:.3f}, zeros {zeros[best]:.1%}")
print(f"absmax  m = {m_max:.2f}: error {rel_error(W, ternary_quant(W, amax)):.3f}")

# %% [markdown]
# The same comparison over every linear layer inside babyBitNet's blocks:

# %%
print(f"{'layer':22} {'absmean':>8} {'best m':>7} {'at best':>8} {'absmax':>7} {'binary':>7} {'zeros':>6}")
for name, mod in model.named_modules():
    if hasattr(mod, "quantized_weight"):
        w_ = mod.weight.detach()
        g_ = w_.abs().mean().item()
        errs = [rel_error(w_, ternary_quant(w_, m * g_)) for m in mults.tolist()]
        b_ = int(torch.tensor(errs).argmin())
        print(
            f"{name:22} {rel_error(w_, ternary_quant(w_, g_)):8.3f} {mults[b_]:7.2f} {errs[b_]:8.3f} "
            f"{rel_error(w_, ternary_quant(w_, w_.abs().max())):7.3f} {rel_error(w_, binarize(w_)):7.3f} "
            f"{zero_fraction(ternary_quant(w_, g_)):6.1%}"
        )

# %% [markdown]
# What the numbers say (read them above; they come from this run):
#
# - **Absmax** is far worse than absmean for three levels; it zeroes most of
#   the matrix.
# - **Absmean is not the smallest error.** A larger step (the `best m`
#   column), with more zeros, has a smaller error on every layer here. The
#   binary weights of BitNet (b1) are worse than absmean ternary weights on
#   every layer: the zeros help.
# - Why absmean anyway? It is one mean, cheap to compute in every forward
#   pass and stable: one outlier weight moves it by $|W_{ij}|/(nm)$ instead of
#   setting it, as with absmax. And in BitNet the weights are not quantized
#   *after* training: the model trains *through* the quantizer (lesson 8), so
#   the latent weights learn to sit where absmean puts them to good use. A
#   small Frobenius error of $W$ is not the goal; a small loss is.
#
# Lesson 7 does the same for the other operand of every matmul, the
# activations, with 8-bit integers. Check your exercises with:
#
# ```
# python -m babybitnet check 6
# ```
