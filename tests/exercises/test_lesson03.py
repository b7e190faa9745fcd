"""Graders of lesson 3 (attention), against babybitnet.attention."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from babybitnet import attention as ref
from babybitnet.course.grading import assert_close

pytestmark = pytest.mark.lesson03

seeds = st.integers(0, 2**16)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.exercise("3.1")
def test_causal_average_by_hand(lesson):
    causal_average = lesson.get("causal_average")
    x = torch.tensor([[[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]]])  # (1, 3, 2)
    expected = torch.tensor([[[1.0, 10.0], [2.0, 15.0], [3.0, 30.0]]])
    assert_close(causal_average(x), expected, "causal_average of [[1, 10], [3, 20], [5, 60]]")


@pytest.mark.exercise("3.1")
def test_causal_average_edge_cases(lesson):
    causal_average = lesson.get("causal_average")
    x = randn(3, 1, 4)
    assert_close(causal_average(x), x, "causal_average with T=1 (the average of one vector is itself)")
    ones = torch.ones(2, 6, 3)
    assert_close(causal_average(ones), ones, "causal_average of all ones")
    x = randn(2, 6, 3, seed=1)
    x2 = x.clone()
    x2[:, 4:] += 100.0  # change the future of position 3
    assert_close(causal_average(x2)[:, :4], causal_average(x)[:, :4], "causal_average[:, :4] after changing x[:, 4:]")


@pytest.mark.exercise("3.1")
def test_causal_average_matches_reference(lesson):
    causal_average = lesson.get("causal_average")

    @settings(max_examples=40, deadline=None)
    @given(st.integers(1, 4), st.integers(1, 12), st.integers(1, 6), seeds)
    def check(B, T, C, seed):
        x = randn(B, T, C, seed=seed)
        assert_close(causal_average(x), ref.causal_average(x), f"causal_average of x with shape {(B, T, C)}")

    check()


@pytest.mark.exercise("3.2")
def test_attention_weights_equal_scores(lesson):
    attention_weights = lesson.get("attention_weights")
    T = 5
    expected = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    zeros = torch.zeros(T, 3)
    assert_close(attention_weights(zeros, zeros, 1.0), expected, "attention_weights of all-equal scores")
    same = torch.ones(2, T, 3)  # every score equal, but not 0
    assert_close(attention_weights(same, same, 0.5), expected.expand(2, T, T), "attention_weights of equal scores")


@pytest.mark.exercise("3.2")
def test_attention_weights_edge_cases(lesson):
    attention_weights = lesson.get("attention_weights")
    q, k = randn(2, 1, 4), randn(2, 1, 4, seed=1)
    assert_close(attention_weights(q, k, 0.5), torch.ones(2, 1, 1), "attention_weights with T=1")
    q, k = randn(2, 6, 4, seed=2), randn(2, 6, 4, seed=3)
    big = attention_weights(q, k, 1000.0)  # huge scores: a one-hot softmax, no NaN
    assert_close(big, ref.attention_weights(q, k, 1000.0), "attention_weights with scale=1000", atol=1e-4)
    q, k = randn(6, 4, seed=4), randn(6, 4, seed=5)
    assert_close(attention_weights(q, k, 0.3), ref.attention_weights(q, k, 0.3), "attention_weights without batch")


@pytest.mark.exercise("3.2")
def test_attention_weights_match_reference(lesson):
    attention_weights = lesson.get("attention_weights")

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(st.integers(1, 3), max_size=2),
        st.integers(1, 10),
        st.integers(1, 8),
        st.floats(0.05, 3.0),
        seeds,
    )
    def check(batch, T, d, scale, seed):
        q, k = randn(*batch, T, d, seed=seed), randn(*batch, T, d, seed=seed + 1)
        got = attention_weights(q, k, scale)
        assert_close(got, ref.attention_weights(q, k, scale), f"attention_weights of q, k {(*batch, T, d)}, {scale=}")

    check()


def _heads(lesson, n_embd: int, head_size: int, seed: int = 0):
    """The learner's head and the reference, with the same weights."""
    Head = lesson.get("Head")
    torch.manual_seed(seed)
    expected = ref.Head(n_embd, head_size)
    got = Head(n_embd, head_size)
    got.load_state_dict(expected.state_dict())
    return got, expected


@pytest.mark.exercise("3.3")
def test_head_matches_reference(lesson):
    got, expected = _heads(lesson, 16, 8)
    x = randn(3, 7, 16)
    assert_close(got(x), expected(x), "Head(16, 8) on x of shape (3, 7, 16)")
    x = randn(2, 1, 16, seed=1)
    assert_close(got(x), expected(x), "Head(16, 8) on a single position, T=1")


@pytest.mark.exercise("3.3")
def test_head_is_causal(lesson):
    got, _ = _heads(lesson, 12, 6, seed=1)
    x = randn(2, 8, 12, seed=2)
    out = got(x)
    for t in range(7):
        x2 = x.clone()
        x2[:, t + 1 :] = randn(2, 7 - t, 12, seed=10 + t)  # change the future of position t
        assert_close(
            got(x2)[:, : t + 1], out[:, : t + 1], f"Head output at positions 0..{t} after changing x[:, {t + 1}:]"
        )


@pytest.mark.exercise("3.3")
def test_head_uses_the_scale(lesson):
    got, expected = _heads(lesson, 8, 64, seed=3)  # a large head: without 1/sqrt(64) the softmax saturates
    x = randn(2, 6, 8, seed=4) * 3
    assert_close(got(x), expected(x), f"Head(8, 64) (scores scaled by 1/sqrt(64) = {1 / math.sqrt(64)})")


@pytest.mark.exercise("3.3")
def test_head_matches_reference_on_random_sizes(lesson):
    Head = lesson.get("Head")

    @settings(max_examples=25, deadline=None)
    @given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 16), st.integers(1, 8), seeds)
    def check(B, T, n_embd, head_size, seed):
        torch.manual_seed(seed)
        expected = ref.Head(n_embd, head_size)
        got = Head(n_embd, head_size)
        got.load_state_dict(expected.state_dict())
        x = randn(B, T, n_embd, seed=seed)
        assert_close(got(x), expected(x), f"Head({n_embd}, {head_size}) on x of shape {(B, T, n_embd)}")

    check()
