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
# # Lesson 4: babyGPT
#
# Lesson 3 built one head of causal self-attention: every position looks back
# at the positions before it and takes a weighted average of what they offer.
# One head is not yet a transformer. Four more ideas turn it into one, and this
# lesson adds them one at a time:
#
# 1. **many heads** side by side, each free to look for something different;
# 2. a **feed-forward** network that thinks about what each position gathered;
# 3. **residual connections**, so that a deep stack of layers still trains;
# 4. **normalisation** (RMSNorm), so that the numbers flowing through the stack
#    keep a sane scale.
#
# Put together they make a *block*; a stack of blocks between an embedding and
# a linear head is **babyGPT**, the full-precision model that babyBitNet will
# later copy with ternary weights. At the end we count its parameters and see
# where they sit. (Lesson 5 trains it.)

# %% tags=["imports"]
import torch
import torch.nn.functional as F
from torch import nn

from babybitnet.attention import CausalSelfAttention, Head

# %% [markdown]
# ## 1. Many heads
#
# A head computes queries, keys and values from the input $x \in \mathbb{R}^{T \times C}$
# and mixes the values of the past:
#
# $$\operatorname{head}(x) = \operatorname{softmax}\!\left(\operatorname{mask}\!\left(
#   \frac{(x W_Q)(x W_K)^\top}{\sqrt{d}}\right)\right) x W_V,
#   \qquad W_Q, W_K, W_V \in \mathbb{R}^{C \times d}.$$
#
# Its softmax gives each position *one* set of weights over the past, so a
# single head has to choose: look at the previous vowel, or at the start of
# the word, or at the last newline? Several heads don't have to choose. With
# $H$ heads of size $d = C / H$, each has its own $W_Q, W_K, W_V$ and can learn
# its own pattern; their outputs are concatenated back to width $C$ and mixed
# by one more linear layer, the *output projection* $W_O \in \mathbb{R}^{C \times C}$:
#
# $$\operatorname{MHA}(x) = \big[\operatorname{head}_1(x), \dots, \operatorname{head}_H(x)\big]\, W_O + b_O.$$
#
# Splitting $C$ into $H$ heads of size $C/H$ costs the same number of
# parameters as one head of size $C$ (plus $W_O$), so the extra heads are
# almost free.
#
# `babybitnet.attention.Head(n_embd, head_size)` is lesson 3's head (its
# layers are `key`, `query`, `value`, without bias, and it scales by
# $1/\sqrt{\text{head\_size}}$). One head of size 8 turns each position's 32
# numbers into 8:

# %%
torch.manual_seed(0)
x = torch.randn(2, 8, 32)  # (B, T, C): 2 sequences of 8 positions, 32 numbers each
head = Head(n_embd=32, head_size=8)
print("one head:", tuple(x.shape), "->", tuple(head(x).shape))

# %% [markdown]
# Four such heads side by side give back 32 numbers per position. Build the
# multi-head layer from them.


# %% tags=["exercise"]
class MultiHeadAttention(nn.Module):
    """Exercise 4.1: n_head causal attention heads side by side, then an output projection.

    MultiHeadAttention(n_embd, n_head): n_embd is divisible by n_head; each head has
    head_size = n_embd // n_head. Use these attribute names (the grader loads the
    reference weights into your layer by name):
      self.heads: an nn.ModuleList of n_head `Head(n_embd, head_size)`
      self.proj:  nn.Linear(n_embd, n_embd) (with bias)
    forward(x): x (B, T, n_embd) float32 -> (B, T, n_embd) float32: the heads' outputs
    concatenated along the last dimension (head 0 first), then self.proj.
    """

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        raise NotImplementedError(
            "Exercise 4.1: write MultiHeadAttention.__init__(); check it with: python -m babybitnet check 4"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "Exercise 4.1: write MultiHeadAttention.forward(); check it with: python -m babybitnet check 4"
        )


# %% [markdown]
# Two checks: the shape comes back unchanged, and the layer is still *causal*.
# If we scramble the input at positions 5 and later, the outputs at positions
# 0 to 4 must not move: a position may only read the past.

