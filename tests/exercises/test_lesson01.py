"""Graders of lesson 1 (01_data): the vocabulary, the tokenizer, the split and random batches.

Each exercise is compared with ``babybitnet.data`` on random inputs (hypothesis)
and on edge cases; a few checks are properties that hold whatever the random
numbers (y is x one token later, the last window can be drawn).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from babybitnet import data as ref
from babybitnet.course.grading import assert_same

pytestmark = pytest.mark.lesson01

texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=200)


def r(text: str, limit: int = 40) -> str:
    """A short repr of a text for messages."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def short(chars: list[str], limit: int = 8) -> str:
    """A short repr of a list of characters for messages."""
    return repr(chars) if len(chars) <= limit else repr(chars[:limit])[:-1] + f", ...] ({len(chars)} characters)"


def pair(got: object, what: str) -> tuple:
    """``got`` as a pair, or a failure that says what came back instead."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        kind = f"{len(got)} items" if isinstance(got, (tuple, list)) else type(got).__name__
        raise AssertionError(f"{what} should return a pair of tensors, got {kind}")
    return tuple(got)


# ---------------------------------------------------------------------------------------------
# Exercise 1.1: build_vocab


@pytest.mark.exercise("1.1")
@given(text=texts)
@example(text="a")
@example(text="hello")
@example(text="aaaa")
@example(text="ba\n \n")
@example(text="Zebra zoo")
def test_build_vocab_matches_reference(lesson, text):
    build_vocab = lesson.get("build_vocab")
    assert_same(build_vocab(text), ref.build_vocab(text), f"build_vocab({r(text)})")


@pytest.mark.exercise("1.1")
def test_build_vocab_of_tiny_shakespeare(lesson):
    build_vocab = lesson.get("build_vocab")
    text = ref.load_text()
    assert_same(build_vocab(text), ref.build_vocab(text), "build_vocab(Tiny Shakespeare)")


# ---------------------------------------------------------------------------------------------
# Exercise 1.2: CharTokenizer


@pytest.mark.exercise("1.2")
@given(text=texts)
@example(text="a")
@example(text="hello world\n")
def test_tokenizer_tables_match_reference(lesson, text):
    CharTokenizer = lesson.get("CharTokenizer")
    want = ref.CharTokenizer(text)
    tok = CharTokenizer(list(want.chars))
    assert_same(tok.itos, want.chars, f"CharTokenizer({short(want.chars)}).itos")
    assert_same(tok.stoi, want.stoi, f"CharTokenizer({short(want.chars)}).stoi")


@pytest.mark.exercise("1.2")
@given(vocab=texts, data=st.data())
@example(vocab="abc", data=None)
def test_encode_and_decode_match_reference(lesson, vocab, data):
    CharTokenizer = lesson.get("CharTokenizer")
    want = ref.CharTokenizer(vocab)
    s = "cab" if data is None else data.draw(st.text(st.sampled_from(want.chars), max_size=100), label="s")
    tok = CharTokenizer(list(want.chars))
    assert_same(tok.encode(s), want.encode(s), f"encode({r(s)})")
    ids = want.encode(s)
    shown = repr(ids) if len(ids) <= 12 else repr(ids[:12])[:-1] + ", ...]"
    assert_same(tok.decode(ids), s, f"decode({shown})")


@pytest.mark.exercise("1.2")
def test_empty_text_encodes_to_an_empty_list(lesson):
    tok = lesson.get("CharTokenizer")(["a", "b"])
    assert_same(tok.encode(""), [], "encode('')")
    assert_same(tok.decode([]), "", "decode([])")


@pytest.mark.exercise("1.2")
@given(chars=st.lists(st.characters(codec="utf-8"), min_size=1, max_size=40, unique=True))
def test_ids_are_positions_in_chars_in_any_order(lesson, chars):
    tok = lesson.get("CharTokenizer")(chars)
    joined = "".join(chars)
    assert_same(tok.encode(joined), list(range(len(chars))), f"CharTokenizer({short(chars)}).encode({r(joined)})")
    assert_same(tok.decode(list(range(len(chars)))), joined, f"CharTokenizer({short(chars)}).decode([0, 1, 2, ...])")


@pytest.mark.exercise("1.2")
def test_tokenizer_round_trips_tiny_shakespeare(lesson):
    text = ref.load_text()
    want = ref.CharTokenizer(text)
    tok = lesson.get("CharTokenizer")(list(want.chars))
    ids = tok.encode(text)
    assert_same(ids, want.encode(text), "encode(Tiny Shakespeare)")
    assert_same(tok.decode(ids), text, "decode(encode(Tiny Shakespeare))")


# ---------------------------------------------------------------------------------------------
# Exercise 1.3: train_val_split


@pytest.mark.exercise("1.3")
@given(n=st.integers(1, 3000), frac=st.floats(0.01, 0.99), seed=st.integers(0, 2**31 - 1))
@example(n=10, frac=0.9, seed=0)
@example(n=10, frac=0.7, seed=0)  # 0.7 * 10 is 7.000000000000001 in floating point
@example(n=15, frac=0.9, seed=0)  # 13.5: rounded down, not to the nearest
@example(n=1, frac=0.5, seed=0)
@example(n=2, frac=0.5, seed=0)
def test_split_matches_reference(lesson, n, frac, seed):
    split = lesson.get("train_val_split")
    data = torch.randint(0, 65, (n,), generator=torch.Generator().manual_seed(seed))
    what = f"train_val_split(data of {n} tokens, train_frac={frac!r})"
    train, val = pair(split(data, frac), what)
    want_train, want_val = ref.train_val_split(data, frac)
    assert_same(train, want_train, f"train of {what}")
    assert_same(val, want_val, f"val of {what}")


@pytest.mark.exercise("1.3")
@pytest.mark.parametrize("n", [10, 100, 1001])
def test_split_default_is_90_10(lesson, n):
    data = torch.arange(n)
    what = f"train_val_split(torch.arange({n}))"
    train, val = pair(lesson.get("train_val_split")(data), what)
    want_train, want_val = ref.train_val_split(data)
    assert_same(train, want_train, f"train of {what}")
    assert_same(val, want_val, f"val of {what}")


# ---------------------------------------------------------------------------------------------
# Exercise 1.4: get_batch

DRAW = "torch.randint(len(data) - block_size, (batch_size,), generator=generator)"


@pytest.mark.exercise("1.4")
@given(
    extra=st.integers(1, 200),
    batch_size=st.integers(1, 8),
    block_size=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
)
@example(extra=1, batch_size=1, block_size=1, seed=0)
@example(extra=1, batch_size=4, block_size=8, seed=1337)
@example(extra=1000, batch_size=16, block_size=32, seed=1337)
def test_get_batch_matches_reference(lesson, extra, batch_size, block_size, seed):
    get_batch = lesson.get("get_batch")
    n = block_size + extra
    data = torch.randint(0, 65, (n,), generator=torch.Generator().manual_seed(seed))
    what = f"get_batch(data of {n} tokens, batch_size={batch_size}, block_size={block_size}, generator seeded {seed})"
    x, y = pair(get_batch(data, batch_size, block_size, torch.Generator().manual_seed(seed)), what)
    want_x, want_y = ref.get_batch(data, batch_size, block_size, torch.Generator().manual_seed(seed))
    for name, got, want in (("x", x, want_x), ("y", y, want_y)):
        try:
            assert_same(got, want, f"{name} of {what}")
        except AssertionError as e:
            if "mismatch" not in str(e):
                raise
            if name == "x":
                raise AssertionError(f"{e}; are the starts drawn with exactly {DRAW}?") from None
            # x matched, so the starts are right: y itself is off
            raise AssertionError(
                f"{e}; each y should be its x one token later: data[i + 1 : i + 1 + block_size]"
            ) from None


@pytest.mark.exercise("1.4")
@given(
    extra=st.integers(1, 100),
    batch_size=st.integers(1, 8),
    block_size=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
)
def test_each_y_is_its_x_one_token_later(lesson, extra, batch_size, block_size, seed):
    get_batch = lesson.get("get_batch")
    n = block_size + extra
    data = torch.arange(100, 100 + n)  # distinct ids: each window shows where it starts
    what = f"get_batch(torch.arange(100, {100 + n}), batch_size={batch_size}, block_size={block_size})"
    x, y = pair(get_batch(data, batch_size, block_size, torch.Generator().manual_seed(seed)), what)
    assert_same(tuple(x.shape), (batch_size, block_size), f"x.shape of {what}")
    assert_same(x.dtype, torch.long, f"x.dtype of {what}")
    assert_same(x[:, 1:] - x[:, :-1], torch.ones(batch_size, block_size - 1, dtype=torch.long),
                f"steps between neighbours in x of {what} (a window is consecutive tokens)")  # fmt: skip
    assert_same(y, x + 1, f"y of {what} (each y should be its x one token later)")
    if not (x.min() >= 100 and y.max() <= 99 + n):
        raise AssertionError(f"{what}: a window reaches outside the data")


@pytest.mark.exercise("1.4")
@pytest.mark.parametrize("block_size", [1, 5, 32])
def test_every_window_can_be_drawn(lesson, block_size):
    # With block_size + 2 tokens there are exactly two windows; 256 draws show both.
    data = torch.arange(block_size + 2)
    x, _ = pair(lesson.get("get_batch")(data, 256, block_size, torch.Generator().manual_seed(0)), "get_batch")
    starts = sorted(set(x[:, 0].tolist()))
    if starts != [0, 1]:
        raise AssertionError(
            f"256 batches from data of {block_size + 2} tokens with block_size={block_size} started at {starts}; "
            "expected both possible starts 0 and 1 (the last window, data[1:], must be possible too)"
        )


@pytest.mark.exercise("1.4")
def test_get_batch_works_without_a_generator(lesson):
    x, y = pair(lesson.get("get_batch")(torch.arange(50), 3, 4), "get_batch(torch.arange(50), 3, 4)")
    assert_same(tuple(x.shape), (3, 4), "x.shape of get_batch(torch.arange(50), 3, 4)")
    assert_same(y, x + 1, "y of get_batch(torch.arange(50), 3, 4)")
