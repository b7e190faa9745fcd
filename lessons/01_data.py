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
# # Lesson 1: from text to training batches
#
# By the end of this course you will have trained **babyBitNet**, a small GPT whose weights
# are all $-1$, $0$ or $+1$ (BitNet b1.58), and compared it with the same GPT in full
# precision. Both learn the same thing from the same data, so that is where we start:
# *what* does a language model learn, and *what exactly* do we feed it?
#
# In this lesson you will
#
# 1. read Tiny Shakespeare, the text every model in this course trains on;
# 2. turn characters into integers and back (a *tokenizer*);
# 3. split the text into a training part and a validation part;
# 4. cut random windows out of it: the *batches* a model trains on.
#
# There are four small exercises. Each one is followed by a cell that uses it, so you see
# at once whether it works; `python -m babybitnet check 1` grades them all at the end.

# %% [markdown]
# ## What a language model learns
#
# A language model gives a probability to the next token (for us: the next character)
# given the ones before it. By the chain rule of probability, that is enough to give a
# probability to a whole text $x_1, \dots, x_T$:
#
# $$p(x_1, \dots, x_T) = \prod_{t=1}^{T} p(x_t \mid x_1, \dots, x_{t-1}).$$
#
# Training makes real text likely. Products of many small numbers are awkward, so we
# minimise the average *negative log*-probability of each next token instead, the
# **cross-entropy loss**, measured in *nats* (natural logarithm):
#
# $$\mathcal{L}(\theta) = -\frac{1}{T} \sum_{t=1}^{T} \log p_\theta(x_t \mid x_{<t}).$$
#
# A model that knows nothing and gives each of $V$ characters the same probability
# $1/V$ has loss $\ln V$. Everything a model learns shows up as a loss below that.
#
# So the model needs the text as integers $x_t$, and many windows of them at once.
# That is this lesson.

# %% tags=["imports"]
import torch

from babybitnet.data import load_text

# %% [markdown]
# ## The text
#
# `load_text()` reads the copy of Tiny Shakespeare that ships with the package: about
# 40,000 lines from Shakespeare's plays, 1.1 million characters. Small enough to train on
# a laptop in minutes, big enough that a model must learn real structure (words,
# names, line breaks, who speaks when) to do well.

# %%
text = load_text()
print(f"{len(text):,} characters")
print(text[:250])


# %% [markdown]
# ## Exercise 1.1: the vocabulary
#
# We model **characters**, not words. The vocabulary is then tiny (you will count it in a
# moment), needs no training, and every string can be written with it. The price is
# length: a word takes several tokens, so the model must learn spelling too. Large models
# use sub-word tokens instead (GPT-2 has 50,257 of them); nothing in this course depends on
# that choice.
#
# The vocabulary is the list of distinct characters, **sorted**. Sorted, because a Python
# `set` has no fixed order, and we want the same text to give the same ids on every run
# and every machine.


# %% tags=["exercise"]
def build_vocab(text: str) -> list[str]:
    """Exercise 1.1: the distinct characters of `text`, sorted.

    Returns a list of one-character strings, each once, in increasing order (Python's
    order for strings: by Unicode code point). Example: build_vocab("hello") == ["e", "h", "l", "o"].
    """
    raise NotImplementedError("Exercise 1.1: write build_vocab(); check it with: python -m babybitnet check 1")


# %%
chars = build_vocab(text)
vocab_size = len(chars)
print(f"{vocab_size} distinct characters: {''.join(chars)!r}")

# %% [markdown]
# The first two are the newline `'\n'` and the space; the letters come after the
# punctuation, capitals before lower case.
#
# Not all characters are equally common. The picture shows how often each one appears.
# It also tells us what a model could reach by knowing only these frequencies and nothing
# about context: if character $c$ has frequency $p(c)$, always predicting that distribution
# gives the loss $H = -\sum_c p(c) \ln p(c)$, the *entropy* of the characters.

# %%
import math
from collections import Counter

import matplotlib.pyplot as plt


def show(c: str) -> str:
    """A visible stand-in for the invisible characters."""
    return {" ": "␣", "\n": "↵"}.get(c, c)


counts = Counter(text)
ranked = counts.most_common()
freqs = [n / len(text) for _, n in ranked]

fig, ax = plt.subplots(figsize=(12, 3.2))
ax.bar(range(len(ranked)), freqs, color="tab:blue")
ax.axhline(1 / vocab_size, color="gray", linestyle="--", label=f"a uniform guess: 1/{vocab_size} each")
ax.legend()
ax.set_xticks(range(len(ranked)), [show(c) for c, _ in ranked], fontsize=8)
ax.set_xlim(-1, len(ranked))
ax.set_ylabel("frequency")
ax.set_title(f"The {vocab_size} characters of Tiny Shakespeare, most frequent first")
plt.show()