# %%
mha = MultiHeadAttention(n_embd=32, n_head=4)
y = mha(x)
print("in", tuple(x.shape), "-> out", tuple(y.shape))

x_scrambled = x.clone()
x_scrambled[:, 5:] = torch.randn(2, 3, 32)
y_scrambled = mha(x_scrambled)
print("positions 0-4 unchanged:", torch.allclose(y[:, :5], y_scrambled[:, :5]))
print("positions 5-7 changed:  ", not torch.allclose(y[:, 5:], y_scrambled[:, 5:]))

# %% [markdown]
# ## 2. All heads in one matrix multiplication
#
# The loop over heads is easy to read but slow: $3H$ small matrix
# multiplications for the queries, keys and values, then $H$ separate
# attentions. Stack the $3H$ weight matrices into one $(3C \times C)$ matrix
# and a single matmul computes every query, key and value at once: a
# $(B, T, 3C)$ tensor. Reshaping it to $(3, B, H, T, d)$ gives $q, k, v$ with
# the heads as a batch dimension, and PyTorch's fused kernel
# `F.scaled_dot_product_attention(q, k, v, is_causal=True)` does the masked
# softmax and the weighted sum for all heads in one call (without storing the
# $T \times T$ weights when it can avoid it).
#
# That is `babybitnet.attention.CausalSelfAttention`, the layer the GPT uses.
# It has one `qkv` weight instead of $3H$ small ones, but it computes the same
# function: `load_from_heads` copies the weights of a `MultiHeadAttention` into
# it (rows of `qkv`: all queries, then all keys, then all values, head 0 first).
# Let's check that your layer and the fused one agree.

# %%
fused = CausalSelfAttention(n_embd=32, n_head=4)
fused.load_from_heads(mha)  # works on your class too: it only reads .heads[i].query/key/value and .proj
print("qkv weight:", tuple(fused.qkv.weight.shape), " proj weight:", tuple(fused.proj.weight.shape))
diff = (fused(x) - mha(x)).abs().max().item()
print(f"largest difference between the two layers: {diff:.1e}")
assert diff < 1e-5

# %% [markdown]
# They agree to float32 rounding. How much faster is the fused one? A quick
# timing on whatever machine runs this notebook. It uses one CPU thread and
# keeps the fastest of 30 calls, so that other programs on the machine disturb
# it less; layers this small are dominated by the cost of each call, so the
# gap grows with the number of heads.

# %%
import time


def ms_per_call(layer: nn.Module, x: torch.Tensor, reps: int = 30) -> float:
    times = []
    with torch.no_grad():
        for _ in range(reps + 3):  # the first calls warm up
            t0 = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - t0)
    return 1000 * min(times[3:])


threads = torch.get_num_threads()
torch.set_num_threads(1)
xb = torch.randn(32, 32, 64)  # a training batch of the seed-size model: B=32, T=32, C=64
for n_head in (4, 16):
    torch.manual_seed(0)
    slow = MultiHeadAttention(64, n_head)
    fast = CausalSelfAttention(64, n_head)
    fast.load_from_heads(slow)
    print(f"{n_head:2} heads: loop over heads {ms_per_call(slow, xb):.2f} ms, fused {ms_per_call(fast, xb):.2f} ms")
torch.set_num_threads(threads)

# %% [markdown]
# ## 3. The feed-forward network
#
# Attention is *communication*: each position gathers information from the
# positions before it. But its output is just a weighted average of value
# vectors, a linear function of them: there is little room to *compute*
# anything from what was gathered. A small two-layer network, applied to each
# position on its own, adds that computation:
#
# $$\operatorname{FFN}(x) = \operatorname{ReLU}(x W_1 + b_1)\, W_2 + b_2,
# \qquad W_1 \in \mathbb{R}^{C \times 4C},\ W_2 \in \mathbb{R}^{4C \times C}.$$
#
# The hidden layer is 4 times wider than the embedding, as in the original
# Transformer and GPT-2: most of a transformer's parameters end up here, as
# the count at the end of the lesson shows. The same weights are used at
# every position, so position $t$'s output depends on position $t$'s input only.
#
# A stack of linear layers with activations between them is a *multi-layer
# perceptron*, so GPT-2's code and the package call this layer an **MLP**
# (`babybitnet.gpt.MLP`); so do we.


