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
# # Lesson 15: Reinforcement learning on ternary weights: GRPO
#
# Everything so far trained a model to **imitate**: lesson 5's loss rewards
# the model for giving the next character of the text a high probability.
# That is how a language model learns the language. But a model that imitates
# does not learn to *get things right*; it learns to sound like its data, and
# its mistakes are never pointed out to it, because it is never asked to
# answer on its own. The later stages of a large model's life (DeepSeekMath,
# DeepSeek-R1, the reasoning models) add **reinforcement learning**: the model
# writes answers itself, a program or a person scores each one with a
# **reward**, and training makes the well-scored answers more likely.
# Where the reward can be computed exactly (a maths answer checked against
# the solution, a program run against its tests) no human labels are needed.
#
# This lesson builds **GRPO** (group relative policy optimisation, from the
# DeepSeekMath paper, Shao et al. 2024), the method behind DeepSeek-R1, for
# babyGPT and babyBitNet, and asks the seed project's question once more:
# *does the ternary model learn from rewards as fast and as far as the
# full-precision one?* A babyBitNet has only three values per weight; RL
# nudges a policy by small steps. Do those steps survive the rounding?
#
# The plan: a task with an exact reward, the two pieces of GRPO (the group
# advantage, exercise 15.1; the clipped objective with its KL penalty,
# exercise 15.2), a live run on the CPU, and a three-seed comparison.

# %% tags=["imports"]
import matplotlib.pyplot as plt
import torch

torch.set_num_threads(1)  # tiny models: one thread is as fast, and never fights other programs for the cores

# %% [markdown]
# ## 1. A task with an exact reward
#
# Our models are far too small for arithmetic word problems, so the task is
# one a tiny character-level model can learn in seconds and a program can
# score exactly: **reverse a string of six letters**. A prompt is six random
# letters from `abcdefgh` and the separator `>`; the right completion is the
# letters reversed and the end marker `.`:
#
# ```
# cabdeh>hedbac.
# ```
#
# The answer's $j$-th letter is the prompt's $(5 - j)$-th: a fixed pattern
# of attention, which a two-layer model finds quickly. (Two-digit addition
# with its carries takes such a model thousands of supervised steps: too
# slow for a lesson.) The reward gives partial credit: the fraction of the
# answer's positions that hold the right letter, divided by the longer of
# the answer and the right one, so an answer that never stops is penalised
# too. Partial credit matters for GRPO, as we will see: it gives the answers
# to one prompt *different* rewards.

# %%
from babybitnet import grpo as G

tok = G.tokenizer()
print(f"vocabulary: {''.join(tok.chars)!r} ({tok.vocab_size} characters)")
prompts = G.make_prompts(3, torch.Generator().manual_seed(0))
for p in prompts:
    print(f"{p}{G.target(p)}")
p = prompts[0]
for answer in (G.target(p), G.target(p)[:3] + "aaa.", G.target(p)[:-1] + "ab.", "."):
    print(f"reward({p!r}, {answer!r}) = {G.reward(p, answer):.3f}")

# %% [markdown]
# ## 2. The group advantage
#
# Policy-gradient methods make an answer $o$ more likely in proportion to its
# **advantage**: how much better it did than expected. PPO, the classic,
# learns a second network (a value function) to say what is expected. GRPO
# does without: for each prompt $q$ it samples a **group** of $G$ answers
# $o_1, \dots, o_G$ from the current policy, scores them, and compares each to
# its own group:
#
# $$\hat A_i = \frac{r_i - \operatorname{mean}(r_1, \dots, r_G)}{\operatorname{std}(r_1, \dots, r_G) + \epsilon}.$$
#
# The group's mean is the baseline (what the model gets on this prompt,
# typically), and dividing by the group's spread puts easy and hard prompts
# on the same scale. Every token of answer $i$ gets the same $\hat A_i$. Two
# consequences:
#
# - The advantages of a group sum to zero: what one answer gains, the others
#   lose. Better-than-average answers are pushed up, worse ones down.
# - A group whose rewards are **all equal** teaches nothing: no answer was
#   better than another. Its advantages are exactly $0$ (the formula would give
#   $0 / \epsilon$, and rounding in the mean could make that a tiny non-zero
#   number: set it to $0$ explicitly). This is why a 0/1 reward on a task the
#   model never solves gives no signal at all, and why our reward gives
#   partial credit.
#
# Use the population standard deviation (divide by $G$: `correction=0` in
# PyTorch), so that each group's advantages have mean $0$ and standard
# deviation $1$ (up to $\epsilon$).