uniform = math.log(vocab_size)
entropy = -sum(p * math.log(p) for p in freqs)
print(f"loss of a uniform guess:          ln {vocab_size} = {uniform:.2f} nats")
print(f"loss knowing only the frequencies:  H = {entropy:.2f} nats")

# %% [markdown]
# Space is the most common character, then `e`, `t`, `o`. Knowing only the frequencies
# already beats guessing; every model in this course will go well below both numbers by
# using the context.
#
# ## Exercise 1.2: a tokenizer
#
# A **tokenizer** turns text into a list of integer ids (*encode*) and back (*decode*).
# The id of a character is its position in the vocabulary, so we keep two lookup tables:
#
# - `itos` ("int to string"): a list, `itos[i]` is the character with id `i`;
# - `stoi` ("string to int"): a dict, `stoi[c]` is the id of character `c`.
#
# They are inverse to each other: `itos[stoi[c]] == c`, so `decode(encode(s)) == s`.


# %% tags=["exercise"]
class CharTokenizer:
    """Exercise 1.2: a character tokenizer over the vocabulary `chars`.

    `chars` is a list of distinct characters; the id of a character is its index in it.
    - `self.itos`: list[str], id -> character (a list with the same items as `chars`)
    - `self.stoi`: dict[str, int], character -> id
    - `encode(text)`: str -> list[int], the id of each character of `text`, in order
    - `decode(ids)`: list[int] -> str, the characters of the ids joined; `decode(encode(s)) == s`
    """

    def __init__(self, chars: list[str]):
        raise NotImplementedError(
            "Exercise 1.2: write CharTokenizer.__init__(); check it with: python -m babybitnet check 1"
        )

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError(
            "Exercise 1.2: write CharTokenizer.encode(); check it with: python -m babybitnet check 1"
        )

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError(
            "Exercise 1.2: write CharTokenizer.decode(); check it with: python -m babybitnet check 1"
        )


# %%
tok = CharTokenizer(chars)
ids = tok.encode("To be, or not to be")
print(ids)
print(repr(tok.decode(ids)))
assert tok.decode(tok.encode(text[:1000])) == text[:1000]

# %% [markdown]
# Now the whole text becomes one long 1-D tensor of ids. Its dtype is `torch.long`
# (64-bit integers): PyTorch wants that for indices, both to look up a token's vector
# in an embedding table and as the targets of the cross-entropy loss. At 8 bytes per
# character, the whole of Tiny Shakespeare takes about 9 MB.

# %%
data = torch.tensor(tok.encode(text), dtype=torch.long)
print(data.shape, data.dtype)
print(data[:20])


# %% [markdown]
# ## Exercise 1.3: training and validation text
#
# A model with enough parameters can memorise its training text. To see whether it
# learned something that *generalises*, we measure its loss on text it never trained on:
# the **validation** set. We keep the first 90 % of the text for training and the last
# 10 % for validation.
#
# Why one cut, and not a random 10 % of the characters or windows? Windows overlap: a
# window starting one character later is almost the same window. With a random split,
# near-copies of every validation window would be in the training data, and the
# validation loss would look better than it is.


