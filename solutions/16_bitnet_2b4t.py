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
# # Lesson 16: From babyBitNet to BitNet b1.58 2B4T
#
# babyBitNet is still babyGPT's block with ternary linear layers: a learned table of
# position embeddings, a pre-norm, a 4x ReLU feed-forward. The model the BitNet team
# released, BitNet b1.58 2B4T (2 billion parameters, 4 trillion training tokens), changes
# four things in that block:
#
# 1. **Rotary position embeddings (RoPE)** instead of a learned position table;
# 2. **SubLN**: an RMSNorm right before the attention's output projection and before the
#    feed-forward's down projection;
# 3. a **gated feed-forward with squared ReLU**: `down(relu(gate(x))^2 * up(x))`;
# 4. **grouped-query attention (GQA)**: fewer key/value heads than query heads.
#
# It has no biases at all. Each change is one switch of `GPTConfig` (`pos`, `subln`,
# `ffn`, `n_kv_head`), off by default, so a lesson or an ablation can add one at a time;
# the preset `b2b4t_block` turns all four on at the seed's size. You write RoPE (16.1)
# and the SubLN feed-forward (16.2); then you load a Hugging Face BitNet checkpoint
# into our model (`babybitnet.hf`), with a tiny random one built on the spot.

# %% tags=["imports"]
import torch
from torch import nn

from babybitnet.gpt import ACTIVATIONS, GPT, GPTConfig
from babybitnet.presets import get_preset

torch.set_num_threads(1)  # tiny models: one thread is as fast, and never fights other programs for the cores

# %% [markdown]
# ## 1. RoPE: positions as rotations
#
# A learned position table adds a vector per *absolute* position to each token. Two
# problems: the model must learn separately that "the token 3 places back" means the same
# thing at position 10 and at position 200, and it has nothing at all for positions past
# the table. RoPE (Su et al., 2021) instead rotates the queries and keys. Split a head's
# vector into pairs of channels $(x_i, x_{i + d/2})$ and turn pair $i$ by the angle
# $p \cdot \theta^{-2i/d}$ at position $p$. A rotation by $a$ of $q$ and by $b$ of $k$ gives
# $q' \cdot k' = q \cdot R(b - a)\, k$: **the attention score depends only on the offset**
# $b - a$. The frequencies go from one radian per position (pair 0) to very slow ones, so
# some pairs tell neighbours apart and others far-away tokens. 2B4T uses
# $\theta = 500\,000$ (long contexts); we keep the usual 10 000 at block size 32.
#
# With the "rotate half" pairing of Llama and transformers: with
# $\mathrm{freqs} = p\,\theta^{-2i/d}$ for $i < d/2$, $\mathrm{emb} = [\mathrm{freqs}, \mathrm{freqs}]$,
#
# $$\mathrm{rope}(x) = x \cos(\mathrm{emb}) + \mathrm{rotate\_half}(x) \sin(\mathrm{emb}),
# \qquad \mathrm{rotate\_half}([x_1, x_2]) = [-x_2, x_1].$$


