"""prepare: text -> a tokenizer and memory-mapped token files; training reads them from disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from babybitnet.cli import main
from babybitnet.data import CharTokenizer, get_batch, load_dataset, load_text, shakespeare_path
from babybitnet.files import load_checkpoint, load_packed, save_checkpoint, save_packed
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.prepare import (
    META,
    STDLIB,
    TRAIN,
    VAL,
    TokenDataset,
    check_tokenizer,
    corpus_files,
    data_record,
    load_corpus,
    load_prepared,
    prepare,
    stdlib_files,
    token_dtype,
)
from babybitnet.tokenizer import BPETokenizer
from babybitnet.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
MIXED = "Hé said: «ça va?» 中文 🎉\nsecond line\twith tab\n" * 40  # multi-byte characters across chunks


def all_tokens(ds: TokenDataset) -> np.ndarray:
    return np.concatenate([ds.train, ds.val])


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text(MIXED, encoding="utf-8")
    (folder / "a.txt").write_text(load_text()[:30_000], encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("the end\n", encoding="utf-8")
    (folder / ".hidden").write_bytes(b"\x00\xff not read")  # hidden: skipped, so no binary-file error
    return folder


def folder_text(folder: Path) -> str:
    return "".join((folder / n).read_text(encoding="utf-8") for n in ("a.txt", "b.txt", "sub/c.txt"))


# ---------------------------------------------------------------- prepare
def test_char_prepare_of_shakespeare_matches_load_dataset(tmp_path):
    meta = prepare(shakespeare_path(), tmp_path / "ds")
    ds = load_prepared(tmp_path / "ds", verify=True)
    tok, train_t, val_t = load_dataset()
    assert isinstance(ds.train, np.memmap) and ds.train.dtype == np.uint16
    assert ds.tokenizer.to_dict() == tok.to_dict() and meta["vocab_size"] == 65
    assert np.array_equal(ds.train, train_t.numpy()) and np.array_equal(ds.val, val_t.numpy())
    assert meta["tokens"] == {"train": len(train_t), "val": len(val_t)}
    assert meta["corpus"]["bytes"] == shakespeare_path().stat().st_size
    assert meta["corpus"]["files"] == [shakespeare_path().name]


@pytest.mark.parametrize("kind, vocab", [("char", None), ("bpe", 300)])
@pytest.mark.parametrize("chunk", [7, 1 << 20])  # 7 bytes: pieces split inside lines and inside characters
def test_the_tokens_decode_to_the_corpus_exactly(corpus, tmp_path, kind, vocab, chunk):
    meta = prepare(corpus, tmp_path / "ds", kind, vocab, chunk_bytes=chunk)
    ds = load_prepared(tmp_path / "ds", verify=True)
    text = folder_text(corpus)
    assert ds.tokenizer.decode(all_tokens(ds).tolist()) == text
    assert meta["corpus"]["files"] == ["a.txt", "b.txt", "sub/c.txt"]
    assert meta["corpus"]["bytes"] == len(text.encode())
    assert meta["tokenizer_kind"] == kind and ds.vocab_size == (vocab or len(set(text)))
    # the split is by bytes: train decodes to the first 90% of the corpus (to a character boundary)
    train_bytes = len(ds.tokenizer.decode(ds.train.tolist()).encode())
    assert abs(train_bytes - 0.9 * len(text.encode())) <= 4


def test_the_corpus_record_changes_with_any_file(corpus, tmp_path):
    first = prepare(corpus, tmp_path / "one")["corpus"]["sha256"]
    assert prepare(corpus, tmp_path / "two")["corpus"]["sha256"] == first  # the same files: the same hash
    (corpus / "sub" / "c.txt").write_text("the end!\n", encoding="utf-8")
    assert prepare(corpus, tmp_path / "three")["corpus"]["sha256"] != first
    (corpus / "sub" / "c.txt").rename(corpus / "sub" / "d.txt")  # same bytes, another name
    assert prepare(corpus, tmp_path / "four")["corpus"]["sha256"] != first


def test_meta_json_says_how_to_read_the_files(corpus, tmp_path):
    prepare(corpus, tmp_path / "ds", "bpe", 280)
    meta = json.loads((tmp_path / "ds" / META).read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 280
    for name, split in ((TRAIN, "train"), (VAL, "val")):
        raw = (tmp_path / "ds" / name).read_bytes()
        assert len(raw) == 2 * meta["tokens"][split]
        assert hashlib.sha256(raw).hexdigest() == meta["sha256"][name]
    assert BPETokenizer.from_dict(meta["tokenizer"]).vocab_size == 280
    assert not list((tmp_path / "ds").glob(".*.tmp"))  # the temporaries were renamed


def test_token_dtype():
    assert token_dtype(65) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32 and token_dtype(200_000) == np.uint32


def test_a_given_tokenizer_is_reused(corpus, tmp_path):
    tok = CharTokenizer(folder_text(corpus) + "\u2603\u2604")  # two characters the corpus lacks
    meta = prepare(corpus, tmp_path / "ds", tok)
    ds = load_prepared(tmp_path / "ds")
    assert meta["tokenizer"] == tok.to_dict()
    check_tokenizer(ds, tok)  # the same: no error
    with pytest.raises(ValueError, match="another tokenizer"):
        check_tokenizer(ds, CharTokenizer(folder_text(corpus)))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        prepare(corpus, tmp_path / "other", CharTokenizer("abc"))


# ---------------------------------------------------------------- the standard library's source
def test_stdlib_leaves_out_tests_and_installed_packages(tmp_path):
    for rel in ("os.py", "json/decoder.py", "test/test_os.py", "json/tests/t.py", "site-packages/x/y.py", "a.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    assert [p.relative_to(tmp_path).as_posix() for p in stdlib_files(tmp_path)] == ["json/decoder.py", "os.py"]


def test_stdlib_is_a_corpus_of_megabytes():
    root, files = corpus_files(STDLIB)
    assert files and all(f.suffix == ".py" and f.is_relative_to(root) for f in files)
    assert not any({"test", "tests", "site-packages"} & set(f.relative_to(root).parts) for f in files)
    assert sum(f.stat().st_size for f in files) > 5_000_000  # CPython 3.11: 12.6 MB in 799 files


# ---------------------------------------------------------------- bad input: one-line errors
def _bad_inputs(tmp_path: Path) -> dict:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.txt").write_text("fine text\n")
    (tmp_path / "bin" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "nul.txt").write_bytes(b"text\x00more")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    (tmp_path / "tiny.txt").write_text("a")
    (tmp_path / "ok.txt").write_text("to be or not to be\n" * 5)
    (tmp_path / "afile").write_text("")
    return {
        "empty file": (dict(source=tmp_path / "empty.txt"), "is empty"),
        "empty folder": (dict(source=tmp_path / "emptydir"), "is empty"),
        "binary in a folder": (dict(source=tmp_path / "bin"), r"b\.png is not UTF-8"),
        "NUL bytes": (dict(source=tmp_path / "nul.txt"), r"nul\.txt holds NUL bytes"),
        "not UTF-8": (dict(source=tmp_path / "latin1.txt"), r"latin1\.txt is not UTF-8 text \(byte 3 is 0xe9\)"),
        "too small to split": (dict(source=tmp_path / "tiny.txt"), "too small to split"),
        "vocab below 257": (dict(source=tmp_path / "ok.txt", tokenizer="bpe", vocab_size=256), "at least 257"),
        "no vocab for bpe": (dict(source=tmp_path / "ok.txt", tokenizer="bpe"), "at least 257"),
        "vocab too large": (dict(source=tmp_path / "ok.txt", tokenizer="bpe", vocab_size=5000), "at most"),
        "vocab for char": (dict(source=tmp_path / "ok.txt", vocab_size=300), "--vocab-size is for bpe"),
        "unknown tokenizer": (dict(source=tmp_path / "ok.txt", tokenizer="word"), "must be one of"),
        "out is a file": (dict(source=tmp_path / "ok.txt", out=tmp_path / "afile"), "is a file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty file",
        "empty folder",
        "binary in a folder",
        "NUL bytes",
        "not UTF-8",
        "too small to split",
        "vocab below 257",
        "no vocab for bpe",
        "vocab too large",
        "vocab for char",
        "unknown tokenizer",
        "out is a file",
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path, case):
    kwargs, match = _bad_inputs(tmp_path)[case]
    kwargs.setdefault("out", tmp_path / "out")
    with pytest.raises(ValueError, match=match) as e:
        prepare(**kwargs)
    assert "\n" not in str(e.value)
    out = Path(kwargs["out"])
    assert not out.is_dir() or not (out / META).exists()


def test_a_missing_corpus_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        prepare(tmp_path / "nope.txt", tmp_path / "out")


# ---------------------------------------------------------------- reading a prepared dataset back
@pytest.fixture
def two_datasets(corpus, tmp_path) -> tuple[Path, Path]:
    prepare(corpus, tmp_path / "char")
    prepare(corpus, tmp_path / "bpe", "bpe", 300)
    return tmp_path / "char", tmp_path / "bpe"


def test_token_files_of_another_tokenizer_are_refused(two_datasets):
    char, bpe = two_datasets
    shutil.copy(bpe / TRAIN, char / TRAIN)  # BPE tokens beside a char meta.json
    with pytest.raises(ValueError, match=r"train\.bin has .* bytes, meta\.json says .*another prepare run"):
        load_prepared(char)
    with pytest.raises(ValueError, match="another tokenizer"):
        check_tokenizer(load_prepared(bpe), CharTokenizer("abc"))


def test_verify_catches_a_changed_token_file_of_the_same_size(two_datasets):
    char, _ = two_datasets
    data = bytearray((char / VAL).read_bytes())
    data[0] ^= 1
    (char / VAL).write_bytes(bytes(data))
    load_prepared(char)  # the sizes still fit
    with pytest.raises(ValueError, match=r"val\.bin does not match its sha256"):
        load_prepared(char, verify=True)


def test_an_edited_meta_json_is_refused(two_datasets):
    char, _ = two_datasets
    meta = json.loads((char / META).read_text())
    meta["tokenizer"]["chars"] = meta["tokenizer"]["chars"][1:]  # one character fewer
    (char / META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="disagree"):
        load_prepared(char)
    (char / META).write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_prepared(char)


def test_a_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        load_prepared(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_prepared(tmp_path / "nope")


def test_load_corpus_takes_a_text_or_a_prepared_dataset(two_datasets):
    char, _ = two_datasets
    tok, train_d, _ = load_corpus(text=shakespeare_path())
    assert isinstance(train_d, torch.Tensor) and tok.vocab_size == 65
    tok, train_d, val_d = load_corpus(data=char)
    assert isinstance(train_d, np.memmap) and isinstance(val_d, np.memmap)
    with pytest.raises(ValueError, match="not both"):
        load_corpus(text=shakespeare_path(), data=char)


def test_data_record_says_what_a_run_trained_on(two_datasets):
    char, bpe = two_datasets
    assert data_record() == {"text": "tinyshakespeare"}
    record = data_record(data=bpe)
    meta = json.loads((bpe / META).read_text())
    assert record["tokenizer"] == "bpe" and record["vocab_size"] == 300 and record["tokens"] == meta["tokens"]
    assert record["corpus"] == {**{k: meta["corpus"][k] for k in ("source", "bytes", "sha256")}, "files": 3}
    assert data_record(data=char)["corpus"]["sha256"] == record["corpus"]["sha256"]  # the same corpus


# ---------------------------------------------------------------- batches from the disk
def test_get_batch_draws_the_same_windows_from_a_memmap_and_a_tensor(two_datasets):
    ds = load_prepared(two_datasets[0])
    tensor = torch.from_numpy(np.array(ds.train, dtype=np.int64))
    x1, y1 = get_batch(ds.train, 8, 16, torch.Generator().manual_seed(3))
    x2, y2 = get_batch(tensor, 8, 16, torch.Generator().manual_seed(3))
    assert x1.dtype == torch.int64 and x1.shape == (8, 16)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(x1[:, 1:], y1[:, :-1])
    with pytest.raises(ValueError, match="needs more than block_size"):
        get_batch(ds.val[:10], 2, 16)


def tiny(vocab_size: int, linear: str = "fp") -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_embd=32, n_head=2, n_layer=1, linear=linear))


@pytest.mark.slow
def test_bpe_dataset_trains_samples_packs_and_loads(corpus, tmp_path, capsys):
    prepare(corpus, tmp_path / "ds", "bpe", 320)
    tok, train_d, val_d = load_corpus(data=tmp_path / "ds")
    model = tiny(tok.vocab_size, "bitnet")
    cfg = TrainConfig(batch_size=16, max_iters=30, eval_interval=30, eval_iters=4, lr=3e-3)
    r = train(model, train_d, val_d, cfg, progress=False)
    assert r["history"]["val"][-1] < r["history"]["val"][0]  # it learnt from the memmap
    ckpt = save_checkpoint(tmp_path / "m.pt", model, tok, {"data": str(tmp_path / "ds")})
    model2, tok2, _ = load_checkpoint(ckpt)
    assert isinstance(tok2, BPETokenizer) and tok2.to_dict() == tok.to_dict()
    assert main(["sample", str(ckpt), "--prompt", "Hé said", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.startswith("Hé said")  # the BPE encoded the prompt and decoded it back
    packed = save_packed(tmp_path / "m.safetensors", model2, tok2)
    model3, tok3, _ = load_packed(packed)
    assert isinstance(tok3, BPETokenizer) and tok3.to_dict() == tok.to_dict()
    idx = torch.tensor([tok3.encode("the end\n")])
    packed_logits, logits = model3(idx)[0], model2(idx)[0]
    assert (packed_logits - logits).abs().max() < 1e-3 * logits.abs().max()  # packing changes nothing
    # the checksum covers the tokenizer: a checkpoint whose BPE was swapped is refused
    payload = torch.load(ckpt, weights_only=True)
    payload["tokenizer"] = BPETokenizer.train([MIXED], 280).to_dict()
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="does not match its checksum"):
        load_checkpoint(tmp_path / "edited.pt")


# Training in a process whose private memory (RLIMIT_DATA: heap and anonymous maps) may grow by far less
# than the token file. RLIMIT_AS would not do: it counts the file's own map too, however little of it
# is read. The same process then shows that reading the whole file into memory does fail under the limit.
MEMORY_LIMITED = textwrap.dedent(
    """
    import resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from babybitnet.gpt import GPT, GPTConfig
    from babybitnet.prepare import load_prepared
    from babybitnet.train import TrainConfig, train

    def private_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024

    ds = load_prepared(sys.argv[1])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=ds.vocab_size, block_size=32, n_embd=32, n_head=2, n_layer=1))
    cfg = TrainConfig(batch_size=8, max_iters=2, eval_interval=2, eval_iters=2)
    train(model, ds.train[:5000], ds.val[:5000], cfg, progress=False)  # torch's own needs, on a small slice
    limit = private_bytes() + int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    cfg = TrainConfig(batch_size=8, max_iters=20, eval_interval=20, eval_iters=4, lr=1e-2)
    r = train(model, ds.train, ds.val, cfg, progress=False)
    print("trained", r["history"]["val"][0], r["history"]["val"][-1])
    try:
        np.array(ds.train)
        print("materialised")
    except MemoryError:
        print("refused")
    """
)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA counts anonymous maps only on Linux")
def test_a_corpus_larger_than_the_memory_limit_trains_from_the_map(tmp_path):
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcdefgh \n"))
    with open(tmp_path / "big.txt", "w") as f:  # 16 MB of text: 14.4 M train tokens, a 28.8 MB uint16 file
        for _ in range(16):  # each character is one or two after the last: learnable, ln 2 nats a token at best
            f.write("".join(alphabet[np.cumsum(rng.integers(1, 3, 1_000_000)) % len(alphabet)]))
    prepare(tmp_path / "big.txt", tmp_path / "ds")
    train_bytes = (tmp_path / "ds" / TRAIN).stat().st_size
    headroom = 8 << 20  # what the process may allocate beyond torch's own needs: well below the file
    assert train_bytes > 3 * headroom
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_LIMITED, str(tmp_path / "ds"), str(headroom)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.split("\n")
    first, last = (float(v) for v in lines[0].split()[1:])
    assert last < first  # it trained
    assert lines[1] == "refused"  # and the limit does bite: the whole file would not fit
