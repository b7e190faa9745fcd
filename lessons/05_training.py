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
# # Lesson 5: training babyGPT
#
# Lesson 4 built babyGPT and found that, untrained, it guesses: its loss is
# about $\ln 65 \approx 4.17$, one of 65 characters at random. Training moves
# its 209,153 weights, a little at a time, in the direction that lowers the
# loss on the training text. This lesson writes that loop, then looks at it
# from every side:
#
# - one **training step**: forward, backward, update;
# - **measuring** the loss honestly, on text the model trains on and on text
#   it never sees, averaged over many batches;
# - **loss curves** and **samples**, to watch it learn;
# - **learning-rate schedules**: how big the steps are over time;
# - the **ladder**: how much each idea of lessons 2 to 4 lowers the loss.

# %% tags=["imports"]
import math
import time

import torch

from babybitnet.data import get_batch, load_dataset
from babybitnet.gpt import GPT
from babybitnet.presets import get_preset

torch.set_num_threads(1)  # tiny models: one thread is as fast, and never fights other programs for the cores

# %% [markdown]
# ## The data and the model
#
# Everything before this lesson comes from the package: the data of lesson 1,
# and the babyGPT of lesson 4 with the sizes of the seed project (the `seed`
# preset: context 32, width 64, 4 heads, 4 layers, batch 16, learning rate
# $10^{-3}$). A batch is 16 random windows of 32 characters, and the targets
# are the same windows shifted by one character.

# %%
tok, train_data, val_data = load_dataset()
model_config, train_config = get_preset("seed", "gpt", tok.vocab_size)
print(model_config)
print(
    f"batch {train_config.batch_size}, learning rate {train_config.lr}, {train_config.max_iters} steps in the full run"
)

torch.manual_seed(1337)
model = GPT(model_config)
g = torch.Generator().manual_seed(1337)  # our own random stream for the training batches
x, y = get_batch(train_data, train_config.batch_size, model_config.block_size, g)
logits, loss = model(x, y)
print(f"x {tuple(x.shape)}, logits {tuple(logits.shape)}, loss {loss.item():.3f} (ln 65 = {math.log(65):.3f})")

# %% [markdown]
# ## One training step
#
# The loss $\mathcal{L}(\theta)$ is a function of all the weights $\theta$.
# Its gradient $\nabla_\theta \mathcal{L}$ points where the loss grows
# fastest, so a small step against it lowers the loss. Plain gradient descent
# takes $\theta \leftarrow \theta - \eta \nabla_\theta \mathcal{L}$ with a
# learning rate $\eta$. We use **AdamW**, which rescales each weight's step by
# running averages of its gradient $g_t$ and squared gradient:
#
# $$m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
#   v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
#   \theta \leftarrow \theta - \eta \left(\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda \theta\right),$$
#
# where $\hat m_t, \hat v_t$ correct the averages' start at zero and
# $\lambda$ is the *weight decay*, a gentle pull of every weight towards 0.
# Because of the division by $\sqrt{\hat v_t}$ every weight moves by roughly
# $\eta$ per step, whatever the size of its gradient, which makes Adam forgiving.
#
# In PyTorch one step is four lines, always in this order:
#
# 1. `logits, loss = model(x, y)`: the forward pass, which records the graph of operations;
# 2. `optimizer.zero_grad(set_to_none=True)`: forget the previous step's gradients
#    (PyTorch *adds* new gradients to `.grad`, so without this every step would
#    use the sum of all past gradients);
# 3. `loss.backward()`: fill every weight's `.grad` with $\partial \mathcal{L} / \partial \theta$;
# 4. `optimizer.step()`: update the weights from their `.grad`.


