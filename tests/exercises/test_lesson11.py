"""Graders of lesson 11 (11_packing): 2-bit and base-3 packing of ternary weights, and unpacking.

Compared with ``babybitnet.packing`` on random shapes (hypothesis: 1 to 3
dimensions, rows of 1 to 70 weights, multiples of 4 and 5 and not), the
worked example [-1, 0, 1, 1] (164 in 2 bits, 156 in base 3), a single weight,
all zeros, all -1, all +1, (N, C) and (B, T, C) shapes; unpacking gets bytes
from the reference packer and the right n, so the padding must be dropped;
and the learner's own round trip unpack(pack(w)) == w.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet import packing as ref
from babybitnet.course.grading import assert_same

pytestmark = pytest.mark.lesson11

WORKED = [-1, 0, 1, 1]
PER_BYTE = {"2bit": 4, "base3": 5}  # weights per byte


def ternary(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random ternary int8 weights of ``shape``."""
    return torch.randint(-1, 2, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


def edge_cases() -> dict[str, torch.Tensor]:
    return {
        "a single weight": torch.tensor([1], dtype=torch.int8),
        "a single -1 in a (1, 1) matrix": torch.tensor([[-1]], dtype=torch.int8),
        "all zeros (3, 7)": torch.zeros(3, 7, dtype=torch.int8),
        "all -1 (2, 9)": torch.full((2, 9), -1, dtype=torch.int8),
        "all +1 (4, 20)": torch.ones(4, 20, dtype=torch.int8),
        "(N, C) = (6, 64)": ternary((6, 64), 1),
        "(N, C) = (5, 13)": ternary((5, 13), 2),
        "(B, T, C) = (2, 3, 37)": ternary((2, 3, 37), 3),
        "(B, T, C) = (2, 4, 40)": ternary((2, 4, 40), 4),
    }


EDGE_IDS = list(edge_cases())


def check_pack(pack, fmt: str, w: torch.Tensor, what: str) -> None:
    """pack(w) against the reference: a uint8 tensor of the right shape and bytes; w left unchanged."""
    name = "pack_2bit" if fmt == "2bit" else "pack_base3"
    k = PER_BYTE[fmt]
    before = w.clone()
    got = pack(w)
    want = ref.pack(w, fmt)
    call = f"{name}(w) for w = {what}, int8 of shape {tuple(w.shape)}"
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{call} should return a torch.Tensor of dtype uint8, got {type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(
            f"{call}: expected shape {tuple(want.shape)} ({w.shape[-1]} weights per row need "
            f"ceil({w.shape[-1]}/{k}) = {want.shape[-1]} bytes, the other dimensions unchanged), "
            f"got {tuple(got.shape)}"
        )
    if got.dtype != torch.uint8:
        raise AssertionError(f"{call} should return bytes, dtype torch.uint8, got {got.dtype} (use .to(torch.uint8))")
    assert_same(got, want, call)
    if not torch.equal(w, before):
        raise AssertionError(f"{call} changed its input w; pack a copy (w + 1 makes a new tensor)")


def check_unpack(unpack, fmt: str, w: torch.Tensor, what: str) -> None:
    """unpack(reference pack(w), n) == w: int8, the padding dropped."""
    name = "unpack_2bit" if fmt == "2bit" else "unpack_base3"
    n = w.shape[-1]
    packed = ref.pack(w, fmt)
    got = unpack(packed.clone(), n)
    call = f"{name}(packed, n={n}) for packed of shape {tuple(packed.shape)} (from {what})"
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{call} should return a torch.Tensor of dtype int8, got {type(got).__name__}")
    if tuple(got.shape) != tuple(w.shape):
        pad = packed.shape[-1] * PER_BYTE[fmt] - n
        hint = f"; drop the {pad} padding weight(s) of each row with [..., :n]" if pad else ""
        raise AssertionError(f"{call}: expected shape {tuple(w.shape)}, got {tuple(got.shape)}{hint}")
    if got.dtype != torch.int8:
        raise AssertionError(f"{call} should return int8 weights, got dtype {got.dtype} (use .to(torch.int8))")
    assert_same(got, w, call)


# ---------------------------------------------------------------------------------------------
# The worked examples of the lesson


@pytest.mark.exercise("11.1")
def test_pack_2bit_worked_example(lesson):
    pack = lesson.get("pack_2bit")
    w = torch.tensor(WORKED, dtype=torch.int8)
    assert_same(pack(w), torch.tensor([164], dtype=torch.uint8), "pack_2bit([-1, 0, 1, 1]) (codes 0, 1, 2, 2)")
    w = torch.tensor([-1, 0, 1], dtype=torch.int8)
    assert_same(pack(w), torch.tensor([100], dtype=torch.uint8), "pack_2bit([-1, 0, 1]) (padded with code 0b01)")


@pytest.mark.exercise("11.2")
def test_unpack_2bit_worked_example(lesson):
    unpack = lesson.get("unpack_2bit")
    got = unpack(torch.tensor([164], dtype=torch.uint8), 4)
    assert_same(got, torch.tensor(WORKED, dtype=torch.int8), "unpack_2bit([164], n=4)")
    got = unpack(torch.tensor([100], dtype=torch.uint8), 3)
    assert_same(got, torch.tensor([-1, 0, 1], dtype=torch.int8), "unpack_2bit([100], n=3) (one padding code)")


@pytest.mark.exercise("11.3")
def test_pack_base3_worked_example(lesson):
    pack = lesson.get("pack_base3")
    w = torch.tensor(WORKED, dtype=torch.int8)
    assert_same(pack(w), torch.tensor([156], dtype=torch.uint8), "pack_base3([-1, 0, 1, 1]) (with one padding trit 1)")
    assert_same(pack(torch.ones(5, dtype=torch.int8)), torch.tensor([242], dtype=torch.uint8), "pack_base3([1] * 5)")
    assert_same(pack(torch.zeros(5, dtype=torch.int8)), torch.tensor([121], dtype=torch.uint8), "pack_base3([0] * 5)")


@pytest.mark.exercise("11.4")
def test_unpack_base3_worked_example(lesson):
    unpack = lesson.get("unpack_base3")
    got = unpack(torch.tensor([156], dtype=torch.uint8), 4)
    assert_same(got, torch.tensor(WORKED, dtype=torch.int8), "unpack_base3([156], n=4)")
    every = torch.arange(243, dtype=torch.uint8)
    want = ref.unpack_base3(every, 5 * 243)
    assert_same(unpack(every, 5 * 243), want, "unpack_base3(all 243 bytes 0..242, n=1215)")


# ---------------------------------------------------------------------------------------------
# Against the reference: edge cases, (N, C) and (B, T, C)


@pytest.mark.exercise("11.1")
@pytest.mark.parametrize("case", EDGE_IDS)
def test_pack_2bit_matches_reference(lesson, case):
    check_pack(lesson.get("pack_2bit"), "2bit", edge_cases()[case], case)


@pytest.mark.exercise("11.2")
@pytest.mark.parametrize("case", EDGE_IDS)
def test_unpack_2bit_matches_reference(lesson, case):
    check_unpack(lesson.get("unpack_2bit"), "2bit", edge_cases()[case], case)


@pytest.mark.exercise("11.3")
@pytest.mark.parametrize("case", EDGE_IDS)
def test_pack_base3_matches_reference(lesson, case):
    check_pack(lesson.get("pack_base3"), "base3", edge_cases()[case], case)


@pytest.mark.exercise("11.4")
@pytest.mark.parametrize("case", EDGE_IDS)
def test_unpack_base3_matches_reference(lesson, case):
    check_unpack(lesson.get("unpack_base3"), "base3", edge_cases()[case], case)


# ---------------------------------------------------------------------------------------------
# Random shapes (hypothesis)

random_shapes = given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    n=st.integers(1, 70),
    seed=st.integers(0, 2**16),
)
some_sizes = [
    example(lead=[], n=1, seed=0),
    example(lead=[3], n=4, seed=1),
    example(lead=[3], n=5, seed=2),
    example(lead=[2, 3], n=70, seed=3),
    example(lead=[1], n=69, seed=4),
]


def with_examples(test):
    for ex in some_sizes:
        test = ex(test)
    return settings(max_examples=30, deadline=None)(random_shapes(test))


@pytest.mark.exercise("11.1")
@with_examples
def test_pack_2bit_random_shapes(lesson, lead, n, seed):
    w = ternary((*lead, n), seed)
    check_pack(lesson.get("pack_2bit"), "2bit", w, "random weights")


@pytest.mark.exercise("11.2")
@with_examples
def test_unpack_2bit_random_shapes(lesson, lead, n, seed):
    w = ternary((*lead, n), seed)
    check_unpack(lesson.get("unpack_2bit"), "2bit", w, "random weights")


@pytest.mark.exercise("11.3")
@with_examples
def test_pack_base3_random_shapes(lesson, lead, n, seed):
    w = ternary((*lead, n), seed)
    check_pack(lesson.get("pack_base3"), "base3", w, "random weights")


@pytest.mark.exercise("11.4")
@with_examples
def test_unpack_base3_random_shapes(lesson, lead, n, seed):
    w = ternary((*lead, n), seed)
    check_unpack(lesson.get("unpack_base3"), "base3", w, "random weights")


# ---------------------------------------------------------------------------------------------
# The learner's own round trip (graded with the unpacking exercise)


def round_trip(lesson, fmt: str, shape: tuple[int, ...]) -> None:
    """unpack(pack(w), n) == w with the learner's two functions.

    The pack of the other exercise is the learner's when written, else the
    reference's: a missing pack_* does not fail the unpack exercise.
    """
    pack_name, unpack_name = ("pack_2bit", "unpack_2bit") if fmt == "2bit" else ("pack_base3", "unpack_base3")
    unpack = lesson.get(unpack_name)
    w = ternary(shape, len(shape) + shape[-1])
    n = shape[-1]
    check_unpack(unpack, fmt, w, f"random weights of shape {shape}")
    try:
        packed = lesson.get(pack_name)(w)
        source = f"{unpack_name}({pack_name}(w), n={n}), both yours (if {pack_name} is wrong, fix it first)"
    except NotImplementedError:
        packed = ref.pack(w, fmt)
        source = f"{unpack_name}(the package's {pack_name}(w), n={n}) (yours is not written yet)"
    got = unpack(packed, n)
    assert_same(got, w, f"{source}, for w of shape {shape}")


@pytest.mark.exercise("11.2")
@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 13), (2, 5, 37), (4, 64)], ids=str)
def test_2bit_round_trip(lesson, shape):
    round_trip(lesson, "2bit", shape)


@pytest.mark.exercise("11.4")
@pytest.mark.parametrize("shape", [(1,), (7,), (10,), (3, 13), (2, 5, 37), (4, 64)], ids=str)
def test_base3_round_trip(lesson, shape):
    round_trip(lesson, "base3", shape)
