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
# # Lesson 2: the bigram model
#
# A language model reads some text and gives a probability to every character
# that could come next. The simplest model that does this looks at **one**
# character only, the current one, and predicts the next from it: a *bigram*
# model ("bi" = two characters: the one we see and the one we predict).
#
# It is a weak model, but it is worth building carefully, because everything
# in it stays for the rest of the course:
#
# - a way to **score** a model: the average negative log-likelihood (the loss);
# - a **baseline** number: every later model has to beat the bigram's loss;
# - the neural network **interface**, `forward(idx, targets) -> (logits, loss)`
#   and `generate`, that the GPT and BitNet models share.
#
# We build the bigram model twice: first by counting, then as a neural network
# trained by gradient descent, and we will see that both land on the same answer.

# %% tags=["imports"]
import math

import torch
import torch.nn.functional as F
from torch import nn

from babybitnet.bigram import BigramConfig
from babybitnet.data import load_dataset

# %% [markdown]
# ## The data
#
# Lesson 1 built the tokenizer and the train/val split; `load_dataset` does both
# and gives the 65-character vocabulary and two long tensors of token ids.

# %%
tok, train_data, val_data = load_dataset()
V = tok.vocab_size
print(f"vocabulary: {V} characters, train: {len(train_data):,} tokens, val: {len(val_data):,} tokens")
print(repr(tok.decode(train_data[:60])))

# %% [markdown]
# ## Counting bigrams
#
# Row $i$ of a $V \times V$ table of counts says what followed character $i$ in
# the training text:
#
# $$\text{counts}[i, j] = \#\{t : x_t = i \text{ and } x_{t+1} = j\}.$$
#
# A text of $N$ tokens has $N - 1$ such pairs. A Python loop over the pairs is
# the obvious way to count them. It is fine on short inputs but slow on the
# million pairs of Tiny Shakespeare, unless it loops over plain Python ints
# (`tokens.tolist()`) into a list of lists. A vectorised version turns each pair
# $(i, j)$ into one number $i \cdot V + j$ and counts those numbers with
# `torch.bincount`.


