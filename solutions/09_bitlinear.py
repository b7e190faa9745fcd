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
# # Lesson 9: BitLinear
#
# We have all the pieces: ternary weights with one scale per matrix (lesson 6),
# 8-bit activations with one scale per token (lesson 7), and the
# straight-through estimator that lets gradients through the rounding
# (lesson 8). BitNet b1.58 puts them into one layer, **BitLinear**, a drop-in
# replacement for `nn.Linear`. This lesson
#
# 1. writes its forward pass for training (fake quantization + the STE);
# 2. wraps it in a module, with the optional RMSNorm inside that the official
#    recipe uses, and sees what that norm is for;
# 3. writes the **inference** path, where the matmul runs on int8 activations
#    and ternary weights and every sum is an exact integer, and checks that both
#    paths give the same numbers;
# 4. swaps BitLinear into babyGPT to get **babyBitNet**, and trains both for a
#    few hundred steps side by side.

# %% tags=["imports"]
import torch
import torch.nn.functional as F
from torch import nn

from babybitnet.quant import activation_quant, quantize_activations, ste, weight_quant

torch.set_num_threads(1)  # tiny models: one thread is as fast, and never fights other programs for the cores

# %% [markdown]
# ## 1. The training path
#
# A linear layer computes $y = x W^\top$ for $x \in \mathbb{R}^{\dots \times n}$ and
# $W \in \mathbb{R}^{m \times n}$. BitLinear keeps a full-precision **latent**
# weight $W$ (what the optimizer updates) and, in every forward pass,
# quantizes both operands:
#
# $$x_q = \frac{\operatorname{round}(x\, s_x)}{s_x},\quad s_x = \frac{127}{\max_j |x_j|}
#   \qquad\qquad W_q = \frac{\operatorname{clamp}(\operatorname{round}(W s_w), -1, 1)}{s_w},\quad
#   s_w = \frac{1}{\operatorname{mean}|W|}$$
#
# ($s_x$ per token, i.e. per row of $x$; $s_w$ one per matrix; both with the
# $\max(\cdot, 10^{-5})$ guard against dividing by zero), then multiplies them:
# $y = x_q W_q^\top$. This is *fake* quantization: the values are quantized, but
# they are still stored as floats, so the ordinary matmul (and autograd) work.
# The backward pass uses the STE on both operands:
#
# $$\frac{\partial L}{\partial x} = \frac{\partial L}{\partial y} W_q, \qquad
#   \frac{\partial L}{\partial W} = \Big(\frac{\partial L}{\partial y}\Big)^{\!\top} x_q .$$
#
# Note what the gradient is made of: the *quantized* tensors, not the latent
# ones. `activation_quant`, `weight_quant` and `ste` from the package do the
# three steps; you put them together.


