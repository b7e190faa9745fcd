"""Graders of lesson 7 (07_activations): per-token absmax quantization and fake-quantized activations.

Each exercise is compared with ``babybitnet.quant`` on random activations of
many shapes, magnitudes and bit widths (hypothesis) and on edge cases: a single
token (C,), (N, C) and (B, T, C), all-zero and constant tokens (no NaN), exact
ties (torch.round sends them to the even integer), tiny and huge values, float64.
The reference computes ``qmax / amax`` as a tensor expression; a learner may
compute the same in another order, so scales are compared with a relative
tolerance of 1e-6, and integer codes exactly except where the unrounded value
lies within float rounding of a .5 threshold (``assert_rounded``).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet import quant as ref
from babybitnet.course.grading import assert_close, assert_pair, assert_rounded, assert_same

pytestmark = pytest.mark.lesson07

SCALES = [1e-8, 1e-3, 1.0, 30.0, 1e6, 1e30]


def pair(got: object, what: str) -> tuple:
    return assert_pair(got, what, "(x_i, s_x)")


def activations(shape: tuple, scale: float, seed: int, dtype=torch.float32, spread: bool = True) -> torch.Tensor:
    """Random activations; with ``spread`` the tokens' sizes differ by up to 1000x (like real outlier tokens)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if spread and len(shape) > 1:
        x = x * torch.exp(torch.empty(shape[:-1] + (1,), dtype=torch.float64).uniform_(-3.5, 3.5, generator=g))
    return x.to(dtype)


def check_quantize(quantize_activations, x: torch.Tensor, bits: int, what: str) -> None:
    x_i, s_x = pair(quantize_activations(x, bits), what)
    want_i, want_s = ref.quantize_activations(x, bits)
    assert_close(s_x, want_s, f"the scales s_x of {what}", atol=0, rtol=1e-6)
    assert_rounded(x_i, x.double() * want_s.double(), want_i, f"the integer codes x_i of {what}")
    qmax = 2 ** (bits - 1) - 1
    if x_i.numel() and x_i.abs().max() > qmax:
        raise AssertionError(f"{what}: codes must lie in [-{qmax}, {qmax}], got {x_i.abs().max().item():g}")


shapes = st.sampled_from([(7,), (1, 5), (4, 16), (3, 1), (2, 8, 32), (1, 1, 1), (2, 3, 4, 5), (16, 256)])


# ---------------------------------------------------------------------------------------------
# Exercise 7.1: quantize_activations


@pytest.mark.exercise("7.1")
@settings(max_examples=50)
@given(shape=shapes, scale=st.sampled_from(SCALES), bits=st.sampled_from([8, 8, 4, 2]), seed=st.integers(0, 2**16))
@example(shape=(16, 32, 64), scale=1.0, bits=8, seed=0)
def test_quantize_activations_matches_reference(lesson, shape, scale, bits, seed):
    quantize_activations = lesson.get("quantize_activations")
    x = activations(shape, scale, seed)
    check_quantize(quantize_activations, x, bits, f"quantize_activations(x, bits={bits}) for x of shape {shape}")


@pytest.mark.exercise("7.1")
def test_quantize_activations_hand_example_and_ties(lesson):
    quantize_activations = lesson.get("quantize_activations")
    x = torch.tensor([[1.0, -0.5, 0.25], [0.0, 2.0, -2.0]])
    x_i, s_x = pair(quantize_activations(x), "quantize_activations(x)")
    what = "quantize_activations([[1, -0.5, 0.25], [0, 2, -2]])"
    assert_close(s_x, torch.tensor([[127.0], [63.5]]), f"the scales s_x of {what} (shape (2, 1): one per token)")
    assert_same(x_i, torch.tensor([[127.0, -64.0, 32.0], [0.0, 127.0, -127.0]]), f"{what} (-63.5 rounds to even: -64)")
    x4 = torch.tensor([7.0, 3.5, -2.5, 0.5])  # bits=4: qmax 7, s_x = 1: ties 3.5 -> 4, -2.5 -> -2, 0.5 -> 0
    x_i, s_x = pair(quantize_activations(x4, 4), "quantize_activations(x, bits=4)")
    assert_same(x_i, torch.tensor([7.0, 4.0, -2.0, 0.0]), "quantize_activations([7, 3.5, -2.5, 0.5], bits=4)")
    assert_close(s_x, torch.tensor([1.0]), "the scale s_x of quantize_activations([7, 3.5, -2.5, 0.5], bits=4)")


