"""GRPO (babybitnet.grpo): the exact reward, the group advantage, the loss by hand, and a short run that learns."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from babybitnet import grpo as G
from babybitnet.presets import build_model

TINY = {"bias": False, "n_layer": 2, "n_embd": 32, "n_head": 4, "block_size": 16}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; tiny models are as fast on one thread
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- the task
def test_prompts_and_targets():
    prompts = G.make_prompts(50, torch.Generator().manual_seed(0))
    assert len(prompts) == 50 and len(set(prompts)) > 40
    for p in prompts:
        assert len(p) == G.LENGTH + 1 and p.endswith(G.SEP) and set(p[:-1]) <= set(G.ALPHABET)
    assert G.target("cab>") == "bac."
    assert G.target("cab>", "sort") == "abc."
    assert prompts == G.make_prompts(50, torch.Generator().manual_seed(0)), "the same seed gives the same prompts"
    with pytest.raises(ValueError, match="unknown task"):
        G.target("ab>", "add")


def test_reward_is_exact():
    assert G.reward("abcd>", "dcba.") == 1.0
    assert G.reward("abcd>", "dcba") == 1.0  # no end marker, but nothing extra either
    assert G.reward("abcd>", "dcba.xyz") == 1.0  # what follows the end marker is not the answer
    assert G.reward("abcd>", "dcbb.") == 0.75
    assert G.reward("abcd>", "dcb.") == 0.75  # one letter missing
    assert G.reward("abcd>", "dcbaa") == 0.8  # one letter too many: 4 right of 5
    assert G.reward("abcd>", ".") == 0.0
    assert G.reward("abcd>", "abcd.") == 0.0
    assert G.reward("dcab>", "abcd.", "sort") == 1.0


def test_tokenizer_covers_the_task():
    tok = G.tokenizer()
    p = G.make_prompts(1, torch.Generator().manual_seed(1))[0]
    assert tok.decode(tok.encode(p + G.target(p))) == p + G.target(p)
    assert tok.vocab_size == len(G.ALPHABET) + 2


def test_completion_mask_stops_after_the_end_marker():
    tok = G.tokenizer()
    e, a, b = tok.stoi[G.END], tok.stoi["a"], tok.stoi["b"]
    c = torch.tensor([[a, b, e, a, e], [e, a, a, a, a], [a, a, b, b, a]])
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    assert torch.equal(G.completion_mask(c, e), want)


# ---------------------------------------------------------------- group advantages
groups = st.integers(1, 6).flatmap(
    lambda p: st.integers(2, 10).flatmap(
        lambda g: st.lists(st.lists(st.integers(0, 6), min_size=g, max_size=g), min_size=p, max_size=p)
    )
)


@settings(max_examples=100, deadline=None)
@given(groups)
def test_group_advantages_zero_mean_unit_std(rows):
    rewards = torch.tensor(rows, dtype=torch.float64) / 6  # rewards like the task's: multiples of 1/6
    adv = G.group_advantages(rewards)
    assert adv.shape == rewards.shape and adv.dtype == rewards.dtype
    for r, a in zip(rewards, adv, strict=True):
        if (r == r[0]).all():
            assert (a == 0).all(), "a group whose rewards are all equal gets advantage 0"
        else:
            assert abs(a.mean().item()) < 1e-9
            assert a.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
            # the order is kept: a better reward gets a larger advantage
            assert torch.equal(torch.argsort(r, stable=True), torch.argsort(a, stable=True))


def test_group_advantages_by_hand_and_equal_groups():
    adv = G.group_advantages(torch.tensor([[1.0, 0.0], [0.3, 0.3], [0.1, 0.1]]))
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0]), atol=1e-5)  # mean 0.5, std 0.5
    assert torch.equal(adv[1:], torch.zeros(2, 2))  # 0.3 is not exact in binary: still exactly 0
    assert torch.equal(G.group_advantages(torch.tensor([[0.7]])), torch.zeros(1, 1))  # a group of one
    with pytest.raises(ValueError, match="prompts, group_size"):
        G.group_advantages(torch.zeros(4))


# ---------------------------------------------------------------- the loss
def test_grpo_loss_by_hand():
    """Two completions of three tokens; the clip active on some tokens; kl to the reference by hand."""
    new = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]])
    old = torch.tensor([[-1.0, -1.0, -1.5], [-0.3, -1.0, -1.0]])
    ref = torch.tensor([[-1.2, -0.5, -2.5], [-0.1, -1.2, -0.9]])
    adv = torch.tensor([1.5, -0.8])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    eps, beta = 0.2, 0.1
    total = 0.0
    for i in range(2):
        terms = []
        for t in range(3):
            if not mask[i, t]:
                continue
            ratio = math.exp(new[i, t] - old[i, t])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            surrogate = min(ratio * adv[i].item(), clipped * adv[i].item())
            d = (ref[i, t] - new[i, t]).item()
            terms.append(surrogate - beta * (math.exp(d) - d - 1))
        total += sum(terms) / len(terms)
    want = -total / 2
    got = G.grpo_loss(new, old, ref, adv, mask, eps, beta)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # the clip is active here: ratio e^0.5 = 1.65 > 1.2 with a positive advantage, e^-0.3 = 0.74 < 0.8 with a
    # negative one; without the clip the loss differs
    assert G.grpo_loss(new, old, ref, adv, mask, 10.0, beta).item() != pytest.approx(want, rel=1e-3)


def test_grpo_loss_without_clip_or_kl_is_minus_the_mean_advantage():
    """At the first update (new == old == ref) the ratio is 1: the clip is inactive and the KL is 0."""
    logp = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0])
    mask = torch.ones(4, 5)
    loss = G.grpo_loss(logp.clone().requires_grad_(), logp, logp, adv, mask, 0.2, 0.5)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    # the gradient is the policy gradient: d loss / d logp_new[i, t] = -A_i / (T * N)
    new = logp.clone().requires_grad_()
    G.grpo_loss(new, logp, logp, adv, mask, 0.2, 0.5).backward()
    assert torch.allclose(new.grad, -adv[:, None].expand(4, 5) / 20, atol=1e-7)


def test_grpo_loss_kl_is_zero_only_at_the_reference():
    logp = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    zero_adv, mask = torch.zeros(3), torch.ones(3, 4)
    assert G.grpo_loss(logp, logp, logp, zero_adv, mask, 0.2, 1.0).item() == 0.0
    ref = logp + 0.3
    assert G.grpo_loss(logp, logp, ref, zero_adv, mask, 0.2, 1.0).item() > 0  # minus the KL: the penalty costs


def test_grpo_loss_ignores_masked_tokens():
    logp = torch.zeros(2, 3)
    new = torch.tensor([[0.0, 0.0, 5.0], [0.0, 9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, 1.0])
    assert G.grpo_loss(new, logp, logp, adv, mask, 0.2, 0.1).item() == pytest.approx(-1.0)


# ---------------------------------------------------------------- sampling and the log-probs
def test_sample_logprobs_match_a_forward_pass():
    tok = G.tokenizer()
    model, _ = build_model("recipe", "bitnet", tok.vocab_size, TINY)
    prompts = G.make_prompts(3, torch.Generator().manual_seed(0))
    ids = torch.tensor([tok.encode(p) for p in prompts])
    comp, logp = G.sample(model, ids, 4, G.LENGTH + 1, torch.Generator().manual_seed(1))
    assert comp.shape == (12, G.LENGTH + 1) and logp.shape == (12, G.LENGTH + 1) and logp.dtype == torch.float32
    assert (logp <= 0).all()
    # the first completion's first token, by hand: the model's distribution after prompt 0
    logits, _ = model(ids[:1])
    assert logp[0, 0].item() == pytest.approx(torch.log_softmax(logits[0, -1], -1)[comp[0, 0]].item(), abs=1e-5)
    assert not any(p.grad is not None for p in model.parameters()), "sampling must not build a graph"


# ---------------------------------------------------------------- it learns
def test_grpo_raises_the_reward_above_the_warmup():
    """A seeded short run: a brief warm-up leaves the reward low (about 0.2); 40 GRPO steps raise it clearly.

    (Seeds 1 to 3 of this setting went from 0.21-0.23 to 0.94-0.96: the margin asked for is far inside that.)
    """
    tok = G.tokenizer()
    model, _ = build_model("recipe", "gpt", tok.vocab_size, TINY)
    g = torch.Generator().manual_seed(0)
    G.warmup(model, 60, generator=g)
    held_out = G.make_prompts(64, torch.Generator().manual_seed(123))
    before = G.evaluate(model, held_out, torch.Generator().manual_seed(5))
    history = G.grpo(model, 40, lr=2e-3, generator=g)
    after = G.evaluate(model, held_out, torch.Generator().manual_seed(5))
    assert len(history["reward"]) == 40 and all(0 <= r <= 1 for r in history["reward"])
    assert before["reward"] < 0.5, f"the warm-up already solved the task, nothing left for GRPO: {before}"
    assert after["reward"] > before["reward"] + 0.3, (before, after)
    assert sum(history["reward"][-5:]) / 5 > sum(history["reward"][:5]) / 5 + 0.3
    assert max(history["kl"]) > 0  # the policy moved away from the reference


def test_grpo_trains_a_ternary_policy_through_the_ste():
    """One GRPO step on a babyBitNet moves the latent weights of its BitLinear layers, and its reference stays put."""
    from babybitnet.bitlinear import BitLinear

    tok = G.tokenizer()
    model, _ = build_model("recipe", "bitnet", tok.vocab_size, TINY)
    G.warmup(model, 20, generator=torch.Generator().manual_seed(0))
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    before = [m.weight.detach().clone() for m in layers]
    history = G.grpo(model, 1, generator=torch.Generator().manual_seed(1))
    moved = [not torch.equal(m.weight, w) for m, w in zip(layers, before, strict=True)]
    assert all(moved), f"{moved.count(False)} of {len(moved)} BitLinear layers got no update"
    assert history["kl"][0] >= 0 and len(history["reward"]) == 1
    with pytest.raises(ValueError, match="group_size >= 1"):
        G.grpo(model, 1, group_size=0)


# ---------------------------------------------------------------- the study
def test_grpo_study_writes_its_files(tmp_path):
    import json

    from babybitnet.experiments.grpo import grpo_study

    r = grpo_study(models=("gpt", "finetuned"), seeds=(1, 2), iters=2, warmup_steps=4, held_out=8, out=tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["runs"]) == ["gpt", "finetuned"]
    for key in saved["runs"]:
        assert set(saved["runs"][key]) == {"1", "2"}
        assert len(saved["runs"][key]["1"]["history"]["reward"]) == 2
        after = [saved["runs"][key][s]["after"]["reward"] for s in "12"]
        assert saved["summary"][key]["reward_after"]["values"] == after
    assert r["summary"] == saved["summary"]
    table = (tmp_path / "table.md").read_text()
    assert table.count("| babyBitNet fine-tuned from babyGPT | 2 |") == 1
    assert (tmp_path / "reward.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="unknown models"):
        grpo_study(models=("gpt", "transformer"), out=tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        grpo_study(task="add", out=tmp_path)


def test_steps_to_level():
    from babybitnet.experiments.grpo import steps_to

    assert steps_to([0.0] * 5 + [1.0] * 20, level=0.9, window=10) == 14  # steps 5..13 at 1.0, 4 at 0: 0.9
    assert steps_to([0.5] * 30, level=0.9) is None
