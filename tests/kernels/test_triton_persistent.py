"""The persistent one-launch BitLinear (one token): the numbers of bitlinear_dp4a, in the interpreter on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from babybitnet.kernels import dispatch  # noqa: E402
from babybitnet.kernels.triton_bitlinear import bitlinear_dp4a  # noqa: E402
from babybitnet.kernels.triton_common import epilogue  # noqa: E402
from babybitnet.kernels.triton_persistent import MAX_K, OPT_IN_ENV, offered, persistent_bitlinear  # noqa: E402
from babybitnet.packing import pack_2bit  # noqa: E402
from tests.kernels.test_triton_bitlinear import case, reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = (2, 1, 1)  # (BLOCK_N, programs per SM, num_warps): 3 programs in the interpreter, each looping


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 23), kw=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_equals_the_reference(n, kw, seed):
    # any N (partial last block; programs with no block, or several), any K in whole words
    x, w_t, s_w = case(1, n, 16 * kw, seed)
    got = persistent_bitlinear(x.to(DEVICE), pack_2bit(w_t).to(DEVICE), s_w.to(DEVICE), 16 * kw, SMALL)
    torch.testing.assert_close(got.cpu(), reference(x, w_t, s_w), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config", [(2, 1, 1), (4, 2, 2), (16, 1, 4), (1, 3, 1)])
def test_configs_and_groups(config):
    x, w_t, s_w = case(1, 24, 96, seed=1, groups=3)
    got = persistent_bitlinear(x.to(DEVICE), pack_2bit(w_t).to(DEVICE), s_w.to(DEVICE), 96, config)
    torch.testing.assert_close(got.cpu(), reference(x, w_t, s_w), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation", ["", "relu2"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_norm_and_epilogue_are_the_one_launch_kernels(dtype, activation, with_residual):
    # the RMSNorm in front, residual + act(y) in the store: bit for bit what bitlinear_dp4a computes
    n, k = 13, 160
    x, w_t, s_w = case(1, n, k, seed=len(activation) + 3 * with_residual)
    x, g = x.to(dtype), (torch.rand(k, generator=torch.Generator().manual_seed(k)) + 0.5).to(dtype)
    residual = (torch.randn(1, n, generator=torch.Generator().manual_seed(5)) * 4).to(dtype) if with_residual else None
    pk, dev = pack_2bit(w_t).to(DEVICE), lambda t: None if t is None else t.to(DEVICE)
    args = (x.to(DEVICE), pk, s_w.to(DEVICE), k)
    fused = {"norm_weight": g.to(DEVICE), "activation": activation, "residual": dev(residual)}
    got = persistent_bitlinear(*args, SMALL, **fused).cpu()
    want = bitlinear_dp4a(*args, (4, 8, 1), **fused).cpu()
    assert got.dtype == dtype and torch.equal(got, want), (got.float() - want.float()).abs().max()
    want_torch = epilogue(reference(F.rms_norm(x, (k,), g, torch.finfo(dtype).eps), w_t, s_w), activation, residual)
    torch.testing.assert_close(got.float(), want_torch.float(), rtol=1e-3, atol=1e-3)


def test_checks_its_arguments():
    w = pack_2bit(torch.zeros(4, 32, dtype=torch.int8)).to(DEVICE)
    s = torch.ones(1, device=DEVICE)
    with pytest.raises(ValueError, match="persistent_bitlinear takes at most 1 tokens"):
        persistent_bitlinear(torch.zeros(2, 32, device=DEVICE), w, s, 32)
    with pytest.raises(ValueError, match="programs per SM must be a positive int"):
        persistent_bitlinear(torch.zeros(1, 32, device=DEVICE), w, s, 32, (4, 0, 1))
    with pytest.raises(ValueError, match="BLOCK_N must be a power of 2"):
        persistent_bitlinear(torch.zeros(1, 32, device=DEVICE), w, s, 32, (3, 1, 1))
    big = MAX_K + 16
    with pytest.raises(ValueError, match=f"K <= {MAX_K}"):
        persistent_bitlinear(torch.zeros(1, big, device=DEVICE), pack_2bit(torch.zeros(1, big, dtype=torch.int8)), s,
                             big)  # fmt: skip
    assert persistent_bitlinear(torch.zeros(0, 32, device=DEVICE), w, s, 32).shape == (0, 4)


def test_the_tuner_times_it_only_when_asked(monkeypatch):
    monkeypatch.delenv(OPT_IN_ENV, raising=False)
    assert not offered(2560) and not any(c.startswith("persistent") for c in dispatch.candidates(1, 64, 2560))
    monkeypatch.setenv(OPT_IN_ENV, "1")
    assert offered(2560) and not offered(MAX_K + 16) and not offered(24)
    names = dispatch.candidates(1, 64, 2560)
    assert [c for c in names if c.startswith("persistent")] == [
        dispatch._name("persistent", c) for c in dispatch.TUNE_PERSISTENT
    ]
    assert not any(c.startswith("persistent") for c in dispatch.candidates(2, 64, 2560))  # one token only
    x, w_t, s_w = case(1, 8, 64, seed=3)
    got = dispatch.run_candidate("persistent:2,1,1", x.to(DEVICE), pack_2bit(w_t).to(DEVICE), s_w.to(DEVICE), 64)
    torch.testing.assert_close(got.cpu(), reference(x, w_t, s_w), rtol=1e-6, atol=1e-6)