@pytest.mark.exercise("7.1")
@pytest.mark.parametrize("value", [0.0, 1e-9, 3.0, -2.5])
def test_quantize_activations_zero_and_constant_tokens(lesson, value):
    quantize_activations = lesson.get("quantize_activations")
    x = torch.full((3, 5), value)
    what = f"quantize_activations of 3 tokens full of {value:g}"
    x_i, s_x = pair(quantize_activations(x), what)
    if not (isinstance(s_x, torch.Tensor) and torch.isfinite(s_x).all() and torch.isfinite(x_i).all()):
        raise AssertionError(f"{what}: x_i and s_x should be finite (clamp max |x| to at least eps), got s_x={s_x}")
    check_quantize(quantize_activations, x, 8, what)


@pytest.mark.exercise("7.1")
def test_quantize_activations_shapes_and_dtype(lesson):
    quantize_activations = lesson.get("quantize_activations")
    check_quantize(quantize_activations, activations((64,), 1.0, 1), 8, "quantize_activations of a single token (64,)")
    x = activations((2, 3, 16), 5.0, 2, torch.float64)
    check_quantize(quantize_activations, x, 8, "quantize_activations of float64 x of shape (2, 3, 16) (keep the dtype)")
    x = activations((4, 8), 1.0, 3)
    x[1] = 0.0  # one all-zero token among others
    x[2, 3] = 1e4  # one outlier value: only its own token's scale may change
    check_quantize(quantize_activations, x, 8, "quantize_activations of (4, 8) x with a zero token and an outlier")


# ---------------------------------------------------------------------------------------------
# Exercise 7.2: activation_quant


@pytest.mark.exercise("7.2")
@settings(max_examples=40)
@given(shape=shapes, scale=st.sampled_from(SCALES), bits=st.sampled_from([8, 4]), seed=st.integers(0, 2**16))
@example(shape=(16, 32, 64), scale=1.0, bits=8, seed=0)
def test_activation_quant_matches_reference(lesson, shape, scale, bits, seed):
    activation_quant = lesson.get("activation_quant")
    x = activations(shape, scale, seed)
    assert_close(
        activation_quant(x, bits),
        ref.activation_quant(x, bits),
        f"activation_quant(x, bits={bits}) for x of shape {shape}, scale {scale:g}",
        atol=0,
        rtol=1e-5,
    )


@pytest.mark.exercise("7.2")
def test_activation_quant_edge_cases(lesson):
    activation_quant = lesson.get("activation_quant")
    x = torch.tensor([[1.0, -0.5, 0.25], [0.0, 2.0, -2.0]])
    want = torch.tensor([[1.0, -64 / 127, 32 / 127], [0.0, 2.0, -2.0]])
    assert_close(activation_quant(x), want, "activation_quant([[1, -0.5, 0.25], [0, 2, -2]])", atol=1e-7, rtol=1e-6)
    assert_same(activation_quant(torch.zeros(2, 3, 4)), torch.zeros(2, 3, 4), "activation_quant of all zeros (no NaN)")
    x64 = activations((3, 9), 2.0, 4, torch.float64)
    assert_close(activation_quant(x64), ref.activation_quant(x64), "activation_quant of float64 x (keep the dtype)")
    one = activations((10,), 1.0, 5)
    assert_close(activation_quant(one, 4), ref.activation_quant(one, 4), "activation_quant of a single token, bits=4")