# %% tags=["exercise"]
def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Exercise 5.1: one optimisation step on the batch (x, y).

    model(x, y) returns (logits, loss); x, y: (B, T) int64.
    Clear the old gradients (optimizer.zero_grad(set_to_none=True)), backpropagate the
    loss, take one optimizer step. Returns the loss of this batch (before the step)
    as a Python float.
    """
    raise NotImplementedError("Exercise 5.1: write train_step(); check it with: python -m babybitnet check 5")


# %% [markdown]
# Five steps on the *same* batch: the loss on that batch must go down.

# %%
optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr)
print([round(train_step(model, optimizer, x, y), 3) for _ in range(5)])

# %% [markdown]
# Now a hundred steps on fresh random batches, keeping every batch's loss:

# %%
batch_losses = []
for _ in range(100):
    x, y = get_batch(train_data, train_config.batch_size, model_config.block_size, g)
    batch_losses.append(train_step(model, optimizer, x, y))
print("losses of the last 10 batches:", [round(v, 2) for v in batch_losses[-10:]])

# %% [markdown]
# ## Measuring the loss honestly
#
# The loss of one batch is a poor measure of the model. First, it is
# **noisy**: 16 windows of 32 characters are 512 predictions, and some
# batches are simply easier than others. The losses above jump around from one
# batch to the next although the model barely changes between them. Let's
# look at that spread directly: the same model, 200 different batches.

# %%
import matplotlib.pyplot as plt

spread_g = torch.Generator().manual_seed(7)
with torch.no_grad():
    spread = torch.tensor([model(*get_batch(val_data, 16, 32, spread_g))[1].item() for _ in range(200)])
sd = spread.std().item()
print(f"200 batch losses: mean {spread.mean():.3f}, standard deviation {sd:.3f}")
for n in (1, 10, 200):
    print(f"  the mean of {n:3} batches is off by about {sd / math.sqrt(n):.3f}")

fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(spread.numpy(), bins=30)
ax.axvline(spread.mean().item(), color="k", linestyle="--", label="mean of 200 batches")
ax.set(xlabel="loss of one batch of 16 windows (val split)", ylabel="batches", title="One batch is a noisy measurement")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The mean of $n$ independent batch losses has standard deviation
# $\sigma / \sqrt{n}$: averaging 200 batches, as the seed project and "Let's
# build GPT" do, makes the estimate about 14 times more precise than one
# batch, precise enough to tell apart two models whose losses differ by a few
# hundredths.
#
# Second, the loss on the **training** text can keep going down because the
# model memorises that text. What we care about is text the model has never
# seen: the **validation** split, the last 10 % of the file, which training
# never touches. Watching both tells us whether the model learns or memorises
# (*overfits*: train loss falling while val loss rises).
#
# Two more details when measuring:
#
# - `model.eval()`: some layers behave differently in training. Dropout, for
#   one, zeroes random activations during training only. babyGPT has no
#   dropout, but nanoGPT's recipe does, and a measurement must see the whole
#   model. Switch back with `model.train()` afterwards, or the next training
#   steps would silently run without dropout.
# - `torch.no_grad()`: without it, every forward pass records the graph for a
#   backward pass that never comes: memory and time wasted.


# %% tags=["exercise"]
def mean_loss(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Exercise 5.2: the mean loss of `model` over `batches`, measured in eval mode without gradients.

    batches: a non-empty list of (x, y) pairs, each (B, T) int64; model(x, y) returns (logits, loss).
    Returns the plain mean of the batches' losses as a Python float. Runs the model in eval
    mode under torch.no_grad(), and leaves the model in the mode it was in before
    (train or eval).
    """
    raise NotImplementedError("Exercise 5.2: write mean_loss(); check it with: python -m babybitnet check 5")


# %% [markdown]
# We draw the evaluation batches once and keep them: then every measurement
# during training sees the same text, and the curves show changes of the
# model, not of the batches. (The package's `babybitnet.train.estimate_loss`
# draws new ones each time, from its own random generator; it averages
# more of them, so its estimate is precise anyway.)

# %%
eval_g = torch.Generator().manual_seed(42)
eval_batches = {
    split: [get_batch(data, 16, 32, eval_g) for _ in range(20)]
    for split, data in (("train", train_data), ("val", val_data))
}
print(
    {split: round(mean_loss(model, b), 4) for split, b in eval_batches.items()},
    "still in training mode:",
    model.training,
)

# %% [markdown]
# ## The training loop
#
# Everything together: 300 more steps, and every 50 steps the mean loss on
# both splits.

# %%
history = {"step": [], "train": [], "val": []}


