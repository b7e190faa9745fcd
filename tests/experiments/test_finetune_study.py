"""The fine-tuning study (babybitnet/experiments/finetune.py) on a prepared dataset (``--data``).

The study itself, on Tiny Shakespeare, is tested in tests/test_finetune.py.
"""

from __future__ import annotations

import json

import pytest
from helpers import small_bpe_dataset

from babybitnet.cli import main
from babybitnet.data import load_dataset
from babybitnet.experiments.finetune import compare_finetune, finetune_checkpoint
from babybitnet.files import save_checkpoint
from babybitnet.prepare import data_record, load_prepared
from babybitnet.presets import build_model


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small BPE dataset (300 tokens) of the start of Tiny Shakespeare."""
    return small_bpe_dataset(tmp_path_factory.mktemp("data"))


def gpt_checkpoint(path, tokenizer):
    shape = {"bias": False, "n_layer": 1, "n_head": 2, "n_embd": 16}  # tiny: the test is about the data
    model, cfg = build_model("quick", "gpt", tokenizer.vocab_size, shape, max_iters=5, batch_size=4)
    return save_checkpoint(path, model, tokenizer, {"train_config": cfg.to_dict()})


def test_compare_finetune_on_prepared_data_in_workers(prepared, tmp_path):
    r = compare_finetune(s1=1, s2=1, warmup=1, device="cpu", progress=False, eval_iters=1, jobs=2, data=prepared,
                         out=tmp_path)  # fmt: skip
    assert r["data"] == data_record(None, prepared) and r["data"]["tokenizer"] == "bpe"
    models = r["runs"]["1337"]["models"]
    assert list(models) == ["gpt", "gradual", "abrupt", "scratch"]  # the chain and scratch, from two workers
    assert {m["model_config"]["vocab_size"] for m in models.values()} == {300}  # the BPE vocabulary
    assert json.loads((tmp_path / "results.json").read_text())["data"]["data"] == str(prepared)
    with pytest.raises(ValueError, match="not both"):
        compare_finetune(s1=2, s2=2, device="cpu", text="t.txt", data=prepared, out=tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="prepared dataset not found"):
        compare_finetune(s1=2, s2=2, device="cpu", data=tmp_path / "none", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_finetune_a_checkpoint_on_prepared_data(prepared, tmp_path, capsys):
    ckpt = gpt_checkpoint(tmp_path / "gpt.pt", load_prepared(prepared).tokenizer)
    r = finetune_checkpoint(ckpt, tmp_path / "ft.pt", s2=2, warmup=1, eval_iters=1, device="cpu", data=prepared,
                            progress=False)  # fmt: skip
    assert r["data"] == data_record(None, prepared) and r["after"]["final_val"] > 0
    shakespeare = gpt_checkpoint(tmp_path / "char.pt", load_dataset()[0])  # Tiny Shakespeare's characters
    with pytest.raises(ValueError, match="another tokenizer"):
        finetune_checkpoint(shakespeare, tmp_path / "no.pt", s2=2, device="cpu", data=prepared, progress=False)
    argv = ["finetune", str(ckpt), "--s2", "2", "--warmup", "1", "--eval-iters", "1", "--device", "cpu", "--quiet"]
    assert main([*argv, "--data", str(prepared), "--out", str(tmp_path / "cli.pt")]) == 0
    assert "converted at lambda=1" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli.pt.json").read_text())["data"]["data"] == str(prepared)
