"""Gradual quantization: BitLinear's strength ``lam``, to_bitnet, lambda_at, finetune, compare_finetune."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from babybitnet.bigram import BigramLanguageModel
from babybitnet.bitlinear import BitLinear, BitLinearFunction, int_linear, set_quant_strength
from babybitnet.experiments.finetune import compare_finetune, summarize
from babybitnet.finetune import finetune, lambda_at, to_bitnet
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.quant import activation_quant, weight_quant
from babybitnet.train import TrainConfig, train

TINY = dict(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=2, activation="relu2")


def layer_and_input(seed: int = 0, groups: int = 1) -> tuple[BitLinear, torch.Tensor]:
    torch.manual_seed(seed)
    layer = BitLinear(16, 12, weight_groups=groups)
    return layer, torch.randn(3, 5, 16)


def run(layer: BitLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output, dL/dx and dL/dW for a fixed upstream gradient."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    return y.detach(), x.grad, layer.weight.grad


# ---------------------------------------------------------------- BitLinear's lam
def test_lam_one_is_bitnet_bit_for_bit():
    layer, x = layer_and_input(groups=3)
    layer.lam = 0.5
    layer.lam = 1.0  # back to the default: the fast path again
    y, gx, gw = run(layer, x)
    xr = x.clone().requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    yr = BitLinearFunction.apply(xr, w, 3, 8)
    yr.backward(torch.linspace(-1, 1, yr.numel()).reshape(yr.shape))
    assert torch.equal(y, yr.detach()) and torch.equal(gx, xr.grad) and torch.equal(gw, w.grad)
    layer.eval()
    with torch.no_grad():  # the integer inference path, unchanged
        w_t, s_w = layer.quantized_weight()
        assert torch.equal(layer(x), int_linear(x, w_t, s_w))


def test_lam_zero_is_a_plain_linear_layer():
    layer, x = layer_and_input()
    layer.lam = 0.0
    y, gx, gw = run(layer, x)
    xr = x.clone().requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    yr = F.linear(xr, w)
    yr.backward(torch.linspace(-1, 1, yr.numel()).reshape(yr.shape))
    assert torch.equal(y, yr.detach()) and torch.equal(gx, xr.grad) and torch.equal(gw, w.grad)
    layer.eval()
    with torch.no_grad():  # below lam=1 inference takes the blended float path, not the integer one
        assert torch.equal(layer(x), F.linear(x, layer.weight))


def test_lam_blends_monotonically_with_straight_through_gradients():
    layer, x = layer_and_input()
    x_q, w_q = activation_quant(x), weight_quant(layer.weight.detach())
    outs = []
    for lam in (0.0, 0.25, 0.5, 0.75, 1.0):
        layer.lam = lam
        y, gx, gw = run(layer, x)
        x_b, w_b = x + lam * (x_q - x), layer.weight.detach() + lam * (w_q - layer.weight.detach())
        torch.testing.assert_close(y, F.linear(x_b, w_b))
        g = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        torch.testing.assert_close(gx, g @ w_b)  # STE: the blend is the identity for the gradient
        torch.testing.assert_close(gw, g.reshape(-1, 12).T @ x_b.reshape(-1, 16))
        outs.append(y)
    from_fp = [(y - outs[0]).norm().item() for y in outs]
    from_q = [(y - outs[-1]).norm().item() for y in outs]
    assert from_fp == sorted(from_fp) and from_fp[-1] > 0
    assert from_q == sorted(from_q, reverse=True)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, "0.5", True, None])
def test_bad_lam_is_a_clear_error(bad):
    layer, _ = layer_and_input()
    with pytest.raises(ValueError, match=r"lam must be a number in \[0, 1\]"):
        layer.lam = bad
    assert layer.lam == 1.0
    with pytest.raises(ValueError, match="lam"):
        set_quant_strength(GPT(GPTConfig(**TINY, linear="bitnet")), bad)


def test_set_quant_strength_reaches_every_bitlinear():
    model = GPT(GPTConfig(**TINY, linear="bitnet"))
    assert set_quant_strength(model, 0.3) == 4 * TINY["n_layer"]  # qkv, proj, fc, proj per block
    assert {m.lam for m in model.modules() if isinstance(m, BitLinear)} == {0.3}
    assert "lam=0.3" in repr(model.blocks[0].attn.qkv)
    assert set_quant_strength(GPT(GPTConfig(**TINY)), 0.3) == 0  # a babyGPT has none


# ---------------------------------------------------------------- to_bitnet
def trained_looking_gpt(bias: bool = False, **kw) -> GPT:
    """A babyGPT whose every parameter (norm weights included) is random, so a wrong copy shows."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(**{**TINY, **kw}, bias=bias))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def test_to_bitnet_copies_exactly():
    gpt = trained_looking_gpt()
    bitnet = to_bitnet(gpt)
    assert bitnet.config == GPTConfig(**TINY, bias=False, linear="bitnet")
    assert isinstance(bitnet.blocks[0].attn.qkv, BitLinear) and isinstance(bitnet.blocks[1].mlp.proj, BitLinear)
    assert bitnet.blocks[0].attn.qkv.weight_groups == 3 * TINY["n_head"]
    idx = torch.randint(0, TINY["vocab_size"], (4, TINY["block_size"]))
    set_quant_strength(bitnet, 0.0)
    for mode in ("train", "eval"):
        gpt.train(mode == "train")
        bitnet.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(bitnet(idx)[0], gpt(idx)[0], rtol=0, atol=1e-6)
    set_quant_strength(bitnet, 1.0)  # fully ternary: no longer the same model
    assert not torch.allclose(bitnet(idx)[0], gpt(idx)[0], atol=1e-3)
    # a copy, not shared tensors
    assert bitnet.tok_emb.weight.data_ptr() != gpt.tok_emb.weight.data_ptr()


