"""Graders of lesson 4 (04_babygpt): multi-head attention, the feed-forward network (MLP), RMSNorm, the block.

Class exercises are built with the same arguments as the reference class of
``babybitnet``; the reference's weights (randomised, so that no part is left at
its identity init) are loaded into the learner's object by name, and outputs
and gradients are compared on random inputs, including T = 1 and batch 1.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet.attention import MultiHeadAttention as RefMHA
from babybitnet.course.grading import assert_close
from babybitnet.gpt import MLP as RefMLP
from babybitnet.gpt import Block as RefBlock
from babybitnet.gpt import GPTConfig, make_linear

pytestmark = pytest.mark.lesson04

SHAPES = [(2, 8), (1, 1), (1, 5), (3, 1), (4, 16)]  # (B, T)


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter of ``module`` redrawn at random (norm gains too), so that a swapped layer shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0.0))
    return module


def load_reference(mine: torch.nn.Module, ref: torch.nn.Module, what: str) -> None:
    """Copy the reference's weights into the learner's module, or say which names or shapes differ."""
    if not isinstance(mine, torch.nn.Module):
        raise AssertionError(f"{what} should be an nn.Module, got {type(mine).__name__}")
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        shapes = [f"{k}: expected {want[k]}, got {got[k]}" for k in sorted(set(want) & set(got)) if want[k] != got[k]]
        parts = []
        if missing:
            parts.append(f"missing parameters {missing}")
        if extra:
            parts.append(f"unexpected parameters {extra}")
        if shapes:
            parts.append("wrong shapes: " + "; ".join(shapes))
        raise AssertionError(f"{what}: the parameters differ from the reference's: " + ", ".join(parts))
    mine.load_state_dict(ref.state_dict())


def compare_forward_backward(mine, ref, x: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    """Same output and same gradients (input and every parameter) for a random loss."""
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    out, want = mine(x1), ref(x2)
    assert_close(out, want, f"{what}(x) for x of shape {tuple(x.shape)}", atol=atol, rtol=1e-4)
    probe = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    (out * probe).sum().backward()
    (want * probe).sum().backward()
    assert_close(x1.grad, x2.grad, f"the gradient of {what}'s output with respect to x", atol=atol, rtol=1e-4)
    mine_params = dict(mine.named_parameters())
    for name, p in ref.named_parameters():
        got = mine_params[name].grad
        if got is None:
            raise AssertionError(f"{what}: parameter {name} got no gradient; is it used in forward?")
        assert_close(got, p.grad, f"the gradient of {what}'s parameter {name}", atol=atol, rtol=1e-4)


def check_causal(layer, C: int, what: str) -> None:
    """Changing positions t >= 5 must not change the outputs at positions < 5."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, C, generator=g)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(2, 3, C, generator=g)
    with torch.no_grad():
        y, y2 = layer(x), layer(x2)
    assert_close(y2[:, :5], y[:, :5], f"{what}: outputs at positions 0-4 after changing positions 5-7 (causality)")


# ---------------------------------------------------------------------------------------------
# Exercise 4.1: MultiHeadAttention


@pytest.mark.exercise("4.1")
@pytest.mark.parametrize("n_embd,n_head", [(32, 4), (16, 1), (24, 6), (8, 8)])
def test_multi_head_attention_matches_reference(lesson, n_embd, n_head):
    MultiHeadAttention = lesson.get("MultiHeadAttention")
    what = f"MultiHeadAttention({n_embd}, {n_head})"
    torch.manual_seed(0)
    mine = MultiHeadAttention(n_embd, n_head)
    ref = randomise(RefMHA(n_embd, n_head))
    load_reference(mine, ref, what)
    g = torch.Generator().manual_seed(n_embd + n_head)
    for B, T in SHAPES:
        compare_forward_backward(mine, ref, torch.randn(B, T, n_embd, generator=g), what)
        mine.zero_grad()
        ref.zero_grad()


@pytest.mark.exercise("4.1")
def test_multi_head_attention_has_n_heads_and_is_causal(lesson):
    MultiHeadAttention = lesson.get("MultiHeadAttention")
    mha = MultiHeadAttention(32, 4)
    n = len(getattr(mha, "heads", []))
    assert n == 4, f"MultiHeadAttention(32, 4).heads should hold 4 heads, got {n}"
    check_causal(mha, 32, "MultiHeadAttention(32, 4)")


# ---------------------------------------------------------------------------------------------
# Exercise 4.2: MLP