# %% tags=["exercise"]
def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Exercise 16.1: rotary position embedding of queries or keys.

    x: (..., T, d) float, d even; positions: (T,) integer positions. Returns x's shape and dtype:
    each pair (x[..., i], x[..., i + d/2]) turned by the angle positions[t] * theta ** (-2i / d),
    computed in float32 (cos and sin then cast to x's dtype).
    """
    ### BEGIN SOLUTION
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float, device=x.device) / d))
    freqs = positions.to(x.device)[:, None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * emb.cos().to(x.dtype) + torch.cat((-x2, x1), dim=-1) * emb.sin().to(x.dtype)
    ### END SOLUTION


# %% [markdown]
# The offset property, with your function: a query at position $m$ and a key at $n$
# score the same as at $m + 50$ and $n + 50$, and differently at another offset.

# %%
from babybitnet.attention import rope as package_rope

torch.manual_seed(0)
q, k = torch.randn(1, 16), torch.randn(1, 16)


def score(m: int, n: int) -> float:
    return float(rope(q, torch.tensor([m])) @ rope(k, torch.tensor([n])).T)


print(
    f"q at 5, k at 2: {score(5, 2):+.5f}   q at 55, k at 52: {score(55, 52):+.5f}   q at 5, k at 4: {score(5, 4):+.5f}"
)
x = torch.randn(2, 4, 10, 16)
print(
    "equals the package's babybitnet.attention.rope:",
    torch.allclose(rope(x, torch.arange(10)), package_rope(x, torch.arange(10))),
)

# %% [markdown]
# The same in a picture: the score of one query and one key, rotated to positions $m$ and
# $n$, against the offset $m - n$, for three absolute positions of the query. The curves lie
# on top of each other: RoPE sees how far apart two tokens are, not where they are.

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(8, 3.2))
offsets = list(range(0, 31))
for m0, style in [(30, "-"), (130, "--"), (530, ":")]:
    scores = [float(package_rope(q, torch.tensor([m0])) @ package_rope(k, torch.tensor([m0 - d])).T) for d in offsets]
    ax.plot(offsets, scores, style, label=f"query at position {m0}")
ax.set(xlabel="offset m - n (tokens)", ylabel="rotated q . k", title="RoPE: the score depends on the offset only")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# In the model, `CausalSelfAttention` rotates q and k after the projection and before the
# attention; with a KV cache, the new tokens' positions start at the cache's length, and
# the cache stores the keys already rotated. There is no position table any more
# (`GPT.pos_emb is None`): 32 x 64 = 2,048 parameters fewer at the seed's size.
#
# ## 2. SubLN: a norm before each output projection
#
# In a BitLinear every input is quantized to 8 bits per token, with the token's largest
# value mapped to 127. The input of the attention's output projection is the heads'
# concatenated outputs; that of the feed-forward's down projection is a product of two
# projections (in the gated layer below). Neither is normalised in the standard block, and
# their scale drifts during training; a few large values then squeeze every other value of
# the token into a few of the 255 levels. SubLN (from Magneto, Wang et al., 2022) puts an
# RMSNorm right there. The BitNet team use it in 2B4T "for training stability", which
# matters more when every activation is rounded to 8 bits.
#
# ## 3. The gated feed-forward with squared ReLU
#
# 2B4T's feed-forward is $\mathrm{down}(\mathrm{relu}(\mathrm{gate}(x))^2 \odot \mathrm{up}(x))$.
# The gate decides, per hidden unit and token, how much of `up(x)` passes (GLU variants,
# Shazeer 2020, are what Llama uses with SiLU). The BitNet team chose squared ReLU because
# it makes the hidden activations *sparse* (every negative pre-activation is exactly 0),
# which the BitNet papers find helps low-bit models. Three matrices instead of two: a width
# of $\frac{8}{3}\,n_\mathrm{embd}$ keeps the parameter count of a 4x MLP (we round it up to a
# multiple of 16, the GPU kernel's word: 176 at $n_\mathrm{embd} = 64$).
#
# Exercise 16.2 is the whole feed-forward of 2B4T: the gate, the product, **the SubLN
# norm**, the down projection. `__init__` is given (the package's names); write `forward`.


# %% tags=["exercise"]
class GatedMLP(nn.Module):
    """Exercise 16.2: 2B4T's feed-forward with SubLN, n_embd -> hidden -> n_embd.

    forward(x): x (..., n_embd) -> (..., n_embd) = dropout(down(sub_norm(act(gate(x)) * up(x)))),
    where sub_norm is skipped when it is None (config.subln False).
    """

    def __init__(self, config: GPTConfig, linear):
        super().__init__()
        hidden = config.hidden_size
        self.gate = linear(config.n_embd, hidden)
        self.up = linear(config.n_embd, hidden)
        self.act = ACTIVATIONS[config.activation]
        self.sub_norm = nn.RMSNorm(hidden, eps=config.norm_eps) if config.subln else None
        self.down = linear(hidden, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        h = self.act(self.gate(x)) * self.up(x)
        if self.sub_norm is not None:
            h = self.sub_norm(h)
        return self.dropout(self.down(h))
        ### END SOLUTION


# %% [markdown]
# Yours against the package's `babybitnet.gpt.GatedMLP`, with the same weights, in a
# babyBitNet of the `b2b4t_block` preset:

# %%
from babybitnet.gpt import GatedMLP as PackageGatedMLP
from babybitnet.gpt import make_linear

config, _ = get_preset("b2b4t_block", "bitnet")
torch.manual_seed(0)
theirs = PackageGatedMLP(config, make_linear(config)).eval()
mine = GatedMLP(config, make_linear(config)).eval()
mine.load_state_dict(theirs.state_dict())
h = torch.randn(3, 7, config.n_embd)
with torch.no_grad():
    print("equals the package's GatedMLP:", torch.allclose(mine(h), theirs(h), atol=1e-6))
    print(f"hidden units exactly 0 after relu(gate)^2: {(theirs.act(theirs.gate(h)) == 0).float().mean():.0%}")

# %% [markdown]
# ## 4. Grouped-query attention
#
# At generation, every layer keeps the keys and values of every past token (lesson 12's KV
# cache): for 2B4T, 30 layers x 2 x 2,560 numbers per token. GQA (Ainslie et al., 2023)
# gives the keys and values fewer heads than the queries (2B4T: 5 for 20), each shared by a
# group of query heads: the cache and the k, v projections shrink 4 times, at almost no cost
# in quality. In `CausalSelfAttention`, `n_kv_head` sets it: the fused q, k, v matrix has
# (n_head + 2 n_kv_head) blocks of head_size rows, one BitLinear scale each, and the k, v
# heads are repeated for their queries.

# %%
for name, overrides in [
    ("babyBitNet (recipe)", {}),
    ("+ RoPE", dict(pos="rope")),
    ("+ SubLN", dict(pos="rope", subln=True)),
    ("+ gated ReLU^2", dict(pos="rope", subln=True, ffn="gated", bias=False)),
    ("+ GQA (2 kv heads): b2b4t_block", dict(pos="rope", subln=True, ffn="gated", bias=False, n_kv_head=2)),
]:
    cfg, _ = get_preset("recipe", "bitnet", model_overrides=overrides)
    model = GPT(cfg)
    cache = model.new_cache()
    with torch.no_grad():
        model.eval()(torch.zeros(1, 32, dtype=torch.long), cache=cache)
    kv = sum(c.k.numel() + c.v.numel() for c in cache)
    print(f"{name:34} {model.num_params():>7,} parameters, KV cache of 32 tokens: {kv:>6,} numbers")

# %% [markdown]
# ## 5. What each change is worth
#
# Lesson 10's ablation machinery has a study for this block: the recipe's babyBitNet at the
# seed's size with each of the four changes added alone, then all four together (the
# `b2b4t_block` preset, which also drops the last biases), and babyGPT without and with the
# whole block; every variant trained for 5,000 steps with three seeds (1337 to 1339):
#
# ```
# python -m babybitnet ablate --study b2b4t --seeds 3 --eval-interval 500 --out runs/ablation_b2b4t
# ```
#
# That is 24 runs of 2 to 15 minutes each on one core (`--jobs N` trains N at once; the
# shipped result was made on two CPUs, see below). "vs recipe" is the difference of the mean
# final val loss to the recipe's of the same model; the spread is the standard deviation
# over the seeds, so a difference under about 0.01 to 0.02 is noise:

# %%
from babybitnet.course import show_markdown
from babybitnet.experiments.ablation import markdown_table
from babybitnet.experiments.study import measured
from babybitnet.runtime import describe

ablation = measured("ablation_b2b4t")
machines = sorted({describe(r["machine"]) for r in ablation["runs"]})
print(f"{len(ablation['runs'])} runs, on", " and ".join(machines))
show_markdown(markdown_table(ablation["summary"]))

# %% [markdown]
# How to read it (the spread between seeds is 0.003 to 0.017, so the mean of three is good
# to about 0.01):
#
# - **RoPE helps most**, by almost 0.05. A learned position table must learn each of its 32
#   rows from the data; a rotation gives every position its place for free, and what the
#   attention scores see is only how far apart two characters are (section 1's picture).
# - **The gated ReLU² feed-forward helps** too, by about 0.025, for 2% more parameters.
# - **SubLN costs** about 0.04 here, as the RMSNorm inside BitLinear did in lesson 10's
#   ablation (+0.035). It is there to keep the activations of deep ternary networks at a
#   steady scale; four layers of width 64 have nothing to stabilise, and one more
#   normalisation before each output projection only takes information away.
# - **Grouped-query attention** is level (+0.006, inside the spread) with 8% fewer
#   parameters: two key/value heads serve four query heads. What it is for, a KV cache half
#   the size (section 4's printout), matters for long generations of a big model, not for a
#   32-character context.
# - **All four together** gain about 0.025 for babyBitNet and 0.033 for babyGPT, with 6 to 7%
#   fewer parameters: RoPE and the gated feed-forward win more than SubLN loses. The gap
#   between the two models goes from 0.073 (recipe) to 0.081 (2B4T block).
#
# The table's runs were made on two machines: the first 13 on the 16 cores of the GPU machine
# we borrow, the rest on a 2-core AMD EPYC (`ablate --resume` carried the study on);
# one thread per run on both, so only the time differs, not the numbers' meaning.
#
# At nanoGPT's size on a GPU the comparison is one command per block,
# `python -m babybitnet compare --preset nanogpt_recipe --device cuda --dtype bfloat16 --compile`
# and the same with `--preset nanogpt_2b4t` (6 layers, width 384, context 256, 5,000 steps,
# one seed). On one H200 (torch 2.11), best val loss (at step) and final val loss:
#
# | model | recipe block | 2B4T block |
# |---|---:|---:|
# | babyGPT | 1.4850 (2,000), final 1.6747 | 1.4678 (1,250), final 1.8067 |
# | babyBitNet | 1.4658 (2,750), final 1.4939 | **1.4441** (1,750), final 1.5471 |
#
# With 12% fewer parameters the 2B4T block reaches a lower best loss (-0.022 for babyBitNet,
# -0.017 for babyGPT) and gets there sooner. It also memorises Tiny Shakespeare sooner: at this
# size both models overfit the 1 MB corpus, and the final losses are worse with the new block.
# A better architecture needs more data to show all it has; lesson 14's larger corpus is the
# place for that. Keep in
# mind that the BitNet team chose these changes for a 2-billion-parameter model trained on 4
# trillion tokens: at 0.2M parameters and a block of 32 characters, a change made for long
# generations (GQA, which shrinks the KV cache) can only cost a little.
#
# ## 6. Real checkpoints: `babybitnet.hf`
#
# `microsoft/bitnet-b1.58-2B-4T` ships on Hugging Face in `transformers`' BitNet format:
# `config.json` (`model_type: "bitnet"`) and safetensors whose linear weights are uint8,
# four ternary codes per byte packed along the output dimension (value = code - 1), with a
# `weight_scale` per matrix that the layer *divides* by, our $s_w$. `babybitnet.hf.from_pretrained(folder)`
# maps it into our GPT with the four switches (and `tie_embeddings`, `norm_eps`, `rope_theta`
# from the config), so it packs into our format and generates with our kernels:
#
# ```python
# from babybitnet.hf import from_pretrained
# model, tokenizer = from_pretrained("path/to/bitnet-b1.58-2B-4T")   # a downloaded folder
# logits, _ = model(torch.tensor([tokenizer.encode("Hello")]))
# ```
#
# The lesson does not run it: it needs the 1.2 GB download, or `transformers` (a test-only
# dependency, whose import alone takes most of this lesson's time budget) to build a tiny one.

# %% [markdown]
# `tests/test_hf.py` checks it on tiny random checkpoints that transformers itself saves: in
# the packed layout our logits equal those of transformers' own BitLinear layers within 1e-4;
# with bf16 master weights every layer agrees within float rounding, and the logits within a
# few percent (transformers' online path sums non-integer floats, ours integers, and the
# rounding now and then moves an 8-bit activation by one level); the greedy tokens are the
# same in both, and stay the same once packed and saved in our format.

# %% [markdown]
# ## What we have
#
# - **RoPE** rotates each pair of query and key features by an angle that grows with the
#   position, so $q \cdot k$ depends only on how far apart two tokens are.
# - **SubLN** normalises the input of the two BitLinears that had none (the attention's
#   output projection and the feed-forward's down projection), so every ternary layer sees
#   activations of a steady scale.
# - **Gated ReLU²** and **grouped-query attention** change the feed-forward and shrink the KV
#   cache; all four are switches of `GPTConfig` (`pos`, `subln`, `ffn`, `n_kv_head`).
#
# The reference is `babybitnet/attention.py` (`rope`), `babybitnet/gpt.py` (`GatedMLP`) and
# `babybitnet/hf.py`. Check your exercises with:
#
# ```
# python -m babybitnet check 16
# ```
