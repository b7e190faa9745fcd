"""Graders of lesson 8 (08_ste): the straight-through estimator, as the detach trick and as an autograd.Function.

Both exercises are compared with ``torch.round`` (values, ties to even) and
with ``babybitnet.quant.round_ste`` (gradients: the identity), on random
inputs of many shapes, on ties, negative numbers, zero-size and (B, T, C)
tensors, and in float64.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet.course.grading import assert_close, assert_same
from babybitnet.quant import round_ste as ref_round_ste

pytestmark = pytest.mark.lesson08

TIES = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
EDGE = [
    torch.tensor([-1.7, -0.2, 0.0, 0.2, 0.49, 0.51, 1.2]),
    TIES,
    torch.zeros(0),
    torch.zeros(3, 0, 4),
    torch.tensor([7.0]),
    torch.tensor(-3.6),  # a 0-dim tensor
]


def check_round_ste(fn, x: torch.Tensor, what: str, seed: int = 0) -> None:
    """Values of torch.round, same dtype and shape, and d/dx sum(w * fn(x)) == w."""
    x1 = x.clone().requires_grad_()
    y = fn(x1)
    shape = f"x of shape {tuple(x.shape)}, dtype {x.dtype}"
    if not isinstance(y, torch.Tensor):
        raise AssertionError(f"{what}(x) should return a torch.Tensor, got {type(y).__name__}")
    assert_same(y.detach(), torch.round(x), f"{what}(x) for {shape} (values: torch.round, ties to even)")
    if not y.requires_grad:
        raise AssertionError(f"{what}(x) does not carry a gradient back to x (was something detached too much?)")
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype) + 2.0
    (w * y).sum().backward()
    if x1.grad is None:
        raise AssertionError(f"{what}: backward of sum(w * {what}(x)) gave x no gradient")
    x2 = x.clone().requires_grad_()
    (w * ref_round_ste(x2)).sum().backward()
    assert_close(x1.grad, x2.grad, f"the gradient of sum(w * {what}(x)) with respect to x ({shape}; should be w)")


# ---------------------------------------------------------------------------------------------
# Exercise 8.1: round_ste (the detach trick)


@pytest.mark.exercise("8.1")
@pytest.mark.parametrize("k", range(len(EDGE)))
def test_round_ste_edge_cases(lesson, k):
    check_round_ste(lesson.get("round_ste"), EDGE[k], "round_ste", k)


@pytest.mark.exercise("8.1")
@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), scale=st.sampled_from([0.3, 1.0, 5.0, 300.0]))
@example(shape=[2, 8, 16], scale=3.0)
@example(shape=[1], scale=1.0)
def test_round_ste_matches_reference(lesson, shape, scale):
    g = torch.Generator().manual_seed(sum(shape))
    check_round_ste(lesson.get("round_ste"), torch.randn(shape, generator=g) * scale, "round_ste")


@pytest.mark.exercise("8.1")
def test_round_ste_keeps_float64_and_is_differentiable_twice_in_a_chain(lesson):
    round_ste = lesson.get("round_ste")
    x = torch.randn(4, 5, dtype=torch.float64) * 3
    check_round_ste(round_ste, x, "round_ste")
    # inside a chain: d/dx sum(round_ste(2 x)^2) = 2 * 2 round(2 x)
    x1 = x.clone().requires_grad_()
    (round_ste(2 * x1) ** 2).sum().backward()
    assert_close(x1.grad, 4 * torch.round(2 * x), "the gradient of sum(round_ste(2 x) ** 2) (should be 4 round(2 x))")


# ---------------------------------------------------------------------------------------------
# Exercise 8.2: RoundSTE (an autograd.Function)


def get_round_ste_function(lesson):
    RoundSTE = lesson.get("RoundSTE")
    if not (isinstance(RoundSTE, type) and issubclass(RoundSTE, torch.autograd.Function)):
        raise AssertionError(f"RoundSTE should be a subclass of torch.autograd.Function, got {RoundSTE!r}")
    return RoundSTE.apply


@pytest.mark.exercise("8.2")
@pytest.mark.parametrize("k", range(len(EDGE)))
def test_round_ste_function_edge_cases(lesson, k):
    check_round_ste(get_round_ste_function(lesson), EDGE[k], "RoundSTE.apply", k)


@pytest.mark.exercise("8.2")
@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), scale=st.sampled_from([0.3, 1.0, 5.0, 300.0]))
@example(shape=[2, 8, 16], scale=3.0)
@example(shape=[1], scale=1.0)
def test_round_ste_function_matches_reference(lesson, shape, scale):
    g = torch.Generator().manual_seed(sum(shape) + 1)
    check_round_ste(get_round_ste_function(lesson), torch.randn(shape, generator=g) * scale, "RoundSTE.apply")


@pytest.mark.exercise("8.2")
def test_round_ste_function_jacobian_is_the_identity(lesson):
    apply = get_round_ste_function(lesson)
    x = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 4
    J = torch.autograd.functional.jacobian(apply, x)
    assert_close(J, torch.eye(7, dtype=torch.float64), "the Jacobian of RoundSTE.apply (the identity matrix)")
    x1 = x.clone().requires_grad_()
    y = apply(x1)
    assert_same(y.dtype, torch.float64, "RoundSTE.apply(x).dtype for float64 x")
