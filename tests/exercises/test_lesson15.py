"""Graders of lesson 15 (15_grpo): GRPO's group advantage and its clipped objective with the KL penalty.

``group_advantages`` is compared with the package's ``babybitnet.grpo.group_advantages`` on random
groups (hypothesis: rewards of the task's kind, multiples of 1/6, and arbitrary floats), and on the
edge cases: a group whose rewards are all equal (0, not 0 / eps: also for 0.3, which rounding in the
mean would otherwise betray), a group of one, one prompt, float64; and for what it must satisfy on
its own: zero mean and unit (population) standard deviation per group. ``grpo_loss`` is compared with
the package's ``babybitnet.grpo.grpo_loss`` (value and gradient with respect to ``logp_new``) on random
log-probs with the clip active and inactive, with a bool or float mask, masked tokens that must not
count, a completion with no token at all, at the first update (new == old == ref: minus the mean
advantage, the KL zero) and against a hand computation.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet.course.grading import assert_close, assert_same
from babybitnet.grpo import group_advantages as ref_group_advantages
from babybitnet.grpo import grpo_loss as ref_grpo_loss

pytestmark = pytest.mark.lesson15


# ---------------------------------------------------------------------------------------------
# Exercise 15.1: group_advantages


def check_advantages(fn, rewards: torch.Tensor, note: str = "") -> torch.Tensor:
    what = f"group_advantages(rewards of shape {tuple(rewards.shape)}, {rewards.dtype}){note}"
    got = fn(rewards.clone())
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what} should return a torch.Tensor, got {type(got).__name__}")
    assert_close(got, ref_group_advantages(rewards), what, atol=1e-5, rtol=1e-5)
    return got


@pytest.mark.exercise("15.1")
def test_group_advantages_by_hand(lesson):
    fn = lesson.get("group_advantages")
    got = check_advantages(fn, torch.tensor([[1.0, 0.0]]), " (mean 0.5, std 0.5: +1 and -1)")
    assert_close(got, torch.tensor([[1.0, -1.0]]), "group_advantages([[1, 0]])", atol=1e-5)
    check_advantages(fn, torch.tensor([[1.0, 0.5, 0.5, 0.0], [0.2, 0.4, 0.6, 0.8]]), " (two groups, each its own)")


@pytest.mark.exercise("15.1")
@pytest.mark.parametrize(
    "rewards",
    [
        torch.zeros(2, 4),
        torch.ones(3, 8),
        torch.full((1, 5), 0.3),
        torch.tensor([[0.1, 0.1, 0.1], [1.0, 0.0, 0.5], [2 / 3, 2 / 3, 2 / 3]]),
    ],
    ids=["all zero", "all one", "all 0.3 (not exact in binary)", "mixed rows"],
)
def test_group_advantages_equal_groups_are_zero(lesson, rewards):
    got = check_advantages(lesson.get("group_advantages"), rewards, " (a group whose rewards are all equal gets 0)")
    same = (rewards == rewards[:, :1]).all(dim=1)
    assert_same(got[same], torch.zeros_like(rewards[same]), "the advantages of the groups whose rewards are all equal")


@pytest.mark.exercise("15.1")
def test_group_advantages_edge_cases(lesson):
    fn = lesson.get("group_advantages")
    check_advantages(fn, torch.tensor([[0.7], [0.2]]), " (groups of one completion: nothing to compare, 0)")
    check_advantages(fn, torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0]]), " (one prompt; one completion differs)")
    check_advantages(fn, torch.rand(3, 5, dtype=torch.float64), " (float64: keep the dtype)")


@pytest.mark.exercise("15.1")
@settings(max_examples=80, deadline=None)
@given(
    p=st.integers(1, 5),
    g=st.integers(2, 10),
    seed=st.integers(0, 2**16),
    discrete=st.booleans(),
)
@example(p=1, g=2, seed=0, discrete=True)
def test_group_advantages_random(lesson, p, g, seed, discrete):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 7, (p, g), generator=gen).float() / 6 if discrete else torch.rand(p, g, generator=gen)
    got = check_advantages(lesson.get("group_advantages"), rewards)
    for i in range(p):
        if not (rewards[i] == rewards[i, 0]).all():
            assert_close(got[i].mean(), torch.tensor(0.0), f"the mean of group {i}'s advantages", atol=1e-5)
            s = rewards[i].double().std(correction=0).item()  # std / (std + eps): 1 unless the rewards are close
            want = torch.tensor(s / (s + 1e-6), dtype=got.dtype)
            assert_close(got[i].std(correction=0), want, f"the population std of group {i}'s advantages", atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Exercise 15.2: grpo_loss


def random_case(n: int, t: int, seed: int, spread: float = 0.3, mask_p: float = 0.8):
    gen = torch.Generator().manual_seed(seed)
    old = torch.randn(n, t, generator=gen) * 0.5 - 1.5
    new = old + torch.randn(n, t, generator=gen) * spread  # spread 0.3: many ratios beyond 1 +- 0.2
    ref = old + torch.randn(n, t, generator=gen) * spread
    adv = torch.randn(n, generator=gen)
    mask = (torch.rand(n, t, generator=gen) < mask_p).float()
    mask[:, 0] = 1  # every completion has at least its first token
    return new, old, ref, adv, mask


def check_loss(fn, new, old, ref, adv, mask, clip_eps=0.2, kl_coef=0.04, note: str = "") -> None:
    what = f"grpo_loss(logp_new {tuple(new.shape)}, ..., clip_eps={clip_eps}, kl_coef={kl_coef}){note}"
    mine = new.clone().requires_grad_()
    got = fn(mine, old.clone(), ref.clone(), adv.clone(), mask.clone(), clip_eps, kl_coef)
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what} should return a torch.Tensor, got {type(got).__name__}")
    theirs = new.clone().requires_grad_()
    want = ref_grpo_loss(theirs, old, ref, adv, mask, clip_eps, kl_coef)
    assert_close(got.detach(), want.detach(), f"{what} (the value: a 0-dim tensor)", atol=1e-5, rtol=1e-5)
    if not got.requires_grad:
        raise AssertionError(f"{what} carries no gradient back to logp_new (was it detached?)")
    got.backward()
    want.backward()
    assert_close(
        mine.grad,
        theirs.grad,
        f"{what}: the gradient with respect to logp_new (zero where the clip is active and for masked tokens)",
        atol=1e-6,
        rtol=1e-4,
    )


@pytest.mark.exercise("15.2")
def test_grpo_loss_by_hand(lesson):
    """One completion of two tokens: ratio e^0.5 (clipped, A > 0) and e^-0.1 (inside the clip)."""
    fn = lesson.get("grpo_loss")
    new, old, ref = torch.tensor([[-0.5, -1.1]]), torch.tensor([[-1.0, -1.0]]), torch.tensor([[-0.7, -1.1]])
    a, eps, beta = 2.0, 0.2, 0.1
    terms = []
    for t in range(2):
        r = math.exp(new[0, t] - old[0, t])
        d = (ref[0, t] - new[0, t]).item()
        terms.append(min(r * a, min(max(r, 1 - eps), 1 + eps) * a) - beta * (math.exp(d) - d - 1))
    got = fn(new, old, ref, torch.tensor([a]), torch.ones(1, 2), eps, beta)
    assert_close(got, torch.tensor(-sum(terms) / 2), "grpo_loss by hand (minus the mean over the tokens)", atol=1e-6)
    check_loss(fn, new, old, ref, torch.tensor([a]), torch.ones(1, 2), eps, beta)


@pytest.mark.exercise("15.2")
def test_grpo_loss_at_the_first_update(lesson):
    """new == old == ref: every ratio is 1 (no clip), the KL is 0; the loss is minus the mean advantage."""
    fn = lesson.get("grpo_loss")
    logp = torch.randn(5, 6, generator=torch.Generator().manual_seed(0)) - 1
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0])
    got = fn(logp.clone(), logp.clone(), logp.clone(), adv, torch.ones(5, 6), 0.2, 0.5)
    assert_close(got, -adv.mean(), "grpo_loss with new == old == ref (minus the mean advantage)", atol=1e-6)
    got = fn(logp.clone(), logp.clone(), logp.clone(), torch.zeros(5), torch.ones(5, 6), 0.2, 0.5)
    assert_close(got, torch.tensor(0.0), "grpo_loss with new == ref and zero advantages (the KL is 0)", atol=1e-7)
    check_loss(fn, logp, logp, logp, adv, torch.ones(5, 6), 0.2, 0.5)


@pytest.mark.exercise("15.2")
@pytest.mark.parametrize("clip_eps", [0.2, 0.05, 10.0], ids=["clip 0.2", "clip 0.05 (mostly active)", "no clip"])
@pytest.mark.parametrize("kl_coef", [0.0, 0.04, 1.0])
def test_grpo_loss_matches_the_package(lesson, clip_eps, kl_coef):
    new, old, ref, adv, mask = random_case(8, 7, seed=1)
    check_loss(lesson.get("grpo_loss"), new, old, ref, adv, mask, clip_eps, kl_coef)


@pytest.mark.exercise("15.2")
def test_grpo_loss_masks(lesson):
    fn = lesson.get("grpo_loss")
    new, old, ref, adv, mask = random_case(4, 5, seed=2)
    check_loss(fn, new, old, ref, adv, mask.bool(), note=" (a bool mask)")
    wild = new.clone()
    wild[mask == 0] = 50.0  # what lies outside the mask must not count, however large
    check_loss(fn, wild, old, ref, adv, mask, note=" (huge log-probs on the masked tokens)")
    empty = mask.clone()
    empty[1] = 0  # completion 1 has no token: it counts as 0, and must not make NaN
    check_loss(fn, new, old, ref, adv, empty, note=" (completion 1 has no token in the mask)")


@pytest.mark.exercise("15.2")
@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 8),
    t=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    spread=st.floats(0.0, 1.0),
    clip_eps=st.floats(0.01, 0.5),
    kl_coef=st.floats(0.0, 0.5),
)
@example(n=1, t=1, seed=0, spread=0.0, clip_eps=0.2, kl_coef=0.04)
def test_grpo_loss_random(lesson, n, t, seed, spread, clip_eps, kl_coef):
    new, old, ref, adv, mask = random_case(n, t, seed, spread)
    check_loss(lesson.get("grpo_loss"), new, old, ref, adv, mask, clip_eps, kl_coef)
