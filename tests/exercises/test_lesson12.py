"""Graders of lesson 12 (12_addonly): a dot product, a matmul and a packed matmul that only add and subtract.

Every answer must equal the exact int64 product (and ``babybitnet.addonly``: ``addonly_dot``,
``addonly_matmul``, ``addonly_matmul_packed``) as int32 of shape (M, N),
on random shapes (hypothesis: M 1..6, N 1..20, K 1..200, K not a multiple of 4 included), all-zero
weights, all +1 / all -1 weights with every activation at +127 or -127 (the largest sums, beyond
int16), a single token and K = 1. And without multiplying: each call runs under a TorchFunctionMode
that records the torch functions it uses, and a product (``*``, ``@``, torch.mul, torch.matmul,
einsum, F.linear, ...) fails the test. ``addonly_dot`` also gets lists of ints that refuse ``*``.
"""

from __future__ import annotations

import pytest
import torch
from helpers import exact
from helpers import ternary_case as random_case
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet import addonly as ref
from babybitnet.course.grading import MULTIPLIES, CallRecorder, assert_same
from babybitnet.packing import pack_2bit

pytestmark = pytest.mark.lesson12


def call_without_multiplying(fn, args: tuple, what: str):
    """``fn(*args)``, failing in words if it multiplied or changed its tensor arguments in place."""
    before = [a.clone() if isinstance(a, torch.Tensor) else None for a in args]
    with CallRecorder() as rec:
        got = fn(*args)
    used = sorted(rec.names & MULTIPLIES)
    if used:
        raise AssertionError(
            f"{what} multiplies: it calls {', '.join(used)} (`*` is mul, `@` is matmul). The point of the "
            "exercise is to do without: select with comparisons / torch.where and add with sum"
        )
    for i, (a, b) in enumerate(zip(args, before, strict=True)):
        if b is not None and not torch.equal(a, b):
            raise AssertionError(
                f"{what} changed its argument {i + 1} in place; work on a copy (e.g. .to(torch.int32))"
            )
    return got


# ---------------------------------------------------------------------------------------------
# Exercise 12.1: addonly_dot


class Multiplied(AssertionError):
    pass


class NoMulInt(int):
    """An int that refuses to be multiplied: lists of these catch `x[j] * w[j]` in pure Python."""

    def __mul__(self, other):
        raise Multiplied(f"addonly_dot multiplied {int(self)} * {other!r}: add or subtract instead, never multiply")

    def __rmul__(self, other):
        raise Multiplied(f"addonly_dot multiplied {other!r} * {int(self)}: add or subtract instead, never multiply")


def check_dot(fn, x: list[int], w: list[int], as_tensors: bool) -> None:
    want = ref.addonly_dot(x, w)  # the package's; tests/test_addonly.py checks it against the exact product
    if as_tensors:
        args = (torch.tensor(x, dtype=torch.int8), torch.tensor(w, dtype=torch.int8))
        kind = "int8 tensors"
    else:
        args = ([NoMulInt(v) for v in x], [NoMulInt(v) for v in w])
        kind = "lists"
    what = f"addonly_dot(x, w) for {kind} of length K={len(x)} (x starts {x[:4]}, w starts {w[:4]})"
    got = call_without_multiplying(fn, args, what)
    if isinstance(got, torch.Tensor):
        raise AssertionError(
            f"{what} returned a tensor ({got.dtype}); return a Python int: convert each element with int(...) "
            "before adding (an int8 tensor sum wraps around past 127)"
        )
    assert_same(got, want, what)


@pytest.mark.exercise("12.1")
@pytest.mark.parametrize("as_tensors", [False, True], ids=["lists", "tensors"])
def test_addonly_dot_small_examples(lesson, as_tensors):
    fn = lesson.get("addonly_dot")
    check_dot(fn, [3, -5, 7, 2], [1, -1, 0, 1], as_tensors)  # 3 + 5 + 2 = 10
    for w in (1, -1, 0):  # K = 1
        check_dot(fn, [5], [w], as_tensors)
    check_dot(fn, [4, 9, -7], [0, 0, 0], as_tensors)


@pytest.mark.exercise("12.1")
@pytest.mark.parametrize("x", [127, -127])
@pytest.mark.parametrize("w", [1, -1])
def test_addonly_dot_extremes(lesson, x, w):
    """200 activations at +-127 and weights all +1 or all -1: sums of +-25,400, far past int8 (and int16 wraps)."""
    fn = lesson.get("addonly_dot")
    for as_tensors in (False, True):
        check_dot(fn, [x] * 200, [w] * 200, as_tensors)