# %% tags=["exercise"]
def count_bigrams(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Exercise 2.1: count how often each token follows each other token.

    tokens: (N,) int64 token ids in [0, vocab_size); N may be 0 or 1 (then there is no pair).
    Returns counts: (vocab_size, vocab_size) int64, counts[i, j] = number of t with
    tokens[t] == i and tokens[t + 1] == j.
    """
    ### BEGIN SOLUTION
    pair_ids = tokens[:-1] * vocab_size + tokens[1:]  # pair (i, j) -> one number i * V + j
    return torch.bincount(pair_ids, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)
    ### END SOLUTION


# %%
print(count_bigrams(torch.tensor([0, 1, 1, 0]), 2))  # "abba": pairs ab, bb, ba -> [[0, 1], [1, 1]]
counts = count_bigrams(train_data, V)
assert counts.sum() == len(train_data) - 1
for ij in counts.flatten().topk(5).indices.tolist():
    i, j = divmod(ij, V)
    print(f"{tok.decode([i, j])!r:6} {counts[i, j]:6,}")

# %% [markdown]
# The most common pairs are the ends and starts of words (`e` then a space, a
# space then `t`) and the `th` and `he` of "the". The whole table is easier to take in as a picture.
# The counts range from 0 to tens of thousands, so the colours use a
# logarithmic scale; white squares are pairs that never occur.


# %%
import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm


def show(c: str) -> str:
    """A character as an axis label: space and newline made visible."""
    return {" ": "␣", "\n": "\\n"}.get(c, c)


labels = [show(c) for c in tok.chars]
fig, ax = plt.subplots(figsize=(10, 10))
im = ax.imshow(counts.float().masked_fill(counts == 0, float("nan")), cmap="viridis", norm=LogNorm())
ax.set_xticks(range(V), labels, fontsize=6)
ax.set_yticks(range(V), labels, fontsize=6)
ax.set_xlabel("next character $x_{t+1}$")
ax.set_ylabel("current character $x_t$")
ax.set_title("How often each character follows each other one (train split)")
fig.colorbar(im, ax=ax, shrink=0.8, label="count")
plt.show()

# %% [markdown]
# The structure of English and of a play shows up. The bottom-right block (a
# lower-case letter followed by a lower-case letter) is dense, while a
# lower-case letter is almost never followed by a capital (the empty block at
# the bottom middle). Capitals are followed by capitals too, because the
# speakers' names are written in capitals (`GLOUCESTER:`). Punctuation is
# mostly followed by a space or a newline. Each row is already an answer, not
# yet normalised, to "what comes after this character?".
#
# ## From counts to probabilities
#
# Divide each row by its sum and it becomes a probability distribution over the
# next character:
#
# $$p(j \mid i) = \frac{\text{counts}[i, j]}{\sum_{j'} \text{counts}[i, j']}.$$

# %%
P = counts.float() / counts.sum(dim=1, keepdim=True)
print("every row sums to 1:", torch.allclose(P.sum(dim=1), torch.ones(V)))
row = P[tok.stoi["q"]]
print("after 'q':", {tok.chars[j]: round(p, 3) for j, p in enumerate(row.tolist()) if p > 0})

# %% [markdown]
# ## Scoring a model: the negative log-likelihood
#
# How good is this table? A good model gives high probability to the
# character that actually comes next. The probability the model gives to a
# whole text $x_1, \dots, x_N$ is the product of its predictions,
# $\prod_t p(x_{t+1} \mid x_t)$: the *likelihood*. Three changes make it a
# handy number:
#
# - **take the log.** A product of a million numbers below 1 underflows to 0 in
#   floating point; the log turns it into a sum, which does not. The log is
#   increasing, so the best model for one is the best for the other;
# - **average** over the $N - 1$ predictions, so texts of any length compare;
# - **negate**, so that lower is better, like any loss.
#
# $$\text{NLL} = -\frac{1}{N-1} \sum_{t=1}^{N-1} \log p(x_{t+1} \mid x_t).$$
#
# It is measured in *nats* (natural log). Two reference points: a model that is
# always sure and always right scores $-\log 1 = 0$; a model that knows nothing
# and guesses uniformly among the $V = 65$ characters scores
# $-\log \frac{1}{65} = \ln 65 \approx 4.17$ on any text. A model that puts
# probability 0 on a character that then occurs scores $-\log 0 = \infty$.


# %% tags=["exercise"]
def bigram_nll(tokens: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Exercise 2.2: average negative log-likelihood of a token sequence under a bigram table.

    tokens: (N,) int64 token ids, N >= 2. probs: (V, V) float32, row i = distribution of the next token after i.
    Returns a 0-dim float32 tensor: -(1 / (N - 1)) * sum over t of log probs[tokens[t], tokens[t + 1]]
    (natural log). It is inf when a pair of `tokens` has probability 0.
    """
    ### BEGIN SOLUTION
    return -probs[tokens[:-1], tokens[1:]].log().mean()
    ### END SOLUTION


# %%
uniform = torch.full((V, V), 1 / V)
print(f"uniform guessing: {bigram_nll(val_data, uniform).item():.4f}  (ln 65 = {math.log(65):.4f})")
print(f"counts, train:    {bigram_nll(train_data, P).item():.4f}")
print(f"counts, val:      {bigram_nll(val_data, P).item():.4f}")

# %% [markdown]
# On the training text the counted table scores about 2.45 nats per character,
# far better than uniform guessing's 4.17 (printed by the cell above, on the
# 2-core CPU this course was written on). No
# bigram table can do better on that text: the normalised counts are exactly
# the table that maximises its likelihood (for a table of probabilities, the
# maximum-likelihood estimate is the observed frequencies).
#
# But on the validation text the score is **infinite**. Some pair of
# characters occurs in the validation text and never in the training text, so
# the table gives it probability 0:

# %%
unseen = (counts[val_data[:-1], val_data[1:]] == 0).nonzero().flatten()
print(f"{len(unseen)} validation pairs never occur in train, e.g.:")
for t in unseen[:3].tolist():
    print(
        "   ", repr(tok.decode(val_data[max(t - 15, 0) : t + 2])), "-> the pair", repr(tok.decode(val_data[t : t + 2]))
    )

# %% [markdown]
# ## Smoothing
#
# One unseen pair makes the whole score infinite, and sampling could never
# produce that pair. The fix is to pretend we saw every pair a few more times:
# add a constant $k > 0$ to every count before normalising,
#
# $$p_k(j \mid i) = \frac{\text{counts}[i, j] + k}{\sum_{j'} \left(\text{counts}[i, j'] + k\right)}.$$
#
# This is *add-k* (for $k = 1$, Laplace) smoothing. Small $k$ barely changes
# frequent pairs and lifts the unseen ones from 0 to a small probability. Large
# $k$ pulls every row towards the uniform distribution. `bigram_probs(counts, k)`
# from the package computes $p_k$. Let us scan $k$:

# %%
from babybitnet.bigram import bigram_probs

ks = [0.001, 0.01, 0.1, 1, 10, 100, 1000]
nll_train, nll_val = [], []
for k in ks:
    Pk = bigram_probs(counts, k)
    nll_train.append(bigram_nll(train_data, Pk).item())
    nll_val.append(bigram_nll(val_data, Pk).item())
    print(f"k = {k:<6} train {nll_train[-1]:.4f}   val {nll_val[-1]:.4f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogx(ks, nll_train, "o-", label="train")
ax.semilogx(ks, nll_val, "o-", label="val")
ax.axhline(math.log(V), color="gray", ls=":", label="uniform, ln 65")
ax.set_xlabel("smoothing constant k")
ax.set_ylabel("NLL (nats per character)")
ax.legend()
plt.show()

# %% [markdown]
# Any $k > 0$ makes the validation loss finite. The train loss only grows with
# $k$ (we move away from the best table for the training text), while the
# validation loss is lowest for a moderate $k$ around 1 (2.482 in the table
# above, as printed on the 2-core CPU). With a million characters of training data the choice barely
# matters until $k$ gets large. We keep $k = 1$.
#
# ## Sampling from the counts
#
# A bigram table is also a *generator* of text: start with a character, draw
# the next one from its row with `torch.multinomial`, repeat from the character
# just drawn. `sample_bigrams` from the package does exactly that.

# %%
from babybitnet.bigram import sample_bigrams

P1 = bigram_probs(counts, k=1)
g = torch.Generator().manual_seed(1337)
print(tok.decode(sample_bigrams(P1, tok.stoi["\n"], 300, generator=g)))

# %% [markdown]
# It has the rhythm of the text: words of plausible length, line breaks,
# capitals, punctuation followed by a space. But hardly a real word comes out:
# the model forgets everything except the last character.
#
# ## The same model as a neural network
#
# Counting works only because the context is a single character: the table has
# $65^2$ cells. With 8 characters of context a table would need $65^9 \approx
# 2 \cdot 10^{16}$ cells, and almost all of them would never be seen. Neural
# networks replace counting with a parametrised function trained by gradient
# descent, and *that* scales to long contexts. Let us rebuild the bigram model
# that way, as a first neural network with the interface every later model
# keeps.
#
# The parameters are a $V \times V$ table of **logits** (unnormalised log
# probabilities); the softmax turns row $i$ into $p(\cdot \mid i)$:
#
# $$p(j \mid i) = \frac{e^{W_{ij}}}{\sum_{j'} e^{W_{ij'}}}.$$
#
# Looking up row $i$ of a table is what `nn.Embedding(V, V)` does: given token
# ids `idx` of shape (B, T), it returns the rows, logits of shape (B, T, V).
# The loss is the NLL again: `F.cross_entropy(logits, targets)` computes
# $-\frac1n \sum \log \text{softmax}(\text{logits})[\text{target}]$, our
# formula, without forming the probabilities (more stable). It wants the logits
# as (n, V) and the targets as (n,), so flatten the batch and time dimensions
# first.
#
# All logits start at 0, so the untrained model guesses uniformly and its loss
# is exactly $\ln 65$. `self.config` records the vocabulary size and the
# training window (`block_size`), so the GPT's training loop can train this
# model unchanged.


# %% tags=["exercise"]
class BigramLanguageModel(nn.Module):
    """Exercise 2.3: the bigram model as a neural network (write `forward`).

    forward(idx, targets=None): idx (B, T) int64 token ids; targets (B, T) int64 or None.
    Returns (logits, loss): logits (B, T, V) float32, row idx[b, t] of the table; loss = the mean
    cross-entropy of the logits against the targets (a 0-dim float32 tensor), or None without targets.
    """

    def __init__(self, vocab_size: int, block_size: int = 8):
        super().__init__()
        self.config = BigramConfig(vocab_size=vocab_size, block_size=block_size)
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)
        nn.init.zeros_(self.token_embedding_table.weight)  # all logits 0: uniform guessing to start

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        ### BEGIN SOLUTION
        logits = self.token_embedding_table(idx)  # (B, T, V)
        if targets is None:
            return logits, None
        B, T, V = logits.shape
        loss = F.cross_entropy(logits.view(B * T, V), targets.view(B * T))
        return logits, loss
        ### END SOLUTION

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, generator: torch.Generator | None = None):
        """Append max_new_tokens sampled tokens to idx (B, T); returns (B, T + max_new_tokens)."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -1:])  # only the last token matters to a bigram model
            probs = F.softmax(logits[:, -1, :], dim=-1)  # (B, V)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return idx


# %%
model = BigramLanguageModel(V, block_size=32)
x, y = train_data[:32].view(1, 32), train_data[1:33].view(1, 32)  # one window and its targets
logits, loss = model(x, y)
print("logits:", tuple(logits.shape), f"loss at the start: {loss.item():.4f} (ln 65 = {math.log(V):.4f})")

# %% [markdown]
# ## Training it
#
# `babybitnet.train.train` is the training loop of the whole course: it samples
# random windows of `block_size` tokens (`get_batch` from lesson 1), computes
# the loss, backpropagates, takes an AdamW step, and every `eval_interval`
# steps estimates the loss on both splits. A bigram model has one table of
# $65 \times 65 = 4225$ numbers and every position of a window is an
# independent example, so a high learning rate and a couple of thousand steps
# are enough.
#
# One practical point: we train on a single CPU thread. The model is
# tiny, so splitting its small matrix operations between threads costs about
# as much as it saves, and on a machine busy with other jobs the threads
# spend their time waiting for each other (PyTorch then gets many times
# slower, not a little).

# %%
from babybitnet.train import TrainConfig, train

torch.set_num_threads(1)
cfg = TrainConfig(batch_size=32, max_iters=2000, lr=0.05, eval_interval=100)
result = train(model, train_data, val_data, cfg, desc="bigram")
print(f"val loss {result['final_val']:.4f} after {cfg.max_iters} steps, {result['seconds']:.1f} s in all")

# %%
h = result["history"]
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(h["step"], h["train"], label="neural bigram, train")
ax.plot(h["step"], h["val"], label="neural bigram, val")
ax.axhline(bigram_nll(train_data, P).item(), color="C0", ls="--", lw=1, label="counting, train (k = 0)")
ax.axhline(bigram_nll(val_data, P1).item(), color="C1", ls="--", lw=1, label="counting, val (k = 1)")
ax.set_ylim(2.3, 4.3)
ax.set_xlabel("step")
ax.set_ylabel("loss (nats per character)")
ax.legend()
plt.show()

# %% [markdown]
# The loss starts at $\ln 65 \approx 4.17$ and is close to the counting
# model's level by the first evaluation, after 100 steps. The trained network
# *is* a bigram table: the softmax of its rows. Scored with `bigram_nll` on the
# whole of each split:

# %%
learned = F.softmax(model.token_embedding_table.weight.detach(), dim=-1)
for name, data, counted in (("train", train_data, P), ("val", val_data, P1)):
    print(f"{name}: learned {bigram_nll(data, learned).item():.4f}   counted {bigram_nll(data, counted).item():.4f}")

fig, axes = plt.subplots(1, 2, figsize=(12, 6))
for ax, table, title in ((axes[0], P1, "counted (k = 1)"), (axes[1], learned, "learned by gradient descent")):
    ax.imshow(table, cmap="Blues", norm=LogNorm(vmin=1e-4, vmax=1))
    ax.set_xticks(range(V), labels, fontsize=4)
    ax.set_yticks(range(V), labels, fontsize=4)
    ax.set_title(f"p(next | current), {title}")
plt.show()

# %% [markdown]
# The two tables look alike, and their losses agree to about 0.01 nats: run on
# a 2-core CPU as a plain script (exercises solved), the cell
# above printed a learned val loss of 2.487 against 2.482 for the counted
# table, and 2.462 on train against the minimum 2.452. That is the "bigram
# ~2.49" of Karpathy's *Let's build GPT* lecture. The small gap that remains is
# the price of training on small random batches with a fixed learning rate:
# each step follows the gradient of 1,024 random characters, not of the whole
# text, so the table keeps jittering around the best one. Where the pictures
# differ most is in the rows of rare characters (`$`, `&`, `X`, ...): with few
# counts, adding $k = 1$ to each of the 65 cells flattens the row (the pale
# stripes on the left), while the network, which adds no pretend counts,
# keeps them sharper.
#
# Samples from the network look like samples from the counts. With the same
# random seed they even start with the same characters, because the two
# tables are so close:

# %%
start = torch.full((1, 1), tok.stoi["\n"])
print(tok.decode(model.generate(start, 300, generator=torch.Generator().manual_seed(1337))[0]))

# %% [markdown]
# ## What we have
#
# - The **loss** of a language model is the average negative log-likelihood of
#   the next token: $\ln 65 \approx 4.17$ for guessing, about 2.45 (train) and
#   2.48 (val) for the best bigram table.
# - **Smoothing** keeps unseen pairs possible, so the validation loss stays
#   finite.
# - A neural network with an `nn.Embedding(V, V)` of logits, trained on that
#   loss, reaches the counting model's loss: gradient descent found the table
#   we could count. That matters because gradient descent still works when
#   counting cannot: the next lessons make the prediction depend on many
#   previous characters, starting with attention (lesson 3).
#
# The reference versions of this lesson's functions are in `babybitnet/bigram.py`.
# Check your exercises with:
#
# ```
# python -m babybitnet check 2
# ```
