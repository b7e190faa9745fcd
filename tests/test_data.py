import pytest
import torch

from babybitnet.data import CharTokenizer, get_batch, load_dataset, load_text, shakespeare_path, train_val_split


def test_shipped_shakespeare_is_the_expected_file():
    import hashlib

    raw = shakespeare_path().read_bytes()
    assert hashlib.md5(raw).hexdigest() == "6fb458f1232090904fb40fe944165e91"
    text = load_text()
    assert len(text) == 1_115_394
    assert CharTokenizer.from_text(text).vocab_size == 65


def test_encode_decode_round_trip():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world"))
    ids = tok.encode("hello")
    assert ids == [tok.stoi[c] for c in "hello"]
    assert tok.decode(ids) == "hello"
    assert tok.decode(torch.tensor(ids)) == "hello"
    assert CharTokenizer.from_dict(tok.to_dict()).chars == tok.chars


def test_unknown_character_is_a_clear_error():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="not in the vocabulary.*'z'"):
        tok.encode("abz")


def test_split_is_contiguous_90_10():
    data = torch.arange(100)
    train, val = train_val_split(data)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    with pytest.raises(ValueError):
        train_val_split(data, 1.5)


def test_batches_are_shifted_by_one_and_reproducible():
    data = torch.arange(1000)
    x, y = get_batch(data, 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y, x + 1)  # data is arange, so the target is the next integer
    x2, _ = get_batch(data, 8, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="block_size"):
        get_batch(torch.arange(5), 2, 5)


def test_other_text_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("to be or not to be, " * 20, encoding="utf-8")
    tok, train, val = load_dataset(p)
    assert tok.vocab_size == len(set("to be or not to be, "))
    assert len(train) + len(val) == 400


@pytest.mark.parametrize(
    "content, match",
    [(None, "not found"), (b"", "empty"), (b"\xff\xfe\xfa bad", "not UTF-8")],
)
def test_load_text_errors(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        load_text(p)


def test_directory_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        load_text(tmp_path)
