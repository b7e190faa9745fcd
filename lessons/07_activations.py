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
# # Lesson 7: 8-bit activations, one scale per token
#
# Lesson 6 made the weights ternary. A matmul has two operands, though: the
# weights and the *activations*, the vectors flowing into each linear layer.
# If the activations stay floats, every product $w_j x_j$ is still a float
# addition. BitNet b1.58 also quantizes the activations, to 8-bit integers,
# so that a layer computes with integers only and rescales once at the end:
#
# $$y = W x \;\approx\; \frac{W_t\, x_i}{s_w\, s_x}, \qquad
#   W_t \in \{-1, 0, 1\}^{n \times m},\quad x_i \in \{-127, \dots, 127\}^m.$$
#
# Every product in $W_t x_i$ is an integer in $[-127, 127]$, and the sums
# are exact integer sums. This lesson builds the activation quantizer
# (**absmax**, one scale **per token**), shows why per token and not per
# tensor, measures the error on the activations of a trained babyGPT, and
# asks what happens with 4 bits instead of 8.

# %% tags=["imports"]
import torch

from babybitnet import quant

# %% [markdown]
# ## 1. Absmax quantization, one scale per token
#
# Activations change with every input, so their scale must be computed on the
# fly, cheaply. The simplest choice maps the largest magnitude to the largest
# integer: with $b$ bits and $Q_b = 2^{b-1} - 1$ (127 for 8 bits), for one
# token's vector $x \in \mathbb{R}^C$,
#
# $$s_x = \frac{Q_b}{\max(\max_j |x_j|,\ \epsilon)}, \qquad
#   x_i = \operatorname{round}(x\, s_x), \qquad x \approx \frac{x_i}{s_x}.$$
#
# That is *absmax*. Unlike the weights (lesson 6), activations get **one
# scale per token**: an activation tensor of shape $(B, T, C)$ gets $B \times T$
# scales, one per row of $C$ numbers (shape $(B, T, 1)$). $\epsilon = 10^{-5}$
# keeps an all-zero token from dividing by zero. As in lesson 6,
# `torch.round` sends ties to the even integer: $\operatorname{round}(-63.5) = -64$.


