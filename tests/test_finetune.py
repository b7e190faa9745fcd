"""Gradual quantization: BitLinear's strength ``lam``, to_bitnet, lambda_at, finetune, compare_finetune."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from babybitnet.bigram import BigramLanguageModel
from babybitnet.bitlinear import BitLinear, BitLinearFunction, int_linear, set_quant_strength
from babybitnet.finetune import compare_finetune, finetune, lambda_at, to_bitnet
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
    with pytest.raises(ValueError, match="no nn.Linear"):
        to_bitnet(GPT(GPTConfig(**{**TINY, "n_layer": 0})))
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
def test_compare_finetune_end_to_end(tmp_path):
    r = compare_finetune(4, 6, warmup=3, device="cpu", out=tmp_path, progress=False, eval_iters=1)
    assert set(r["models"]) == {"gpt", "gradual", "abrupt", "scratch"}
    conv = r["after_conversion"]
    assert conv["lam0"] == pytest.approx(conv["gpt"], abs=1e-6)  # bias=False: nothing lost in the copy
    assert conv["lam1"] != conv["lam0"]
    assert r["models"]["gpt"]["iters"] == 4 and r["models"]["scratch"]["iters"] == 10
    assert r["models"]["gradual"]["history"]["lam"][0] == 0.0 and r["models"]["gradual"]["history"]["lam"][-1] == 1
    assert set(r["models"]["abrupt"]["history"]["lam"]) == {1.0}
    for key in ("gpt", "scratch"):
        assert r["models"][key]["model_config"]["bias"] is False
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["after_conversion"] == conv and saved["warmup"] == 3
    assert (tmp_path / "val_loss.png").stat().st_size > 0 and "gradual" in (tmp_path / "table.md").read_text()


def test_compare_finetune_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="s1 and s2"):
        compare_finetune(0, 5, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="must be >= 0"):
        compare_finetune(5, 5, warmup=-1, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="jobs"):
        compare_finetune(5, 5, jobs=3, out=tmp_path, progress=False)
