"""The tensor-core ternary GEMM: exact int32 sums on ragged shapes, the layer, configs, errors.

Like ``test_triton_dp4a.py``: on CUDA the kernel runs on the GPU (tensor cores, the unpacking in
inline PTX); without CUDA in Triton's interpreter on CPU tensors, where ``tl.dot`` is a numpy
matmul and the unpacking the same per byte (the root conftest.py sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch
from helpers import ternary_case as case

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

import babybitnet.kernels.triton_dp4a as D  # noqa: E402
import babybitnet.kernels.triton_mma as T  # noqa: E402
from babybitnet.packing import pack_2bit  # noqa: E402
from babybitnet.quant import quantize_activations, row_scales  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TINY = (16, 16, 128, 1, 1)  # (BLOCK_M, BLOCK_N, BLOCK_K inputs, warps, stages): many programs and K steps


def run(x_q: torch.Tensor, w_t: torch.Tensor, **kw) -> torch.Tensor:
    words = D.prepare_activations(x_q.to(DEVICE))
    return T.mma_matmul(words, pack_2bit(w_t).to(DEVICE), w_t.shape[1], **kw).cpu()


# (M, N, K, config): one tile; M and N off the tile (ragged edges); K one step, several, and a last
# partial step (K/4 bytes not a multiple of BLOCK_K/4: the masked loads); a tile wider than M
SHAPES = [(1, 1, 16, TINY), (3, 5, 128, TINY), (17, 37, 160, TINY), (33, 18, 512, TINY)]
SHAPES += [(20, 40, 400, (16, 32, 256, 2, 2)), (5, 70, 1024, (32, 64, 512, 4, 3)), (40, 16, 96, TINY)]


@pytest.mark.parametrize("m, n, k, config", SHAPES)
def test_sums_are_exact(m, n, k, config):
    x_q, w_t = case(m, n, k, seed=m * 1000 + n)
    got = run(x_q, w_t, config=config)
    assert got.dtype == torch.int32 and got.shape == (m, n)
    assert torch.equal(got.long(), x_q.long() @ w_t.long().T)


# split K: 2 or 3 programs per tile along K (5 steps in shares of 3 and 2; 6 steps in 3 shares; the last
# share ends in a partial step); more splits than steps (one program: the others would have nothing to do)
SPLITS = [(17, 37, 640, (*TINY, 2)), (33, 18, 768, (*TINY, 3)), (5, 70, 400, (16, 32, 256, 2, 2, 2))]
SPLITS += [(3, 5, 128, (*TINY, 4)), (40, 16, 96, (*TINY, 2))]


@pytest.mark.parametrize("m, n, k, config", SPLITS)
def test_split_k_sums_are_exact(m, n, k, config):
    x_q, w_t = case(m, n, k, seed=m * 1000 + n + 7)
    got = run(x_q, w_t, config=config)
    assert got.dtype == torch.int32 and got.shape == (m, n)
    assert torch.equal(got.long(), x_q.long() @ w_t.long().T)
    # rescaled (float32, one scale per row): the second kernel's epilogue is the GEMM's own, bit for bit
    s_x, s_w = torch.rand(m).to(DEVICE) + 0.5, torch.rand(n).to(DEVICE) + 0.5
    got = run(x_q, w_t, s_x=s_x, s_w_rows=s_w, config=config)
    assert got.dtype == torch.float32 and torch.equal(got, run(x_q, w_t, s_x=s_x, s_w_rows=s_w, config=config[:5]))


@pytest.mark.parametrize("m, n, k", [(19, 24, 384), (33, 10, 400)])
def test_split_k_layer_is_the_unsplit_layer(m, n, k):
    """Split K changes who adds what, not the numbers: the layer equals the one-program-per-tile layer exactly."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(m, k, generator=g).to(DEVICE, torch.bfloat16)
    packed = pack_2bit(torch.randint(-1, 2, (n, k), generator=g).to(torch.int8)).to(DEVICE)
    s_w = torch.tensor([0.5, 2.0], device=DEVICE)
    want = T.mma_linear(x, packed, s_w, k, config=TINY)
    got = T.mma_linear(x, packed, s_w, k, config=(*TINY, 3))  # 3 steps: 3 programs per tile; 4: 2
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_split_k_needs_two_launches():
    x, packed = torch.randn(2, 256, device=DEVICE), pack_2bit(torch.ones(8, 256, dtype=torch.int8)).to(DEVICE)
    with pytest.raises(ValueError, match="fused=False"):
        T.mma_linear(x, packed, torch.ones(1, device=DEVICE), 256, config=(*TINY, 2), fused=True)


@pytest.mark.parametrize("sign", [1, -1])
def test_extremes(sign):
    """Every weight +-1 and every activation 127 or -127: the largest sums must not overflow or wrap."""
    k = 1024
    x_q = torch.full((2, k), 127, dtype=torch.int8)
    x_q[1] = -127
    w_t = torch.full((3, k), sign, dtype=torch.int8)
    assert run(x_q, w_t, config=TINY).tolist() == [[sign * 127 * k] * 3, [-sign * 127 * k] * 3]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("m, n, k", [(19, 24, 256), (33, 10, 400)])