# %% tags=["exercise"]
def bitlinear_forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Exercise 9.1: BitLinear's training forward pass: 8-bit activations, ternary weights, the STE.

    x: (..., in_features) float32, any number of leading dimensions (N, or B and T).
    weight: (out_features, in_features) float32, the latent weights.
    Returns (..., out_features) float32: x_q @ W_q^T, with x_q = activation_quant(x) (per token)
    and W_q = weight_quant(weight) (per tensor), both behind the straight-through estimator
    so that gradients reach x and weight. No bias.
    """
    ### BEGIN SOLUTION
    x_q = ste(x, activation_quant(x))
    w_q = ste(weight, weight_quant(weight))
    return F.linear(x_q, w_q)
    ### END SOLUTION


# %% [markdown]
# The package has this function under the same name,
# `babybitnet.bitlinear.bitlinear_forward`. Its `BitLinear` does the same in a
# single autograd node (`BitLinearFunction`, faster at this size). Same
# values, same gradients:

# %%
from babybitnet.bitlinear import BitLinear as RefBitLinear

torch.manual_seed(0)
ref = RefBitLinear(64, 16)
x = torch.randn(2, 8, 64, requires_grad=True)  # (B, T, C)
y = bitlinear_forward(x, ref.weight)
probe = torch.randn(2, 8, 16)
(y * probe).sum().backward()
gx, gw = x.grad.clone(), ref.weight.grad.clone()
x.grad, ref.weight.grad = None, None
y_ref = ref(x)
(y_ref * probe).sum().backward()
print("output:", tuple(y.shape), " max |difference| vs the package:", (y - y_ref).abs().max().item())
print("gradient w.r.t. x, max |difference|:", (gx - x.grad).abs().max().item())
print("gradient w.r.t. W, max |difference|:", (gw - ref.weight.grad).abs().max().item())

# %% [markdown]
# And the backward formulas of section 1 by hand: $\partial L / \partial x$ is
# the probe times $W_q$, $\partial L / \partial W$ is the probe (transposed)
# times $x_q$, with the tokens of all batches stacked as rows. `ste(t, q)`
# has the value of `q`; only its gradient belongs to `t`.

# %%
with torch.no_grad():
    x_q, w_q = activation_quant(x), weight_quant(ref.weight)
    print("ste(x, x_q) has the value of x_q:", torch.equal(ste(x, x_q), x_q))
    print("dL/dx == probe @ W_q:", torch.allclose(gx, probe @ w_q, atol=1e-6))
    print("dL/dW == probe^T @ x_q:", torch.allclose(gw, probe.reshape(-1, 16).T @ x_q.reshape(-1, 64), atol=1e-5))

# %% [markdown]
# How far is the quantized layer from the full-precision layer with the same
# latent weights? Quite far, and that is expected: the ternary weights are a
# coarse copy of $W$. (The model is *trained* with the quantization in the
# loop, so it learns weights that work after rounding.)

# %%
with torch.no_grad():
    y_fp = F.linear(x, ref.weight)
rel = ((y.detach() - y_fp).norm() / y_fp.norm()).item()
print(f"relative difference between BitLinear and nn.Linear on the same latent weights: {rel:.2f}")

# %% [markdown]
# ## 2. A module, and the norm inside it
#
# The BitNet b1.58 training-tips FAQ adds one more piece: an **RMSNorm on the
# input**, inside the layer, before the activations are quantized:
#
# $$\operatorname{BitLinear}(x) = \operatorname{Quant}_8\big(\operatorname{RMSNorm}(x)\big)\,
#   \operatorname{Quant}_{1.58}(W)^\top .$$
#
# Why? The quantizers are scale-free: $s_x$ and $s_w$ adapt to whatever size
# $x$ and $W$ have, and the dequantization gives that size back. So the output
# of BitLinear grows and shrinks with its input, exactly like `nn.Linear`. In a
# pre-norm transformer the q, k, v and first feed-forward layers see normalised
# inputs, but the attention's output projection and the feed-forward's second
# layer see whatever the layer before produced. With the norm inside *every*
# BitLinear each one sees inputs of RMS 1, and its output has a size set by its
# weights alone (the original BitNet paper argues this keeps training stable).
# The block's own pre-norm then does the same job twice, so the FAQ removes it.
#
# Build the module. The attribute names matter: the grader loads the package's
# weights into your layer by name.


# %% tags=["exercise"]
class BitLinear(nn.Module):
    """Exercise 9.2: a linear layer with ternary weights and 8-bit activations, without bias.

    BitLinear(in_features, out_features, norm=False):
      self.weight: nn.Parameter of shape (out_features, in_features) (init: as nn.Linear, e.g.
                   nn.init.kaiming_uniform_(self.weight, a=5**0.5))
      self.norm:   nn.RMSNorm(in_features) if norm else None
    forward(x): x (..., in_features) float32 -> (..., out_features) float32:
      RMSNorm x first if self.norm is not None, then bitlinear_forward(x, self.weight).
    """

    def __init__(self, in_features: int, out_features: int, norm: bool = False):
        super().__init__()
        ### BEGIN SOLUTION
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.norm = nn.RMSNorm(in_features) if norm else None
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        if self.norm is not None:
            x = self.norm(x)
        return bitlinear_forward(x, self.weight)
        ### END SOLUTION


# %% [markdown]
# Feed both versions the same inputs at different scales and watch the RMS of
# the output:

# %%
import matplotlib.pyplot as plt

torch.manual_seed(0)
layers = {"norm=False (the seed)": BitLinear(64, 64), "norm=True (the FAQ)": BitLinear(64, 64, norm=True)}
layers["norm=True (the FAQ)"].load_state_dict(layers["norm=False (the seed)"].state_dict(), strict=False)
scales = torch.logspace(-2, 2, 9)
x0 = torch.randn(256, 64)
rms = {name: [] for name in layers}
with torch.no_grad():
    for c in scales:
        for name, layer in layers.items():
            rms[name].append(layer(c * x0).pow(2).mean().sqrt().item())
for name in layers:
    print(
        f"{name:22} output RMS at input scale 0.01, 1, 100: {rms[name][0]:.4g}, {rms[name][4]:.4g}, {rms[name][8]:.4g}"
    )

fig, ax = plt.subplots(figsize=(6, 3.5))
for name in layers:
    ax.plot(scales, rms[name], "o-", label=name)
ax.set(xscale="log", yscale="log", xlabel="scale of the input", ylabel="RMS of the output")
ax.set_title("BitLinear(64, 64): the norm inside fixes the output's size")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The inference path: integers
#
# Training only *simulates* quantization. At inference time we want the real
# thing: store $W_t = \operatorname{clamp}(\operatorname{round}(W s_w), -1, 1)$
# as int8 (lesson 11 packs it into 2 bits) with its one scale $s_w$, quantize
# each token to $x_i = \operatorname{round}(x s_x)$ (int8), and factor the scales
# out of the matmul:
#
# $$y = x_q W_q^\top = \frac{x_i}{s_x} \Big(\frac{W_t}{s_w}\Big)^{\!\top}
#   = \frac{x_i\, W_t^\top}{s_x\, s_w}.$$
#
# The matmul $x_i W_t^\top$ multiplies integers in $[-128, 127]$ by
# $\{-1, 0, 1\}$, so it only adds and subtracts, and its sums are integers; one
# division per output value rescales them. (We keep the integers in float32
# here, which holds every integer up to $2^{24}$ exactly; a sum of $n$ terms is
# at most $127\,n$ in size, far below that for our layers.)


# %% tags=["exercise"]
def int_linear(x: torch.Tensor, w_t: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """Exercise 9.3: BitLinear at inference: (x_i @ W_t^T) / (s_x * s_w) with integer sums.

    x: (..., in_features) float32. w_t: (out_features, in_features) ternary values {-1, 0, 1}
    (int8). s_w: the weight scale, a float32 tensor of shape (1,).
    Quantize x per token with quantize_activations(x) -> (x_i, s_x), multiply x_i by w_t
    (converted to x's dtype) and divide by s_x * s_w. Returns (..., out_features) float32.
    """
    ### BEGIN SOLUTION
    x_i, s_x = quantize_activations(x)
    acc = x_i @ w_t.to(x.dtype).T
    return acc / (s_x * s_w)
    ### END SOLUTION


# %% [markdown]
# Both paths should give the same numbers (up to float rounding: the two
# compute in a different order). The package's `BitLinear` switches to the
# integer path by itself in `eval()` mode under `torch.no_grad()`; its
# `quantized_weight()` returns what inference stores.

# %%
torch.manual_seed(0)
layer = RefBitLinear(256, 64)
x = torch.randn(4, 10, 256) * 2
y_train = bitlinear_forward(x, layer.weight).detach()
w_t, s_w = layer.quantized_weight()
y_int = int_linear(x, w_t, s_w)
layer.eval()
with torch.no_grad():
    y_eval = layer(x)
print("stored weights:", w_t.dtype, tuple(w_t.shape), "values", sorted(w_t.unique().tolist()), " scale", s_w)
print("training path vs your integer path, max |difference|:", (y_train - y_int).abs().max().item())
print("training path vs the package in eval mode:          ", (y_train - y_eval).abs().max().item())

# %% [markdown]
# And the accumulator really holds integers: compare it with a matmul done in
# int64, where nothing can round.

# %%
x_i, s_x = quantize_activations(x)
acc = x_i @ w_t.float().T
exact = x_i.long() @ w_t.long().T
print("x_i: integers in", [int(x_i.min()), int(x_i.max())], " accumulator range", [int(acc.min()), int(acc.max())])
print("accumulator == int64 matmul exactly:", torch.equal(acc, exact.float()), f"  bound 127 * 256 = {127 * 256:,}")

fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(acc.flatten().numpy(), bins=60, color="C0")
ax.set(xlabel="x_i @ W_t^T (an integer)", ylabel="count", title="The integer accumulator of BitLinear(256, 64)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. babyBitNet
#
# `GPTConfig(linear="bitnet")` builds the GPT of lesson 4 with BitLinear for
# every linear layer *inside the blocks*: q, k, v, the attention's output, and
# the feed-forward's two layers. The token and position embeddings, the norms
# and `lm_head` stay in full precision, as in the paper and the seed project.
# Count the parameters:

# %%
from babybitnet.gpt import GPT, GPTConfig

gpt = GPT(GPTConfig(linear="fp"))
bitnet = GPT(GPTConfig(linear="bitnet"))
bitnet_faq = GPT(GPTConfig(linear="bitnet", bitlinear_norm=True))
C, L = 64, 4
print(f"babyGPT                {gpt.num_params():,}")
print(f"babyBitNet             {bitnet.num_params():,}   difference {gpt.num_params() - bitnet.num_params():,}")
print(f"  biases of attn.proj, mlp.fc, mlp.proj: L * (C + 4C + C) = {L * 6 * C:,}")
extra = bitnet_faq.num_params() - bitnet.num_params()
print(f"babyBitNet, FAQ norms  {bitnet_faq.num_params():,}   vs babyBitNet {extra:+,}")
print(f"  per block: + norms in qkv, attn.proj, mlp.fc, mlp.proj (C + C + C + 4C) - ln1, ln2 (2C) = {7 * C - 2 * C}")
print(bitnet.blocks[0])

# %% [markdown]
# babyBitNet has **1,536** fewer parameters than babyGPT: BitLinear has no
# bias, and the three linear layers that had one in babyGPT (the attention's
# output projection and both feed-forward layers; q, k, v never had one) lose
# $C + 4C + C = 6C$ per block, times $L = 4$ blocks. The two counts, 209,153
# and 207,617, are the seed project's. (The printout shows one more detail:
# the queries, keys and values of all 4 heads are one BitLinear with
# `weight_groups=12`, so each of the 12 matrices, 3 per head, keeps its own
# scale $s_w$, as the seed project's separate per-head layers did.)
#
# ## 5. Training both, side by side
#
# A short run with the `seed` preset (the seed project's settings: batch 16,
# context 32, AdamW, constant learning rate 1e-3 for babyGPT and 9e-4 for
# babyBitNet), 200 steps each, with a small loss estimate (10 batches) every
# 50 steps: about half a minute of CPU, to keep the lesson within a minute.
# We add the FAQ variant (norm inside BitLinear) with babyBitNet's learning
# rate.

# %%
import time
from dataclasses import replace

from babybitnet.data import load_dataset
from babybitnet.presets import get_preset
from babybitnet.train import train

tok, train_data, val_data = load_dataset()
runs = {}
for label, model_name, extra in [
    ("babyGPT", "gpt", {}),
    ("babyBitNet", "bitnet", {}),
    ("babyBitNet, norm inside", "bitnet", {"bitlinear_norm": True}),
]:
    mcfg, tcfg = get_preset("seed", model_name, vocab_size=tok.vocab_size, max_iters=200, eval_iters=10)
    tcfg = replace(tcfg, eval_interval=50)
    torch.manual_seed(1337)
    model = GPT(replace(mcfg, **extra))
    t0 = time.perf_counter()
    runs[label] = train(model, train_data, val_data, tcfg, device="cpu", progress=False)
    r = runs[label]
    print(
        f"{label:24} {r['params']:,} params  lr {r['lr']:g}  val loss {r['history']['val'][0]:.3f} -> "
        f"{r['final_val']:.3f}   {r['ms_per_step']:.1f} ms per step   ({time.perf_counter() - t0:.1f} s)"
    )
print(f"on this machine: torch {torch.__version__}, {torch.get_num_threads()} thread(s)")

fig, ax = plt.subplots(figsize=(8, 4))
for label, r in runs.items():
    h = r["history"]
    ax.plot(h["step"], h["val"], "o-", label=f"{label} (val)")
ax.set(xlabel="step", ylabel="val loss (nats per character)", title="200 steps of the seed preset")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# After 200 steps babyGPT and babyBitNet are still close. The
# variant with the norm inside starts slower here; one seed of a 200-step run
# at this small size says little about which recipe ends better, and lesson 10
# measures it properly. (The ms per step above are from this run, on whatever
# machine runs the lesson; compare them only with each other.) The full seed-size run
# is `make run`: 5,000 steps each with 200 evaluation batches. Its result on
# the 2-core CPU machine this course is developed on (Intel Xeon, torch 2.13,
# quoted from the README):
#
# | model | parameters | learning rate | final val loss | best val loss | ms per step |
# |---|---:|---:|---:|---:|---:|
# | babyGPT | 209,153 | 0.001 | 1.8084 | 1.8084 (step 5000) | 12.6 |
# | babyBitNet | 207,617 | 0.0009 | 1.9464 | 1.9195 (step 4900) | 16.1 |
#
# With every weight inside the blocks ternary, babyBitNet trails babyGPT by
# about 0.14 nats there, and each step costs about 30 % more (the quantizers
# run in every forward pass, and training saves no memory: the latent weights
# are float32). Lesson 10 takes that comparison further and goes after the
# gap.
#
# ## What we have
#
# - **BitLinear** = (RMSNorm) + per-token int8 activations + ternary weights,
#   with the STE on both: $y = x_q W_q^\top$ in training.
# - At inference the same numbers come from an integer matmul,
#   $y = x_i W_t^\top / (s_x s_w)$, whose sums are exact integers made of
#   additions and subtractions only.
# - The norm inside makes every BitLinear's output independent of its input's
#   scale; the FAQ uses it and drops the block's pre-norm.
# - `GPTConfig(linear="bitnet")` turns babyGPT into babyBitNet: 207,617
#   parameters, no biases in the blocks.
#
# The reference is `babybitnet/bitlinear.py`. Check your exercises with:
#
# ```
# python -m babybitnet check 9
# ```
