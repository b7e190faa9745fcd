"""Graders of lesson 9 (09_bitlinear): BitLinear's training forward, the module, the integer inference path.

Compared with ``babybitnet.bitlinear`` on values AND gradients (with respect
to the input and the weights), on (N, C) and (B, T, C) inputs, a single
token, random sizes and scales (hypothesis), and all-zero weights and inputs
(which must give no NaN).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet.bitlinear import BitLinear as RefBitLinear
from babybitnet.bitlinear import bitlinear_forward as ref_bitlinear_forward
from babybitnet.bitlinear import int_linear as ref_int_linear
from babybitnet.course.grading import assert_close
from babybitnet.quant import ternarize

pytestmark = pytest.mark.lesson09

SHAPES = [(7, 16), (2, 5, 16), (1, 16), (1, 1, 16), (16,)]  # (N, C), (B, T, C), a single token


def random_weight(out_f: int, in_f: int, seed: int, std: float = 0.02) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed)) * std


def compare_fn(fn, x: torch.Tensor, w: torch.Tensor, what: str) -> None:
    """bitlinear_forward(x, w) against the package: output, d/dx and d/dW of a random probe loss."""
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fn(x1, w1)
    want = ref_bitlinear_forward(x2, w2)
    shapes = f"x of shape {tuple(x.shape)}, weight of shape {tuple(w.shape)}"
    assert_close(out, want, f"{what}(x, weight) for {shapes}", atol=1e-5, rtol=1e-4)
    if not out.requires_grad:
        raise AssertionError(f"{what}(x, weight) carries no gradient (did you detach the whole result?)")
    probe = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    (out * probe).sum().backward()
    (want * probe).sum().backward()
    for name, got, exp in (("x", x1.grad, x2.grad), ("weight", w1.grad, w2.grad)):
        if got is None:
            raise AssertionError(f"{what}: no gradient reached {name}; use the straight-through estimator on it")
        if not torch.isfinite(got).all():
            raise AssertionError(f"{what}: the gradient with respect to {name} has NaN or inf for {shapes}")
        assert_close(got, exp, f"the gradient of {what}'s output with respect to {name} ({shapes})", 1e-5, 1e-4)


# ---------------------------------------------------------------------------------------------
# Exercise 9.1: bitlinear_forward


@pytest.mark.exercise("9.1")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bitlinear_forward_matches_reference(lesson, shape):
    fn = lesson.get("bitlinear_forward")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))) * 2
    compare_fn(fn, x, random_weight(12, 16, len(shape)), "bitlinear_forward")


@pytest.mark.exercise("9.1")
@settings(max_examples=20, deadline=None)
@given(
    in_f=st.integers(1, 40),
    out_f=st.integers(1, 12),
    lead=st.lists(st.integers(1, 5), min_size=1, max_size=2),
    x_scale=st.sampled_from([1e-3, 1.0, 50.0]),
    w_std=st.sampled_from([1e-3, 0.02, 1.0]),
    seed=st.integers(0, 2**16),
)
@example(in_f=64, out_f=256, lead=[2, 8], x_scale=1.0, w_std=0.02, seed=0)
def test_bitlinear_forward_random_sizes(lesson, in_f, out_f, lead, x_scale, w_std, seed):
    fn = lesson.get("bitlinear_forward")
    x = torch.randn(*lead, in_f, generator=torch.Generator().manual_seed(seed)) * x_scale
    compare_fn(fn, x, random_weight(out_f, in_f, seed + 1, w_std), "bitlinear_forward")


@pytest.mark.exercise("9.1")
def test_bitlinear_forward_zeros_give_no_nan(lesson):
    fn = lesson.get("bitlinear_forward")
    g = torch.Generator().manual_seed(3)
    compare_fn(fn, torch.zeros(3, 8), torch.randn(4, 8, generator=g), "bitlinear_forward (all-zero input)")
    compare_fn(fn, torch.randn(3, 8, generator=g), torch.zeros(4, 8), "bitlinear_forward (all-zero weight)")
    compare_fn(fn, torch.zeros(2, 3, 8), torch.zeros(4, 8), "bitlinear_forward (all-zero input and weight)")


# ---------------------------------------------------------------------------------------------
# Exercise 9.2: BitLinear


def load_reference(mine, ref, what: str) -> None:
    if not isinstance(mine, torch.nn.Module):
        raise AssertionError(f"{what} should be an nn.Module, got {type(mine).__name__}")
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
    if want != got:
        raise AssertionError(f"{what}: its parameters should be {want} (names: shapes), got {got}")
    mine.load_state_dict(ref.state_dict())


def make_pair(BitLinear, in_f: int, out_f: int, norm: bool, seed: int):
    what = f"BitLinear({in_f}, {out_f}, norm={norm})"
    mine = BitLinear(in_f, out_f, norm=norm)
    ref = RefBitLinear(in_f, out_f, norm=norm)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(ref.weight.shape, generator=g) * 0.05)
        if norm:
            ref.norm.weight.copy_(1 + 0.5 * torch.randn(in_f, generator=g))
    load_reference(mine, ref, what)
    return mine, ref, what


@pytest.mark.exercise("9.2")
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bitlinear_module_matches_reference(lesson, norm, shape):
    mine, ref, what = make_pair(lesson.get("BitLinear"), 16, 12, norm, len(shape))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7)) * 3
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, want = mine(x1), ref(x2)
    assert_close(out, want, f"{what}(x) for x of shape {tuple(x.shape)}", atol=1e-5, rtol=1e-4)
    probe = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    (out * probe).sum().backward()
    (want * probe).sum().backward()
    assert_close(x1.grad, x2.grad, f"the gradient of {what}'s output with respect to x", atol=1e-5, rtol=1e-4)
    params = dict(mine.named_parameters())
    for name, p in ref.named_parameters():
        if params[name].grad is None:
            raise AssertionError(f"{what}: parameter {name} got no gradient; is it used in forward?")
        assert_close(params[name].grad, p.grad, f"the gradient of {what}'s parameter {name}", atol=1e-5, rtol=1e-4)


@pytest.mark.exercise("9.2")
def test_bitlinear_module_shapes_and_zeros(lesson):
    BitLinear = lesson.get("BitLinear")
    layer = BitLinear(5, 3)
    w = getattr(layer, "weight", None)
    if not isinstance(w, torch.nn.Parameter) or tuple(w.shape) != (3, 5):
        raise AssertionError(f"BitLinear(5, 3).weight should be an nn.Parameter of shape (3, 5), got {w!r}")
    if not (w.abs() > 0).any():
        raise AssertionError("BitLinear(5, 3).weight is all zeros at init; initialise it as nn.Linear does")
    for norm in (False, True):
        layer = BitLinear(8, 4, norm=norm)
        with torch.no_grad():
            layer.weight.zero_()
        x = torch.zeros(2, 3, 8, requires_grad=True)
        y = layer(x)
        y.sum().backward()
        finite = torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad).all()
        if not finite:
            raise AssertionError(f"BitLinear(8, 4, norm={norm}) with zero weights and a zero input gives NaN or inf")
        assert_close(y, torch.zeros(2, 3, 4), f"BitLinear(8, 4, norm={norm}) with zero weights")


# ---------------------------------------------------------------------------------------------
# Exercise 9.3: int_linear


@pytest.mark.exercise("9.3")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_int_linear_matches_reference(lesson, shape):
    fn = lesson.get("int_linear")
    g = torch.Generator().manual_seed(len(shape) + 10)
    x = torch.randn(shape, generator=g) * 2
    w = torch.randn(12, 16, generator=g)
    w_t, s_w = ternarize(w)
    w_t = w_t.to(torch.int8)
    what = f"int_linear(x of shape {tuple(shape)}, w_t int8 (12, 16), s_w)"
    got = fn(x, w_t, s_w)
    assert_close(got, ref_int_linear(x, w_t, s_w), what, atol=1e-5, rtol=1e-5)
    assert_close(got, ref_bitlinear_forward(x, w), f"{what} against the training path", atol=1e-4, rtol=1e-4)


@pytest.mark.exercise("9.3")
@settings(max_examples=20, deadline=None)
@given(
    in_f=st.integers(1, 300),
    out_f=st.integers(1, 12),
    n=st.integers(1, 6),
    x_scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
@example(in_f=256, out_f=64, n=4, x_scale=1.0, seed=0)
def test_int_linear_random_sizes(lesson, in_f, out_f, n, x_scale, seed):
    fn = lesson.get("int_linear")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_f, generator=g) * x_scale
    w_t, s_w = ternarize(torch.randn(out_f, in_f, generator=g))
    w_t = w_t.to(torch.int8)
    what = f"int_linear(x of shape {(n, in_f)}, w_t int8 {(out_f, in_f)}, s_w)"
    want = ref_int_linear(x, w_t, s_w)
    assert_close(fn(x, w_t, s_w), want, what, atol=1e-5 * x_scale, rtol=1e-5)


@pytest.mark.exercise("9.3")
def test_int_linear_zeros_give_no_nan(lesson):
    fn = lesson.get("int_linear")
    w_t, s_w = ternarize(torch.zeros(4, 8))  # all zero: a finite scale
    w_t = w_t.to(torch.int8)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    assert_close(fn(x, w_t, s_w), torch.zeros(3, 4), "int_linear with all-zero ternary weights")
    w_t, s_w = ternarize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)))
    w_t = w_t.to(torch.int8)
    assert_close(fn(torch.zeros(2, 8), w_t, s_w), torch.zeros(2, 4), "int_linear of an all-zero input")
