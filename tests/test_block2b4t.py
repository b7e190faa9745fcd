"""BitNet b1.58 2B4T's block (issue 16): RoPE, SubLN, gated ReLU², grouped-query attention, each a switch."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from babybitnet import decode
from babybitnet.attention import CausalSelfAttention, KVCache, rope
from babybitnet.bitlinear import BitLinear
from babybitnet.gpt import GPT, GatedMLP, GPTConfig, TiedHead
from babybitnet.packed import PackedBitLinear, pack_model
from babybitnet.presets import get_preset

BASE = dict(vocab_size=40, block_size=24, n_embd=32, n_head=4, n_layer=2)


def cfg(**kw) -> GPTConfig:
    return GPTConfig(**{**BASE, **kw})


def n_params(config: GPTConfig) -> int:
    torch.manual_seed(0)
    return GPT(config).num_params()


def decisive(model: GPT, seed: int = 0) -> GPT:
    """Weights large enough that the greedy choices are not near-ties (random init gives near-uniform logits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def block_config(linear: str = "bitnet", **kw) -> GPTConfig:
    config, _ = get_preset("b2b4t_block", "gpt" if linear == "fp" else "bitnet", vocab_size=40)
    return replace(config, **kw)


# ---------------------------------------------------------------- each switch
def test_defaults_are_babygpts_block():
    model = GPT(cfg())
    assert isinstance(model.pos_emb, nn.Embedding)
    assert model.blocks[0].attn.sub_norm is None and model.blocks[0].mlp.sub_norm is None
    assert model.blocks[0].attn.qkv.out_features == 3 * 32
    assert model.blocks[0].mlp.fc.out_features == 4 * 32
    assert isinstance(model.lm_head, nn.Linear)
    assert model.num_params() == cfg().max_params()  # max_params is exact for babyGPT with biases


def test_rope_removes_the_position_table():
    base, r = cfg(), cfg(pos="rope")
    model = GPT(r)
    assert model.pos_emb is None and "pos_emb.weight" not in model.state_dict()
    assert model.blocks[0].attn.rope_theta == r.rope_theta
    assert n_params(base) - n_params(r) == base.block_size * base.n_embd


def test_subln_adds_two_norms_per_block():
    base, s = cfg(), cfg(subln=True)
    block = GPT(s).blocks[0]
    assert isinstance(block.attn.sub_norm, nn.RMSNorm) and block.attn.sub_norm.normalized_shape == (32,)
    assert isinstance(block.mlp.sub_norm, nn.RMSNorm) and block.mlp.sub_norm.normalized_shape == (4 * 32,)
    assert n_params(s) - n_params(base) == s.n_layer * (32 + 4 * 32)


def test_gated_ffn_shapes_and_width():
    g = cfg(ffn="gated", bias=False)
    assert g.hidden_size == 96  # 8/3 * 32 = 85.3, up to a multiple of 16
    mlp = GPT(g).blocks[0].mlp
    assert isinstance(mlp, GatedMLP)
    assert (mlp.gate.in_features, mlp.gate.out_features) == (32, 96)
    assert (mlp.up.in_features, mlp.up.out_features) == (32, 96)
    assert (mlp.down.in_features, mlp.down.out_features) == (96, 32)
    assert cfg(ffn="gated", ffn_hidden=50).hidden_size == 50
    plain = cfg(bias=False)
    assert n_params(g) - n_params(plain) == g.n_layer * (3 * 32 * 96 - 2 * 32 * 128)


def test_gated_ffn_computes_down_of_gate_times_up():
    config = cfg(ffn="gated", activation="relu2", bias=False)
    mlp = GPT(config).blocks[0].mlp
    x = torch.randn(2, 5, 32)
    want = mlp.down(torch.relu(mlp.gate(x)) ** 2 * mlp.up(x))
    torch.testing.assert_close(mlp(x), want)


def test_gqa_shares_key_value_heads_and_keeps_one_scale_per_head():
    config = cfg(n_kv_head=2, linear="bitnet")
    attn = GPT(config).blocks[0].attn
    hs = 32 // 4
    assert attn.qkv.out_features == (4 + 2 * 2) * hs
    assert attn.qkv.weight_groups == 4 + 2 * 2  # one scale per original (head_size, n_embd) matrix
    _, scales = attn.qkv.quantized_weight()
    assert scales.shape == (8,)
    assert n_params(cfg(linear="bitnet")) - n_params(config) == config.n_layer * (2 * 2 * hs * 32)
    cache = KVCache()
    attn.eval()(torch.randn(3, 5, 32), cache=cache)
    assert cache.k.shape == (3, 2, 5, hs) and cache.v.shape == (3, 2, 5, hs)


def test_gqa_equals_attention_with_repeated_key_value_weights():
    """GQA with K heads == full attention whose k, v heads are copies: query head h uses shared head h // 2."""
    torch.manual_seed(0)
    gqa = CausalSelfAttention(32, 4, n_kv_head=2).eval()
    full = CausalSelfAttention(32, 4).eval()
    hs = 8
    q, k, v = gqa.qkv.weight.split([32, 16, 16])
    rep = lambda w: w.view(2, hs, 32).repeat_interleave(2, dim=0).reshape(32, 32)
    with torch.no_grad():
        full.qkv.weight.copy_(torch.cat([q, rep(k), rep(v)]))
        full.proj.load_state_dict(gqa.proj.state_dict())
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(gqa(x), full(x))


def test_tied_embeddings_share_one_matrix():
    model = GPT(cfg(tie_embeddings=True, bias=False))
    assert isinstance(model.lm_head, TiedHead) and model.lm_head.weight is model.tok_emb.weight
    assert "lm_head.weight" not in model.state_dict()
    assert n_params(cfg(bias=False)) - model.num_params() == 40 * 32


@pytest.mark.parametrize(
    "bad, word",
    [
        (dict(pos="alibi"), "pos"),
        (dict(ffn="moe"), "ffn"),
        (dict(n_kv_head=3), "n_kv_head"),
        (dict(n_kv_head=0), "n_kv_head"),
        (dict(ffn_hidden=0), "ffn_hidden"),
        (dict(norm_eps=-1.0), "norm_eps"),
        (dict(rope_theta=float("nan")), "rope_theta"),
        (dict(subln="yes"), "subln"),
        (dict(pos="rope", n_embd=36, n_head=4), "even head size"),
    ],
)
def test_bad_switches_are_one_line_errors(bad, word):
    with pytest.raises(ValueError, match=word):
        cfg(**bad)


def test_preset_has_all_four_changes_and_no_biases():
    config = block_config()
    assert (config.pos, config.subln, config.ffn, config.n_kv_head, config.bias) == ("rope", True, "gated", 2, False)
    assert (config.n_embd, config.n_head, config.n_layer, config.block_size) == (64, 4, 4, 32)  # the seed's size
    model = GPT(config)
    assert model.num_params() <= config.max_params()


# ---------------------------------------------------------------- RoPE
def test_rope_scores_depend_on_the_offset_only():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 16, generator=g), torch.randn(1, 16, generator=g)

    def score(m: int, n: int) -> float:
        return float(rope(q, torch.tensor([m]), 100.0) @ rope(k, torch.tensor([n]), 100.0).T)

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
    assert score(7, 7) == pytest.approx(float(q @ k.T), abs=1e-5)  # offset 0: as if not rotated
    assert abs(score(3, 1) - score(3, 2)) > 1e-3  # another offset, another score