# %% tags=["exercise"]
class MLP(nn.Module):
    """Exercise 4.2: the position-wise feed-forward network n_embd -> 4 n_embd -> n_embd.

    MLP(n_embd). Use these attribute names (as babybitnet.gpt.MLP does):
      self.fc:   nn.Linear(n_embd, 4 * n_embd) (with bias)
      self.proj: nn.Linear(4 * n_embd, n_embd) (with bias)
    forward(x): x (..., n_embd) float32 -> (..., n_embd) float32: proj(relu(fc(x))).
    """

    def __init__(self, n_embd: int):
        super().__init__()
        raise NotImplementedError("Exercise 4.2: write MLP.__init__(); check it with: python -m babybitnet check 4")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Exercise 4.2: write MLP.forward(); check it with: python -m babybitnet check 4")


# %% [markdown]
# "Position-wise" means we could run it on one position at a time and get the
# same result: nothing moves between positions here.

# %%
ff = MLP(32)
print("in", tuple(x.shape), "-> out", tuple(ff(x).shape))
one_at_a_time = torch.cat([ff(x[:, t : t + 1]) for t in range(x.shape[1])], dim=1)
print("same as one position at a time:", torch.allclose(ff(x), one_at_a_time, atol=1e-6))

# %% [markdown]
# ## 4. Residual connections
#
# Stacking attention and feed-forward layers gives a deep network, and deep
# networks are hard to train: the gradient that reaches layer $l$ is a product
# of one Jacobian per layer above it,
#
# $$\frac{\partial \mathcal{L}}{\partial x_l}
#   = \frac{\partial \mathcal{L}}{\partial x_L}\,
#     \frac{\partial x_L}{\partial x_{L-1}} \cdots \frac{\partial x_{l+1}}{\partial x_l},$$
#
# and a product of many matrices tends to shrink to nothing or blow up. A
# *residual connection* (He et al., 2015) makes each layer add to its input
# instead of replacing it:
#
# $$x_{l+1} = x_l + f(x_l) \quad\Longrightarrow\quad
#   \frac{\partial x_{l+1}}{\partial x_l} = I + \frac{\partial f}{\partial x_l}.$$
#
# Expanding the product of $(I + \dots)$ terms, one term is the identity: the
# gradient of the loss reaches every layer directly, through a "highway" that
# no layer can block. Think of $x$ as a *residual stream* that runs from the
# embedding to the output head; each layer reads it and writes a small update
# back into it.
#
# ## 5. Normalisation: RMSNorm
#
# Each layer adds its output to the stream, so the stream's scale drifts with
# depth, and layers work best when their inputs have a predictable scale.
# *Layer normalisation* rescales each position's vector of $C$ numbers:
#
# $$\operatorname{LayerNorm}(x) = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot \gamma + \beta,
# \qquad \mu, \sigma^2 = \text{mean and variance of the } C \text{ entries of } x.$$
#
# **RMSNorm** (Zhang and Sennrich, 2019) keeps only the rescaling: no mean to
# subtract, no bias $\beta$:
#
# $$\operatorname{RMSNorm}(x) = \frac{x}{\sqrt{\frac{1}{C}\sum_{i=1}^{C} x_i^2 + \epsilon}} \odot g.$$
#
# After it, every position's vector has root-mean-square 1 (times the learned
# gain $g$, which starts at 1); $\epsilon$ keeps an all-zero vector from
# dividing by zero. It is cheaper than LayerNorm and works as well; LLaMA,
# BitNet b1.58 and the seed project use it.


