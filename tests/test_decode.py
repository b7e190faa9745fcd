"""The static-cache decode step (babybitnet.decode): the same tokens as GPT.generate, sampling from the same law."""

from __future__ import annotations

import copy

import pytest
import torch

from babybitnet import decode
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.packed import pack_model


def tiny(linear: str, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=11, block_size=12, n_embd=16, n_head=2, n_layer=2, dropout=0.0, linear=linear)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("linear", ["fp", "bitnet", "packed"])
def test_greedy_tokens_equal_generate(linear):
    model = tiny("bitnet" if linear == "packed" else linear, seed=3)
    if linear == "packed":
        model = pack_model(model)
    idx = torch.tensor([[1, 4, 2], [0, 0, 7]])
    want = model.generate(idx, 9, temperature=0, use_cache=False)
    got = decode.generate(model, idx, 9, temperature=0, graph=False)
    assert got.shape == want.shape == (2, 12)
    assert torch.equal(got, want), (got, want)


def test_logits_equal_forward():
    model = tiny("fp", seed=1)
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    want, _ = model(idx)
    cache = decode.StaticCache(model, 1, torch.device("cpu"), torch.float32)
    for t in range(idx.shape[1]):
        got = decode.decode_step(model, cache, idx[:, t : t + 1])
        torch.testing.assert_close(got, want[:, t], rtol=1e-5, atol=1e-5)
    assert int(cache.pos) == 5


def test_stops_at_block_size_and_generate_goes_on():
    model = tiny("fp", seed=2)
    idx = torch.tensor([[1, 2]])
    assert decode.generate(model, idx, 100, graph=False).shape == (1, 12)  # block_size 12
    assert model.generate(idx, 20, temperature=0).shape == (1, 22)  # GPT.generate slides its window after that


def test_sampling_draws_the_softmax_distribution():
    # Gumbel-max on fixed logits: the frequencies of each token match softmax(logits / T)
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    noise = torch.rand(logits.shape, generator=gen).clamp_(min=1e-20)
    picks = decode.choose(logits, 0.7, None, noise).flatten()
    freq = torch.bincount(picks, minlength=4).float() / len(picks)
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 0.7, -1), atol=0.015, rtol=0)
    top2 = decode.choose(logits, 1.0, 2, noise).flatten()
    assert set(top2.tolist()) == {0, 1}


def test_sampling_is_reproducible_with_a_generator():
    model = tiny("bitnet", seed=4)
    idx = torch.tensor([[1]])
    a = decode.generate(model, idx, 8, temperature=1.0, generator=torch.Generator().manual_seed(5), graph=False)
    b = decode.generate(model, idx, 8, temperature=1.0, generator=torch.Generator().manual_seed(5), graph=False)
    assert torch.equal(a, b)