def evaluate(step: int) -> None:
    history["step"].append(step)
    for split, batches in eval_batches.items():
        history[split].append(mean_loss(model, batches))
    print(f"step {step:4}: train {history['train'][-1]:.4f}, val {history['val'][-1]:.4f}")


t0 = time.perf_counter()
start = len(batch_losses)  # the 100 steps above
evaluate(start)
for step in range(start, start + 300):
    x, y = get_batch(train_data, train_config.batch_size, model_config.block_size, g)
    batch_losses.append(train_step(model, optimizer, x, y))
    if (step + 1) % 50 == 0:
        evaluate(step + 1)
print(f"300 steps with evaluations in {time.perf_counter() - t0:.1f} s on this machine")

# %%
fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(range(1, len(batch_losses) + 1), batch_losses, color="0.7", lw=0.8, label="one batch (what we train on)")
ax.plot(history["step"], history["train"], "o-", label="train split, mean of 20 batches")
ax.plot(history["step"], history["val"], "s-", label="val split, mean of 20 batches")
ax.axhline(math.log(65), color="k", ls=":", lw=1, label="uniform guessing, ln 65")
ax.set(xlabel="step", ylabel="loss (nats per character)", title="babyGPT's first 400 steps")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The batch losses (grey) scatter around the averaged curves. Early on, train
# and val are close: the model learns what all English text shares (spaces,
# common letters, which letters follow which) and has not yet had the time to
# memorise anything about the training text in particular.
#
# ## Sampling text
#
# To write, the model scores the next character after the context, we turn
# the logits into probabilities with a softmax, draw one character, append it
# and repeat (`GPT.generate`). A **temperature** $\tau$ divides the logits
# first, $p_i \propto e^{z_i / \tau}$: below 1 it sharpens the distribution
# towards the likeliest characters, above 1 it flattens it.

# %%
prompt = torch.tensor([tok.encode("\n")])
for temperature in (1.0, 0.5):
    out = model.generate(prompt, 200, temperature=temperature, generator=torch.Generator().manual_seed(0))
    print(f"--- temperature {temperature} ---")
    print(tok.decode(out[0]))

# %% [markdown]
# After 400 steps it has found spaces, line breaks, capitals after a line
# break and a few short common words: a start. The full run of the seed project is
# 5000 steps.
#
# ## Training longer with the package
#
# `babybitnet.train.train(model, train_data, val_data, config)` is this loop
# with a few additions: a learning-rate schedule (next section), gradient
# clipping if asked, a progress bar, timing, and an estimate of the loss on
# both splits every `eval_interval` steps from `eval_iters` fresh batches
# drawn from a random generator of its own, so that evaluating never changes
# which batches the model trains on. It makes a new AdamW optimizer. Let's
# continue our model with it for 300 more steps (with fewer evaluation batches
# than the full run, to stay quick):

# %%
from dataclasses import replace

from babybitnet.train import train

more = replace(train_config, max_iters=300, eval_interval=100, eval_iters=10)
result = train(model, train_data, val_data, more, device="cpu", progress=False)
h = result["history"]
print(f"{result['ms_per_step']:.1f} ms per step on this machine; val loss now {result['final_val']:.4f}")

fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(history["step"], history["val"], "s-", label="val: our loop")
ax.plot([400 + s for s in h["step"]], h["val"], "s-", label="val: babybitnet.train.train")
ax.plot([400 + s for s in h["step"]], h["train"], "o--", label="train: babybitnet.train.train")
ax.set(xlabel="step", ylabel="loss (nats per character)", title="700 steps of babyGPT")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()
out = model.generate(prompt, 200, temperature=1.0, generator=torch.Generator().manual_seed(0))
print(tok.decode(out[0]))