# %% tags=["exercise"]
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Exercise 4.3: RMSNorm over the last dimension.

    x: (..., C) float; weight: (C,) float, the gain g; eps > 0.
    Returns (..., C), same dtype: x / sqrt(mean(x**2 over the last dim) + eps) * weight.
    """
    raise NotImplementedError("Exercise 4.3: write rms_norm(); check it with: python -m babybitnet check 4")


# %% [markdown]
# PyTorch has the same thing as a function, `F.rms_norm`, and as a layer,
# `nn.RMSNorm(C)`, whose `weight` is the gain $g$ (its default $\epsilon$ is
# the float32 machine epsilon).

# %%
norm = nn.RMSNorm(32)
eps = torch.finfo(torch.float32).eps
xs = 5 * torch.randn(2, 8, 32) + 3  # a badly scaled input
mine = rms_norm(xs, norm.weight, eps)
print("same as F.rms_norm: ", torch.allclose(mine, F.rms_norm(xs, (32,), norm.weight, eps), atol=1e-6))
print("same as nn.RMSNorm:", torch.allclose(mine, norm(xs), atol=1e-6))
print("RMS of the first 4 positions before:", xs[0, :4].pow(2).mean(-1).sqrt().tolist())
print("RMS of the first 4 positions after: ", mine[0, :4].pow(2).mean(-1).sqrt().tolist())

# %% [markdown]
# ### Where the norm goes: pre-norm
#
# The original Transformer (2017) normalised *after* adding:
# $x_{l+1} = \operatorname{Norm}(x_l + f(x_l))$ ("post-norm"). That puts a norm
# on the highway itself, so the gradient is rescaled at every layer again, and
# post-norm transformers are known to need a careful learning-rate warm-up. GPT-2
# and nearly every model since normalise the layer's *input* instead
# ("pre-norm"):
#
# $$x_{l+1} = x_l + f(\operatorname{Norm}(x_l)).$$
#
# The stream stays untouched, the residual highway stays clean, and each layer
# still sees an input of RMS 1. Because nothing normalises the stream itself,
# the GPT adds one last norm before the output head.
#
# ## 6. The block
#
# A transformer block is both ideas, each as a pre-norm residual update:
#
# $$x \leftarrow x + \operatorname{Attention}(\operatorname{RMSNorm}_1(x)), \qquad
#   x \leftarrow x + \operatorname{FFN}(\operatorname{RMSNorm}_2(x)).$$
#
# First the positions communicate, then each one computes. Use the fused
# `CausalSelfAttention` for the attention, your `MLP`, and
# `nn.RMSNorm` for the norms.


# %% tags=["exercise"]
class Block(nn.Module):
    """Exercise 4.4: a pre-norm transformer block.

    Block(n_embd, n_head). Use these attribute names (as babybitnet.gpt.Block does):
      self.ln1:  nn.RMSNorm(n_embd)
      self.attn: CausalSelfAttention(n_embd, n_head)
      self.ln2:  nn.RMSNorm(n_embd)
      self.mlp:  MLP(n_embd) (exercise 4.2)
    forward(x): x (B, T, n_embd) float32 -> (B, T, n_embd) float32:
      x + attn(ln1(x)), then that plus mlp(ln2(that)).
    """

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        raise NotImplementedError("Exercise 4.4: write Block.__init__(); check it with: python -m babybitnet check 4")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Exercise 4.4: write Block.forward(); check it with: python -m babybitnet check 4")


# %% [markdown]
# Your block should match the package's `babybitnet.gpt.Block` once it holds
# the same weights. The parameter names match, so `load_state_dict` copies
# them across.

# %%
from babybitnet.gpt import Block as RefBlock
from babybitnet.gpt import GPTConfig, make_linear

cfg = GPTConfig(n_embd=32, n_head=4)
ref_block = RefBlock(cfg, make_linear(cfg))
block = Block(32, 4)
block.load_state_dict(ref_block.state_dict())
print("parameters:", [name for name, _ in block.named_parameters()])
print("same output as babybitnet.gpt.Block:", torch.allclose(block(x), ref_block(x), atol=1e-6))

# %% [markdown]
# ### Why residuals and norms matter: 24 blocks deep
#
# Here is the argument of sections 4 and 5 as an experiment. We stack 24 of
# your blocks (C = 64, PyTorch's default initial weights), push a random input
# through them, and backpropagate a random loss. Three ways to wire the same
# blocks:
#
# - **plain**: $x \leftarrow \operatorname{FFN}(\operatorname{Attn}(x))$, no residual, no norm;
# - **residual**: $x \leftarrow x + \operatorname{Attn}(x)$, then $x \leftarrow x + \operatorname{FFN}(x)$, no norm;
# - **residual + pre-norm**: the block as you wrote it.
#
# For each we record, at the input of every block, the size of the gradient
# of the loss and the RMS of the activations.

# %%
import matplotlib.pyplot as plt

torch.manual_seed(0)
depth = 24
stack = [Block(64, 4) for _ in range(depth)]


def wire(b: Block, x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "plain":
        return b.mlp(b.attn(x))
    if how == "residual":
        x = x + b.attn(x)
        return x + b.mlp(x)
    return b(x)  # residual + pre-norm


x0 = torch.randn(8, 32, 64)
probe = torch.randn(8, 32, 64)  # the "loss" is (output * probe).sum(): a random direction
curves = {}
for how in ("plain", "residual", "residual + pre-norm"):
    h, inputs = x0.clone().requires_grad_(), []
    for b in stack:
        inputs.append(h)
        h.retain_grad()
        h = wire(b, h, how)
    (h * probe).sum().backward()
    grad = [t.grad.double().norm().item() for t in inputs]  # float64: the squares of tiny values
    rms = [t.pow(2).mean().sqrt().item() for t in inputs] + [h.pow(2).mean().sqrt().item()]
    curves[how] = grad, rms
    print(f"{how:20} gradient at block 0: {grad[0]:.1e}, at block {depth - 1}: {grad[-1]:.1e};", end=" ")
    print(f"activation RMS in: {rms[0]:.2f}, out: {rms[-1]:.2f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for how, (grad, rms) in curves.items():
    ax1.semilogy(range(depth), grad, marker=".", label=how)
    ax2.plot(range(depth + 1), rms, marker=".", label=how)
ax1.set(xlabel="block", ylabel="gradient norm at the block's input", title="Gradient reaching each block")
ax2.set(xlabel="block (24 = output)", ylabel="RMS of the activations", title="Scale of the residual stream")
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Read the left panel from right to left, the way the gradient travels.
# Without residuals it shrinks by about a factor of ten at every block (see
# the printed numbers): the first blocks get essentially no gradient and could
# not learn. With the
# residual highway it arrives at every block with a similar size. The right
# panel shows why the norm is needed too: without it the residual stream keeps
# growing with depth, since every block adds its output to it; with pre-norm
# each block sees an input of RMS 1 and the growth is slower. (With the GPT's
# small initial weights, normal with std 0.02, the plain stack is even worse:
# its activations vanish to zero.)
#
# ## 7. babyGPT
#
# The whole model, `babybitnet.gpt.GPT`, adds an input and an output to a stack
# of blocks:
#
# $$x_0 = \text{tok\_emb}[\text{idx}] + \text{pos\_emb}[0..T-1], \qquad
#   x_{l+1} = \operatorname{Block}_l(x_l), \qquad
#   \text{logits} = \operatorname{RMSNorm}(x_L)\, W_{\text{head}} + b_{\text{head}}.$$
#
# The token embedding says *which* character sits at a position, the position
# embedding *where* it sits (attention by itself does not know the order of
# its inputs). The logits at position $t$ score every character of the
# vocabulary as the next one, and the loss is the cross-entropy of lesson 2.
# Its `GPTConfig` holds the sizes; the defaults are the seed project's
# babyGPT: 65 characters, context 32, $C = 64$, 4 heads, 4 layers. (The seed
# project scaled attention by $1/\sqrt{C}$ instead of $1/\sqrt{d}$; the
# `seed` preset keeps that, to reproduce its numbers.)
#
# Your blocks are the package's blocks, so we can put them into a GPT and get
# the same logits:

# %%
from babybitnet.gpt import GPT

torch.manual_seed(1337)
config = GPTConfig(vocab_size=65, block_size=32, n_embd=64, n_head=4, n_layer=4)
model = GPT(config)
idx = torch.randint(0, 65, (2, 32))
ref_logits, _ = model(idx)
for i, ref in enumerate(model.blocks):
    mine = Block(64, 4)
    mine.load_state_dict(ref.state_dict())
    model.blocks[i] = mine
logits, _ = model(idx)
print("logits", tuple(logits.shape), "same with your blocks:", torch.allclose(logits, ref_logits, atol=1e-5))

# %% [markdown]
# ### Where the parameters are
#
# With vocabulary $V$, context $T$, width $C$ and $L$ blocks, a block holds
# $3C^2$ (q, k, v) $+ (C^2 + C)$ (attention output) $+ (4C^2 + 4C)$ and
# $(4C^2 + C)$ (the two feed-forward layers) $+ 2C$ (two norm gains), that is
# $12C^2 + 8C$. With the embeddings ($VC + TC$), the final norm ($C$) and the
# head ($CV + V$):

# %%
model = GPT(config)


def component(name: str) -> str:
    if name.startswith("tok_emb"):
        return "token embedding"
    if name.startswith("pos_emb"):
        return "position embedding"
    if ".attn.qkv" in name:
        return "attention q, k, v"
    if ".attn.proj" in name:
        return "attention output"
    if ".mlp.fc" in name:
        return "feed-forward fc"
    if ".mlp.proj" in name:
        return "feed-forward proj"
    if name.startswith("lm_head"):
        return "lm_head"
    return "norms"  # ln1, ln2 of every block and ln_f


counts: dict[str, int] = {}
for name, p in model.named_parameters():
    counts[component(name)] = counts.get(component(name), 0) + p.numel()

V, T, C, L = config.vocab_size, config.block_size, config.n_embd, config.n_layer
formula = V * C + T * C + L * (12 * C**2 + 8 * C) + C + C * V + V
total = model.num_params()
for k, n in counts.items():
    print(f"{k:20} {n:8,}  {100 * n / total:5.1f} %")
print(f"{'total':20} {total:8,}   (formula: {formula:,})")
assert total == formula == 209_153

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.barh(list(counts), list(counts.values()), color="C0")
ax.invert_yaxis()
ax.set_xlabel("parameters")
ax.set_title(f"babyGPT: {total:,} parameters by component")
for i, n in enumerate(counts.values()):
    ax.text(n, i, f" {n:,}", va="center", fontsize=8)
ax.set_xlim(0, 1.2 * max(counts.values()))
fig.tight_layout()
plt.show()

# %% [markdown]
# 209,153 parameters, the same count as the seed project's babyGPT. Almost two thirds
# of them sit in the feed-forward layers and most of the rest in attention:
# the $12C^2$ term. The embeddings and the head are small here because the
# vocabulary has only 65 characters. This matters for the rest of the course:
# BitNet makes the linear layers *inside the blocks* ternary and keeps the
# embeddings, the norms and the head in full precision, so almost all of
# babyGPT's weights (the q, k, v, output and feed-forward matrices) become
# ternary.
#
# ### Before training
#
# An untrained babyGPT has small random weights, so its logits are nearly all
# equal and it predicts every character with probability about $1/65$: its
# loss should be close to $\ln 65$. And its text is noise:

# %%
import math

from babybitnet.data import load_dataset

tok, train_data, val_data = load_dataset()
_, loss = model(train_data[:32].view(1, 32), train_data[1:33].view(1, 32))
print(f"loss of the untrained model: {loss.item():.3f}   ln 65 = {math.log(65):.3f}")
g = torch.Generator().manual_seed(0)
out = model.generate(torch.tensor([tok.encode("\n")]), max_new_tokens=80, generator=g)
print(repr(tok.decode(out[0])))

# %% [markdown]
# ## What we have
#
# - **Multi-head attention** runs several heads side by side and mixes them
#   with an output projection; `CausalSelfAttention` computes the same thing
#   with one matmul for q, k, v and one fused attention call.
# - The **feed-forward** network computes on each position separately and
#   holds most of the parameters.
# - **Residual connections** give the gradient a highway through the stack;
#   **pre-norm RMSNorm** keeps every layer's input at RMS 1 without touching
#   that highway.
# - A **block** is $x + \text{attn}(\text{norm}(x))$ then $x + \text{FFN}(\text{norm}(x))$,
#   and babyGPT is embeddings, 4 blocks, a final norm and a linear head:
#   209,153 parameters.
#
# Lesson 5 trains it, and measures how much each of this lesson's ideas lowers
# the loss. The reference versions are in `babybitnet/attention.py` and
# `babybitnet/gpt.py`. Check your exercises with:
#
# ```
# python -m babybitnet check 4
# ```