def test_rescale_and_layer_match_dp4a(fused, m, n, k):
    """The layer (quantizer kernel + GEMM, or one launch) gives dp4a_linear's numbers: same scales, exact sums."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(m, k, generator=g).to(DEVICE, torch.bfloat16)
    w_t = torch.randint(-1, 2, (n, k), generator=g).to(torch.int8)
    packed, s_w = pack_2bit(w_t).to(DEVICE), torch.tensor([0.5, 2.0], device=DEVICE)  # two weight groups
    got = T.mma_linear(x, packed, s_w, k, config=TINY, fused=fused)
    assert got.dtype == torch.bfloat16 and got.shape == (m, n)
    torch.testing.assert_close(got.float(), D.dp4a_linear(x, packed, s_w, k).float(), rtol=0, atol=0)
    # and the rescale is the reference's: exact sums / (s_x * s_w)
    x_i, s_x = quantize_activations(x.float().cpu())
    want = (x_i.double() @ w_t.double().T) / (s_x.double() * row_scales(s_w.cpu(), n, torch.float64))
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(  # every activation through the plain store; the one-launch and split-K stores with one each
    "config, fused, activation",
    [
        (TINY, False, "relu2"), (TINY, False, "gelu"), (TINY, False, ""),
        (TINY, True, "gelu"), ((*TINY, 3), False, "relu2"),
    ],
)  # fmt: skip
def test_norm_and_epilogue_are_dp4a_linears(config, fused, activation):
    """The fusions (the RMSNorm in the quantizer kernel, residual + act in the store, split K's in its second
    kernel) give the dp4a layer's numbers bit for bit: the same kernels' pieces in the same order."""
    g = torch.Generator().manual_seed(11)
    m, n, k = 19, 24, 384
    x = (torch.randn(2, m, k, generator=g) * 3).to(DEVICE, torch.bfloat16)
    norm = (torch.rand(k, generator=g) + 0.5).to(DEVICE, torch.bfloat16)
    residual = torch.randn(2, m, n, generator=g).to(DEVICE, torch.bfloat16)
    packed = pack_2bit(torch.randint(-1, 2, (n, k), generator=g).to(torch.int8)).to(DEVICE)
    s_w = torch.tensor([0.5, 2.0], device=DEVICE)
    for nw, eps in ((None, None), (norm, 1e-5)):
        if fused and nw is not None:
            with pytest.raises(ValueError, match="fused=False"):
                T.mma_linear(x, packed, s_w, k, config, fused, nw, eps)
            continue
        want = D.dp4a_linear(x, packed, s_w, k, None, nw, eps, activation, residual)
        got = T.mma_linear(x, packed, s_w, k, config, fused, nw, eps, activation, residual)
        assert got.shape == want.shape == (2, m, n) and torch.equal(got, want), (nw is not None, activation)
    words, s_x = D.quantize_words(x.reshape(-1, k))
    with pytest.raises(ValueError, match="needs the scales"):
        T.mma_matmul(words, packed, k, activation="relu")
    with pytest.raises(ValueError, match="residual must match"):
        T.mma_linear(x, packed, s_w, k, config, fused, residual=residual[..., :-1])
    with pytest.raises(ValueError, match="activation must be one of"):
        T.mma_linear(x, packed, s_w, k, config, fused, activation="tanh")


def test_layer_keeps_leading_dims_and_empty_inputs():
    x = torch.randn(2, 3, 32, device=DEVICE)
    packed = pack_2bit(torch.ones(8, 32, dtype=torch.int8)).to(DEVICE)
    for fused in (False, True):
        assert T.mma_linear(x, packed, torch.ones(1, device=DEVICE), 32, config=TINY, fused=fused).shape == (2, 3, 8)
        assert T.mma_linear(x[:0], packed, torch.ones(1, device=DEVICE), 32, fused=fused).shape == (0, 3, 8)


def test_configs_are_valid():
    for config in (*T.CONFIGS, T.DEFAULT_CONFIG):
        assert T.check_mma_config(config) == config
    assert T.DEFAULT_CONFIG in T.CONFIGS


@pytest.mark.parametrize(
    "config, word",
    [((16, 16, 64, 1, 1), "BLOCK_K"), ((8, 16, 128, 1, 1), "BLOCK_M"), ((16, 24, 128, 1, 1), "BLOCK_N"),
     ((16, 16, 128, 3, 1), "num_warps"), ((16, 16, 128, 1, 0), "num_stages"), ((16, 16, 128), "config"),
     ((16, 16, 128, 1, 1, 0), "split"), ((16, 16, 128, 1, 1, 2, 1), "config")],
)  # fmt: skip
def test_bad_configs(config, word):
    with pytest.raises(ValueError, match=word):
        T.check_mma_config(config)


def test_bad_inputs():
    packed = pack_2bit(torch.ones(4, 32, dtype=torch.int8)).to(DEVICE)
    words = D.prepare_activations(torch.ones(2, 32, dtype=torch.int8, device=DEVICE))
    with pytest.raises(ValueError, match="multiple of 16"):
        T.mma_matmul(words, pack_2bit(torch.ones(4, 40, dtype=torch.int8)).to(DEVICE), 40)
    with pytest.raises(ValueError, match="int32"):
        T.mma_matmul(words.float(), packed, 32)
    with pytest.raises(ValueError, match="K mismatch"):
        T.mma_matmul(words[:, :4], packed, 32)
    with pytest.raises(ValueError, match="both"):
        T.mma_matmul(words, packed, 32, s_x=torch.ones(2, device=DEVICE))
    with pytest.raises(ValueError, match="groups dividing"):
        T.mma_linear(torch.ones(2, 32, device=DEVICE), packed, torch.ones(3, device=DEVICE), 32)
    with pytest.raises(ValueError, match="float tensor"):
        T.mma_linear(torch.ones(2, 32, dtype=torch.int8, device=DEVICE), packed, torch.ones(1), 32)