def test_to_bitnet_leaves_the_global_rng_alone():
    gpt = trained_looking_gpt()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    to_bitnet(gpt)
    assert torch.equal(torch.rand(3), expected)


def test_to_bitnet_refuses_to_drop_biases_silently():
    gpt = trained_looking_gpt(bias=True)
    with pytest.raises(ValueError, match="drop_biases=True"):
        to_bitnet(gpt)
    bitnet = to_bitnet(gpt, drop_biases=True)
    assert torch.equal(bitnet.lm_head.bias, gpt.lm_head.bias)  # lm_head stays nn.Linear, bias and all
    assert torch.equal(bitnet.blocks[1].mlp.proj.weight, gpt.blocks[1].mlp.proj.weight)


def test_to_bitnet_errors_are_clear():
    with pytest.raises(ValueError, match="already a babyBitNet"):
        to_bitnet(GPT(GPTConfig(**TINY, linear="bitnet")))
    blockless = GPT(GPTConfig(**TINY))
    blockless.blocks = torch.nn.ModuleList()  # a config cannot say n_layer=0 any more: remove the blocks instead
    with pytest.raises(ValueError, match="no nn.Linear"):
        to_bitnet(blockless)
    with pytest.raises(TypeError, match="BigramLanguageModel"):
        to_bitnet(BigramLanguageModel(TINY["vocab_size"]))


# ---------------------------------------------------------------- the schedule and the loop
@pytest.mark.parametrize(
    "step, warmup, lam", [(0, 1000, 0.0), (250, 1000, 0.25), (1000, 1000, 1.0), (5000, 1000, 1.0), (0, 0, 1.0)]
)
def test_lambda_at(step, warmup, lam):
    assert lambda_at(step, warmup) == lam


def test_lambda_at_rejects_negatives():
    with pytest.raises(ValueError, match="must be >= 0"):
        lambda_at(-1, 10)
    with pytest.raises(ValueError, match="must be >= 0"):
        lambda_at(1, -10)


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, TINY["vocab_size"], (400,), generator=g), torch.randint(0, 11, (100,), generator=g)


def test_train_calls_on_step_before_every_step_and_evaluation():
    calls = []
    cfg = TrainConfig(batch_size=2, max_iters=3, eval_interval=1, eval_iters=1)
    train(GPT(GPTConfig(**TINY)), *tiny_data(), cfg, progress=False, on_step=calls.append)
    assert calls == [0, 0, 1, 1, 2, 2, 3]


def test_finetune_sets_lam_every_step(monkeypatch):
    bitnet = to_bitnet(trained_looking_gpt())
    first = bitnet.blocks[0].attn.qkv
    seen, forward = [], BitLinear.forward

    def spy(self, x):
        if self is first and self.training:
            seen.append(self.lam)
        return forward(self, x)

    monkeypatch.setattr(BitLinear, "forward", spy)
    cfg = TrainConfig(batch_size=2, max_iters=6, eval_interval=1, eval_iters=1)
    r = finetune(bitnet, *tiny_data(), cfg, warmup=4, progress=False)
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]  # the lam of every training step
    assert r["history"]["lam"] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]  # and of every evaluation
    assert r["warmup"] == 4 and len(r["history"]["val"]) == 7
    assert {m.lam for m in bitnet.modules() if isinstance(m, BitLinear)} == {1.0}


