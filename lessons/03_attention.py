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
# # Lesson 3: attention
#
# The bigram model of lesson 2 predicts the next character from the current
# one alone, and it stalls at a validation loss of about 2.48 (lesson 2). To do better, the
# prediction at position $t$ must use *all* the characters before it:
# "th" should raise the odds of "e", "Kin" those of "g".
#
# Two rules shape how a language model combines the past:
#
# 1. **Causality.** The prediction at position $t$ may use positions
#    $0, \dots, t$, never $t+1, \dots$. The future is what the model is asked
#    to predict; if it could look, it would learn to copy, not to predict.
# 2. **Many positions in parallel.** A window of $T$ characters holds $T$
#    training examples (predict $x_1$ from $x_0$, $x_2$ from $x_0 x_1$, ...).
#    We want all $T$ of them in one pass, with matrix multiplications, not a
#    Python loop.
#
# This lesson builds *self-attention* in three steps: a plain average of the
# past, the same average as one matrix multiplication, and then a weighted
# average whose weights the model computes from the data.

# %% tags=["imports"]
import torch
import torch.nn.functional as F
from torch import nn

# %% [markdown]
# ## Step 1: average the past, with a loop
#
# Take a batch of $B$ sequences of $T$ positions, each a vector of $C$ numbers
# (later these will be character embeddings). The simplest summary of the past
# at position $t$ is the mean of the vectors at positions $0..t$:
#
# $$\bar x_t = \frac{1}{t+1} \sum_{s=0}^{t} x_s.$$

# %%
torch.manual_seed(1337)
B, T, C = 4, 8, 2
x = torch.randn(B, T, C)

xbow = torch.zeros(B, T, C)  # "bag of words": the order inside the past is ignored
for b in range(B):
    for t in range(T):
        xbow[b, t] = x[b, : t + 1].mean(dim=0)
print(x[0])
print(xbow[0])

# %% [markdown]
# Row 0 of `xbow[0]` is row 0 of `x[0]`, row 1 is the mean of rows 0 and 1, and
# so on. Correct, but two nested Python loops: far too slow for real batches.
#
# ## Step 2: the same average as one matrix multiplication
#
# An average is a weighted sum, and a weighted sum of rows is a matrix product.
# Put the weights in a $T \times T$ matrix $W$ whose row $t$ holds
# $\frac{1}{t+1}$ in columns $0..t$ and zeros after:
#
# $$W = \begin{pmatrix} 1 & 0 & 0 & \cdots \\ \tfrac12 & \tfrac12 & 0 & \cdots \\
# \tfrac13 & \tfrac13 & \tfrac13 & \cdots \\ \vdots & & & \ddots \end{pmatrix},
# \qquad \bar x = W x.$$
#
# The zeros above the diagonal are causality: row $t$ gives no weight to the
# future. `torch.tril` keeps the lower triangle of a matrix. And `W @ x` with
# `W` of shape (T, T) and `x` of shape (B, T, C) broadcasts over the batch:
# PyTorch multiplies `W` with each (T, C) sequence and returns (B, T, C).


# %% tags=["exercise"]
def causal_average(x: torch.Tensor) -> torch.Tensor:
    """Exercise 3.1: the running mean of the past, as one matrix multiplication.

    x: (B, T, C) float32. Returns (B, T, C) float32 with out[b, t] = mean of x[b, 0], ..., x[b, t].
    Build the (T, T) lower-triangular matrix of averaging weights and multiply; no Python loop.
    """
    raise NotImplementedError("Exercise 3.1: write causal_average(); check it with: python -m babybitnet check 3")


# %%
xbow2 = causal_average(x)
print("loop and matmul agree:", torch.allclose(xbow, xbow2, atol=1e-6))  # up to float rounding

# %% [markdown]
# ## Step 3: the weights as a masked softmax
#
# One more way to build the same $W$ looks roundabout but is the one attention
# uses. Start from a matrix of *scores*, all zero; set the scores above the
# diagonal to $-\infty$; apply the softmax to each row. Since $e^{-\infty} = 0$,
# the future gets weight 0, and the $t+1$ equal scores of row $t$ share the
# weight equally, $\frac{1}{t+1}$ each:
#
# $$W_{ts} = \frac{e^{S_{ts}}}{\sum_{s' \le t} e^{S_{ts'}}} \text{ for } s \le t,
# \qquad W_{ts} = 0 \text{ for } s > t.$$

