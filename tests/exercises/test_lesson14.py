"""Graders of lesson 14 (14_beyond): the gradual quantization schedule and blend of fine-tuning to 1.58 bits.

``lambda_at`` is compared with the package's ``babybitnet.finetune.lambda_at`` on random steps and
warm-ups (hypothesis) and on the landmarks: step 0, the middle and the last step of the warm-up,
the step where it ends and past it, a 1-step warm-up, ``warmup=0`` (1.0 from the start), and a
negative step or warm-up (ValueError, with a message). ``gradual_quant`` is compared with the package's
``babybitnet.bitlinear.gradual_quant`` (values, shape, dtype) and with ``babybitnet.quant.ste`` at ``lam = 1``, and
its gradient with the identity: with ``x_q`` computed from ``x`` *without* detaching (as
``weight_quant(w)`` or ``activation_quant(x)``), ``d sum(g * out) / dx`` must be ``g`` and ``x_q``
must get no gradient; on random shapes, strengths 0, 1 and in between, zero-size, 0-dim and
float64 tensors.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet.bitlinear import gradual_quant as ref_gradual_quant
from babybitnet.course.grading import as_float, assert_close, assert_same
from babybitnet.finetune import lambda_at as ref_lambda_at
from babybitnet.quant import activation_quant, ste, weight_quant

pytestmark = pytest.mark.lesson14


# ---------------------------------------------------------------------------------------------
# Exercise 14.1: lambda_at


def check_lambda(fn, step: int, warmup: int, note: str = "") -> None:
    what = f"lambda_at({step}, {warmup}){note}"
    got = fn(step, warmup)
    if isinstance(got, int) and not isinstance(got, bool):
        got = float(got)  # min(step / warmup, 1) gives the int 1 past the warm-up: the value is right
    assert_close(as_float(got, what), ref_lambda_at(step, warmup), what, atol=1e-12, rtol=1e-9)


def check_raises(fn, step: int, warmup: int, why: str) -> None:
    what = f"lambda_at({step}, {warmup})"
    try:
        got = fn(step, warmup)
    except ValueError as e:
        if not str(e).strip():
            raise AssertionError(f"{what} raised ValueError without a message; say which value is wrong") from e
        return
    raise AssertionError(f"{what} should raise ValueError ({why}), but returned {got!r}")


@pytest.mark.exercise("14.1")
def test_lambda_at_landmarks(lesson):
    fn = lesson.get("lambda_at")
    for step, warmup, note in [
        (0, 1000, " (the first step: full precision, 0.0)"),
        (1, 1000, ""),
        (250, 1000, " (a quarter of the way)"),
        (500, 1000, " (half way)"),
        (999, 1000, " (the last step of the warm-up)"),
        (1000, 1000, " (the warm-up is over: 1.0)"),
        (2500, 1000, " (past the warm-up: stays 1.0)"),
        (0, 1, " (a 1-step warm-up)"),
        (1, 1, " (a 1-step warm-up)"),
        (1, 3, " (one third)"),
        (2, 3, " (two thirds)"),
        (7, 3, " (past a 3-step warm-up)"),
    ]:
        check_lambda(fn, step, warmup, note)


@pytest.mark.exercise("14.1")
def test_lambda_at_without_warmup_is_the_abrupt_switch(lesson):
    fn = lesson.get("lambda_at")
    for step in (0, 1, 10, 5000):
        check_lambda(fn, step, 0, " (warmup=0: the abrupt switch, 1.0 at every step, step 0 too)")


@pytest.mark.exercise("14.1")
def test_lambda_at_rejects_negative_values(lesson):
    fn = lesson.get("lambda_at")
    check_raises(fn, -1, 1000, "a negative step makes no sense")
    check_raises(fn, -5, 0, "a negative step makes no sense, even without a warm-up")
    check_raises(fn, 10, -1, "a negative warm-up makes no sense")
    check_raises(fn, 0, -1000, "a negative warm-up makes no sense")


@pytest.mark.exercise("14.1")
@settings(max_examples=200, deadline=None)
@given(step=st.integers(0, 20000), warmup=st.integers(0, 5000))
@example(step=1000, warmup=1000)
@example(step=0, warmup=0)
def test_lambda_at_matches_the_package(lesson, step, warmup):
    check_lambda(lesson.get("lambda_at"), step, warmup)


# ---------------------------------------------------------------------------------------------
# Exercise 14.2: gradual_quant


def absmean_ternary(t: torch.Tensor) -> torch.Tensor:
    """weight_quant's ternary quantizer (one absmean scale per tensor) for a tensor of any shape, even empty.

    Not detached: like weight_quant(w), the result carries a gradient back to t through its scale.
    """
    s = t.abs().mean().clamp(min=1e-5) if t.numel() else torch.ones((), dtype=t.dtype)
    return (t / s).round().clamp(-1, 1) * s


def describe(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}"


def check_gradual_quant(fn, x: torch.Tensor, lam: float, quant, seed: int = 0) -> None:
    """Values x + lam * (quant(x) - x); d sum(g * out) / dx == g with x_q = quant(x) NOT detached; no grad to x_q."""
    what = f"gradual_quant(x, x_q, {lam!r}) for x of {describe(x)}"
    x1 = x.clone().requires_grad_()
    x_q = quant(x1)  # carries a gradient of its own: a correct blend must not let it through
    if x_q.requires_grad:
        x_q.retain_grad()
    out = fn(x1, x_q, lam)
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"{what} should return a torch.Tensor, got {type(out).__name__}")
    with torch.no_grad():
        want = ref_gradual_quant(x, quant(x), lam)
    assert_close(out.detach(), want, f"{what} (value: x + lam * (x_q - x))", atol=1e-6, rtol=1e-5)
    if lam == 1.0:
        with torch.no_grad():
            at_one = ste(x, quant(x))
        assert_close(out.detach(), at_one, f"{what} (at lam = 1: the value of x_q, as babybitnet.quant.ste)")
    if not out.requires_grad:
        raise AssertionError(f"{what} does not carry a gradient back to x (was x detached too?)")
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype) + 2.0
    (g * out).sum().backward()
    if x1.grad is None:
        raise AssertionError(f"{what}: backward of sum(g * out) gave x no gradient")
    assert_close(
        x1.grad,
        g,
        f"{what}: the gradient of sum(g * out) with respect to x (should be g: detach the whole (x_q - x), "
        "so that none flows through x_q, which was computed from x)",
    )
    if x_q.grad is not None and x_q.grad.abs().sum() > 0:
        raise AssertionError(f"{what}: a gradient reaches x_q; the difference (x_q - x) should be detached")


@pytest.mark.exercise("14.2")
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_gradual_quant_on_weights(lesson, lam):
    """A weight matrix and its ternary quantization (weight_quant), at several strengths."""
    x = torch.randn(32, 48, generator=torch.Generator().manual_seed(1)) * 0.05
    check_gradual_quant(lesson.get("gradual_quant"), x, lam, weight_quant)


@pytest.mark.exercise("14.2")
@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0])
def test_gradual_quant_on_activations(lesson, lam):
    """(B, T, C) activations and their 8-bit quantization (activation_quant)."""
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2)) * 3
    check_gradual_quant(lesson.get("gradual_quant"), x, lam, activation_quant)


@pytest.mark.exercise("14.2")
def test_gradual_quant_at_zero_keeps_x_exactly(lesson):
    fn = lesson.get("gradual_quant")
    x = torch.randn(7, 9, generator=torch.Generator().manual_seed(3))
    out = fn(x, weight_quant(x), 0.0)
    assert_same(out.detach(), x, "gradual_quant(x, x_q, 0.0) (lam = 0: exactly x)")


@pytest.mark.exercise("14.2")
@pytest.mark.parametrize(
    "x",
    [
        torch.tensor([-1.5, -0.2, 0.0, 0.2, 0.9, 3.0]),
        torch.zeros(4, 4),
        torch.zeros(0),
        torch.zeros(3, 0, 4),
        torch.tensor(0.7),  # a 0-dim tensor
        torch.randn(6, 10, dtype=torch.float64),
    ],
    ids=["vector", "zeros", "empty", "empty (3, 0, 4)", "0-dim", "float64"],
)
def test_gradual_quant_edge_cases(lesson, x):
    check_gradual_quant(lesson.get("gradual_quant"), x, 0.6, absmean_ternary)


@pytest.mark.exercise("14.2")
@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=3),
    lam=st.floats(0, 1),
    scale=st.floats(0.01, 10),
    seed=st.integers(0, 2**16),
)
@example(shape=[4, 4], lam=1.0, scale=1.0, seed=0)
def test_gradual_quant_random(lesson, shape, lam, scale, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    quant = weight_quant if len(shape) == 2 and seed % 2 else activation_quant
    check_gradual_quant(lesson.get("gradual_quant"), x, lam, quant, seed)
