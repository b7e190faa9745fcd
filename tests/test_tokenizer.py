"""The tokenizers behind one interface: characters and a byte-level BPE trained here, stored as plain data."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from babybitnet.data import CharTokenizer, load_text
from babybitnet.tokenizer import (
    BPETokenizer,
    Tokenizer,
    encode_array,
    fingerprint,
    tokenizer_from_dict,
    tokenizer_kind,
)


@functools.cache
def bpe() -> BPETokenizer:
    """A 400-token BPE learnt from the first 100 kB of Tiny Shakespeare (a second or so)."""
    text = load_text()[:100_000]
    return BPETokenizer.train((text[i : i + 10_000] for i in range(0, len(text), 10_000)), 400)


def test_bpe_has_the_vocabulary_asked_for_and_compresses_its_corpus():
    tok = bpe()
    assert tok.vocab_size == 400
    text = load_text()[:20_000]
    ids = tok.encode(text)
    assert max(ids) < 400
    assert len(ids) < 0.6 * len(text.encode())  # merges: far fewer tokens than bytes


@settings(max_examples=200, deadline=None)
@given(st.text())  # any Unicode string (hypothesis leaves out lone surrogates, which UTF-8 cannot encode)
def test_bpe_round_trips_any_text_exactly(text):
    tok = bpe()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=64))
def test_bpe_covers_every_byte_even_those_the_corpus_lacks(raw):
    text = raw.decode("utf-8", errors="replace") + "\x00\x7f\u00e9\u4e2d\U0001f600"
    assert bpe().decode(bpe().encode(text)) == text


def test_both_tokenizers_have_the_interface():
    for tok in (CharTokenizer("abc"), bpe()):
        assert isinstance(tok, Tokenizer)
        assert tok.decode(torch.tensor(tok.encode("abc"))) == "abc"  # decode takes a tensor too (sample does)


def test_bpe_stored_as_a_dict_encodes_the_same():
    tok = bpe()
    d = json.loads(json.dumps(tok.to_dict()))  # the dict survives JSON: it is stored in meta.json and headers
    again = tokenizer_from_dict(d)
    assert isinstance(again, BPETokenizer) and tokenizer_kind(again) == "bpe"
    text = load_text()[50_000:51_000]
    assert again.encode(text) == tok.encode(text) and fingerprint(again) == fingerprint(tok)


def test_a_char_tokenizer_dict_stays_as_before():
    tok = CharTokenizer("hello world")
    assert tok.to_dict() == {"chars": " dehlorw"}  # what checkpoints written before BPE hold
    again = tokenizer_from_dict({"chars": " dehlorw"})
    assert isinstance(again, CharTokenizer) and tokenizer_kind(again) == "char"
    assert again.encode("world") == tok.encode("world")
    assert fingerprint(again) != fingerprint(CharTokenizer("hello worlds"))


@pytest.mark.parametrize(
    "d, match",
    [
        ("abc", "is a dict"),
        ({"chars": 5}, "got keys"),
        ({"kind": "wordpiece"}, "got keys"),
        ({"kind": "bpe", "json": "{not json"}, "does not load"),
        ({"kind": "bpe"}, "'json'"),
        ({"chars": ""}, "at least one character"),
    ],
)
def test_a_bad_tokenizer_dict_is_a_one_line_error(d, match):
    with pytest.raises(ValueError, match=match) as e:
        tokenizer_from_dict(d)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("size", [0, 1, 256, -5, True])
def test_a_bpe_needs_more_than_the_256_bytes(size):
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train(["some text"], size)


def test_more_merges_than_the_corpus_supports_is_refused():
    # "abab" is one pre-token: merges ab, then abab; a third merge does not exist
    assert BPETokenizer.train(["abab"], 258).vocab_size == 258
    with pytest.raises(ValueError, match="at most 258 tokens, not 300"):
        BPETokenizer.train(["abab"], 300)


def test_decode_refuses_ids_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        bpe().decode([1, 400])


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ab\u00e9\u4e2d\U0001f600\n"))
def test_encode_array_is_encode_for_chars(text):
    tok = CharTokenizer("ab\u00e9\u4e2d\U0001f600\n")
    got = encode_array(tok, text, np.dtype(np.uint16))
    assert got.dtype == np.uint16 and got.tolist() == tok.encode(text)


def test_encode_array_names_unknown_characters():
    with pytest.raises(ValueError, match=r"\['z'\]"):
        encode_array(CharTokenizer("abc"), "abz", np.dtype(np.uint16))
    assert encode_array(bpe(), "to be", np.dtype(np.uint32)).tolist() == bpe().encode("to be")
