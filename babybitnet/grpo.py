"""Reinforcement learning with a program as the judge: GRPO (group relative policy optimisation).

Pre-training teaches a model to imitate text; reinforcement learning teaches it to do what a *reward*
asks, from its own samples. GRPO (DeepSeekMath, Shao et al. 2024) needs no value network: for each
prompt it samples a *group* of G completions, scores each with the reward, and uses each completion's
reward relative to its group as its advantage::

    A_i = (r_i - mean(r)) / (std(r) + eps)                      (the same A_i for every token of i)

    J = mean_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i) - beta KL_it ]
    rho_it = exp(logp_new - logp_old),   KL_it = exp(ref - new) - (ref - new) - 1   (the k3 estimator)

The task is **reversing a short string** (``"cabde>" -> "edbac."``): the reward is computed exactly by a
program (the fraction of the answer's characters that are right), a tiny character-level model learns
it on a CPU in seconds (the answer's j-th character is the prompt's (L-1-j)-th: a fixed pattern of
attention), and the partial credit gives the completions of a group different rewards, so the
advantages are not all zero. Two-digit addition was the other candidate; its carries take a tiny model
thousands of supervised steps, too many for a test of a minute. ``task="sort"`` (sort the letters)
is the same machinery with another target.

A short supervised warm-up (:func:`warmup`) teaches the format; :func:`grpo` then improves the policy
from its own samples. It works for babyGPT and babyBitNet alike: a babyBitNet policy trains its latent
weights through BitLinear's straight-through estimator, exactly as in pre-training.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from babybitnet.data import CharTokenizer

ALPHABET = "abcdefgh"
SEP = ">"  # ends the prompt: the answer comes next
END = "."  # ends the answer
LENGTH = 6  # letters per prompt
TASKS: dict[str, Callable[[str], str]] = {"reverse": lambda s: s[::-1], "sort": lambda s: "".join(sorted(s))}


# ---------------------------------------------------------------- the task
def _check_task(task: str) -> Callable[[str], str]:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


def tokenizer() -> CharTokenizer:
    """The task's characters (the alphabet, the separator ``>`` and the end marker ``.``): 10 ids."""
    return CharTokenizer(ALPHABET + SEP + END)


def make_prompts(n: int, generator: torch.Generator, length: int = LENGTH) -> list[str]:
    """``n`` prompts: ``length`` random letters of :data:`ALPHABET` then ``>``, e.g. ``"cabdeh>"``."""
    if n < 0 or length < 1:
        raise ValueError(f"need n >= 0 prompts of length >= 1, got n={n}, length={length}")
    ids = torch.randint(len(ALPHABET), (n, length), generator=generator)
    return ["".join(ALPHABET[i] for i in row) + SEP for row in ids.tolist()]


def target(prompt: str, task: str = "reverse") -> str:
    """The correct completion of ``prompt``: the task's answer then the end marker (``"cab>"`` -> ``"bac."``)."""
    if not prompt.endswith(SEP):
        raise ValueError(f"a prompt ends with {SEP!r}, got {prompt!r}")
    return _check_task(task)(prompt[:-1]) + END


def reward(prompt: str, completion: str, task: str = "reverse") -> float:
    """The exact reward of ``completion`` (the text the model wrote after the prompt), in [0, 1].

    The answer is the completion up to its first end marker (all of it when there is none). The
    reward is the number of positions where the answer has the right letter, divided by the
    longer of the answer and the right answer: 1.0 exactly when the answer is right, less for a
    wrong letter, a missing one, or extra ones (a model that never stops is penalised).
    """
    want = target(prompt, task)[:-1]
    got = completion.split(END, 1)[0]
    right = sum(a == b for a, b in zip(got, want, strict=False))
    return right / max(len(got), len(want))


def examples(prompts: list[str], tok: CharTokenizer, task: str = "reverse") -> torch.Tensor:
    """Prompt + correct completion, encoded: (n, 2 * (length + 1)) int64 (all prompts of one length)."""
    return torch.tensor([tok.encode(p + target(p, task)) for p in prompts], dtype=torch.long)


