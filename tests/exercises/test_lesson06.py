"""Graders of lesson 6 (06_absmean): absmean ternarization, ternary quantization at any step, binary weights.

Each exercise is compared with ``babybitnet.quant`` on random matrices of many
sizes and magnitudes (hypothesis) and on edge cases: all zeros (no NaN),
constant matrices, a single weight, exact ties, tiny and huge values, float64.
A learner may compute the same number in a different order (``w / mean`` instead
of ``w * (1 / mean)``), which can move a value that sits within float rounding
of a rounding threshold; ``assert_rounded`` accepts either side there and only there.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet import quant as ref
from babybitnet.course.grading import assert_close, assert_pair, assert_rounded, assert_same

pytestmark = pytest.mark.lesson06

SCALES = [1e-6, 1e-3, 0.02, 1.0, 1e3, 1e20]


def pair(got: object, what: str) -> tuple:
    return assert_pair(got, what, "(w_t, s_w)")


def random_matrix(rows: int, cols: int, scale: float, seed: int, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(
        dtype
    )


def check_ternarize(ternarize, w: torch.Tensor, what: str) -> None:
    w_t, s_w = pair(ternarize(w), what)
    want_t, want_s = ref.ternarize(w)
    assert_close(s_w, want_s.reshape(()), f"the scale s_w of {what}", atol=0, rtol=1e-6)
    assert_rounded(w_t, w.double() * want_s.double(), want_t, f"the ternary matrix w_t of {what}")


# ---------------------------------------------------------------------------------------------
# Exercise 6.1: ternarize


@pytest.mark.exercise("6.1")
@settings(max_examples=40)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 40),
    scale=st.sampled_from(SCALES),
    seed=st.integers(0, 2**16),
)
@example(rows=1, cols=1, scale=1.0, seed=0)
@example(rows=256, cols=64, scale=0.02, seed=1)
def test_ternarize_matches_reference(lesson, rows, cols, scale, seed):
    ternarize = lesson.get("ternarize")
    w = random_matrix(rows, cols, scale, seed)
    check_ternarize(ternarize, w, f"ternarize(w) for w of shape {(rows, cols)} and scale {scale:g}")


@pytest.mark.exercise("6.1")
def test_ternarize_hand_example_and_ties(lesson):
    ternarize = lesson.get("ternarize")
    w = torch.tensor([[0.2, -0.6, 0.0], [1.0, -0.1, 0.3]])
    w_t, s_w = pair(ternarize(w), "ternarize(w)")
    assert_same(w_t, torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, 1.0]]), "ternarize([[0.2, -0.6, 0], [1, -0.1, 0.3]])")
    assert_close(s_w, torch.tensor(6 / 2.2), "the scale s_w of ternarize([[0.2, -0.6, 0], [1, -0.1, 0.3]])")
    # mean |w| = 1: w * s_w = w exactly; 0.5 and -0.5 are ties that go to the even integer 0, 1.5 to 2 -> clip 1
    tie = torch.tensor([[0.5, -0.5, 1.5, -1.5, 0.5, 1.5]])
    w_t, _ = pair(ternarize(tie), "ternarize(w)")
    assert_same(
        w_t,
        torch.tensor([[0.0, 0.0, 1.0, -1.0, 0.0, 1.0]]),
        "ternarize([[0.5, -0.5, 1.5, -1.5, 0.5, 1.5]]) (mean |w| = 1; torch.round sends 0.5 to 0)",
    )


@pytest.mark.exercise("6.1")
@pytest.mark.parametrize("value", [0.0, 1e-9, 3.0, -2.5])
def test_ternarize_zero_and_constant_matrices(lesson, value):
    ternarize = lesson.get("ternarize")
    w = torch.full((4, 6), value)
    what = f"ternarize of a 4x6 matrix full of {value:g}"
    w_t, s_w = pair(ternarize(w), what)
    assert isinstance(s_w, torch.Tensor) and torch.isfinite(s_w).all(), f"{what}: s_w should be finite, got {s_w}"
    check_ternarize(ternarize, w, what)


@pytest.mark.exercise("6.1")
def test_ternarize_keeps_the_dtype(lesson):
    ternarize = lesson.get("ternarize")
    w = random_matrix(5, 7, 0.1, 3, torch.float64)
    check_ternarize(ternarize, w, "ternarize(w) for float64 w (keep the dtype)")


# ---------------------------------------------------------------------------------------------
# Exercise 6.2: ternary_quant


@pytest.mark.exercise("6.2")
@settings(max_examples=40)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 40),
    scale=st.sampled_from(SCALES),
    mult=st.sampled_from([0.1, 0.5, 1.0, 1.7, 5.0]),
    as_tensor=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(rows=256, cols=64, scale=0.02, mult=1.0, as_tensor=False, seed=1)
def test_ternary_quant_matches_reference(lesson, rows, cols, scale, mult, as_tensor, seed):
    ternary_quant = lesson.get("ternary_quant")
    w = random_matrix(rows, cols, scale, seed)
    alpha = mult * w.abs().mean().item()
    if alpha == 0.0:
        alpha = 1.0
    a = torch.tensor(alpha) if as_tensor else alpha
    what = f"ternary_quant(w, alpha={alpha:.4g}{' as a tensor' if as_tensor else ''}) for w of shape {(rows, cols)}"
    assert_close(ternary_quant(w, a), ref.ternary_quant(w, a), what, atol=0, rtol=1e-6)


@pytest.mark.exercise("6.2")
def test_ternary_quant_edge_cases(lesson):
    ternary_quant = lesson.get("ternary_quant")
    x = torch.tensor([0.5, 1.5, -0.5, -1.5, 3.0, -0.2, 0.7])
    assert_same(
        ternary_quant(x, 1.0),
        torch.tensor([0.0, 1.0, -0.0, -1.0, 1.0, -0.0, 1.0]),
        "ternary_quant([0.5, 1.5, -0.5, -1.5, 3, -0.2, 0.7], 1.0) (torch.round: 0.5 -> 0; clip to [-1, 1])",
    )
    assert_same(ternary_quant(torch.zeros(3, 4), 0.1), torch.zeros(3, 4), "ternary_quant of all zeros")
    w = torch.tensor([[0.3, -0.1], [0.05, -0.9]], dtype=torch.float64)
    assert_close(ternary_quant(w, 0.25), ref.ternary_quant(w, 0.25), "ternary_quant of float64 w (keep the dtype)")
    w3 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    assert_close(ternary_quant(w3, 0.8), ref.ternary_quant(w3, 0.8), "ternary_quant of a (2, 3, 4) tensor")


# ---------------------------------------------------------------------------------------------
# Exercise 6.3: binarize


@pytest.mark.exercise("6.3")
@settings(max_examples=40)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 40),
    scale=st.sampled_from(SCALES),
    shift=st.sampled_from([0.0, 0.5, -3.0]),
    seed=st.integers(0, 2**16),
)
@example(rows=256, cols=64, scale=0.02, shift=0.0, seed=1)
def test_binarize_matches_reference(lesson, rows, cols, scale, shift, seed):
    binarize = lesson.get("binarize")
    w = random_matrix(rows, cols, scale, seed) + shift * scale
    assert_close(
        binarize(w),
        ref.binarize(w),
        f"binarize(w) for w of shape {(rows, cols)}, scale {scale:g}, mean about {shift * scale:g}",
        atol=0,
        rtol=1e-5,
    )


@pytest.mark.exercise("6.3")
def test_binarize_edge_cases(lesson):
    binarize = lesson.get("binarize")
    w = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # mean 3, centred [-2, -1, 0, 3], beta = 1.5
    assert_close(
        binarize(w),
        torch.tensor([[-1.5, -1.5], [-1.5, 1.5]]),
        "binarize([[1, 2], [3, 6]]) (a weight at the mean -> -beta)",
    )
    assert_same(binarize(torch.zeros(3, 4)), torch.zeros(3, 4), "binarize of all zeros (beta = 0, no NaN)")
    assert_close(binarize(torch.full((2, 5), 7.0)), torch.zeros(2, 5), "binarize of a constant matrix (beta = 0)")
    assert_close(binarize(torch.tensor([[4.0]])), torch.zeros(1, 1), "binarize of a single weight")
    w64 = random_matrix(3, 5, 1.0, 2, torch.float64)
    assert_close(binarize(w64), ref.binarize(w64), "binarize of float64 w (keep the dtype)")
