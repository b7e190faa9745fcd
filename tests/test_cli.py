import json
import subprocess
import sys

import pytest
import torch

from babybitnet.checkpoint import load_checkpoint, save_checkpoint
from babybitnet.cli import main
from babybitnet.data import CharTokenizer
from babybitnet.gpt import GPT, GPTConfig


@pytest.mark.slow
def test_compare_quick_writes_results_table_and_plot(tmp_path):
    out = tmp_path / "q"
    assert main(["compare", "--preset", "quick", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["preset"] == "quick" and r["device"] == "cpu" and r["torch"] == torch.__version__
    for name in ("gpt", "bitnet"):
        m = r["models"][name]
        for key in (
            "params",
            "lr",
            "iters",
            "final_val",
            "best_val",
            "final_train",
            "seconds",
            "ms_per_step",
            "history",
        ):
            assert key in m, key
        assert m["iters"] == 600 and m["final_val"] < 2.6 and len(m["history"]["val"]) == 7
    assert r["models"]["gpt"]["params"] == 209_153 and r["models"]["bitnet"]["params"] == 207_617
    table = (out / "table.md").read_text()
    assert "babyGPT" in table and "babyBitNet" in table and "209,153" in table
    png = (out / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_train_then_sample(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--preset", "quick", "--model", "bitnet", "--iters", "20", "--device", "cpu",
                 "--out", str(ckpt), "--quiet"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "m.pt.json").read_text())["iters"] == 20
    model, tok, meta = load_checkpoint(ckpt)
    assert model.config.linear == "bitnet" and tok.vocab_size == 65 and meta["preset"] == "quick"
    capsys.readouterr()
    assert main(["sample", str(ckpt), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) >= 30
    main(["sample", str(ckpt), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"])
    assert capsys.readouterr().out == text  # same seed, same text


def test_checkpoint_errors(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable babybitnet checkpoint"):
        load_checkpoint(bad)
    path = save_checkpoint(tmp_path / "ok.pt", GPT(GPTConfig(n_layer=1)), CharTokenizer("abc"))
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(path)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a babybitnet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "babybitnet-checkpoint-v1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "evil.pt")


def test_help_and_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "babybitnet", "compare", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--preset" in r.stdout and "--iters" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "babybitnet", "compare", "--preset", "nope"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "invalid choice" in r.stderr
