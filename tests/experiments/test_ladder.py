"""The ladder (babybitnet/ladder.py): every rung builds, has the interface ``train`` needs, and learns."""

from __future__ import annotations

import json

import pytest
import torch

from babybitnet.cli import main
from babybitnet.experiments import ladder as L
from babybitnet.gpt import GPT
from babybitnet.train import TrainConfig, train

CONFIG, _ = L.ladder_configs(vocab_size=11)


@pytest.mark.parametrize("name", L.RUNGS)
def test_rung_forward_shapes(name):
    torch.manual_seed(0)
    model = L.build_rung(name, CONFIG)
    assert model.config.block_size == CONFIG.block_size
    for B, T in ((2, CONFIG.block_size), (1, 1), (3, 5)):
        idx = torch.randint(0, 11, (B, T))
        logits, loss = model(idx, idx)
        assert logits.shape == (B, T, 11)
        assert loss.shape == () and torch.isfinite(loss)
        assert model(idx)[1] is None


@pytest.mark.parametrize("name", L.RUNGS[1:])
def test_rungs_are_causal(name):
    torch.manual_seed(0)
    model = L.build_rung(name, CONFIG)
    idx = torch.randint(0, 11, (2, 8))
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    torch.testing.assert_close(model(idx)[0][:, :5], model(changed)[0][:, :5])


def test_rungs_grow_and_the_last_is_the_gpt():
    params = [sum(p.numel() for p in L.build_rung(name, CONFIG).parameters()) for name in L.RUNGS]
    assert params == sorted(params)
    assert params[-1] == GPT(CONFIG).num_params()
    assert isinstance(L.build_rung("norm", CONFIG), GPT)
    residual = L.build_rung("residual", CONFIG)
    assert not any(isinstance(m, torch.nn.RMSNorm) for m in residual.modules())
    assert len(residual.body) == CONFIG.n_layer


@pytest.mark.parametrize("init", L.INITS)
def test_init_choices(init):
    torch.manual_seed(0)
    model = L.build_rung("head", CONFIG, init=init)
    std = model.tok_emb.weight.std().item()
    assert (abs(std - 1.0) < 0.3) if init == "torch" else (abs(std - 0.02) < 0.01)


def test_unknown_rung_and_init_are_errors():
    with pytest.raises(ValueError, match="unknown rung"):
        L.build_rung("transformer", CONFIG)
    with pytest.raises(ValueError, match="init must be"):
        L.build_rung("head", CONFIG, init="zeros")


@pytest.mark.parametrize("name", L.RUNGS)
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    data = torch.randint(0, 11, (400,))
    data[1::2] = (data[::2] + 3) % 11  # every other token is predictable from the one before
    model = L.build_rung(name, CONFIG)
    cfg = TrainConfig(batch_size=16, max_iters=30, lr=1e-2, eval_interval=30, eval_iters=4)
    r = train(model, data, data, cfg, progress=False)
    assert r["history"]["train"][-1] < r["history"]["train"][0] - 0.1


def test_ladder_command_writes_json_and_prints_a_table(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world, the ladder goes up one rung at a time.\n" * 20)
    out = tmp_path / "ladder"
    args = ["--iters", "2", "--eval-iters", "2", "--quiet", "--device", "cpu", "--text", str(text), "--out", str(out)]
    assert main(["ladder", *args]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "ladder.json").read_text())
    assert list(results["rungs"]) == list(L.RUNGS)
    assert results["model_config"]["block_size"] == 8 and results["train_config"]["batch_size"] == 32
    assert results["train_config"]["eval_iters"] == 2
    for r in results["rungs"].values():
        assert r["title"] in printed and f"{r['params']:,}" in printed
    assert printed.count("\n|") >= len(L.RUNGS) + 1


def test_ladder_on_a_prepared_dataset(tmp_path, capsys):
    from babybitnet.prepare import data_record, prepare

    text = tmp_path / "t.txt"
    text.write_text("hello world, the ladder goes up one rung at a time.\n" * 40)
    prepare(text, tmp_path / "ds", tokenizer="bpe", vocab_size=270)
    out = tmp_path / "ladder"
    args = ["--iters", "2", "--eval-iters", "2", "--quiet", "--device", "cpu", "--data", str(tmp_path / "ds")]
    assert main(["ladder", *args, "--out", str(out)]) == 0
    results = json.loads((out / "ladder.json").read_text())
    assert results["data"] == data_record(None, tmp_path / "ds") and results["model_config"]["vocab_size"] == 270
    assert results["rungs"]["bigram"]["params"] == 270 * 270  # the table of the BPE vocabulary
    assert main(["ladder", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "prepared dataset not found" in capsys.readouterr().err