# %% tags=["exercise"]
def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Exercise 15.1: each completion's reward relative to its group.

    rewards: (P, G) float tensor, one row per prompt, one column per sampled completion.
    Returns a (P, G) tensor of the same dtype: (r - row mean) / (row std + eps), with the
    population std (correction=0). A row whose rewards are all exactly equal gets 0 everywhere.
    """
    ### BEGIN SOLUTION
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, correction=0)
    adv = (rewards - mean) / (std + eps)
    same = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    return torch.where(same, torch.zeros_like(adv), adv)
    ### END SOLUTION


# %% [markdown]
# Yours against the package's `babybitnet.grpo.group_advantages` (which `grpo`
# calls every step), on three groups of four: one with a spread, one all
# wrong, one all right:

# %%
rewards = torch.tensor([[1.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
mine = group_advantages(rewards)
print(mine)
print("equals the package's:", torch.allclose(mine, G.group_advantages(rewards)))

# %% [markdown]
# ## 3. The clipped objective, and the leash
#
# With the advantages fixed, GRPO takes a few optimizer steps on the same
# samples. Write $\pi_\theta$ for the policy being trained, $\pi_{\text{old}}$
# for the one that sampled the answers (the policy at the start of this
# round), and for token $t$ of answer $i$
#
# $$\rho_{i,t} = \frac{\pi_\theta(o_{i,t} \mid q, o_{i,<t})}{\pi_{\text{old}}(o_{i,t} \mid q, o_{i,<t})}
# = \exp\big(\log \pi_\theta - \log \pi_{\text{old}}\big).$$
#
# The objective to **maximise** (DeepSeekMath's equation 3) is
#
# $$J(\theta) = \frac{1}{G} \sum_{i=1}^{G} \frac{1}{|o_i|} \sum_{t=1}^{|o_i|} \Big[
# \min\big(\rho_{i,t} \hat A_i,\ \operatorname{clip}(\rho_{i,t}, 1 - \varepsilon, 1 + \varepsilon)\, \hat A_i\big) -
# \beta\, \mathbb{D}_{i,t} \Big].$$
#
# - **The ratio times the advantage** is the policy gradient: its gradient
#   at $\rho = 1$ is $\hat A_i \nabla \log \pi_\theta(o_{i,t})$, so a good
#   answer's tokens become more likely, a bad one's less.
# - **The clip** (from PPO) stops the update from running too far on one
#   batch: once $\rho$ has moved beyond $1 \pm \varepsilon$ in the direction the
#   advantage wants, the clipped term is constant and the $\min$ picks it, so
#   its gradient is $0$. In the other direction the $\min$ keeps the unclipped
#   term: a move the wrong way is always corrected.
# - **The KL penalty** keeps the policy near a frozen **reference** model
#   $\pi_{\text{ref}}$ (here: the model after its warm-up), so that it does
#   not drift into degenerate text that happens to score. GRPO uses the
#   unbiased, always non-negative estimator ("k3", Schulman 2020), with
#   $d = \log \pi_{\text{ref}} - \log \pi_\theta$:
#
# $$\mathbb{D}_{i,t} = \frac{\pi_{\text{ref}}}{\pi_\theta} - \log \frac{\pi_{\text{ref}}}{\pi_\theta} - 1
# = e^{d} - d - 1 \ \ge 0,$$
#
#   which is $0$ exactly where $\pi_\theta = \pi_{\text{ref}}$.
#
# $|o_i|$ counts the answer's own tokens: a `mask` marks them (the tokens up
# to the end marker; what the sampler wrote after it is not part of the
# answer). The loss to minimise is $-J$. The log-probabilities come in as
# $(N, T)$ tensors, one row per answer ($N = P \cdot G$), the advantages as
# $(N,)$.


# %% tags=["exercise"]
def grpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.04,
) -> torch.Tensor:
    """Exercise 15.2: GRPO's loss, minus the objective J, a 0-dim tensor.

    logp_new, logp_old, logp_ref: (N, T) float tensors, the log-probs of the sampled tokens under
    the policy being trained (with gradient), the policy that sampled them, and the reference.
    advantages: (N,) float, one per completion. mask: (N, T), 1 (or True) for the completion's
    tokens, 0 for the others. Per token: ratio = exp(new - old), surrogate = min(ratio * A,
    clip(ratio, 1 - clip_eps, 1 + clip_eps) * A), KL = exp(ref - new) - (ref - new) - 1; average
    surrogate - kl_coef * KL over each completion's masked tokens (a completion with none counts
    as 0), then over the completions, and return minus that.
    """
    ### BEGIN SOLUTION
    mask = mask.to(logp_new.dtype)
    adv = advantages.to(logp_new.dtype).unsqueeze(-1)
    ratio = torch.exp(logp_new - logp_old)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    d = logp_ref - logp_new
    kl = torch.exp(d) - d - 1
    per_completion = ((surrogate - kl_coef * kl) * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
    return -per_completion.mean()
    ### END SOLUTION


# %% [markdown]
# Yours against the package's `babybitnet.grpo.grpo_loss` on random
# log-probabilities, and the shape of one token's objective as the ratio
# moves (no KL): flat beyond $1 + \varepsilon$ for a good answer, beyond
# $1 - \varepsilon$ for a bad one, so there the gradient is zero.

# %%
gen = torch.Generator().manual_seed(0)
new, old, ref = (torch.randn(6, 7, generator=gen) * 0.3 - 1 for _ in range(3))
adv = torch.randn(6, generator=gen)
mask = (torch.rand(6, 7, generator=gen) < 0.8).float()
print(f"yours {grpo_loss(new, old, ref, adv, mask).item():.6f}", end=", ")
print(f"package {G.grpo_loss(new, old, ref, adv, mask).item():.6f}")

ratios = torch.linspace(0.3, 1.8, 301)
fig, ax = plt.subplots(figsize=(8, 3.2))
for a, color in [(1.0, "C2"), (-1.0, "C3")]:
    logp = torch.log(ratios).unsqueeze(1)  # old = 0, so the ratio is exp(logp)
    obj = [-grpo_loss(lp[None], torch.zeros(1, 1), lp[None], torch.tensor([a]), torch.ones(1, 1)).item() for lp in logp]
    ax.plot(ratios, obj, color=color, label=f"advantage {a:+g}")
for x in (0.8, 1.2):
    ax.axvline(x, color="0.6", linestyle=":")
ax.set(xlabel=r"ratio $\rho = \pi_\theta / \pi_{old}$", ylabel="objective of one token")
ax.set_title(r"The clip, $\varepsilon = 0.2$")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. A run you can watch
#
# The whole method, from `babybitnet/grpo.py`:
#
# 1. **Warm-up** (`warmup`): a short supervised training on correct examples,
#    next-token loss on the answer's tokens. It teaches the format (six
#    letters, then `.`); we stop it early, after 60 steps, so that the model
#    is still mostly wrong and there is something left for RL to do.
# 2. **GRPO** (`grpo`): every step draws 16 fresh prompts, samples 8 answers
#    to each at temperature 1 (`sample`, one batch through `generate` with
#    the KV cache), scores them, computes `group_advantages`, and takes two
#    AdamW steps on `grpo_loss` (the first at $\rho = 1$; the clip matters on
#    the second). The reference is the model as it left the warm-up.
#
# The same for babyGPT and babyBitNet (two layers, 32 wide: smaller than the
# seed's model; the answer is only seven tokens). The babyBitNet's policy
# trains its latent weights through BitLinear's straight-through estimator,
# exactly as in lesson 8: RL is just another loss to its optimizer. One seed
# each, 60 GRPO steps; the reward is that of the sampled answers, so it is
# noisy from step to step.

# %%
import time

from babybitnet.presets import build_model

TINY = {"bias": False, "n_layer": 2, "n_embd": 32, "n_head": 4, "block_size": 16}
held_out = G.make_prompts(64, torch.Generator().manual_seed(123))
t0 = time.perf_counter()
demo = {}
for kind in ("gpt", "bitnet"):
    model, _ = build_model("recipe", kind, tok.vocab_size, TINY)
    g = torch.Generator().manual_seed(0)
    G.warmup(model, 60, generator=g)
    before = G.evaluate(model, held_out, torch.Generator().manual_seed(5))
    history = G.grpo(model, 60, lr=2e-3, generator=g)
    after = G.evaluate(model, held_out, torch.Generator().manual_seed(5))
    demo[kind] = history
    print(
        f"{kind:6}: held-out reward {before['reward']:.3f} after the warm-up -> {after['reward']:.3f} after GRPO "
        f"(exactly right: {before['exact']:.0%} -> {after['exact']:.0%}), GRPO took {history['seconds']:.0f} s"
    )
print(f"({time.perf_counter() - t0:.0f} s in all)")
ids = torch.tensor([tok.encode(p) for p in held_out[:4]])
completions, _ = G.sample(model, ids, 1, G.LENGTH + 1, torch.Generator().manual_seed(0))
for p, c in zip(held_out[:4], completions, strict=True):
    text = tok.decode(c)
    print(f"babyBitNet: {p}{text:8} reward {G.reward(p, text):.2f}   (right: {G.target(p)})")

# %%
fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(12, 3.6))
for kind, color, label in [("gpt", "0.35", "babyGPT"), ("bitnet", "C0", "babyBitNet")]:
    ax.plot(demo[kind]["reward"], color=color, label=label)
    ax_kl.plot(demo[kind]["kl"], color=color, label=label)
ax.set(xlabel="GRPO step", ylabel="mean reward of the samples", ylim=(0, 1), title="Reward (one seed, CPU)")
ax_kl.set(xlabel="GRPO step", ylabel="KL to the reference (per token)", title="How far the policy moved")
for a in (ax, ax_kl):
    a.grid(alpha=0.3)
    a.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The reward climbs from the warm-up's level with no label but the reward,
# and the KL shows the policy moving away from the reference as it does.
# Look at where each model starts and when its climb begins: babyBitNet
# leaves the same warm-up lower, and its climb starts later. One seed does
# not say by how much; the study below does.
#
# ## 5. Three seeds: does the ternary policy keep up?
#
# `babybitnet.experiments.grpo.grpo_study` runs it over three seeds for
# three models, each with the same 60 supervised steps and then 150 GRPO
# steps: babyGPT, babyBitNet, and a **babyBitNet fine-tuned from a babyGPT**
# (30 steps as babyGPT, then lesson 14's `to_bitnet` and 30 steps with the
# quantization strength $\lambda$ rising over the first 15 of them, then GRPO
# as a ternary model). The same GRPO settings for all three (learning rate
# 2e-3, $\varepsilon = 0.2$, $\beta = 0.04$, 16 prompts of 8 samples, two
# updates per batch), not tuned per model. Reward of 4 samples per prompt on 128 held-out prompts, before and
# after GRPO, mean $\pm$ standard deviation over the seeds:

# %%
from babybitnet.course import show_markdown
from babybitnet.experiments import grpo as grpo_study
from babybitnet.experiments.study import measured
from babybitnet.runtime import describe

study = measured("grpo")
print(f"`{study['command']}`\non {describe(study['machine'])}\n")
show_markdown(grpo_study.markdown_table(study))
fig, ax = plt.subplots(figsize=(8, 4))
grpo_study.plot_reward(study, None, ax=ax)
fig.tight_layout()
plt.show()

# %% [markdown]
# What it says, for this task and this size:
#
# - **As far: yes.** All three end at the same place, a reward of 0.98 and
#   about 90% of the held-out answers exactly right (at temperature 1); the
#   differences between the models are within the spread between seeds.
#   The task has a ceiling, and the ternary policies reach it too.
# - **As fast: no.** babyGPT reaches a reward of 0.9 in about 40 GRPO steps;
#   babyBitNet needs about 67, the fine-tuned babyBitNet about 60, each
#   $\pm 7$ over the seeds. The curves show where the time goes: the
#   ternary models sit near their starting reward for some twenty steps
#   before they climb, and then climb about as steeply as babyGPT did.
# - **Part of it is the start.** The same 60 supervised steps leave
#   babyBitNet lower (0.147 against babyGPT's 0.213; lesson 10 saw the same:
#   early on a babyBitNet learns less per step), and from a lower start
#   fewer answers of a group get any letter right, so fewer groups have a
#   spread of rewards to learn from. The fine-tuned model starts in between
#   (0.171) and also climbs in between.
# - A GRPO step of babyBitNet also takes longer on a CPU (the quantizers in
#   every BitLinear; the `seconds` in the results, measured on a shared
#   machine, are only a rough guide).
#
# What this does not settle: one small task with a ceiling, models of about
# 26 thousand parameters, one setting of the GRPO hyper-parameters for all
# models (a ternary policy may want a larger learning rate, as it did in
# pre-training), and a warm-up of the same number of steps rather than to
# the same reward. Starting the three from the same reward, and a task
# without a ceiling, are the next experiments.
#
# ## What we have
#
# - **GRPO** needs no value network: the advantage of each answer is its
#   reward against its own group's, $\hat A_i = (r_i - \bar r) / (\sigma_r + \epsilon)$,
#   and a group that scored all alike teaches nothing.
# - **The clipped ratio** lets a batch of samples be used for a few steps
#   without running away; **the k3 KL penalty** keeps the policy near the
#   reference.
# - **A ternary policy learns from rewards** through the same
#   straight-through estimator that trained it: here as far as babyGPT, and
#   about 1.5 to 1.7 times as many GRPO steps to get there.
#
# The reference is `babybitnet/grpo.py` (`group_advantages`, `grpo_loss`,
# `sample`, `warmup`, `grpo`) and `babybitnet/experiments/grpo.py`.
# Check your exercises with:
#
# ```
# python -m babybitnet check 15
# ```