def test_finetune_needs_bitlinear_layers():
    cfg = TrainConfig(batch_size=2, max_iters=2, eval_iters=1)
    with pytest.raises(ValueError, match="to_bitnet"):
        finetune(GPT(GPTConfig(**TINY)), *tiny_data(), cfg, warmup=1, progress=False)
    with pytest.raises(ValueError, match="must be >= 0"):
        finetune(GPT(GPTConfig(**TINY, linear="bitnet")), *tiny_data(), cfg, warmup=-1, progress=False)


# ---------------------------------------------------------------- the experiment
# Tiny runs: the recipe's model for a few steps, one batch per loss estimate. The numbers mean
# nothing; what is checked is where each one goes and that the same seed gives the same ones.
TINY_RUN = dict(s1=4, s2=6, warmup=3, device="cpu", progress=False, eval_iters=1)
KEYS = ("gpt", "gradual", "abrupt", "scratch")


def test_compare_finetune_end_to_end(tmp_path):
    r = compare_finetune(**TINY_RUN, out=tmp_path)
    assert r["seeds"] == [1337] and list(r["runs"]) == ["1337"]  # the preset's seed by default
    assert r["lr"] == 3e-3  # babyBitNet's recipe peak
    run = r["runs"]["1337"]
    assert list(run["models"]) == list(KEYS)
    conv = run["after_conversion"]
    assert conv["lam0"] == pytest.approx(conv["gpt"], abs=1e-6)  # bias=False: nothing lost in the copy
    assert conv["lam1"] != conv["lam0"]
    m = run["models"]
    assert m["gpt"]["iters"] == 4 and m["gradual"]["iters"] == 6 and m["scratch"]["iters"] == 10
    assert m["gradual"]["history"]["lam"][0] == 0.0 and m["gradual"]["history"]["lam"][-1] == 1
    assert set(m["abrupt"]["history"]["lam"]) == {1.0}
    assert m["gradual"]["train_config"]["lr"] == 3e-3 and m["gradual"]["train_config"]["lr_stage2"] == 1.5e-3
    for key in ("gpt", "scratch"):
        assert m[key]["model_config"]["bias"] is False
    for key in KEYS:  # one seed: the mean is the value, the spread 0
        assert r["summary"][key]["final_val"] == {
            "mean": m[key]["final_val"],
            "std": 0.0,
            "values": [m[key]["final_val"]],
            "seeds": [1337],
        }
    assert r["summary"]["after_conversion"]["lam1"]["values"] == [conv["lam1"]]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(r))  # what is returned is what is saved
    assert {"s1", "s2", "warmup", "lr", "seeds", "device", "torch", "machine", "data", "runs", "summary"} <= set(saved)
    table = (tmp_path / "table.md").read_text()
    assert "gradual" in table and "+- 0.0000" in table and "| 1 |" in table
    assert (tmp_path / "val_loss.png").stat().st_size > 0


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> tuple[dict, object]:
    """Seeds 1 and 2, fine-tunes at peak LR 1e-3: one run shared by the tests below."""
    out = tmp_path_factory.mktemp("two_seeds")
    return compare_finetune(**TINY_RUN, seeds=(1, 2), lr=1e-3, out=out), out


