"""babybitnet.files: nothing lost (atomic writes, even when the writer dies) and nothing silently wrong (checksums,
one-line errors for every kind of bad file)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from babybitnet import atomic, files
from babybitnet.data import CharTokenizer
from babybitnet.files import (
    atomic_path,
    load_checkpoint,
    load_packed,
    remove_stale_temporaries,
    save_checkpoint,
    save_packed,
    write_json,
    write_text,
)
from babybitnet.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = CharTokenizer([chr(c) for c in range(32, 32 + 65)])
TINY = dict(linear="bitnet", n_layer=1, n_embd=32, n_head=2, block_size=16)


def tiny(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    """The message of a raised error, checked to be one line that quotes none of torch's advice."""
    msg = str(excinfo.value)
    assert "\n" not in msg and "weights_only" not in msg, msg
    return msg


# ---------------------------------------------------------------- atomic writes: an error or Ctrl-C mid-write
def _half_then(real, exc: BaseException):
    """A writer that writes the first half of what ``real`` would write to its file, then raises ``exc``."""

    def writer(obj, target, *args, **kwargs):
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        with open(target, "wb") as f:
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise exc

    return writer


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_checkpoint_save_that_dies_half_way_keeps_the_old_file(tmp_path, monkeypatch, exc):
    path = save_checkpoint(tmp_path / "m.pt", tiny(0), TOKENIZER)
    old = path.read_bytes()
    monkeypatch.setattr(torch, "save", _half_then(torch.save, exc))
    with pytest.raises(type(exc)):
        save_checkpoint(path, tiny(1), TOKENIZER)
    monkeypatch.undo()
    assert path.read_bytes() == old  # byte for byte
    assert temporaries(tmp_path) == []
    assert load_checkpoint(path)[0].config == tiny(0).config


