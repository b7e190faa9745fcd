"""The KV cache of generation: same logits and same tokens as rerunning the whole context."""

import json

import pytest
import torch

from babybitnet.attention import CausalSelfAttention, KVCache, MultiHeadAttention
from babybitnet.cli import main
from babybitnet.experiments.bench import bench_generate, generate_table
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.kernels.cpu import load_extension

LINEARS = ["fp", "bitnet"]


def tiny(linear: str, **kw) -> GPT:
    """A small random GPT with weights large enough that its logits are far from uniform."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=65, block_size=16, n_embd=32, n_head=4, n_layer=2, linear=linear)
    m = GPT(GPTConfig(**{**cfg, **kw}))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return m.eval()


def prompt(T: int, B: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 65, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("linear, bitlinear_norm", [("fp", False), ("bitnet", False), ("bitnet", True)])
def test_prefill_then_one_token_at_a_time_gives_the_full_forwards_logits(linear, bitlinear_norm):
    m = tiny(linear, bitlinear_norm=bitlinear_norm)
    idx = prompt(16)
    with torch.no_grad():
        want, _ = m(idx)
        assert want.std() > 0.5  # far from uniform: a wrong position or mask would show
        cache = m.new_cache()
        first, _ = m(idx[:, :5], cache=cache)  # prefill with 5 tokens
        steps = [m(idx[:, t : t + 1], cache=cache)[0] for t in range(5, 16)]
    got = torch.cat([first, *steps], dim=1)
    assert all(len(c) == 16 for c in cache) and cache[0].k.shape == (2, 4, 16, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the prefill runs exactly the computation of the uncached forward of the same tokens
    with torch.no_grad():
        assert torch.equal(first, m(idx[:, :5])[0])


def test_without_a_cache_the_attention_is_unchanged():
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 4).eval()
    x = torch.randn(2, 7, 32)
    q, k, v = attn.qkv(x).view(2, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scale)
    assert torch.equal(attn(x), attn.proj(y.transpose(1, 2).reshape(2, 7, 32)))
    # an empty cache and a prefill: the same numbers, and the cache keeps k and v
    cache = KVCache()
    assert len(cache) == 0 and torch.equal(attn(x, cache=cache), attn(x))
    assert len(cache) == 7 and torch.equal(cache.k, k) and torch.equal(cache.v, v)


def test_several_new_tokens_on_a_filled_cache_or_past_block_size_are_errors():
    m = tiny("fp")
    cache = m.new_cache()
    m(prompt(3), cache=cache)
    with pytest.raises(ValueError, match="several new tokens only when empty"):
        m(prompt(2), cache=cache)
    with pytest.raises(ValueError, match="several new tokens only when empty"):
        m.blocks[0].attn(torch.randn(2, 2, 32), cache=cache[0])
    with pytest.raises(ValueError, match="length 17 is longer than block_size=16"):
        m(prompt(17), cache=m.new_cache())
    full = m.new_cache()
    m(prompt(16), cache=full)
    with pytest.raises(ValueError, match="on top of 16 cached ones is longer than block_size=16: the position"):
        m(prompt(1), cache=full)
    with pytest.raises(ValueError, match="use model.new_cache"):
        m(prompt(1), cache=[KVCache()])


@pytest.mark.parametrize("linear", LINEARS)
@pytest.mark.parametrize("prompt_len, new", [(1, 10), (3, 40), (16, 5), (20, 5)])
def test_generate_gives_the_same_tokens_with_and_without_the_cache(linear, prompt_len, new):
    # (3, 40) and (1, 10)... cover: inside block_size, crossing it (sliding window after 16 tokens),
    # a prompt of exactly block_size and one longer than it
    m = tiny(linear)
    p = prompt(prompt_len)
    greedy = m.generate(p, new, temperature=0)
    assert greedy.shape == (2, prompt_len + new)
    assert torch.equal(greedy, m.generate(p, new, temperature=0, use_cache=False))
    for top_k in (None, 5):
        sampled = [
            m.generate(p, new, top_k=top_k, generator=torch.Generator().manual_seed(3), use_cache=c)
            for c in (True, False)
        ]
        assert torch.equal(*sampled)
    assert not torch.equal(greedy, sampled[0])  # the sampling path really sampled


def test_generate_uses_the_cache(monkeypatch):
    """Each step after the prompt runs one token through the model; past block_size the whole window."""
    m = tiny("fp")
    lengths = []
    forward = GPT.forward

    def spy(self, idx, targets=None, cache=None, last_only=False):
        lengths.append((idx.shape[1], cache is not None))
        return forward(self, idx, targets, cache, last_only)

    monkeypatch.setattr(GPT, "forward", spy)
    m.generate(prompt(4, B=1), 15, temperature=0)
    # 4 + 12 = 16 = block_size tokens are cached; the 17th on needs the sliding window
    assert lengths == [(4, True)] + [(1, True)] * 12 + [(16, False)] * 2
    lengths.clear()
    m.generate(prompt(4, B=1), 3, temperature=0, use_cache=False)
    assert lengths == [(4, False), (5, False), (6, False)]


def test_generate_falls_back_without_cache_for_swapped_in_attention():
    m = tiny("fp")
    want = m.generate(prompt(3), 20, temperature=0)
    for block in m.blocks:  # the seed's layout: a module per head, no cache argument
        fused = block.attn
        heads = MultiHeadAttention(fused.n_embd, fused.n_head, scale=fused.scale)
        for i, part in enumerate(("query", "key", "value")):
            w = fused.qkv.weight[i * 32 : (i + 1) * 32]
            for h, head in enumerate(heads.heads):
                getattr(head, part).weight.data.copy_(w[h * 8 : (h + 1) * 8])
        heads.proj.load_state_dict(fused.proj.state_dict())
        block.attn = heads
    assert not m.supports_cache()
    assert torch.equal(m.generate(prompt(3), 20, temperature=0), want)


def test_generate_keeps_the_training_mode_and_turns_dropout_off():
    m = tiny("fp", dropout=0.5).train()
    out = [m.generate(prompt(2), 10, temperature=0) for _ in range(2)]
    assert m.training and torch.equal(*out)


def test_bench_generate_on_the_cpu():
    r = bench_generate("quick", tokens=8, prompt="ROMEO:", device="cpu", dtype=torch.float32, repeats=1)
    assert r["preset"] == "quick" and r["tokens"] == 8 and r["dtype"] == "float32" and r["batch"] == 1
    assert set(r["models"]) == {"gpt", "bitnet", "bitnet_packed"}
    for m in r["models"].values():
        assert m["tokens_per_s"] > 0 and m["ms_per_token"] == pytest.approx(1000 / m["tokens_per_s"])
        assert len(m["rounds_s"]) == 1
    assert r["ratio_packed_over_gpt"] == pytest.approx(
        r["models"]["bitnet_packed"]["tokens_per_s"] / r["models"]["gpt"]["tokens_per_s"]
    )
    assert r["same_tokens"] is True  # exact integer sums on the CPU in float32
    kernel = "C++ add-only kernel" if load_extension() is not None else "int_linear"  # what PackedBitLinear ran
    assert r["tokens_with_cache"] == 8 and r["kernel"].startswith(kernel)
    assert r["weight_shapes"] == {"192x64": 4, "64x64": 4, "256x64": 4, "64x256": 4}
    assert r["machine"]["device"] == "cpu"
    table = generate_table(r)
    assert "babyGPT" in table and "packed babyBitNet" in table and "tokens/s" in table
    assert r["attention"].startswith("index_copy_") and r["pdl"] is False  # the GPU kernels are for CUDA
    assert "programmatic dependent launch" not in table  # said only for GPU runs
    gpu = {**r, "machine": {**r["machine"], "device": "cuda"}, "attention": "one Triton kernel", "pdl": True}
    assert "attention (both models): one Triton kernel; programmatic dependent launch: on" in generate_table(gpu)
    # past block_size (32): the last steps run without the cache, and the result says so
    r = bench_generate("quick", tokens=30, device="cpu", dtype=torch.float32, repeats=1)
    assert r["tokens_with_cache"] == 32 - 6 + 1


def test_bench_generate_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "generate", "--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert "--tokens" in help_text and "--prompt" in help_text and "--repeats" in help_text
    out = tmp_path / "g.json"
    args = ["bench", "generate", "--device", "cpu", "--preset", "quick", "--tokens", "4", "--repeats", "1"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "packed babyBitNet" in printed and f"wrote {out}" in printed
    r = json.loads(out.read_text())
    assert r["tokens"] == 4 and r["dtype"] == "float32" and r["same_tokens"] is True


def test_module_profile_counts_self_time_and_adds_up():
    import time

    from babybitnet.experiments.bench import OUTSIDE, module_profile

    class Sleepy(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.02)
            return x

    model = torch.nn.Sequential(Sleepy(), torch.nn.Identity())
    t0 = time.perf_counter()
    seconds = module_profile(model, lambda: model(torch.zeros(1)))
    whole = time.perf_counter() - t0
    assert seconds["Sleepy"] >= 0.02
    assert seconds["Sequential"] < seconds["Sleepy"]  # the child's time is not counted twice
    assert set(seconds) == {"Sleepy", "Sequential", "Identity", OUTSIDE}
    assert sum(seconds.values()) <= whole and sum(seconds.values()) == pytest.approx(whole, abs=0.01)
    assert not model._forward_hooks and not model[0]._forward_pre_hooks  # the hooks are gone after


def test_bench_generate_profile(capsys):
    r = bench_generate("quick", tokens=4, device="cpu", dtype=torch.float32, repeats=1, profile=True)
    prof = r["profile"]
    assert set(prof) == {"gpt", "bitnet", "bitnet_packed"}
    assert "Linear" in prof["gpt"] and "BitLinear" in prof["bitnet"] and "PackedBitLinear" in prof["bitnet_packed"]
    assert "BitLinear" not in prof["gpt"] and all(ms >= 0 for ms in prof["gpt"].values() if ms)
    from babybitnet.experiments.bench import profile_table

    table = profile_table(r)
    assert "| PackedBitLinear |" in table and "| total |" in table
    with pytest.raises(ValueError, match="profile works on the CPU .* and on CUDA"):
        bench_generate("quick", tokens=4, device="meta", profile=True)
    args = ["bench", "generate", "--device", "cpu", "--preset", "quick", "--tokens", "3", "--repeats", "1"]
    assert main([*args, "--profile", "--out", ""]) == 0
    assert "self time per kind of module" in capsys.readouterr().out


def test_kernel_kinds():
    # the GPU profile's categories, from kernel names seen in torch.profiler traces on an H200
    from babybitnet.experiments.bench import kernel_kind

    kinds = {
        "bitlinear_dp4a_kernel": "packed linear (ours)",
        "ternary_gemv_dp4a_kernel": "packed linear (ours)",
        "ternary_split_sum_kernel": "packed linear (ours)",
        "quantize_words_kernel": "packed linear (ours)",
        "nvjet_sm90_tst_8x64_64x16_4x1_v_bz_TNN": "cuBLAS matmul",
        "cudnn_generated_fort_native_sdpa_sm80_flash_fprop_wmma_f16": "attention",
        "triton_poi_fused_add_mul_0": "fused by torch.compile",
        "Memcpy DtoD (Device -> Device)": "copies",
        "void at::native::vectorized_layer_norm_kernel<c10::BFloat16, float, true>": "other (norms, elementwise)",
    }
    assert {name: kernel_kind(name) for name in kinds} == kinds


def test_critical_path_counts_each_kernel_once_where_kernels_overlap():
    from babybitnet.experiments.bench import critical_path

    # a (0-4); b starts inside a and ends after it (PDL): 4-7; c inside b: nothing; a gap 7-10; a again 10-12
    kernels = [("b", 2.0, 7.0), ("a", 0.0, 4.0), ("c", 3.0, 6.0), ("a", 10.0, 12.0)]
    per_kernel, idle = critical_path(kernels)
    assert per_kernel == {"a": [6.0, 6.0, 2], "b": [3.0, 5.0, 1], "c": [0.0, 3.0, 1]}
    assert idle == 3.0  # 7 to 10: nothing ran
    assert sum(v[0] for v in per_kernel.values()) + idle == 12.0  # the span, first start to last end
    assert critical_path([]) == ({}, 0.0)


def test_first_difference_counts_the_shared_new_tokens():
    from babybitnet.experiments.bench import first_difference

    a = torch.tensor([1, 2, 3, 4, 5])
    assert first_difference(a, a.clone(), 2) is None
    assert first_difference(a, torch.tensor([1, 2, 3, 9, 5]), 2) == 1  # one new token (3) in common
    assert first_difference(a, torch.tensor([1, 2, 3]), 2) == 1