# ---------------------------------------------------------------- log-probabilities and sampling
def completion_logprobs(model: nn.Module, prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
    """Log-probability under ``model`` of each completion token given everything before it.

    prompts: (N, Tp) int64; completions: (N, Tc) int64. Returns (N, Tc) float32: entry (i, t) is
    log p(completions[i, t] | prompts[i], completions[i, :t]). One forward pass over the
    concatenation; the logits at position Tp - 1 + t predict completion token t.
    """
    seq = torch.cat([prompts, completions], dim=1)
    logits, _ = model(seq[:, :-1])
    logits = logits[:, prompts.shape[1] - 1 :]  # (N, Tc, vocab): the positions that predict the completion
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, completions.unsqueeze(-1)).squeeze(-1)


def completion_mask(completions: torch.Tensor, end_id: int) -> torch.Tensor:
    """(N, Tc) float32: 1 for every token up to and including the first end marker, 0 after it.

    What comes after the end marker is not part of the answer: it earns no credit and no blame.
    """
    is_end = (completions == end_id).long()
    ended_before = torch.cumsum(is_end, dim=1) - is_end  # end markers strictly before each token
    return (ended_before == 0).float()


@torch.no_grad()
def sample(
    model: nn.Module, prompts: torch.Tensor, group_size: int, max_new: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``group_size`` completions of every prompt, sampled at temperature 1, with their log-probs.

    prompts: (P, Tp) int64. Returns completions (P * G, max_new) int64, rows i * G .. i * G + G - 1
    for prompt i, and their log-probs (P * G, max_new) float32 (:func:`completion_logprobs`, the
    "old" log-probs of GRPO's ratio). All in one batch, without gradients.
    """
    rep = prompts.repeat_interleave(group_size, dim=0)
    out = model.generate(rep, max_new, temperature=1.0, generator=generator)
    completions = out[:, prompts.shape[1] :]
    was_training = model.training
    model.eval()
    logp = completion_logprobs(model, rep, completions)
    model.train(was_training)
    return completions, logp


def score(prompts: list[str], completions: torch.Tensor, tok: CharTokenizer, task: str = "reverse") -> torch.Tensor:
    """Rewards of the sampled completions (P * G, Tc), grouped: (P, G) float32."""
    g = completions.shape[0] // len(prompts)
    texts = [tok.decode(row) for row in completions]
    r = [reward(prompts[i // g], text, task) for i, text in enumerate(texts)]
    return torch.tensor(r, dtype=torch.float32).view(len(prompts), g)


# ---------------------------------------------------------------- GRPO's two pieces
def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each completion's reward relative to its group: (r - group mean) / (group std + eps).

    rewards: (P, G) float, one row per prompt, one column per completion. Returns (P, G) of the same
    dtype. The std is the population one (divide by G), so each row of the result has mean 0 and std
    std / (std + eps), i.e. 1 up to eps. A group whose rewards are all equal teaches nothing (no
    completion was better than another): its advantages are exactly 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (prompts, group_size), got shape {tuple(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, correction=0)
    adv = (rewards - mean) / (std + eps)
    same = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # exact: rounding in mean/std can't leak in
    return torch.where(same, torch.zeros_like(adv), adv)


def grpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.04,
) -> torch.Tensor:
    """GRPO's loss (minus DeepSeekMath's objective), a scalar to minimise.

    logp_new (N, T) float with gradient: the policy's log-probs of the sampled tokens; logp_old (N, T):
    those of the policy that sampled them; logp_ref (N, T): those of the frozen reference model;
    advantages (N,): one per completion; mask (N, T) (0/1, float or bool): which tokens belong to the
    completion. Per token: ratio = exp(new - old); surrogate = min(ratio * A, clip(ratio, 1 - eps,
    1 + eps) * A); KL = exp(ref - new) - (ref - new) - 1 (>= 0, 0 where new == ref). The objective
    surrogate - kl_coef * KL is averaged over each completion's tokens, then over completions; the
    loss is its negative. A completion with no token in the mask counts as 0.
    """
    mask = mask.to(logp_new.dtype)
    adv = advantages.to(logp_new.dtype).unsqueeze(-1)
    ratio = torch.exp(logp_new - logp_old)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    d = logp_ref - logp_new
    kl = torch.exp(d) - d - 1
    per_token = surrogate - kl_coef * kl
    per_completion = (per_token * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
    return -per_completion.mean()


# ---------------------------------------------------------------- the supervised warm-up
def warmup(
    model: nn.Module,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    task: str = "reverse",
    length: int = LENGTH,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Next-token training on correct examples (the format, and a first go at the task).

    Each step draws ``batch_size`` fresh prompts, trains on prompt + correct completion with the
    cross-entropy on the completion's tokens only (the prompt's letters are random: nothing to
    learn there), one AdamW step. ``on_step(step)`` runs before each step (the fine-tuned variant
    sets its quantization strength there). Returns the loss of every step (Python floats).
    """
    tok = tokenizer()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        if on_step is not None:
            on_step(step)
        ids = examples(make_prompts(batch_size, generator, length), tok, task)
        x, y = ids[:, :-1], ids[:, 1:].clone()
        y[:, :length] = -1  # targets inside the prompt: ignored
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(
    model: nn.Module, prompts: list[str], generator: torch.Generator, group_size: int = 4, task: str = "reverse"
) -> dict:
    """Mean reward and fraction of exactly right answers of ``group_size`` samples per prompt (temperature 1).

    Use the same prompts and a generator seeded alike to compare two models on equal terms.
    """
    tok = tokenizer()
    ids = torch.tensor([tok.encode(p) for p in prompts], dtype=torch.long)
    completions, _ = sample(model, ids, group_size, len(prompts[0]), generator)
    r = score(prompts, completions, tok, task)
    return {"reward": r.mean().item(), "exact": (r == 1).float().mean().item()}


# ---------------------------------------------------------------- the GRPO loop
def grpo(
    model: nn.Module,
    iters: int,
    group_size: int = 8,
    prompts_per_step: int = 16,
    lr: float = 1e-3,
    clip_eps: float = 0.2,
    kl_coef: float = 0.04,
    updates: int = 2,
    generator: torch.Generator | None = None,
    task: str = "reverse",
    length: int = LENGTH,
    progress: bool = False,
    desc: str = "grpo",
) -> dict:
    """Improve ``model`` (a warmed-up babyGPT or babyBitNet) with GRPO for ``iters`` steps; return the history.

    Each step: sample ``group_size`` completions of ``prompts_per_step`` fresh prompts with the
    current policy (which becomes "old"), score them, turn the rewards into group advantages, then
    take ``updates`` AdamW steps on :func:`grpo_loss` with those samples (the ratio moves away from 1
    after the first, and the clip keeps it near). The reference for the KL penalty is a frozen copy
    of ``model`` as it was when called.

    Returns ``{"reward": [...], "exact": [...], "kl": [...], "seconds": float}``: per step the mean
    reward of the sampled completions, the fraction of exactly right ones, and the mean per-token KL
    to the reference (k3, over the completion tokens of the last update).
    """
    if iters < 0 or group_size < 1 or prompts_per_step < 1 or updates < 1:
        raise ValueError(
            f"need iters >= 0, group_size >= 1, prompts_per_step >= 1, updates >= 1; got {iters}, {group_size}, "
            f"{prompts_per_step}, {updates}"
        )
    tok = tokenizer()
    end_id = tok.stoi[END]
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    history: dict = {"reward": [], "exact": [], "kl": []}
    t0 = time.perf_counter()
    for _ in tqdm(range(iters), desc=desc, disable=not progress, dynamic_ncols=True):
        prompts = make_prompts(prompts_per_step, generator, length)
        ids = torch.tensor([tok.encode(p) for p in prompts], dtype=torch.long)
        completions, logp_old = sample(model, ids, group_size, length + 1, generator)
        rewards = score(prompts, completions, tok, task)
        adv = group_advantages(rewards).flatten()
        mask = completion_mask(completions, end_id)
        rep = ids.repeat_interleave(group_size, dim=0)
        with torch.no_grad():
            logp_ref = completion_logprobs(ref, rep, completions)
        model.train()
        for _ in range(updates):
            logp_new = completion_logprobs(model, rep, completions)
            loss = grpo_loss(logp_new, logp_old, logp_ref, adv, mask, clip_eps, kl_coef)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            d = logp_ref - logp_new
            kl = ((torch.exp(d) - d - 1) * mask).sum() / mask.sum()
        history["reward"].append(rewards.mean().item())
        history["exact"].append((rewards == 1).float().mean().item())
        history["kl"].append(kl.item())
    history["seconds"] = time.perf_counter() - t0
    return history
