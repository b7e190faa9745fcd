"""The one-launch BitLinear (quantize + dp4a GEMV + rescale): the numbers of dp4a_linear, in the interpreter on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from babybitnet.kernels.triton_bitlinear import bitlinear_dp4a  # noqa: E402
from babybitnet.kernels.triton_common import epilogue  # noqa: E402
from babybitnet.kernels.triton_dp4a import dp4a_linear  # noqa: E402
from babybitnet.packing import pack_2bit  # noqa: E402
from babybitnet.quant import quantize_activations, row_scales  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = (4, 8, 1)  # (BLOCK_N, BLOCK_W words, num_warps): several programs and steps on small shapes


def reference(x: torch.Tensor, w_t: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """quantize_activations in float32, exact integer sums, one rescale: what every packed path computes."""
    x_i, s_x = quantize_activations(x.float())
    sums = x_i.double() @ w_t.double().T
    return (sums.float() / (s_x * row_scales(s_w, w_t.shape[0]))).to(x.dtype)


def case(m: int, n: int, k: int, seed: int, groups: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * 3
    w_t = torch.randint(-1, 2, (n, k), generator=g).to(torch.int8)
    s_w = torch.rand(groups, generator=g) + 0.5
    return x, w_t, s_w


@settings(max_examples=25)
@given(m=st.integers(1, 5), n=st.integers(1, 13), kw=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_equals_the_reference(m, n, kw, seed):
    x, w_t, s_w = case(m, n, 16 * kw, seed)
    got = bitlinear_dp4a(x.to(DEVICE), pack_2bit(w_t).to(DEVICE), s_w.to(DEVICE), 16 * kw, SMALL)
    torch.testing.assert_close(got.cpu(), reference(x, w_t, s_w), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config", [(4, 8, 1), (8, 8, 2), (2, 16, 1)])
def test_configs_and_groups(config):
    x, w_t, s_w = case(3, 24, 96, seed=1, groups=3)
    got = bitlinear_dp4a(x.to(DEVICE), pack_2bit(w_t).to(DEVICE), s_w.to(DEVICE), 96, config)
    torch.testing.assert_close(got.cpu(), reference(x, w_t, s_w), rtol=1e-6, atol=1e-6)


def test_rounding_ties_and_zeros():
    # x * s_x lands exactly on .5 for several inputs: round half to even, as torch.round
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5] + [0.0] * 10])
    w_t = torch.ones(2, 16, dtype=torch.int8)
    got = bitlinear_dp4a(x.to(DEVICE), pack_2bit(w_t).to(DEVICE), torch.ones(1, device=DEVICE), 16, SMALL)
    torch.testing.assert_close(got.cpu(), reference(x, w_t, torch.ones(1)), rtol=0, atol=0)
    zeros = bitlinear_dp4a(
        torch.zeros(1, 16, device=DEVICE), pack_2bit(w_t).to(DEVICE), torch.ones(1, device=DEVICE), 16
    )
    assert torch.equal(zeros.cpu(), torch.zeros(1, 2))


def test_errors_say_what_to_do():
    w = pack_2bit(torch.zeros(4, 32, dtype=torch.int8)).to(DEVICE)
    with pytest.raises(ValueError, match="multiple of 16"):
        bitlinear_dp4a(
            torch.zeros(1, 20, device=DEVICE),
            pack_2bit(torch.zeros(4, 20, dtype=torch.int8)).to(DEVICE),
            torch.ones(1),
            20,
        )
    with pytest.raises(ValueError, match="at most 16 tokens"):
        bitlinear_dp4a(torch.zeros(17, 32, device=DEVICE), w, torch.ones(1, device=DEVICE), 32)
    with pytest.raises(ValueError, match="2-D float"):
        bitlinear_dp4a(torch.zeros(1, 32, dtype=torch.int8, device=DEVICE), w, torch.ones(1, device=DEVICE), 32)
    with pytest.raises(ValueError, match="groups dividing N=4"):
        bitlinear_dp4a(torch.zeros(1, 32, device=DEVICE), w, torch.ones(3, device=DEVICE), 32)


@pytest.mark.parametrize("groups", [1, 4])
def test_scales_are_read_in_their_dtype_and_groups(groups):
    # a model cast with .to(bfloat16) holds its weight scales in bf16: the kernels read them in place,
    # (G,) and in any float dtype, and give the numbers of the same scales in float32 expanded per row
    x, w_t, s_w = case(2, 8, 64, seed=3, groups=groups)
    s_half = s_w.half()  # float16: the interpreter has no bfloat16
    pk = pack_2bit(w_t).to(DEVICE)
    want = reference(x, w_t, s_half.float())
    for fn in (bitlinear_dp4a, dp4a_linear):
        got = fn(x.to(DEVICE), pk, s_half.to(DEVICE), 64, SMALL)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-6, msg=lambda m, fn=fn: f"{fn.__name__}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m, n, kw", [(1, 8, 4), (3, 13, 10), (5, 7, 20)])
@pytest.mark.parametrize("fn", [bitlinear_dp4a, dp4a_linear], ids=["one-launch", "two-kernel"])
def test_fused_rmsnorm_equals_norm_then_layer(dtype, m, n, kw, fn):
    # norm_weight: the kernel applies F.rms_norm(x, (K,), g, eps) itself, then the layer; in float32 and
    # float16 (the interpreter has no bfloat16) the same numbers as the norm computed by torch first
    k = 16 * kw
    x, w_t, s_w = case(m, n, k, seed=m * n + kw)
    x, g = x.to(dtype), (torch.rand(k, generator=torch.Generator().manual_seed(k)) + 0.5).to(dtype)
    want = reference(F.rms_norm(x, (k,), g, torch.finfo(dtype).eps), w_t, s_w)
    got = fn(x.to(DEVICE), pack_2bit(w_t).to(DEVICE), s_w.to(DEVICE), k, SMALL, g.to(DEVICE))
    torch.testing.assert_close(got.cpu().float(), want.float(), rtol=1e-5, atol=1e-4)
    unnormed = fn(x.to(DEVICE), pack_2bit(w_t).to(DEVICE), s_w.to(DEVICE), k, SMALL)
    assert not torch.allclose(unnormed.cpu().float(), want.float(), rtol=1e-3, atol=1e-3)  # the norm mattered


def test_fused_rmsnorm_checks_its_weight():
    w = pack_2bit(torch.zeros(4, 32, dtype=torch.int8)).to(DEVICE)
    with pytest.raises(ValueError, match=r"norm_weight must be the norm's weight, shape \(32,\)"):
        bitlinear_dp4a(torch.zeros(1, 32, device=DEVICE), w, torch.ones(1, device=DEVICE), 32, None, torch.ones(16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation", ["", "relu", "relu2", "gelu"])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("fn", [bitlinear_dp4a, dp4a_linear], ids=["one-launch", "two-kernel"])
def test_epilogue_is_the_torch_ops_after_the_layer(dtype, activation, with_residual, fn):
    # residual + act(layer(x)) in the kernel's store: the numbers of the layer, then torch's ops on its output
    if not activation and not with_residual:
        pytest.skip("no epilogue: the other tests")
    m, n, k = 3, 13, 160
    x, w_t, s_w = case(m, n, k, seed=len(activation) + 7 * with_residual)
    x = x.to(dtype)
    residual = (torch.randn(m, n, generator=torch.Generator().manual_seed(5)) * 4).to(dtype) if with_residual else None
    pk, dev = pack_2bit(w_t).to(DEVICE), lambda t: None if t is None else t.to(DEVICE)
    plain = fn(x.to(DEVICE), pk, s_w.to(DEVICE), k, SMALL).cpu()
    want = epilogue(plain, activation, residual)
    got = fn(x.to(DEVICE), pk, s_w.to(DEVICE), k, SMALL, activation=activation, residual=dev(residual)).cpu()
    assert got.dtype == dtype and got.shape == (m, n)
    if activation == "gelu":  # erf: Triton's and torch's may differ in the last bit of float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(got, want), (got - want).abs().max()
    assert not torch.equal(got, plain)  # the epilogue did something


def test_epilogue_checks_its_arguments():
    w = pack_2bit(torch.zeros(4, 32, dtype=torch.int8)).to(DEVICE)
    x, s = torch.zeros(2, 32, device=DEVICE), torch.ones(1, device=DEVICE)
    for fn in (bitlinear_dp4a, dp4a_linear):
        with pytest.raises(ValueError, match=r"activation must be one of .*'gelu'.*got 'swish'"):
            fn(x, w, s, 32, activation="swish")
        with pytest.raises(ValueError, match=r"residual must match the layer's output: torch.float32 \(2, 4\)"):
            fn(x, w, s, 32, residual=torch.zeros(2, 5, device=DEVICE))