# %% tags=["exercise"]
def quantize_activations(x: torch.Tensor, bits: int = 8, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 7.1: per-token absmax quantization.

    x: (..., C) float: (C,) for one token, (N, C), (B, T, C), ... The last dimension is the token's vector.
    Returns (x_i, s_x), both in x's dtype:
      s_x = (2**(bits-1) - 1) / max(max_j |x_j|, eps), one per token: shape x.shape[:-1] + (1,);
      x_i = round(x * s_x): same shape as x, integer values in [-(2**(bits-1) - 1), 2**(bits-1) - 1].
    Use torch.round (ties go to the even integer).
    """
    raise NotImplementedError("Exercise 7.1: write quantize_activations(); check it with: python -m babybitnet check 7")


# %% [markdown]
# By hand: the token $(1, -0.5, 0.25)$ has max 1, so $s_x = 127$ and
# $x_i = (127, -63.5, 31.75)$ rounded: $(127, -64, 32)$. The token $(0, 2, -2)$
# has max 2, $s_x = 63.5$. The package's `babybitnet.quant.quantize_activations`
# is the reference; any number of leading dimensions works.

# %%
x = torch.tensor([[1.0, -0.5, 0.25], [0.0, 2.0, -2.0]])
x_i, s_x = quantize_activations(x)
print("x_i =", x_i.tolist(), " s_x =", s_x.squeeze(-1).tolist())
for shape in [(3,), (4, 3), (2, 5, 3)]:
    xs = torch.randn(shape)
    mine, ref = quantize_activations(xs), quant.quantize_activations(xs)
    print(f"x {shape}: x_i {tuple(mine[0].shape)}, s_x {tuple(mine[1].shape)};", end=" ")
    print("same as the package:", torch.equal(mine[0], ref[0]) and torch.allclose(mine[1], ref[1]))

# %% [markdown]
# ### Why the clamp to $[-128, 127]$ never bites
#
# The BitNet papers write $x_i = \operatorname{Clip}(\operatorname{round}(x s_x), -128, 127)$.
# Our `quantize_activations` (and the package's) leave the clip out, because
# with absmax it can never do anything: every $|x_j| \le \max_k |x_k|$, so
# $|x_j s_x| \le Q_b = 127$; rounding a number in $[-127, 127]$ cannot leave
# that range, because $\pm 127$ are integers themselves. (With the $\epsilon$ in
# play, $|x_j| < \epsilon$ and $|x_j s_x| < 127$ too.) The clip would matter
# for a scale computed elsewhere, e.g. a fixed scale calibrated on other
# data. A side effect: the code $-128$ is never used, so the grid is symmetric,
# 255 levels.
#
# A check on tokens whose sizes span 12 orders of magnitude:

# %%
xs = torch.randn(1000, 64) * torch.logspace(-6, 6, 1000)[:, None]
x_i, s_x = quantize_activations(xs)
literal = (xs * s_x).round().clamp(-128, 127)
print(
    f"smallest code {x_i.min():.0f}, largest {x_i.max():.0f}; the clamp changes", int((literal != x_i).sum()), "values"
)

# %% [markdown]
# The float that the next layer sees is $x_q = x_i / s_x$: quantize, then
# immediately undo the scale ("fake quantization"). During training,
# BitLinear multiplies these fake-quantized floats; the result equals the
# integer computation divided by $s_x s_w$ (lesson 9).


# %% tags=["exercise"]
def activation_quant(x: torch.Tensor, bits: int = 8, eps: float = 1e-5) -> torch.Tensor:
    """Exercise 7.2: fake-quantized activations x_i / s_x (use your quantize_activations).

    x: (..., C) float. Returns a tensor of x's shape and dtype: each token rounded to its
    own grid of 2**bits - 1 evenly spaced values between -max|x_j| and +max|x_j|.
    """
    raise NotImplementedError("Exercise 7.2: write activation_quant(); check it with: python -m babybitnet check 7")


# %% [markdown]
# Rounding moves each value by at most half a step, and a token's step is
# $\max_j |x_j| / Q_b$: the error of a token is bounded by its own largest value.

# %%
xs = torch.randn(8, 64)
err = (activation_quant(xs) - xs).abs().amax(-1)
half_step = xs.abs().amax(-1) / 127 / 2
print("largest error per token <= half a step:", bool((err <= half_step * (1 + 1e-6)).all()))
print("same as babybitnet.quant.activation_quant:", torch.allclose(activation_quant(xs), quant.activation_quant(xs)))

# %% [markdown]
# ## 2. Why one scale per token
#
# One scale for the whole tensor would be cheaper. But the step is set by the
# largest value in the group that shares it. If one token is much larger than
# the others (a start-of-text token, a rare character, a spike some layer
# learned) a shared scale gives the *others* a step far too coarse for them:
# their values round to a few levels, or to zero.
#
# We measure the error as a **signal-to-quantization-noise ratio**,
#
# $$\mathrm{SQNR} = 10 \log_{10} \frac{\lVert x \rVert^2}{\lVert x - x_q \rVert^2} \ \text{dB},$$
#
# higher is better; each extra bit halves the step and adds about
# $20 \log_{10} 2 \approx 6$ dB. A test: 64 tokens of 64 random numbers, and
# token 10 made 100 times larger.

# %%
import matplotlib.pyplot as plt


def per_tensor_quant(x: torch.Tensor, bits: int = 8, eps: float = 1e-5) -> torch.Tensor:
    """Absmax fake quantization with ONE scale for the whole tensor (for comparison)."""
    s = (2 ** (bits - 1) - 1) / x.abs().max().clamp(min=eps)
    return (x * s).round() / s


def sqnr_db(x: torch.Tensor, x_q: torch.Tensor, dim=None) -> torch.Tensor:
    """10 log10(|x|^2 / |x - x_q|^2), over everything or along ``dim``."""
    signal = x.pow(2).sum(dim) if dim is not None else x.pow(2).sum()
    noise = (x - x_q).pow(2).sum(dim) if dim is not None else (x - x_q).pow(2).sum()
    return 10 * torch.log10(signal / noise.clamp(min=1e-30))


g = torch.Generator().manual_seed(0)
acts = torch.randn(64, 64, generator=g)
acts[10] *= 100  # one outlier token
q_token, q_tensor = activation_quant(acts), per_tensor_quant(acts)

fig, ax = plt.subplots(figsize=(8, 3.5))
ax.plot(sqnr_db(acts, q_token, dim=-1), "o-", ms=3, label="one scale per token")
ax.plot(sqnr_db(acts, q_tensor, dim=-1), "s-", ms=3, label="one scale for the tensor")
ax.annotate(
    "the outlier token", (10, sqnr_db(acts, q_tensor, dim=-1)[10]), xytext=(18, 25), arrowprops={"arrowstyle": "->"}
)
ax.set(xlabel="token", ylabel="SQNR (dB), higher is better", title="8-bit absmax, 64 tokens, token 10 is 100x larger")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()
others = torch.arange(64) != 10
for name, q in [("per token", q_token), ("per tensor", q_tensor)]:
    print(
        f"{name:10}: SQNR of the other 63 tokens {sqnr_db(acts[others], q[others]):5.1f} dB, "
        f"{(q[others] == 0).float().mean():.0%} of their values rounded to 0"
    )

# %% [markdown]
# Per token, every token uses the whole grid, and the outlier costs the
# others nothing. Per tensor, the outlier sets a step 100 times coarser for
# everyone, and the other tokens lose most of their resolution. Per-token
# scales cost little: one max and one division per token, computed where the
# activations already are.
#
# ## 3. The error on real activations
#
# Random numbers are a start; let's look at what a trained model actually
# feeds its linear layers. We train babyGPT (full precision) for 300 steps of
# the `quick` preset, then record the input of every linear layer inside its
# blocks on one batch of validation text, with forward pre-hooks.

# %%
import time

from torch import nn

from babybitnet.data import get_batch, load_dataset
from babybitnet.presets import build_model
from babybitnet.train import estimate_loss, train

torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and it shares the machine politely
tok, train_data, val_data = load_dataset()
model, train_config = build_model("quick", "gpt", tok.vocab_size, max_iters=300, eval_iters=20)
t0 = time.perf_counter()
result = train(model, train_data, val_data, train_config, device="cpu", progress=False)
print(f"300 steps in {time.perf_counter() - t0:.1f} s on this machine; val loss {result['final_val']:.3f}")

linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("blocks")}
inputs = {}
hooks = [
    m.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0].detach()))
    for name, m in linears.items()
]
xb, _ = get_batch(val_data, 16, model.config.block_size, torch.Generator().manual_seed(0))
with torch.no_grad():
    model(xb)
for h in hooks:
    h.remove()
print({name: tuple(v.shape) for name, v in list(inputs.items())[:4]}, "...")

# %% [markdown]
# How different are the tokens? The histograms show, for three layers of the
# last block, the largest $|x_j|$ of each of the 512 tokens of the batch: the
# input of `attn.qkv` (after an RMSNorm), of `attn.proj` (the heads' outputs)
# and of `mlp.proj` (after the ReLU).

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, name in zip(axes, ["blocks.3.attn.qkv", "blocks.3.attn.proj", "blocks.3.mlp.proj"], strict=True):
    amax = inputs[name].abs().amax(-1).flatten()
    ax.hist(amax.numpy(), bins=40)
    ax.set(xlabel="max |x_j| of a token", ylabel="tokens", title=f"input of {name}")
    print(f"{name}: per-token max from {amax.min():.2f} to {amax.max():.2f} ({amax.max() / amax.min():.1f}x)")
fig.tight_layout()
plt.show()

# %% [markdown]
# The SQNR of every layer's input under per-token and per-tensor scales, at 8
# and at 4 bits ($Q_4 = 7$: 15 levels):

# %%
print(f"{'layer input':20} {'8b token':>9} {'8b tensor':>10} {'4b token':>9} {'4b tensor':>10}")
for name, a in inputs.items():
    cols = [
        sqnr_db(a, activation_quant(a, 8)),
        sqnr_db(a, per_tensor_quant(a, 8)),
        sqnr_db(a, activation_quant(a, 4)),
        sqnr_db(a, per_tensor_quant(a, 4)),
    ]
    print(f"{name:20} " + " ".join(f"{c:9.1f}" for c in cols))

# %% [markdown]
# Read the table from this run: per-token scales beat a shared scale on every
# layer, and dropping from 8 to 4 bits costs about $4 \times 6 = 24$ dB, as
# the rule of thumb says. The shared scale hurts most where the tokens differ
# most in size: in this run, the attention outputs (the `attn.proj` inputs,
# the widest histogram above).
# babyGPT's tokens differ by a few times at most (the histograms); large
# language models develop far stronger outliers (Dettmers et al., 2022,
# "LLM.int8()"), and there a shared scale is ruinous.
#
# ## 4. Does it change what the model predicts?
#
# SQNR is a proxy. What we care about is the loss. Let's quantize the input
# of every linear layer inside the blocks of the trained babyGPT, *after*
# training (no retraining: "post-training quantization"), and measure the
# validation loss on the same 20 batches each time. (babyBitNet, by contrast,
# trains with its activations quantized, lesson 9.) The weights stay float
# here: this isolates the effect of quantizing the activations.


# %%
def val_loss_with(quantizer) -> float:
    hooks = [m.register_forward_pre_hook(lambda m, args: (quantizer(args[0]),)) for m in linears.values()]
    try:
        g = torch.Generator().manual_seed(1)  # the same batches for every quantizer
        return estimate_loss(model, val_data, 16, 20, model.config.block_size, g, torch.device("cpu"))
    finally:
        for h in hooks:
            h.remove()


settings = {
    "float (no quantization)": lambda a: a,
    "8 bits, per token": lambda a: activation_quant(a, 8),
    "8 bits, per tensor": lambda a: per_tensor_quant(a, 8),
    "4 bits, per token": lambda a: activation_quant(a, 4),
    "4 bits, per tensor": lambda a: per_tensor_quant(a, 4),
    "2 bits, per token": lambda a: activation_quant(a, 2),
}
losses = {name: val_loss_with(q) for name, q in settings.items()}
for name, loss in losses.items():
    print(f"{name:25} val loss {loss:.4f}  ({loss - losses['float (no quantization)']:+.4f})")

fig, ax = plt.subplots(figsize=(8, 3))
ax.barh(list(losses), list(losses.values()), color=["0.5", "C0", "C1", "C0", "C1", "C0"])
ax.set(xlim=(min(losses.values()) - 0.05, max(losses.values()) + 0.05), xlabel="val loss (20 batches)")
ax.invert_yaxis()
ax.set_title("babyGPT after 300 steps, linear-layer inputs quantized after training")
fig.tight_layout()
plt.show()

# %% [markdown]
# Read the numbers from this run. At 8 bits the loss does not move: int8
# activations are practically free, which is why BitNet b1.58 uses them. At
# 4 bits a shared scale already costs more than per-token scales; at 2 bits
# ($Q_2 = 1$: each value becomes $-m$, $0$ or $+m$ with $m$ the token's max)
# the loss jumps even per token. This babyGPT is small and briefly trained,
# with mild outliers; larger models are more sensitive. Later work, BitNet
# a4.8 (Wang et al., 2024), reaches 4-bit activations by training with them
# and keeping the outlier-heavy intermediate states at 8 bits (sparsified).
# babyBitNet keeps 8 bits (`BitLinear(act_bits=8)`).
#
# ## What we have
#
# - Activations are quantized on the fly with **absmax**: the largest
#   magnitude maps to 127, and the grid is symmetric; the clip to
#   $[-128, 127]$ never bites.
# - **One scale per token**: an outlier token then cannot ruin the others.
# - 8 bits cost little, on the SQNR and on the loss; each bit less costs
#   about 6 dB, and at 2 bits the loss suffers.
#
# Next, lesson 8: rounding has no useful gradient, so how do we train through
# it? The straight-through estimator. Check your exercises with:
#
# ```
# python -m babybitnet check 7
# ```