def test_a_swapped_in_block_is_refused():
    model = tiny("fp")
    model.blocks[0] = torch.nn.Identity()
    with pytest.raises(ValueError, match="supports_cache"):
        decode.generate(model, torch.tensor([[1]]), 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("linear", ["fp", "bitnet", "packed"])
def test_graph_replay_equals_eager_on_cuda(linear):
    model = tiny("bitnet" if linear == "packed" else linear, seed=3, n_embd=64, n_head=4).cuda()
    if linear == "packed":
        model = pack_model(model)
    idx = torch.tensor([[1, 4, 2]], device="cuda")
    eager = decode.generate(model, idx, 9, graph=False)
    graphed = decode.generate(model, idx, 9, graph=True)
    assert torch.equal(eager, graphed)
    assert torch.equal(decode.generate(model, idx, 9, graph=True), graphed)  # the captured graph is reused


@pytest.mark.parametrize("ffn", ["mlp", "gated"])
def test_fold_prenorms_moves_each_norm_into_the_packed_layers_it_feeds(ffn):
    kw = dict(ffn="gated", activation="relu2") if ffn == "gated" else {}
    packed = pack_model(tiny("bitnet", seed=5, **kw))
    before = {k: v.clone() for k, v in packed.state_dict().items()}
    folded = decode.fold_prenorms(packed)
    firsts = ("gate", "up") if ffn == "gated" else ("fc",)
    for block, orig in zip(folded.blocks, packed.blocks, strict=True):
        assert isinstance(block.ln1, torch.nn.Identity) and isinstance(block.ln2, torch.nn.Identity)
        assert block.attn.qkv.norm is orig.ln1 and block.attn.proj.norm is None
        assert all(getattr(block.mlp, f).norm is orig.ln2 for f in firsts)
        assert block.attn.qkv.packed is orig.attn.qkv.packed  # a view: the tensors are shared
        # the model itself is unchanged
        assert isinstance(orig.ln1, torch.nn.RMSNorm) and orig.attn.qkv.norm is None
        assert all(getattr(orig.mlp, f).norm is None for f in firsts)
    after = packed.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    idx = torch.tensor([[1, 4, 2, 7]])
    want, _ = packed(idx)
    got, _ = folded(idx)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # up to the rounding of the norm's sum
    got_tokens = decode.generate(packed, idx, 6, graph=False)
    assert torch.equal(got_tokens, packed.generate(idx, 6, temperature=0, use_cache=False))


def test_fold_prenorms_leaves_other_models_alone():
    for model in (tiny("fp"), tiny("bitnet"), pack_model(tiny("bitnet", bitlinear_norm=True))):
        assert decode.fold_prenorms(model) is model


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused norm runs in the GPU kernel")
def test_folded_norms_on_cuda_give_the_logits_of_the_cpu():
    packed = pack_model(tiny("bitnet", seed=6, n_embd=64, n_head=4))
    idx = torch.tensor([[1, 4, 2, 7]])
    want, _ = packed(idx)
    cuda = copy.deepcopy(packed).cuda()
    got, _ = decode.fold_prenorms(cuda)(idx.cuda())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("ffn, activation", [("mlp", "relu"), ("mlp", "gelu"), ("gated", "relu2")])
def test_fold_activations_moves_the_activation_into_the_layer_before_it(ffn, activation):
    packed = pack_model(tiny("bitnet", seed=7, ffn=ffn, activation=activation))
    folded = decode.fold_activations(packed)
    first = "gate" if ffn == "gated" else "fc"
    for block, orig in zip(folded.blocks, packed.blocks, strict=True):
        assert getattr(block.mlp, first).activation == activation and block.mlp.act is not orig.mlp.act
        assert getattr(orig.mlp, first).activation == ""  # the model itself is unchanged
        assert getattr(block.mlp, first).packed is getattr(orig.mlp, first).packed  # a view: tensors shared
        if ffn == "gated":
            assert block.mlp.up.activation == ""  # act(gate(x)) * up(x): only the gate's output
    idx = torch.tensor([[1, 4, 2, 7]])
    want, _ = packed(idx)
    got, _ = folded(idx)
    assert torch.equal(got, want)  # the same ops on the same numbers, in the C++ call or in torch (gelu)
    assert decode.fold_activations(folded) is folded  # nothing left to fold
    for model in (tiny("fp"), tiny("bitnet")):
        assert decode.fold_activations(model) is model


def test_decode_adds_the_residual_in_the_last_layers():
    # add_output hands the residual stream to proj (attention) and to the feed-forward's last layer
    packed = pack_model(tiny("bitnet", seed=8))
    calls = []
    for block in packed.blocks:
        for layer in (block.attn.proj, block.mlp.proj):
            layer.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
    idx = torch.tensor([[1, 4, 2]])
    got = decode.generate(packed, idx, 5, graph=False)
    assert calls and all(isinstance(c.get("residual"), torch.Tensor) for c in calls)
    assert torch.equal(got, packed.generate(idx, 5, temperature=0, use_cache=False))
    layer, h, r = packed.blocks[0].mlp.proj, torch.randn(1, 2, 64), torch.randn(1, 2, 16)
    assert torch.equal(decode.add_output(r, layer, h), r + layer(h))
    fp = torch.nn.Linear(64, 16)
    assert torch.equal(decode.add_output(r, fp, h), r + fp(h))  # not a packed layer: the add of Block.forward
    with pytest.raises(ValueError, match=r"residual must have the layer's output shape \(1, 2, 16\)"):
        layer(h, residual=r[..., :8])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused epilogue runs in the GPU kernels")
@pytest.mark.parametrize("activation", ["relu", "relu2", "gelu"])
def test_the_fused_decode_step_on_cuda_gives_the_logits_of_the_cpu(activation):
    # norms, activations and residual adds inside the packed layers' kernels: the logits of the plain CPU model
    packed = pack_model(tiny("bitnet", seed=9, n_embd=64, n_head=4, bias=False, activation=activation))
    idx = torch.tensor([[1, 4, 2, 7]])
    want, _ = packed(idx)
    cuda = copy.deepcopy(packed).cuda()
    folded = decode.fold_layers(cuda)
    assert folded.blocks[0].mlp.fc.activation == activation
    cache = decode.StaticCache(cuda, 1, torch.device("cuda"), torch.float32)
    for t in range(idx.shape[1]):
        got = decode.decode_step(folded, cache, idx[:, t : t + 1].cuda())
        torch.testing.assert_close(got.cpu(), want[:, t], rtol=1e-3, atol=1e-3)
