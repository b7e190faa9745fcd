"""The decode attention kernel: the numbers of softmax attention, the cache write at pos only, errors, the decode step.

On CUDA the kernel runs on the GPU; without CUDA in Triton's interpreter on CPU tensors (the root
conftest.py sets TRITON_INTERPRET=1 before the import).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from babybitnet import decode  # noqa: E402
from babybitnet.gpt import GPT, GPTConfig  # noqa: E402
from babybitnet.kernels.triton_attention import (  # noqa: E402
    BLOCK_T,
    MAX_SPLITS,
    decode_attention,
    merge_chunks,
    new_counts,
)
from babybitnet.packed import pack_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def case(B, H, KH, T, D, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    return rand(B, H, 1, D), rand(B, KH, 1, D), rand(B, KH, 1, D), rand(B, KH, T, D), rand(B, KH, T, D)


def reference(q, k, v, k_cache, v_cache, pos, scale):
    """In float64: the caches with k, v at pos, then softmax attention over positions 0..pos; (B, 1, H, D)."""
    kc, vc = k_cache.clone(), v_cache.clone()
    kc[:, :, pos], vc[:, :, pos] = k[:, :, 0], v[:, :, 0]
    rep = q.shape[1] // kc.shape[1]
    keys = kc.double().repeat_interleave(rep, 1)[:, :, : pos + 1]
    values = vc.double().repeat_interleave(rep, 1)[:, :, : pos + 1]
    y = torch.softmax(q.double() @ keys.transpose(-1, -2) * scale, dim=-1) @ values
    return y.transpose(1, 2), kc, vc


# (B, H, KH, T, D, pos): one head, grouped-query heads, the first and the last position, a head size
# that is not a power of 2; chunks of BLOCK_T positions side by side (flash-decoding): a number of them
# that is not a power of 2, pos at a chunk's end and just past it, fewer chunks used than launched
SHAPES = [
    (1, 1, 1, 8, 16, 0),
    (1, 4, 4, 32, 16, 5),
    (2, 6, 2, 40, 64, 37),
    (1, 3, 1, 8, 24, 7),
    (2, 4, 2, 150, 32, 149),
    (1, 2, 1, 150, 16, BLOCK_T),
    (1, 2, 1, 150, 16, BLOCK_T + 1),
    (1, 2, 2, 150, 16, 3),
]


@pytest.mark.parametrize("B, H, KH, T, D, pos", SHAPES)
def test_attention_and_cache_write_match_the_reference(B, H, KH, T, D, pos):
    q, k, v, k_cache, v_cache = case(B, H, KH, T, D, seed=T + pos)
    scale = 1 / math.sqrt(D)
    want, want_k, want_v = reference(q, k, v, k_cache, v_cache, pos, scale)
    got = decode_attention(q, k, v, k_cache, v_cache, torch.tensor([pos], device=DEVICE), scale)
    assert got.shape == (B, 1, H, D) and got.dtype == q.dtype
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)  # k and v at pos, nothing else touched


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_rounds_like_sdpa(dtype):
    q, k, v, k_cache, v_cache = case(1, 4, 2, 70, 32, dtype, seed=1)
    want, _, _ = reference(q, k, v, k_cache, v_cache, 66, 0.2)
    got = decode_attention(q, k, v, k_cache, v_cache, torch.tensor([66], device=DEVICE), 0.2)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)


def test_more_positions_than_chunks_and_calls_one_after_another():
    # past MAX_SPLITS chunks of BLOCK_T, each program takes several blocks; the chunks' counters must be
    # zero again after every call (the next call, at another position, combines only its own chunks)
    T = MAX_SPLITS * BLOCK_T + 3 * BLOCK_T
    q, k, v, k_cache, v_cache = case(1, 2, 1, T, 16, seed=4)
    counts = new_counts(1, 2, DEVICE)  # one buffer for every call, as a StaticCache keeps it
    for pos in (T - 1, 2 * BLOCK_T + 5, 0, T // 2):
        want, want_k, want_v = reference(q, k, v, k_cache, v_cache, pos, 0.25)
        got = decode_attention(q, k, v, k_cache, v_cache, torch.tensor([pos], device=DEVICE), 0.25, counts)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=lambda m, pos=pos: f"pos {pos}: {m}")
        assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
        q = q.flip(-1)  # another query each call


# the dirty-counts call below combines scratch rows no chunk wrote (uninitialised memory): overflows are expected
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_callers_own_counts_are_used_and_left_zero():
    q, k, v, k_cache, v_cache = case(2, 4, 2, 150, 16, seed=6)
    pos = torch.tensor([140], device=DEVICE)
    want, _, _ = reference(q, k, v, k_cache, v_cache, 140, 0.25)
    counts = new_counts(2, 4, DEVICE)
    got = decode_attention(q, k, v, k_cache, v_cache, pos, 0.25, counts)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert counts.abs().sum() == 0, "the chunks' counts must be zero again after the call"
    counts[3] = 100  # a count left dirty: none of head 3's chunks finds itself the last, none merges
    decode_attention(q, k, v, k_cache, v_cache, pos, 0.25, counts)
    chunks = -(-140 // BLOCK_T)
    assert counts[3] == 100 + chunks, "each chunk of head 3 counts itself done in the caller's counts"
    assert counts[torch.arange(8, device=DEVICE) != 3].abs().sum() == 0, "the other heads' counts are zero again"


def test_positions_after_pos_are_never_read():
    q, k, v, k_cache, v_cache = case(1, 2, 2, 64, 16, seed=2)
    want = decode_attention(q, k, v, k_cache.clone(), v_cache.clone(), torch.tensor([9], device=DEVICE), 0.25)
    k_cache[:, :, 10:], v_cache[:, :, 10:] = float("nan"), float("inf")  # stale or unwritten positions
    got = decode_attention(q, k, v, k_cache, v_cache, torch.tensor([9], device=DEVICE), 0.25)
    assert torch.equal(got, want)


def test_strided_heads_as_split_heads_gives_them():
    # q, k, v as views of one (B, 1, (H + 2 KH) D) qkv output, the layout of CausalSelfAttention.split_heads
    B, H, KH, D, T = 2, 4, 2, 16, 20
    qkv = torch.randn(B, 1, (H + 2 * KH) * D).to(DEVICE)
    q, k, v = (t.view(B, 1, -1, D).transpose(1, 2) for t in qkv.split([H * D, KH * D, KH * D], dim=-1))
    k_cache, v_cache = torch.randn(B, KH, T, D).to(DEVICE), torch.randn(B, KH, T, D).to(DEVICE)
    want, _, _ = reference(q, k, v, k_cache, v_cache, 11, 0.25)
    got = decode_attention(q, k, v, k_cache, v_cache, torch.tensor([11], device=DEVICE), 0.25)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_the_torch_operator_is_the_function():
    q, k, v, k_cache, v_cache = case(1, 2, 1, 16, 16, seed=3)
    pos = torch.tensor([4], device=DEVICE)
    want = decode_attention(q, k, v, k_cache.clone(), v_cache.clone(), pos, 0.3)
    counts = new_counts(1, 2, DEVICE)
    assert torch.equal(torch.ops.babybitnet.decode_attention(q, k, v, k_cache, v_cache, pos, 0.3, counts), want)
    assert torch.equal(k_cache[:, :, 4], k[:, :, 0])  # the operator writes the cache too


def test_bad_inputs_get_clear_errors():
    q, k, v, k_cache, v_cache = case(1, 4, 2, 16, 16)
    pos = torch.tensor([3], device=DEVICE)
    with pytest.raises(ValueError, match=r"q must be \(B, n_head, 1, head_size\)"):
        decode_attention(q.expand(1, 4, 2, 16), k, v, k_cache, v_cache, pos, 0.25)
    with pytest.raises(ValueError, match=r"n_head \(4\) must be a multiple"):
        decode_attention(q, k, v, k_cache[:, :1].expand(1, 3, 16, 16), v_cache, pos, 0.25)
    with pytest.raises(ValueError, match=r"v must be a float tensor of shape \(1, 2, 1, 16\)"):
        decode_attention(q, k, v[:, :1], k_cache, v_cache, pos, 0.25)
    with pytest.raises(ValueError, match="k_cache and v_cache must be contiguous"):
        decode_attention(q, k, v, k_cache.transpose(2, 3), v_cache, pos, 0.25)
    with pytest.raises(ValueError, match=r"pos must be a \(1,\) int64 tensor"):
        decode_attention(q, k, v, k_cache, v_cache, pos.int(), 0.25)
    with pytest.raises(ValueError, match=r"counts must be 4 or more contiguous int32 zeros"):
        decode_attention(q, k, v, k_cache, v_cache, pos, 0.25, new_counts(1, 4, DEVICE)[:3])
    with pytest.raises(ValueError, match=r"counts must be 4 or more .* got torch.int64"):
        decode_attention(q, k, v, k_cache, v_cache, pos, 0.25, new_counts(1, 4, DEVICE).long())


@pytest.mark.parametrize("block", [{}, dict(pos="rope", n_kv_head=1, subln=True, ffn="gated", activation="relu2")])
def test_the_decode_step_with_the_kernel_gives_the_logits_of_sdpa(block):
    torch.manual_seed(5)
    cfg = GPTConfig(vocab_size=11, block_size=12, n_embd=32, n_head=2, n_layer=2, dropout=0.0, linear="bitnet", **block)
    model = pack_model(GPT(cfg).eval()).to(DEVICE)
    idx = torch.tensor([[1, 4, 2, 7, 3]], device=DEVICE)
    plain = decode.StaticCache(model, 1, torch.device(DEVICE), torch.float32)
    fused = decode.StaticCache(model, 1, torch.device(DEVICE), torch.float32)
    plain.fused_attention, fused.fused_attention = False, True
    with torch.no_grad():
        for t in range(idx.shape[1]):
            want = decode.decode_step(model, plain, idx[:, t : t + 1])
            got = decode.decode_step(model, fused, idx[:, t : t + 1])
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the same keys at the same places: layer 0's from the same inputs, layer 1's after attention's rounding
    assert torch.equal(fused.k[0][:, :, :5], plain.k[0][:, :, :5]) and fused.k[0][:, :, 5:].abs().sum() == 0
    torch.testing.assert_close(fused.v[1][:, :, :5], plain.v[1][:, :, :5], rtol=1e-4, atol=1e-4)


def test_fused_attention_is_for_gpus(monkeypatch):
    assert not decode.fused_attention_available(torch.device("cpu"))  # eager SDPA there (the interpreter is slow)
    monkeypatch.setenv("BABYBITNET_FUSED_ATTENTION", "0")
    assert not decode.fused_attention_available(torch.device("cuda"))


def test_merge_chunks_is_softmax_attention_over_all_positions():
    """The torch reference of the kernel's combine (lesson 13's exercise): chunks' (m, l, acc) -> attention."""
    gen = torch.Generator().manual_seed(8)
    scores, values = torch.randn(70, dtype=torch.float64, generator=gen) * 30, torch.randn(70, 5, dtype=torch.float64)
    parts = [(s.max(), torch.exp(s - s.max()).sum(), torch.exp(s - s.max()) @ v)
             for s, v in zip(scores.split(32), values.split(32), strict=True)]  # fmt: skip
    m, l, acc = (torch.stack(t) for t in zip(*parts, strict=True))
    m, l, acc = (
        torch.cat([m, torch.tensor([float("-inf")], dtype=m.dtype)]),
        torch.cat([l, l[:1] * 0]),
        torch.cat([acc, acc[:1] * 0]),
    )
    torch.testing.assert_close(merge_chunks(m, l, acc), torch.softmax(scores, 0) @ values)  # an empty chunk too
