"""The dp4a ternary GEMV: exact int32 sums, the activation words, the fused quantizer, the layer, errors.

Like ``test_triton_gemv.py``: on CUDA the kernels run on the GPU (with the ``dp4a`` PTX
instruction); without CUDA they run in Triton's interpreter on CPU tensors, where ``dp4a``
is the same sum written with shifts (the root conftest.py sets TRITON_INTERPRET=1 before the import).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ternary_case as case
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

import babybitnet.kernels.triton_dp4a as D  # noqa: E402
import babybitnet.kernels.triton_gemv as TG  # noqa: E402
from babybitnet.packing import pack_2bit  # noqa: E402
from babybitnet.quant import quantize_activations  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = (4, 8, 1)  # (BLOCK_N, BLOCK_W words, num_warps): several programs and K steps on small shapes


def run(x_q: torch.Tensor, w_t: torch.Tensor, **kw) -> torch.Tensor:
    words = D.prepare_activations(x_q.to(DEVICE))
    return D.dp4a_matmul(words, pack_2bit(w_t).to(DEVICE), w_t.shape[1], **kw).cpu()


def test_prepare_activations_layout():
    x = torch.arange(32, dtype=torch.int8).reshape(1, 32)
    words = D.prepare_activations(x).view(torch.int8).reshape(4, 2, 4)  # (plane j, word q, byte b)
    # word q of plane j holds x[16q + j], x[16q + 4 + j], x[16q + 8 + j], x[16q + 12 + j]
    assert words[1, 0].tolist() == [1, 5, 9, 13]
    assert words[2, 1].tolist() == [18, 22, 26, 30]


# (M, N, K, config): N off the block multiples, one and several steps along K, M > 16, then
SHAPES = [(1, 1, 16, SMALL), (1, 37, 64, SMALL), (3, 50, 160, SMALL), (5, 20, 48, (2, 8, 1)), (17, 6, 32, SMALL)]
SHAPES += [(1, 8, 384, SMALL), (2, 16, 128, SMALL), (17, 4, 256, (4, 16, 1))]  # EVEN: no masks, the prefetch wraps


@pytest.mark.parametrize("m, n, k, config", SHAPES)
def test_sums_are_exact(m, n, k, config):
    x_q, w_t = case(m, n, k, seed=m * 1000 + n)
    got = run(x_q, w_t, config=config)
    assert got.dtype == torch.int32 and got.shape == (m, n)
    assert torch.equal(got.long(), x_q.long() @ w_t.long().T)


@settings(max_examples=8, deadline=None)
@given(m=st.integers(1, 4), n=st.integers(1, 40), words=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_sums_are_exact_random(m, n, words, seed):
    x_q, w_t = case(m, n, 16 * words, seed)
    assert torch.equal(run(x_q, w_t, config=SMALL).long(), x_q.long() @ w_t.long().T)


@pytest.mark.parametrize("sign", [1, -1])
def test_extremes(sign):
    """Every weight +-1 and every activation 127 or -127: the largest sums must not overflow or wrap."""
    k = 256
    x_q = torch.full((2, k), 127, dtype=torch.int8)
    x_q[1] = -127
    w_t = torch.full((3, k), sign, dtype=torch.int8)
    assert run(x_q, w_t, config=SMALL).tolist() == [[sign * 127 * k] * 3, [-sign * 127 * k] * 3]


def test_quantize_words_matches_quantize_activations():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 96, generator=g) * torch.tensor([[0.01], [1.0], [30.0], [0.0]])  # a zero row too
    # a row whose scale is exactly 1 and whose values are ties: round half to even, as torch.round
    x = torch.cat([x, torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -3.5] + [0.25] * 88])])
    words, s_x = D.quantize_words(x.to(DEVICE))
    x_i, s_ref = quantize_activations(x)
    assert torch.equal(s_x.cpu(), s_ref.reshape(-1)), "the scales differ from quantize_activations'"
    assert torch.equal(words.cpu(), D.prepare_activations(x_i.to(torch.int8))), "the int8 words differ"


@pytest.mark.parametrize("block", [D.QUANTIZE_BLOCK, 64])  # the whole row in one block; blocks of 4 words
@pytest.mark.parametrize("norm", [False, True])
def test_quantize_words_in_blocks_and_with_the_norm(monkeypatch, block, norm):
    # the quantizer's passes read the row block by block where it is longer than a block: the same words;
    # with the norm's weight, the words of F.rms_norm(x), up to the float rounding of its sum of squares
    # (summed in another order): scales within an ulp or two, a rare value one step off
    monkeypatch.setattr(D, "QUANTIZE_BLOCK", block)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 400, generator=g) * 3  # 25 words: 7 blocks of 4 and a partial one
    weight = torch.rand(400, generator=g) + 0.5 if norm else None
    words, s_x = D.quantize_words(x.to(DEVICE), norm_weight=None if weight is None else weight.to(DEVICE))
    x_i, s_ref = quantize_activations(F.rms_norm(x, (400,), weight, torch.finfo(x.dtype).eps) if norm else x)
    want = D.prepare_activations(x_i.to(torch.int8))
    if not norm:
        assert torch.equal(s_x.cpu(), s_ref.reshape(-1)), "the scales differ from quantize_activations'"
        assert torch.equal(words.cpu(), want), "the int8 words differ"
        return
    torch.testing.assert_close(s_x.cpu(), s_ref.reshape(-1), rtol=1e-6, atol=0)
    off = (words.cpu().view(torch.int8).int() - want.view(torch.int8).int()).abs()
    assert off.max() <= 1 and (off > 0).float().mean() < 0.01, f"{int((off > 0).sum())} int8 values differ"


def test_layer_matches_triton_packed_linear():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 64, generator=g)
    w_t = torch.randint(-1, 2, (24, 64), generator=g).to(torch.int8)
    pk, s_w = pack_2bit(w_t).to(DEVICE), torch.tensor([0.4, 0.8, 1.6], device=DEVICE)  # 3 groups of 8 rows
    got = D.dp4a_linear(x.to(DEVICE), pk, s_w, 64, config=SMALL).cpu()
    want = TG.triton_packed_linear(x.to(DEVICE), pk, s_w, 64, config=(4, 64, 2)).cpu()
    assert got.shape == (2, 3, 24) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_errors():
    x_q, w_t = case(1, 4, 32, 0)
    pk = pack_2bit(w_t)
    with pytest.raises(ValueError, match="multiple of 16"):
        D.prepare_activations(torch.zeros(1, 24, dtype=torch.int8))
    with pytest.raises(ValueError, match="int8"):
        D.prepare_activations(torch.zeros(1, 32))
    words = D.prepare_activations(x_q)
    with pytest.raises(ValueError, match="int32"):
        D.dp4a_matmul(x_q, pk, 32)
    with pytest.raises(ValueError, match="K mismatch"):
        D.dp4a_matmul(words, pk, 48)
    with pytest.raises(ValueError, match="power of 2"):
        D.dp4a_matmul(words.to(DEVICE), pk.to(DEVICE), 32, config=(3, 8, 1))
    with pytest.raises(ValueError, match="s_x"):
        D.dp4a_matmul(words.to(DEVICE), pk.to(DEVICE), 32, s_x=torch.ones(1, device=DEVICE))
    with pytest.raises(ValueError, match="float"):
        D.dp4a_linear(x_q, pk, torch.ones(1), 32)
    with pytest.raises(ValueError, match=r"norm_weight must be the norm's weight, shape \(32,\)"):
        D.dp4a_linear(
            torch.zeros(1, 32, device=DEVICE), pk.to(DEVICE), torch.ones(1, device=DEVICE), 32, None, torch.ones(16)
        )