# %% [markdown]
# The whole seed-size run (5000 steps, 200 evaluation batches) is one command:
# `make run` trains babyGPT and babyBitNet side by side with the `seed` preset
# on the CPU and writes their loss curves and a table to `runs/seed/`; it
# takes a few minutes per model on a CPU. `python -m babybitnet train
# --model gpt --out runs/gpt.pt` trains babyGPT alone and saves it, and
# `python -m babybitnet sample runs/gpt.pt` writes with it.
#
# ## Learning-rate schedules
#
# A constant learning rate is a compromise. Early in training the weights are
# far from good ones and big steps get there faster; late in training the
# steps' noise (each batch pulls in a slightly different direction) keeps the
# weights bouncing around a minimum instead of settling into it, and smaller
# steps help. Schedules change $\eta$ over the run:
#
# - **constant**: $\eta_t = \eta$. The seed project uses it.
# - **warm-up**: over the first $w$ steps grow linearly,
#   $\eta_t = \eta\,\frac{t + 1}{w}$. Adam's first steps, with its averages
#   barely started, are erratic; small steps keep them harmless.
# - **cosine decay** (nanoGPT and most LLMs): after the warm-up, half a cosine
#   from $\eta$ down to $\eta_{\min}$ at the last step $N$:
#
# $$\eta_t = \eta_{\min} + \tfrac{1}{2}\left(1 + \cos(\pi p)\right)(\eta - \eta_{\min}),
#   \qquad p = \min\!\left(\max\!\left(\frac{t - w}{\max(N - w,\,1)},\, 0\right),\, 1\right).$$
#
# - **two-stage** (BitNet b1.58's training recipe): full $\eta$ for the first
#   half, then a sudden drop (to $\eta/2$ by default) followed by a cosine
#   decay. We will meet it again with the ternary model.
#
# `babybitnet.train.lr_at(step, config)` computes all three, with one function
# per schedule: `constant_lr`, `cosine_lr` and `two_stage_lr`. Write the cosine
# one, `cosine_lr`, with the package's arguments.


# %% tags=["exercise"]
def cosine_lr(step: int, max_iters: int, lr: float, min_lr: float = 0.0, warmup_iters: int = 0) -> float:
    """Exercise 5.3: the learning rate at optimizer step `step` (0-based) of a cosine schedule.

    step < warmup_iters: linear warm-up, lr * (step + 1) / warmup_iters.
    Otherwise: min_lr + 0.5 * (1 + cos(pi * p)) * (lr - min_lr), with the progress
    p = (step - warmup_iters) / max(max_iters - warmup_iters, 1) clipped to [0, 1]
    (so steps at or past max_iters get min_lr). Returns a Python float.
    """
    raise NotImplementedError("Exercise 5.3: write cosine_lr(); check it with: python -m babybitnet check 5")


# %% [markdown]
# Your schedule against the package's (`lr_at` calls `babybitnet.train.cosine_lr`
# for `schedule="cosine"`), and the three schedules of `lr_at` over a 5000-step run:

# %%
from babybitnet.train import TrainConfig, lr_at

steps = range(5000)
schedules = {
    name: TrainConfig(max_iters=5000, lr=1e-3, schedule=name, warmup_iters=100, min_lr=1e-4)
    for name in ("constant", "cosine", "two_stage")
}
mine = [cosine_lr(s, 5000, 1e-3, 1e-4, 100) for s in steps]
print(
    "cosine_lr equals lr_at at every step:",
    all(math.isclose(m, lr_at(s, schedules["cosine"])) for s, m in zip(steps, mine, strict=True)),
)

fig, ax = plt.subplots(figsize=(8, 3.5))
for name, cfg in schedules.items():
    ax.plot(steps, [lr_at(s, cfg) for s in steps], label=f"lr_at, {name}")