# %% tags=["exercise"]
def train_val_split(data: torch.Tensor, train_frac: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 1.3: split a 1-D tensor of token ids into (train, val), in order.

    `train` is the first n = int(train_frac * len(data)) tokens (rounded down), `val`
    the rest. Both keep the dtype of `data`; torch.cat([train, val]) equals `data`.
    """
    raise NotImplementedError("Exercise 1.3: write train_val_split(); check it with: python -m babybitnet check 1")


# %%
train_data, val_data = train_val_split(data)
print(f"train: {len(train_data):,} tokens   val: {len(val_data):,} tokens")
print("the validation text starts with:")
print(tok.decode(val_data[:120].tolist()))

# %% [markdown]
# ## Exercise 1.4: random batches
#
# A model does not read the text from start to end. It learns from random **windows** of
# $T$ consecutive tokens ($T$ is the *block size*, the model's context length), many at
# once. Each window teaches it $T$ predictions at the same time: from the first token
# predict the second, from the first two predict the third, and so on.
#
# A **batch** stacks $B$ such windows into a 2-D integer tensor of shape $(B, T)$:
# row $b$ is one window. Its targets $y$ are the same windows started one token later
# in the text. With the token ids $d_0, \dots, d_{N-1}$ and a random start $s_b$ for each row:
#
# $$x_{b,t} = d_{s_b + t}, \qquad y_{b,t} = d_{s_b + t + 1}, \qquad 0 \le t < T.$$
#
# The last target of a window is $d_{s_b + T}$, which must exist: $s_b + T \le N - 1$.
# So the starts run from $0$ to $N - T - 1$, and there are $N - T$ of them.
#
# Why batches? A $(B, T)$ tensor lets the hardware make $B \cdot T$ predictions in one
# go, and averaging the loss over many windows gives a steadier gradient than one window.
#
# The optional `generator` makes the draws reproducible: the same seed gives the same
# batches, run after run. To draw the starts, use exactly
# `torch.randint(len(data) - block_size, (batch_size,), generator=generator)`:
# with the same seeded `generator`, your batches are then the same as
# `babybitnet.data.get_batch`'s, which the grader checks.


# %% tags=["exercise"]
def get_batch(
    data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 1.4: `batch_size` random windows of `data` and, for each, the window one token later.

    Returns (x, y), both of shape (batch_size, block_size) and the dtype of `data` (int64 here):
    x[b] = data[s : s + block_size] and y[b] = data[s + 1 : s + block_size + 1], where the
    starts s are drawn with torch.randint(len(data) - block_size, (batch_size,), generator=generator).
    """
    raise NotImplementedError("Exercise 1.4: write get_batch(); check it with: python -m babybitnet check 1")


# %%
g = torch.Generator().manual_seed(1337)
xb, yb = get_batch(train_data, batch_size=4, block_size=8, generator=g)
print("x =", xb, sep="\n")
print("y =", yb, sep="\n")
assert xb.shape == yb.shape == (4, 8)
assert torch.equal(xb[:, 1:], yb[:, :-1]), "y should be the same windows, one token later"

# %% [markdown]
# Each row holds $T = 8$ training examples. Spelled out for the first row: the model
# reads the context on the left and must predict the character on the right.

# %%
for t in range(8):
    context = tok.decode(xb[0, : t + 1].tolist())
    target = tok.decode([yb[0, t].item()])
    print(f"{context!r:>14}  ->  {target!r}")

# %% [markdown]
# The same batch as a picture: each $x$ row with its $y$ row below it. Under every input
# character sits the character that follows it in the text. The boxes show one of the
# 32 examples: the model reads the blue context and must predict the red target.

# %%
B, T = xb.shape
fig, ax = plt.subplots(figsize=(8, 5))
for b in range(B):
    for row, (name, ids, colour) in enumerate([("x", xb, "#dbe9f6"), ("y", yb, "#fde2cf")]):
        top = 2.6 * b + row
        for t in range(T):
            ax.add_patch(plt.Rectangle((t, top), 1, 1, facecolor=colour, edgecolor="white"))
            ax.text(t + 0.5, top + 0.5, show(tok.itos[int(ids[b, t])]), ha="center", va="center", fontsize=13)
        ax.text(-0.3, top + 0.5, f"{name}[{b}]", ha="right", va="center", fontsize=11, family="monospace")
t0 = 5
ax.add_patch(plt.Rectangle((0, 0), t0 + 1, 1, fill=False, edgecolor="tab:blue", linewidth=2.5))
ax.add_patch(plt.Rectangle((t0, 1), 1, 1, fill=False, edgecolor="tab:red", linewidth=2.5))
ax.set_xlim(-1.6, T)
ax.set_ylim(2.6 * B, -0.2)
ax.set_xticks([t + 0.5 for t in range(T)], [f"t={t}" for t in range(T)])
ax.set_yticks([])
ax.set_title(f"A batch: B={B} windows of T={T} tokens; each y row is its x row one token later")
for side in ("top", "right", "left", "bottom"):
    ax.spines[side].set_visible(False)
plt.show()

# %% [markdown]
# ## Summary
#
# - A language model learns $p(x_t \mid x_{<t})$ by minimising the cross-entropy loss, in nats;
#   a uniform guess scores $\ln V$.
# - Characters become ids with a sorted vocabulary and two lookup tables, `stoi` and `itos`.
# - The first 90 % of the text trains, the last 10 % validates: one cut, because windows overlap.
# - A batch is a pair of $(B, T)$ int64 tensors; $y$ is $x$ one token later, so each row holds
#   $T$ predictions.
#
# The package has the same pieces under the same names, which the next lessons use instead of
# pasting them again: `babybitnet.data.build_vocab`, `CharTokenizer` (which takes a whole text
# and builds its vocabulary itself), `train_val_split`, `get_batch`, and `load_dataset()`,
# which does this whole lesson in one call. Next, in lesson 2, the simplest model that can
# use these batches: a bigram model.
#
# ## Check your exercises
#
# In a terminal, from the repository folder:
#
# ```
# python -m babybitnet check 1
# ```
#
# It grades exercises 1.1 to 1.4 against the reference package on many random and edge-case
# inputs, and prints one line per exercise: `passed`, or what is wrong.