@pytest.mark.exercise("12.1")
@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 200), seed=st.integers(0, 2**16), as_tensors=st.booleans())
@example(k=300, seed=0, as_tensors=True)
def test_addonly_dot_random(lesson, k, seed, as_tensors):
    fn = lesson.get("addonly_dot")
    x_q, w_t = random_case(1, 1, k, seed)
    check_dot(fn, x_q[0].tolist(), w_t[0].tolist(), as_tensors)


# ---------------------------------------------------------------------------------------------
# Exercises 12.2 and 12.3: addonly_matmul and addonly_matmul_packed, graded by the same tests

MATMULS = [
    pytest.param("addonly_matmul", marks=pytest.mark.exercise("12.2"), id="12.2"),
    pytest.param("addonly_matmul_packed", marks=pytest.mark.exercise("12.3"), id="12.3"),
]


def check_matmul(lesson, name: str, x_q: torch.Tensor, w_t: torch.Tensor, case: str = "") -> None:
    """The learner's ``name`` on (x_q, w_t) (packed first for 12.3) against the exact product and the package."""
    fn = lesson.get(name)
    (m, k), n = x_q.shape, w_t.shape[0]
    if name == "addonly_matmul":
        args = (x_q, w_t)
        what = f"addonly_matmul(x_q int8 {(m, k)}, w_t int8 {(n, k)})"
        package = ref.addonly_matmul(x_q, w_t)
    else:
        packed = pack_2bit(w_t)
        args = (x_q, packed, k)
        what = f"addonly_matmul_packed(x_q int8 {(m, k)}, packed uint8 {tuple(packed.shape)}, k={k})"
        package = ref.addonly_matmul_packed(x_q, packed, k)
    what += f" {case}" if case else ""
    got = call_without_multiplying(fn, args, what)
    want = exact(x_q, w_t)
    assert torch.equal(package, want)  # the reference agrees with the exact product
    assert_same(got, want, what + " (the exact product, int32 of shape (M, N))")


@pytest.mark.parametrize("name", MATMULS)
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 20), k=st.integers(1, 200), seed=st.integers(0, 2**16))
@example(m=4, n=24, k=300, seed=0)
@example(m=3, n=7, k=5, seed=1)  # K not a multiple of 4: the last packed byte holds padding
def test_matches_the_exact_product(lesson, name, m, n, k, seed):
    x_q, w_t = random_case(m, n, k, seed)
    check_matmul(lesson, name, x_q, w_t, "on random values")


@pytest.mark.parametrize("name", MATMULS)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 8, 130])
def test_every_k_mod_4(lesson, name, k):
    x_q, w_t = random_case(3, 5, k, seed=k)
    check_matmul(lesson, name, x_q, w_t, f"with K={k}")


@pytest.mark.parametrize("name", MATMULS)
def test_single_token(lesson, name):
    x_q, w_t = random_case(1, 9, 37, seed=2)
    check_matmul(lesson, name, x_q, w_t, "for a single token (M = 1)")
    x_q, w_t = random_case(1, 1, 1, seed=3)
    check_matmul(lesson, name, x_q, w_t, "for one token, one output and K = 1")


@pytest.mark.parametrize("name", MATMULS)
def test_all_zero_weights(lesson, name):
    x_q, _ = random_case(4, 1, 30, seed=4)
    check_matmul(lesson, name, x_q, torch.zeros(6, 30, dtype=torch.int8), "with all-zero weights")


@pytest.mark.parametrize("name", MATMULS)
@pytest.mark.parametrize("x", [127, -127])
@pytest.mark.parametrize("w", [1, -1])
def test_largest_sums(lesson, name, x, w):
    """Every activation at +-127 and every weight +1 or -1: sums of +-127 K = +-38,227, beyond int16."""
    k = 301
    x_q = torch.full((2, k), x, dtype=torch.int8)
    w_t = torch.full((3, k), w, dtype=torch.int8)
    check_matmul(lesson, name, x_q, w_t, f"with every activation {x} and every weight {w:+d}")


@pytest.mark.parametrize("name", MATMULS)
def test_never_multiplies(lesson, name):
    with CallRecorder() as rec:  # the recorder itself: it must see a matmul when there is one
        torch.ones(2, 3, dtype=torch.int32) @ torch.ones(3, 2, dtype=torch.int32)
    assert rec.names & MULTIPLIES, "the grader's recorder does not see matmuls"
    x_q, w_t = random_case(5, 12, 64, seed=5)
    check_matmul(lesson, name, x_q, w_t)  # fails with the names of the products it called, if any