def test_rope_rotates_pairs_and_keeps_norms():
    x = torch.randn(2, 3, 5, 8)
    pos = torch.arange(5)
    y = rope(x, pos, 10000.0)
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])  # position 0: no rotation
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    # channel 0 pairs with channel 4 (rotate half), turned by position * theta^0 = position radians
    a = torch.tensor(2.0)
    want0 = x[..., 2, 0] * a.cos() - x[..., 2, 4] * a.sin()
    torch.testing.assert_close(y[..., 2, 0], want0)


# ---------------------------------------------------------------- caches, packing, decode
@pytest.mark.parametrize("linear", ["fp", "bitnet"])
def test_cached_forward_equals_uncached(linear):
    torch.manual_seed(0)
    model = decisive(GPT(block_config(linear)))
    idx = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache()
        steps = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t : t + 1], cache=cache)[0] for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    assert cache[0].k.shape[1] == 2  # n_kv_head heads cached


@pytest.mark.parametrize("linear", ["fp", "bitnet"])
def test_cached_generation_equals_uncached(linear):
    torch.manual_seed(0)
    model = decisive(GPT(block_config(linear)), seed=1)
    idx = torch.randint(0, 40, (2, 4))
    cached = model.generate(idx, 40, temperature=0)  # past block_size=32: the sliding window too
    uncached = model.generate(idx, 40, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


def test_packed_equals_unpacked_greedy_tokens():
    torch.manual_seed(0)
    model = decisive(GPT(block_config()), seed=2)
    packed = pack_model(model)
    names = {n for n, m in model.named_modules() if isinstance(m, BitLinear)}
    assert {n for n, m in packed.named_modules() if isinstance(m, PackedBitLinear)} == names
    assert {"blocks.0.mlp.gate", "blocks.0.mlp.up", "blocks.0.mlp.down", "blocks.0.attn.qkv"} <= names
    idx = torch.randint(0, 40, (2, 3))
    assert torch.equal(packed.generate(idx, 25, temperature=0), model.generate(idx, 25, temperature=0))


@pytest.mark.parametrize("linear", ["fp", "bitnet"])
def test_decode_generate_equals_gpt_generate(linear):
    torch.manual_seed(0)
    model = decisive(GPT(block_config(linear)), seed=3)
    idx = torch.randint(0, 40, (2, 5))
    fast = decode.generate(model, idx, 20, temperature=0.0, graph=False)
    assert torch.equal(fast, model.generate(idx, 20, temperature=0, use_cache=False))
    cache = decode.StaticCache(model, 2, torch.device("cpu"), torch.float32)
    assert cache.k[0].shape == (2, 2, 32, 16)


def test_the_block_trains():
    torch.manual_seed(0)
    model = GPT(block_config()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 40, (8, 32))
    y = torch.roll(x, -1, dims=1)
    losses = []
    for _ in range(30):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0] - 0.5