@pytest.mark.parametrize("exc", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_packed_save_that_dies_half_way_keeps_the_old_file(tmp_path, monkeypatch, exc):
    import safetensors.torch

    path = save_packed(tmp_path / "m.safetensors", tiny(0), TOKENIZER)
    old = path.read_bytes()
    real = safetensors.torch.save

    def dying_save_file(tensors, filename, metadata=None):
        data = real(tensors, metadata=metadata)  # the bytes save_file would write
        Path(filename).write_bytes(data[: len(data) // 2])
        raise exc

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save_file)
    with pytest.raises(type(exc)):
        save_packed(path, tiny(1), TOKENIZER)
    monkeypatch.undo()
    assert path.read_bytes() == old and temporaries(tmp_path) == []
    load_packed(path)


def test_write_text_that_dies_half_way_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_json(tmp_path / "summary.json", {"loss": 1.5})
    old = path.read_bytes()

    def dying_write_text(self, text, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as f:
            f.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_text", dying_write_text)
    with pytest.raises(KeyboardInterrupt):
        write_text(path, "x" * 1000)
    monkeypatch.undo()
    assert path.read_bytes() == old and temporaries(tmp_path) == []
    assert json.loads(path.read_text()) == {"loss": 1.5}


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_text(tmp_path / "a.txt", "old")

    def no_replace(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="cross-device"):
        write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and temporaries(tmp_path) == []


def test_atomic_write_replaces_creates_and_refuses_a_directory(tmp_path):
    target = tmp_path / "deep" / "er" / "t.txt"
    write_text(target, "one ✓")
    assert target.read_text(encoding="utf-8") == "one ✓"
    write_text(target, "two")
    assert target.read_text() == "two" and temporaries(target.parent) == []
    # the renamed file gets the mode a plain open() would give it (mkstemp's 0o600 would make it private)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ValueError, match="is a directory"):
        with atomic_path(tmp_path / "deep"):
            pass


def test_plot_saved_through_the_temporary_path_keeps_its_format(tmp_path):
    """matplotlib guesses the format from the suffix, and the temporary's is .tmp: ``format=`` is needed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = tmp_path / "loss.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and temporaries(tmp_path) == []


# ---------------------------------------------------------------- atomic writes: SIGKILL mid-write
CHILD = """
import io, os, sys, time
import torch
from babybitnet import files
from babybitnet.data import CharTokenizer
from babybitnet.gpt import GPT, GPTConfig

real = torch.save

def half_then_wait(obj, target, *args, **kwargs):  # write half, tell the parent, wait to be killed
    buf = io.BytesIO()
    real(obj, buf)
    with open(target, "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
    print("HALF", flush=True)
    time.sleep(600)

torch.save = half_then_wait
files.save_checkpoint(sys.argv[1], GPT(GPTConfig(linear="bitnet", n_layer=1, n_embd=32, n_head=2)), CharTokenizer("ab"))
print("NOT KILLED", flush=True)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and the stale-temporary cleanup are POSIX")
def test_checkpoint_save_killed_by_sigkill_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", tiny(0), TOKENIZER)
    old = path.read_bytes()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline()  # blocks until the child has written half its file
        assert line == "HALF\n", f"the child did not reach the write: {line!r} {child.stderr.read()[-2000:]}"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert path.read_bytes() == old  # SIGKILL cannot be caught, and still the old file is whole
    stray = temporaries(tmp_path)
    assert len(stray) == 1 and stray[0].startswith(".m.pt.")  # what a SIGKILL leaves: the half-written temporary
    assert 0 < (tmp_path / stray[0]).stat().st_size < len(old)
    # the next save to the same path removes it (its writer is gone; not touched for STALE_TMP_S)
    monkeypatch.setattr(atomic, "STALE_TMP_S", 0.0)
    save_checkpoint(path, tiny(1), TOKENIZER)
    assert temporaries(tmp_path) == []
    assert torch.equal(load_checkpoint(path)[0].lm_head.weight, tiny(1).lm_head.weight)


@pytest.mark.skipif(os.name != "posix", reason="the stale-temporary cleanup is POSIX")
def test_stale_temporary_cleanup_spares_live_writers_and_other_files(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process
    host, target = atomic._HOST, tmp_path / "m.pt"
    names = {
        "dead_old": f".m.pt.{host}-{dead.pid}-{'0' * 16}.tmp",
        "dead_fresh": f".m.pt.{host}-{dead.pid}-{'1' * 16}.tmp",  # maybe a writer of another pid namespace
        "alive_old": f".m.pt.{host}-{os.getpid()}-{'2' * 16}.tmp",  # our own process: alive
        "other_host": f".m.pt.{'f' * 8}-{dead.pid}-{'3' * 16}.tmp",
        "other_target": f".m.pt.json.{host}-{dead.pid}-{'4' * 16}.tmp",
        "not_ours": ".m.pt.something.tmp",
    }
    old = time.time() - 3600
    for key, name in names.items():
        (tmp_path / name).write_text(key)
        if key != "dead_fresh":
            os.utime(tmp_path / name, (old, old))
    assert remove_stale_temporaries(target) == [tmp_path / names["dead_old"]]
    assert temporaries(tmp_path) == sorted(n for k, n in names.items() if k != "dead_old")


# ---------------------------------------------------------------- checkpoints: integrity
@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return save_checkpoint(tmp_path / "m.pt", tiny(0), TOKENIZER, meta={"preset": "tiny"})


def _flip_a_weight_byte(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor's bytes inside the checkpoint's (uncompressed) zip."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_checkpoint_round_trip_carries_a_checksum(checkpoint):
    ckpt = torch.load(checkpoint, weights_only=True)
    assert len(ckpt["sha256"]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint with a checksum loads without a warning
        model, tok, meta = load_checkpoint(checkpoint)
    assert meta == {"preset": "tiny"} and tok.chars == TOKENIZER.chars and not model.training
    for name, t in tiny(0).state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name


def test_one_flipped_byte_in_a_weight_is_refused(checkpoint):
    _flip_a_weight_byte(checkpoint)
    with pytest.raises(ValueError) as e:
        load_checkpoint(checkpoint)
    assert "m.pt: the checkpoint does not match its checksum: the file was modified or damaged" in one_line_error(e)


def _resave(path: Path, edit, drop_checksum: bool = False) -> None:
    """Load a checkpoint's dict, edit it, save it again (as a careless tool would: the old checksum stays)."""
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    if drop_checksum:
        ckpt.pop("sha256")
    torch.save(ckpt, path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["model"]["lm_head.weight"].view(-1)[7].add_(1e-3),
        lambda c: c["config"].update(activation="gelu"),  # same tensors, another model
        lambda c: c["config"].update(attn_scale="embd"),
        lambda c: c["tokenizer"].update(chars=c["tokenizer"]["chars"][::-1][:65]),
        lambda c: c["meta"].update(preset="other"),
    ],
    ids=["weight", "activation", "attn_scale", "tokenizer", "meta"],
)
def test_edited_checkpoint_is_refused(checkpoint, edit):
    _resave(checkpoint, edit)
    with pytest.raises(ValueError) as e:
        load_checkpoint(checkpoint)
    assert "modified or damaged" in one_line_error(e)


def test_checkpoint_without_checksum_loads_with_a_warning(checkpoint):
    _resave(checkpoint, lambda c: None, drop_checksum=True)  # what babybitnet wrote before checksums
    with pytest.warns(UserWarning, match=r"m\.pt has no checksum .*save it again with save_checkpoint"):
        model, _, meta = load_checkpoint(checkpoint)
    assert meta == {"preset": "tiny"} and torch.equal(model.lm_head.weight, tiny(0).lm_head.weight)


# ---------------------------------------------------------------- checkpoints: one clear line for every bad file
def _bad_files(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[Path, type, str]]:
    cases = {}
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes, not a checkpoint\n")
    cases["text"] = (text, ValueError, r"notes\.pt is not a readable babybitnet checkpoint: it is not a complete")
    truncated = tmp_path / "truncated.pt"
    raw = checkpoint.read_bytes()
    assert len(raw) > 50_000
    truncated.write_bytes(raw[:50_000])
    cases["truncated"] = (truncated, ValueError, r"truncated\.pt is not a readable babybitnet checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cases["empty"] = (empty, ValueError, "not a readable babybitnet checkpoint")
    directory = tmp_path / "adir.pt"
    directory.mkdir()
    cases["directory"] = (directory, ValueError, r"adir\.pt is a directory, not a checkpoint file")
    cases["missing"] = (tmp_path / "nope.pt", FileNotFoundError, r"checkpoint not found: .*nope\.pt")

    def variant(name: str, edit, drop_checksum: bool = True) -> Path:
        p = tmp_path / f"{name}.pt"
        p.write_bytes(checkpoint.read_bytes())
        _resave(p, edit, drop_checksum)
        return p

    cases["extra config key"] = (
        variant("extra", lambda c: c["config"].update(rope=True)),
        ValueError,
        r"the config has unknown keys \['rope'\] and lacks \[\]: the file was edited, or written by another",
    )
    cases["missing config key"] = (
        variant("missing_key", lambda c: c["config"].pop("n_head")),
        ValueError,
        r"unknown keys \[\] and lacks \['n_head'\]",
    )
    cases["wrong shape"] = (
        variant("shape", lambda c: c["model"].update({"lm_head.weight": torch.zeros(65, 31)})),
        ValueError,
        r"tensor 'lm_head.weight' is torch.float32 \(65, 31\), its config needs torch.float32 \(65, 32\)",
    )
    cases["missing tensor"] = (
        variant("no_tensor", lambda c: c["model"].pop("ln_f.weight")),
        ValueError,
        r"tensors missing \['ln_f.weight'\], unexpected \[\]",
    )
    cases["huge config"] = (
        variant("huge", lambda c: c["config"].update(n_layer=100_000)),
        ValueError,
        r"invalid config in the file: n_layer must be at most 1000",
    )
    cases["huge n_embd"] = (
        variant("wide", lambda c: c["config"].update(n_embd=65536)),
        ValueError,
        r"GiB of float32 parameters, more than the 64 GiB allowed",
    )
    cases["bad value"] = (
        variant("dropout", lambda c: c["config"].update(dropout=1.5)),
        ValueError,
        r"dropout must be a number in \[0, 1\), got 1.5",
    )
    cases["no model"] = (variant("no_model", lambda c: c.pop("model")), ValueError, r"lacks \['model'\]")
    cases["bad tokenizer"] = (
        variant("tok", lambda c: c.update(tokenizer={"chars": 5})),
        ValueError,
        r"the tokenizer is not",
    )
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    cases["other torch file"] = (other, ValueError, r"other\.pt is not a babybitnet checkpoint \(expected format")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": files.CHECKPOINT_FORMAT, "x": Evil()}, evil)
    cases["pickled code"] = (evil, ValueError, "holds Python objects other than tensors and plain data")
    return cases


CASES = [
    "text",
    "truncated",
    "empty",
    "directory",
    "missing",
    "extra config key",
    "missing config key",
    "wrong shape",
    "missing tensor",
    "huge config",
    "huge n_embd",
    "bad value",
    "no model",
    "bad tokenizer",
    "other torch file",
    "pickled code",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_checkpoint_is_one_clear_line(tmp_path, checkpoint, case):
    path, error, pattern = _bad_files(tmp_path, checkpoint)[case]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the variants have no checksum: the warning is tested above
        with pytest.raises(error) as e:
            load_checkpoint(path)
    assert type(e.value) is error  # not KeyError, OSError, RuntimeError or torch's UnpicklingError
    assert time.perf_counter() - start < 10  # a huge config fails before allocating anything
    msg = one_line_error(e)
    assert re.search(pattern, msg), msg


def test_the_case_list_is_complete(tmp_path, checkpoint):
    assert sorted(_bad_files(tmp_path, checkpoint)) == sorted(CASES)


# ---------------------------------------------------------------- packed files: the checksum covers the metadata
def test_packed_directory_and_text_file(tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(ValueError, match=r"d\.safetensors is a directory, not a packed model file"):
        load_packed(tmp_path / "d.safetensors")
    (tmp_path / "t.safetensors").write_text("hello")
    with pytest.raises(ValueError) as e:
        load_packed(tmp_path / "t.safetensors")
    assert "is not a readable safetensors file" in one_line_error(e)
    good = save_packed(tmp_path / "m.safetensors", tiny(0), TOKENIZER)
    raw = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: min(50_000, len(raw) // 2)])
    with pytest.raises(ValueError) as e:
        load_packed(tmp_path / "cut.safetensors")
    assert "truncated or corrupt" in one_line_error(e)