def test_two_seeds_give_two_runs_and_mean_and_std(two_seeds):
    r, out = two_seeds
    assert r["seeds"] == [1, 2] and list(r["runs"]) == ["1", "2"]
    for key in KEYS:
        for stat in ("final_val", "best_val"):
            values = [r["runs"][s]["models"][key][stat] for s in ("1", "2")]
            entry = r["summary"][key][stat]
            assert entry["values"] == values and entry["seeds"] == [1, 2]
            assert entry["mean"] == pytest.approx((values[0] + values[1]) / 2, rel=1e-12)
            assert entry["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), rel=1e-9)  # n - 1
    for k in ("gpt", "lam0", "lam1"):
        values = [r["runs"][s]["after_conversion"][k] for s in ("1", "2")]
        assert r["summary"]["after_conversion"][k]["values"] == values
    # different seeds are different runs, so the spread is not 0
    assert r["summary"]["scratch"]["final_val"]["std"] > 0
    assert r["runs"]["1"]["models"]["gpt"]["train_config"]["seed"] == 1
    assert r["runs"]["2"]["models"]["scratch"]["train_config"]["seed"] == 2
    table = (out / "table.md").read_text()
    mean, std = r["summary"]["abrupt"]["final_val"]["mean"], r["summary"]["abrupt"]["final_val"]["std"]
    assert f"| 2 | {mean:.4f} +- {std:.4f} |" in table and "of 1, 2" in table


def test_lr_reaches_the_finetunes_only(two_seeds):
    r, _ = two_seeds
    assert r["lr"] == 1e-3
    for seed in ("1", "2"):
        m = r["runs"][seed]["models"]
        for key in ("gradual", "abrupt"):  # the new peak, and stage 2 at half of it (not the recipe's 1.5e-3)
            assert (m[key]["train_config"]["lr"], m[key]["train_config"]["lr_stage2"]) == (1e-3, 5e-4)
        assert (m["scratch"]["train_config"]["lr"], m["scratch"]["train_config"]["lr_stage2"]) == (3e-3, 1.5e-3)
        assert (m["gpt"]["train_config"]["lr"], m["gpt"]["train_config"]["lr_stage2"]) == (1e-3, 5e-4)  # babyGPT's own


def comparable(results: dict) -> dict:
    """The numbers of every run, without the timings (which differ from run to run)."""
    keep = ("final_val", "best_val", "best_step", "history", "train_config", "model_config")
    return {
        seed: {
            "models": {k: {f: m[f] for f in keep} for k, m in run["models"].items()},
            "after_conversion": run["after_conversion"],
        }
        for seed, run in results["runs"].items()
    }


def test_jobs_2_gives_the_same_numbers_as_jobs_1(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker: the same thread count gives the same floating-point sums
    try:
        one = compare_finetune(**TINY_RUN, seeds=[5], out=tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    two = compare_finetune(**TINY_RUN, seeds=[5], out=tmp_path / "two", jobs=2)
    assert comparable(two) == comparable(one)
    assert two["summary"] == one["summary"]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["runs"]["5"]["models"].keys() == set(KEYS)


def test_results_are_written_after_every_task(tmp_path, monkeypatch):
    import babybitnet.experiments.finetune as ft

    def boom(seed: int, settings: dict) -> dict:
        assert (tmp_path / "results.json").is_file()  # the chain, which ran first, is already saved
        raise RuntimeError("cut short")

    monkeypatch.setitem(ft.TASKS, "scratch", boom)
    with pytest.raises(RuntimeError, match="cut short"):
        compare_finetune(**TINY_RUN, seeds=[3], out=tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["runs"]["3"]["models"]) == ["gpt", "gradual", "abrupt"]
    assert set(saved["summary"]) == {"gpt", "gradual", "abrupt", "after_conversion"}
    table = (tmp_path / "table.md").read_text()
    assert "gradual" in table and "from scratch" not in table
    assert (tmp_path / "val_loss.png").stat().st_size > 0


def test_summarize_counts_only_finished_seeds():
    def model(v: float) -> dict:
        return {"final_val": v, "best_val": v - 1}

    runs = {
        "1": {
            "models": {"gpt": model(2.0), "scratch": model(4.0)},
            "after_conversion": dict(gpt=1.0, lam0=1.0, lam1=3.0),
        },
        "2": {"models": {"scratch": model(6.0)}},  # seed 2's chain has not finished
    }
    s = summarize(runs, [1, 2])
    assert set(s) == {"gpt", "scratch", "after_conversion"}
    assert s["gpt"]["final_val"] == {"mean": 2.0, "std": 0.0, "values": [2.0], "seeds": [1]}
    assert s["scratch"]["best_val"] == {
        "mean": 4.0,
        "std": pytest.approx(math.sqrt(2)),
        "values": [3.0, 5.0],
        "seeds": [1, 2],
    }
    assert s["after_conversion"]["lam1"]["seeds"] == [1]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(s1=0), "s1 and s2"),
        (dict(warmup=-1), "must be >= 0"),
        (dict(jobs=0), "jobs .* must be a whole number >= 1"),
        (dict(jobs=-2), "jobs"),
        (dict(jobs=1.5), "jobs"),
        (dict(jobs=True), "jobs"),
        (dict(seeds=[]), "seeds must be a non-empty list"),
        (dict(seeds=[1, "2"]), "seeds must be a non-empty list of whole numbers"),
        (dict(seeds=[1, 1]), "seeds must be different"),
        (dict(lr=0), "lr .* positive"),
        (dict(lr=-1e-3), "lr"),
        (dict(lr=math.nan), "lr"),
    ],
)
def test_compare_finetune_rejects_bad_settings(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        compare_finetune(**{**TINY_RUN, **kw}, out=tmp_path)
    assert not (tmp_path / "results.json").exists()  # refused before any training


def test_cli_finetune(tmp_path, capsys):
    from babybitnet.cli import build_parser, main

    args = build_parser().parse_args(["finetune", "--seeds", "1", "2", "3", "--lr", "1e-3", "--jobs", "6"])
    assert (args.seeds, args.lr, args.jobs) == ([1, 2, 3], 1e-3, 6)
    args = build_parser().parse_args(["finetune"])
    assert (args.seeds, args.lr, args.jobs) == ([1337], None, 1)
    with pytest.raises(SystemExit) as exit_:  # a usage error of argparse's, before anything runs
        main(["finetune", "--jobs", "0", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--jobs: must be a whole number >= 1" in capsys.readouterr().err
    argv = ["finetune", "--s1", "2", "--s2", "2", "--warmup", "1", "--eval-iters", "1", "--device", "cpu"]
    assert main([*argv, "--seeds", "4", "8", "--lr", "2e-3", "--out", str(tmp_path), "--quiet"]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seeds"] == [4, 8] and saved["lr"] == 2e-3
    assert saved["runs"]["8"]["models"]["abrupt"]["train_config"]["lr_stage2"] == 1e-3
    assert "seeds 4, 8" in capsys.readouterr().out


# ---------------------------------------------------------------- fine-tuning a checkpoint
def _gpt_checkpoint(tmp_path, bias: bool = False, linear: str = "gpt"):
    from babybitnet.data import load_dataset
    from babybitnet.files import save_checkpoint
    from babybitnet.presets import build_model

    tok, _, _ = load_dataset()
    model, cfg = build_model("quick", linear, tok.vocab_size, {"bias": bias}, max_iters=5)
    return save_checkpoint(tmp_path / f"{linear}.pt", model, tok, {"train_config": cfg.to_dict()})


def test_finetune_checkpoint_writes_a_bitnet(tmp_path):
    from babybitnet.experiments.finetune import finetune_checkpoint
    from babybitnet.files import load_checkpoint

    path = _gpt_checkpoint(tmp_path)
    r = finetune_checkpoint(path, tmp_path / "ft.pt", s2=6, warmup=3, lr=1e-3, eval_iters=2, progress=False)
    assert r["lr"] == 1e-3 and r["train_config"]["lr_stage2"] == 5e-4
    assert r["train_config"]["batch_size"] == 16  # the checkpoint's own
    assert r["before"]["converted, lam=1"] != r["before"]["gpt"]
    model, _, meta = load_checkpoint(tmp_path / "ft.pt")
    assert model.config.linear == "bitnet" and meta["finetuned_from"] == str(path)
    assert (tmp_path / "ft.pt.json").exists()


def test_finetune_checkpoint_errors(tmp_path):
    from babybitnet.experiments.finetune import finetune_checkpoint

    with pytest.raises(ValueError, match="babyBitNet already"):
        finetune_checkpoint(_gpt_checkpoint(tmp_path, linear="bitnet"), tmp_path / "a.pt", s2=2, progress=False)
    with pytest.raises(ValueError, match="biases"):
        finetune_checkpoint(_gpt_checkpoint(tmp_path, bias=True), tmp_path / "b.pt", s2=2, progress=False)
    other = tmp_path / "abc.txt"
    other.write_text("abcabcabc " * 2000, encoding="utf-8")
    with pytest.raises(ValueError, match="vocabulary"):
        finetune_checkpoint(_gpt_checkpoint(tmp_path), tmp_path / "c.pt", s2=2, text=other, progress=False)


def test_cli_finetune_checkpoint(tmp_path, capsys):
    from babybitnet.cli import main

    path = _gpt_checkpoint(tmp_path)
    out = tmp_path / "ft.pt"
    args = ["finetune", str(path), "--s2", "4", "--warmup", "2", "--eval-iters", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "converted at lambda=1" in capsys.readouterr().out and out.exists()