ax.plot(steps[::100], mine[::100], "k.", label="your cosine_lr")
ax.set(xlabel="step", ylabel="learning rate", title="Schedules with 100 warm-up steps, lr 1e-3, min_lr 1e-4")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Where the loss goes as the model grows
#
# Karpathy's video "Let's build GPT" builds this model one idea at a time and
# reports the validation loss after each (block size 8, width 32, batch 32,
# AdamW at $10^{-3}$ for 5000 steps, loss averaged over 200 batches). The
# commit messages of his `ng-video-lecture` repository give about 2.49 for the
# bigram model, about 2.5 for one attention head, 2.28 for multi-head
# attention, 2.24 for the block (attention and feed-forward) and 2.06 with
# LayerNorm.
#
# `babybitnet/experiments/ladder.py` rebuilds that ladder from the parts of this package
# and trains each rung with `babybitnet.train.train`, with the same settings,
# the same seed and the same batches:
#
# | rung | model |
# |---|---|
# | bigram | lesson 2's `BigramLanguageModel`: a table of next-character logits |
# | + one attention head | token and position embeddings, one `Head` of size 32, `lm_head` |
# | + multi-head attention | `MultiHeadAttention`: 4 heads of 8, with the output projection |
# | + feed-forward (MLP) | the `MLP` (32 -> 128 -> 32) after the attention, no residual |
# | + blocks with residuals | 3 blocks of $x + \text{attn}(x)$, $x + \text{MLP}(x)$, no norm |
# | + RMSNorm: babyGPT | the pre-norm blocks and the final norm: `GPT` with 3 layers |
#
# All start from PyTorch's default initial weights, as in the video (the
# bigram starts from all-zero logits). Our rungs differ from Karpathy's in
# small ways: his multi-head rung had no output projection yet, his first
# feed-forward layer was not 4 times wider, he used LayerNorm, and our
# babyGPT scales attention by $1/\sqrt{\text{head size}}$. The full run,
# measured on a 2-core CPU with `python -m babybitnet ladder` (5000 steps per
# rung, torch 2.13 with 2 threads, 83 s in all; the seconds include the
# evaluations, and other jobs were sharing the machine):
#
# | rung | parameters | train loss | val loss | seconds |
# |---|---:|---:|---:|---:|
# | bigram (lookup table) | 4,225 | 2.5175 | 2.5407 | 2.1 |
# | + one attention head | 7,553 | 2.3820 | 2.4007 | 6.6 |
# | + multi-head attention | 8,609 | 2.2511 | 2.2789 | 13.2 |
# | + feed-forward (MLP) | 16,961 | 2.1558 | 2.1992 | 15.3 |
# | + blocks with residuals | 41,921 | 1.9837 | 2.0712 | 18.6 |
# | + RMSNorm: babyGPT | 42,145 | 1.9687 | 2.0524 | 24.1 |
#
# Every idea lowers the validation loss, and our numbers land close to
# Karpathy's. Two things to notice. The bigram is not done learning: starting
# from all-zero logits, 5000 steps at $10^{-3}$ do not reach the table that
# lesson 2 counted. And the largest drops come from the first look at the
# context (one head) and from the residual blocks, which make the model deep
# (3 blocks) and still trainable; the norm adds a little on top at this depth,
# and matters more the deeper the model, as lesson 4's 24-block experiment
# showed. The gap between train and val loss grows with the model: the bigger
# models start to learn things about the training text that do not carry over
# to the rest of the play. (`python -m babybitnet ladder --init gpt` starts
# every rung from the GPT's small initial weights instead, normal with std
# 0.02: try it and see which rungs suffer without a norm.)
#
# Here is a shortened ladder, live: 200 steps per rung with 10 evaluation
# batches (about 10 s of CPU, to keep the lesson within a minute; the full
# table above is `python -m babybitnet ladder`). At 200 steps the models are
# far from trained, so this shows how fast each rung learns more than where it
# ends; the full table above shows where they end.

# %%
from babybitnet.course import show_markdown
from babybitnet.experiments.ladder import ladder, markdown_table

short = ladder(iters=200, device="cpu", eval_iters=10, progress=False)
show_markdown(markdown_table(short))

fig, ax = plt.subplots(figsize=(8, 4))
for r in short["rungs"].values():
    ax.plot(r["history"]["step"], r["history"]["val"], "o-", label=r["title"])
ax.set(xlabel="step", ylabel="val loss", title="The ladder, 200 steps per rung")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What we have
#
# - A training step is forward, `zero_grad`, `backward`, `step`; AdamW moves
#   every weight by about the learning rate per step.
# - A loss estimate averages many batches ($\sigma/\sqrt{n}$), in eval mode
#   and without gradients, on both splits: the val split tells us whether the
#   model generalises.
# - Schedules shape the learning rate over the run: warm-up, then cosine decay
#   (or BitNet's two stages).
# - Each idea of lessons 2 to 4 lowers the loss; the ladder measures by how
#   much with one command, `python -m babybitnet ladder`.
#
# Next, the idea of the whole course: the same model with ternary weights.
# Check your exercises with:
#
# ```
# python -m babybitnet check 5
# ```