# %%
tril = torch.tril(torch.ones(T, T))
scores = torch.zeros(T, T)
scores = scores.masked_fill(tril == 0, float("-inf"))
wei = F.softmax(scores, dim=-1)
print(wei[:4, :4])
print("masked softmax agrees too:", torch.allclose(wei @ x, xbow, atol=1e-6))

# %% [markdown]
# Why the detour? Because now the scores can be anything. With all scores
# equal, every past position counts the same. With scores that depend on the
# data, a position can decide that some past characters matter more than
# others, and the softmax still turns any scores into weights that are
# positive and sum to 1 over the past. That is attention. Let us write the
# masked softmax for scores that come from two matrices, the *queries* $q$ and
# the *keys* $k$ (the next section says what they are):
#
# $$S = \text{scale} \cdot q k^\top, \qquad W = \text{softmax}(S + M), \qquad
# M_{ts} = \begin{cases} 0 & s \le t \\ -\infty & s > t. \end{cases}$$


# %% tags=["exercise"]
def attention_weights(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Exercise 3.2: causal attention weights, the masked softmax of scale * q @ k^T.

    q, k: (..., T, d) float32 (any number of leading batch dimensions). scale: a float.
    Returns (..., T, T) float32: row t is the softmax of scale * (q[t] . k[s]) over s = 0..t,
    with weight exactly 0 for s > t. Every row sums to 1.
    """
    raise NotImplementedError("Exercise 3.2: write attention_weights(); check it with: python -m babybitnet check 3")


# %%
zeros = torch.zeros(B, T, 16)
print("equal scores give the plain average:", torch.allclose(attention_weights(zeros, zeros, 1.0), wei))
w = attention_weights(torch.randn(B, T, 16), torch.randn(B, T, 16), 0.25)
print("rows sum to 1:", torch.allclose(w.sum(-1), torch.ones(B, T)), "| future weights:", w.triu(1).abs().max().item())

# %% [markdown]
# ## Self-attention: queries, keys and values
#
# Where do the scores come from? In *self*-attention, every position $t$ emits
# three vectors, each a learned linear map of its own input $x_t$:
#
# - a **query** $q_t = W_Q x_t$: what am I looking for?
# - a **key** $k_s = W_K x_s$: what do I contain?
# - a **value** $v_s = W_V x_s$: what do I pass on if someone attends to me?
#
# The score of position $s$ for position $t$ is the dot product $q_t \cdot k_s$:
# large when the key matches the query. The output at $t$ is the average of
# the values of the past, weighted by the masked softmax of the scores:
#
# $$\text{head}(x) = \text{softmax}\!\left(\frac{q k^\top}{\sqrt{d}} + M\right) v.$$
#
# Here $d$ is the *head size*, the length of $q_t$, $k_s$ and $v_s$.
#
# ### Why divide by $\sqrt{d}$?
#
# Suppose the entries of $q_t$ and $k_s$ are independent with mean 0 and
# variance 1, roughly what a freshly initialised network produces. Then
# $q_t \cdot k_s$ is a sum of $d$ such products, so its variance is $d$: the
# scores grow with the head size. Large scores make the softmax *saturate*:
# the largest score takes nearly all the weight and each position attends to a
# single other position, picked at random before any learning. Worse, a
# saturated softmax has gradients near 0 (a weight of $0.999$ barely moves
# when its score moves), so learning stalls. Dividing by $\sqrt{d}$ brings the
# variance of the scores back to 1, whatever $d$. Measured on random queries
# and keys:

# %%
g = torch.Generator().manual_seed(0)
print(" d    var(q.k)  var(q.k/sqrt(d))   mean largest weight: unscaled  scaled")
for d in (4, 16, 64, 256):
    q, k = torch.randn(1000, T, d, generator=g), torch.randn(1000, T, d, generator=g)
    raw = q @ k.transpose(-2, -1)
    top_raw = attention_weights(q, k, 1.0)[:, -1].max(-1).values.mean()  # last row: all T positions visible
    top_scaled = attention_weights(q, k, d**-0.5)[:, -1].max(-1).values.mean()
    print(f"{d:3d} {raw.var():10.1f} {(raw * d**-0.5).var():12.2f} {top_raw:26.2f} {top_scaled:8.2f}")

# %% [markdown]
# Without the scale, the scores' variance is $d$, and the largest of the
# $T = 8$ weights of the last row grows with $d$: 0.87 on average for
# $d = 64$, 0.94 for $d = 256$ (as the cell above printed them on a 2-core
# CPU). The weights become nearly one-hot. With the scale, the variance is 1
# and the largest weight stays at about 0.36 whatever $d$. A picture of one
# example, $d = 64$:

# %%
import matplotlib.pyplot as plt

d = 64
q, k = torch.randn(T, d, generator=g), torch.randn(T, d, generator=g)
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, scale, title in ((axes[0], 1.0, "without scale: saturated"), (axes[1], d**-0.5, r"scaled by $1/\sqrt{d}$")):
    im = ax.imshow(attention_weights(q, k, scale), cmap="viridis", vmin=0, vmax=1)
    ax.set_title(title)
    ax.set_xlabel("key position s")
    ax.set_ylabel("query position t")
fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
plt.show()

# %% [markdown]
# ## One head of self-attention
#
# Now the module. The three maps $W_Q, W_K, W_V$ are `nn.Linear` layers without
# bias, from the embedding size $C$ (`n_embd`) to the head size $d$. Keep the
# names `key`, `query` and `value`: the checker copies its own weights into
# your head by these names.


# %% tags=["exercise"]
class Head(nn.Module):
    """Exercise 3.3: one head of causal self-attention (write `forward`).

    Head(n_embd, head_size) holds three nn.Linear(n_embd, head_size, bias=False): key, query, value.
    forward(x): x (B, T, n_embd) float32 -> (B, T, head_size) float32, the values of positions 0..t
    averaged with the causal attention weights of the queries and keys, scaled by 1 / sqrt(head_size).
    """

    def __init__(self, n_embd: int, head_size: int):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.scale = head_size**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Exercise 3.3: write Head.forward(); check it with: python -m babybitnet check 3")


# %%
head = Head(n_embd=32, head_size=16)
x = torch.randn(B, T, 32)
out = head(x)
print("output:", tuple(out.shape))
x2 = x.clone()
x2[:, 5:] = torch.randn(B, T - 5, 32)  # change the future of position 4
print("positions 0..4 unchanged:", torch.allclose(head(x2)[:, :5], out[:, :5]))

# %% [markdown]
# Changing the inputs at positions 5 to 7 leaves the outputs at positions 0 to 4
# untouched: the head is causal. (The reference version is `Head` in
# `babybitnet/attention.py`; the GPT uses an equivalent `CausalSelfAttention`
# that computes all heads with one matmul.)
#
# ## A head on Tiny Shakespeare
#
# Let us see what a head learns. The model below is the bigram model with
# attention in the middle:
#
# 1. embed each character into $C = 32$ numbers (`nn.Embedding(V, 32)`);
# 2. add a **position** embedding (`nn.Embedding(block_size, 32)`). Attention by
#    itself does not know the order of the past: it sees a set of keys. The
#    position embedding tells it where each character sits;
# 3. one `Head` with head size 32;
# 4. a linear layer to the 65 logits of the next character.
#
# It has the interface of lesson 2 (`config.block_size`, `forward(idx, targets)`),
# so the same training loop trains it.

# %%
from dataclasses import dataclass

from babybitnet.data import load_dataset
from babybitnet.train import TrainConfig, train

tok, train_data, val_data = load_dataset()


@dataclass
class OneHeadConfig:
    vocab_size: int
    block_size: int = 32
    n_embd: int = 32


class OneHeadLM(nn.Module):
    def __init__(self, config: OneHeadConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.head = Head(config.n_embd, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))  # (B, T, n_embd)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.lm_head(self.head(self.embed(idx)))  # (B, T, vocab_size)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


torch.manual_seed(1337)
model = OneHeadLM(OneHeadConfig(tok.vocab_size))
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# As in lesson 2, we train on one CPU thread: the model is too small to gain
# from more, and a busy machine makes several threads much slower.

# %%
torch.set_num_threads(1)
cfg = TrainConfig(batch_size=32, max_iters=2000, lr=1e-2, eval_interval=250, eval_iters=50)
result = train(model, train_data, val_data, cfg, desc="one head")
print(f"val loss {result['final_val']:.4f} after {cfg.max_iters} steps, {result['seconds']:.1f} s in all")

# %% [markdown]
# The single head brings the validation loss below the bigram's 2.48: run on a
# 2-core CPU as a plain script (exercises solved), the cell
# above printed 2.379. (The code of Karpathy's *Let's build GPT* lecture
# records about 2.5 for its single head, with a context of 8 characters.) The
# model now uses the past.
#
# ## What does the head look at?
#
# Take 32 characters of validation text, run them through the trained model,
# and draw the head's attention weights. Row $t$ shows how much the prediction
# after character $t$ draws on each earlier character.

# %%
snippet = "I am a gentleman of Verona, sir,"
assert len(snippet) == model.config.block_size and snippet in tok.decode(val_data)
idx = torch.tensor([tok.encode(snippet)])
with torch.no_grad():
    h = model.embed(idx)
    wei = attention_weights(model.head.query(h), model.head.key(h), model.head.scale)[0]

labels = [{" ": "␣", "\n": "\\n"}.get(c, c) for c in snippet]
fig, ax = plt.subplots(figsize=(8, 7))
im = ax.imshow(wei, cmap="viridis")
ax.set_xticks(range(len(labels)), labels)
ax.set_yticks(range(len(labels)), labels)
ax.set_xlabel("key: the character attended to")
ax.set_ylabel("query: the current character")
ax.set_title("Attention weights of the trained head")
fig.colorbar(im, ax=ax, shrink=0.8)
plt.show()

# %% [markdown]
# Everything above the diagonal is 0: the future is masked. Below it, the
# weights are far from the plain average of step 1. The brightest entries sit
# on the diagonal: each character attends mostly to *itself*. That makes
# sense for this model: the head's output is all that the final linear layer
# sees, so the head has to pass on the current character, the bigram's
# information. The next entries to the left mix in the one or two characters
# before it. Averaged over many windows of validation text, by distance:

# %%
from babybitnet.data import get_batch

xb, _ = get_batch(val_data, 256, model.config.block_size, torch.Generator().manual_seed(0))
with torch.no_grad():
    h = model.embed(xb)
    w = attention_weights(model.head.query(h), model.head.key(h), model.head.scale)  # (256, T, T)
for dist in range(5):
    # w[:, t, t - dist] for the queries t = 8..31 (far enough from the start that every distance exists)
    on_dist = w.diagonal(offset=-dist, dim1=1, dim2=2)[:, -24:]
    print(f"weight on the character {dist} back: {on_dist.mean():.2f}")

# %% [markdown]
# On the 2-core CPU this lesson was written on, the cell printed 0.69 for the
# character itself, 0.18 for the one before, 0.06 for two back and almost
# nothing further: the head mostly mixes the last three characters, a learned
# cousin of a trigram model. Lesson 4 adds a *residual connection*,
# $x + \text{head}(x)$, which carries the current character around the head, so
# that the heads are free to look further back.
#
# Samples show what one head buys: still not English, but more word-like
# than the bigram's.

# %%
g = torch.Generator().manual_seed(1337)
idx = torch.tensor([tok.encode("\n")])
with torch.no_grad():
    for _ in range(300):
        logits, _ = model(idx[:, -model.config.block_size :])  # at most block_size characters of context
        nxt = torch.multinomial(F.softmax(logits[:, -1], dim=-1), 1, generator=g)
        idx = torch.cat([idx, nxt], dim=1)
print(tok.decode(idx[0]))

# %% [markdown]
# ## What we have
#
# - Averaging the past is a matrix multiplication with a lower-triangular
#   weight matrix: all positions at once, none seeing the future.
# - The same weights come out of a masked softmax of zero scores, and a
#   masked softmax of *data-dependent* scores $q k^\top / \sqrt{d}$ is
#   attention. The $1/\sqrt{d}$ keeps the scores' variance near 1 so the
#   softmax does not saturate.
# - One head of self-attention already beats the bigram.
#
# Lesson 4 runs several heads side by side and stacks attention with a small
# feed-forward network into a transformer block: the GPT.
#
# Check your exercises with:
#
# ```
# python -m babybitnet check 3
# ```
