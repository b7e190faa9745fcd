"""Graders of lesson 2 (the bigram model), against babybitnet.bigram."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from babybitnet import bigram as ref
from babybitnet.course.grading import assert_close, assert_same

pytestmark = pytest.mark.lesson02

ids_and_vocab = st.integers(1, 8).flatmap(lambda V: st.tuples(st.lists(st.integers(0, V - 1), max_size=40), st.just(V)))


@pytest.mark.exercise("2.1")
def test_count_bigrams_by_hand(lesson):
    count_bigrams = lesson.get("count_bigrams")
    tokens = torch.tensor([0, 1, 1, 0])  # "abba": pairs ab, bb, ba
    assert_same(
        count_bigrams(tokens, 3),
        torch.tensor([[0, 1, 0], [1, 1, 0], [0, 0, 0]]),
        "count_bigrams(tensor([0, 1, 1, 0]), 3)",
    )


@pytest.mark.exercise("2.1")
def test_count_bigrams_edge_cases(lesson):
    count_bigrams = lesson.get("count_bigrams")
    zeros = torch.zeros(4, 4, dtype=torch.long)
    assert_same(count_bigrams(torch.tensor([2]), 4), zeros, "count_bigrams of a single token (no pair)")
    assert_same(count_bigrams(torch.tensor([], dtype=torch.long), 4), zeros, "count_bigrams of no tokens")
    same = torch.full((6,), 3)
    assert_same(count_bigrams(same, 4), ref.count_bigrams(same, 4), "count_bigrams of 6 equal tokens")


@pytest.mark.exercise("2.1")
def test_count_bigrams_matches_reference(lesson):
    count_bigrams = lesson.get("count_bigrams")

    @settings(max_examples=50, deadline=None)
    @given(ids_and_vocab)
    def check(case):
        ids, V = case
        tokens = torch.tensor(ids, dtype=torch.long)
        assert_same(count_bigrams(tokens, V), ref.count_bigrams(tokens, V), f"count_bigrams({ids}, {V})")

    check()
    text = torch.randint(65, (5000,), generator=torch.Generator().manual_seed(0))
    assert_same(count_bigrams(text, 65), ref.count_bigrams(text, 65), "count_bigrams of 5000 random tokens")


@pytest.mark.exercise("2.2")
def test_bigram_nll_by_hand(lesson):
    bigram_nll = lesson.get("bigram_nll")
    probs = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    expected = torch.tensor(-(math.log(0.75) + math.log(0.5)) / 2)
    assert_close(bigram_nll(torch.tensor([0, 1, 1]), probs), expected, "bigram_nll([0, 1, 1], probs)")
    uniform = torch.full((65, 65), 1 / 65)
    assert_close(
        bigram_nll(torch.tensor([3, 1, 4, 1, 5]), uniform), torch.tensor(math.log(65)), "NLL of uniform guessing"
    )


@pytest.mark.exercise("2.2")
def test_bigram_nll_edge_cases(lesson):
    bigram_nll = lesson.get("bigram_nll")
    probs = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    tokens = torch.tensor([1, 0])  # a single pair
    assert_close(bigram_nll(tokens, probs), ref.bigram_nll(tokens, probs), "bigram_nll of a single pair")
    impossible = torch.tensor([0, 0, 1])  # 0 -> 0 has probability 0
    assert_same(bigram_nll(impossible, probs), torch.tensor(math.inf), "bigram_nll of a pair with probability 0")
    certain = torch.tensor([0, 1, 1, 0, 1])
    p = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert_close(bigram_nll(certain, p), ref.bigram_nll(certain, p), "bigram_nll([0, 1, 1, 0, 1], probs)")


@pytest.mark.exercise("2.2")
def test_bigram_nll_matches_reference(lesson):
    bigram_nll = lesson.get("bigram_nll")

    @settings(max_examples=50, deadline=None)
    @given(
        st.integers(1, 8).flatmap(
            lambda V: st.tuples(
                st.lists(st.integers(0, V - 1), min_size=2, max_size=40), st.just(V), st.integers(0, 2**16)
            )
        )
    )
    def check(case):
        ids, V, seed = case
        probs = F.softmax(torch.randn(V, V, generator=torch.Generator().manual_seed(seed)), dim=-1)
        tokens = torch.tensor(ids, dtype=torch.long)
        assert_close(bigram_nll(tokens, probs), ref.bigram_nll(tokens, probs), f"bigram_nll({ids}, probs)")

    check()


def _models(lesson, V: int, seed: int = 0):
    """The learner's model and the reference, with the same random table."""
    Model = lesson.get("BigramLanguageModel")
    torch.manual_seed(seed)
    expected = ref.BigramLanguageModel(V)
    torch.nn.init.normal_(expected.token_embedding_table.weight)
    got = Model(V)
    got.load_state_dict(expected.state_dict())
    return got, expected


@pytest.mark.exercise("2.3")
def test_bigram_model_forward_matches_reference(lesson):
    got, expected = _models(lesson, 11)
    g = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(11, (3, 7), generator=g), torch.randint(11, (3, 7), generator=g)
    logits, loss = got(idx, targets)
    ref_logits, ref_loss = expected(idx, targets)
    assert_close(logits, ref_logits, "logits of model(idx, targets)")
    assert_close(loss, ref_loss, "loss of model(idx, targets)")
    assert loss.requires_grad, "the loss must come from the table through torch operations, so it can be trained"
    logits, loss = got(idx)
    assert_close(logits, ref_logits, "logits of model(idx) without targets")
    assert_same(loss, None, "loss of model(idx) without targets")


@pytest.mark.exercise("2.3")
def test_bigram_model_single_token_and_start(lesson):
    got, expected = _models(lesson, 5, seed=3)
    idx, targets = torch.tensor([[4]]), torch.tensor([[2]])
    assert_close(got(idx, targets)[0], expected(idx, targets)[0], "logits for a single token")
    assert_close(got(idx, targets)[1], expected(idx, targets)[1], "loss for a single token")
    fresh = lesson.get("BigramLanguageModel")(65)
    _, loss = fresh(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
    assert_close(loss, torch.tensor(math.log(65)), "loss of an untrained model (all logits 0: ln 65)")


@pytest.mark.exercise("2.3")
def test_bigram_model_matches_reference_on_random_batches(lesson):
    Model = lesson.get("BigramLanguageModel")

    @settings(max_examples=25, deadline=None)
    @given(st.integers(1, 9), st.integers(1, 4), st.integers(1, 9), st.integers(0, 2**16))
    def check(V, B, T, seed):
        torch.manual_seed(seed)
        expected = ref.BigramLanguageModel(V)
        torch.nn.init.normal_(expected.token_embedding_table.weight)
        got = Model(V)
        got.load_state_dict(expected.state_dict())
        g = torch.Generator().manual_seed(seed)
        idx, targets = torch.randint(V, (B, T), generator=g), torch.randint(V, (B, T), generator=g)
        what = f"model(idx, targets) with V={V}, idx of shape {(B, T)}"
        for part, a, b in zip(("logits", "loss"), got(idx, targets), expected(idx, targets), strict=True):
            assert_close(a, b, f"{part} of {what}")

    check()