@pytest.mark.exercise("4.2")
@settings(max_examples=15, deadline=None)
@given(n_embd=st.integers(1, 48), B=st.integers(1, 3), T=st.integers(1, 9), seed=st.integers(0, 2**16))
@example(n_embd=1, B=1, T=1, seed=0)
@example(n_embd=64, B=2, T=32, seed=1)
def test_mlp_matches_reference(lesson, n_embd, B, T, seed):
    MLP = lesson.get("MLP")
    what = f"MLP({n_embd})"
    mine = MLP(n_embd)
    cfg = GPTConfig(n_embd=n_embd, n_head=1)
    ref = randomise(RefMLP(cfg, make_linear(cfg)), seed)
    load_reference(mine, ref, what)
    compare_forward_backward(mine, ref, torch.randn(B, T, n_embd, generator=torch.Generator().manual_seed(seed)), what)


@pytest.mark.exercise("4.2")
def test_mlp_is_position_wise_and_uses_relu(lesson):
    MLP = lesson.get("MLP")
    ff = MLP(8)
    cfg = GPTConfig(n_embd=8, n_head=1)
    ref = randomise(RefMLP(cfg, make_linear(cfg)), 3)
    load_reference(ff, ref, "MLP(8)")
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(4)) * 3  # (N, C): no time axis at all
    with torch.no_grad():
        assert_close(ff(x), ref(x), "MLP(8) on a (5, 8) input")
        zero = torch.zeros(1, 1, 8)
        want = ref.proj(F.relu(ref.fc.bias)).view(1, 1, 8)
        assert_close(ff(zero), want, "MLP(8) of an all-zero input")


# ---------------------------------------------------------------------------------------------
# Exercise 4.3: rms_norm


@pytest.mark.exercise("4.3")
@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    scale=st.sampled_from([1e-3, 1.0, 100.0]),
    eps=st.sampled_from([1e-6, 1e-5, 1e-2]),
    seed=st.integers(0, 2**16),
)
@example(shape=[1], scale=1.0, eps=1e-6, seed=0)
@example(shape=[2, 8, 32], scale=1.0, eps=1e-5, seed=0)
def test_rms_norm_matches_torch(lesson, shape, scale, eps, seed):
    rms_norm = lesson.get("rms_norm")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale
    w = torch.randn(shape[-1], generator=g)
    want = F.rms_norm(x, (shape[-1],), w, eps)
    assert_close(rms_norm(x, w, eps), want, f"rms_norm(x of shape {tuple(shape)}, weight, eps={eps:g})", atol=1e-5)


@pytest.mark.exercise("4.3")
def test_rms_norm_edge_cases(lesson):
    rms_norm = lesson.get("rms_norm")
    w = torch.ones(4)
    assert_close(rms_norm(torch.zeros(2, 4), w, 1e-6), torch.zeros(2, 4), "rms_norm of an all-zero input (no NaN)")
    x = torch.tensor([[3.0, -3.0, 3.0, -3.0]])
    assert_close(rms_norm(x, w, 0.0 + 1e-12), torch.tensor([[1.0, -1.0, 1.0, -1.0]]), "rms_norm([[3, -3, 3, -3]])")
    x64 = torch.randn(3, 5, dtype=torch.float64)
    w64 = torch.randn(5, dtype=torch.float64)
    assert_close(
        rms_norm(x64, w64, 1e-6), F.rms_norm(x64, (5,), w64, 1e-6), "rms_norm of float64 input (keep the dtype)"
    )
    big = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert_close(
        rms_norm(big, w, 1.0), F.rms_norm(big, (4,), w, 1.0), "rms_norm with eps=1.0 (eps goes inside the square root)"
    )


# ---------------------------------------------------------------------------------------------
# Exercise 4.4: Block


@pytest.mark.exercise("4.4")
@pytest.mark.parametrize("n_embd,n_head", [(32, 4), (16, 1), (64, 4)])
def test_block_matches_reference(lesson, n_embd, n_head):
    Block = lesson.get("Block")
    what = f"Block({n_embd}, {n_head})"
    torch.manual_seed(0)
    mine = Block(n_embd, n_head)
    cfg = GPTConfig(n_embd=n_embd, n_head=n_head)
    ref = randomise(RefBlock(cfg, make_linear(cfg)), n_embd)
    load_reference(mine, ref, what)
    g = torch.Generator().manual_seed(n_embd)
    for B, T in SHAPES:
        compare_forward_backward(mine, ref, torch.randn(B, T, n_embd, generator=g), what, atol=1e-4)
        mine.zero_grad()
        ref.zero_grad()


@pytest.mark.exercise("4.4")
def test_block_is_causal_and_residual(lesson):
    Block = lesson.get("Block")
    block = Block(16, 2)
    check_causal(block, 16, "Block(16, 2)")
    # With the attention's and the MLP's output layers at zero, a residual block is the identity.
    with torch.no_grad():
        for p in list(block.attn.proj.parameters()) + list(block.mlp.proj.parameters()):
            p.zero_()
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert_close(block(x), x, "Block(16, 2) with attn.proj and mlp.proj set to zero (should return x: residuals)")
