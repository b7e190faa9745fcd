"""The C++ layer (``kernels.cpu.ext_linear``) at the seed's shapes, bit for bit the torch steps."""

import pytest
import torch
from helpers import exact
from helpers import ternary_case as random_case

from babybitnet.bitlinear import int_linear
from babybitnet.kernels import cpu
from babybitnet.packing import pack_2bit
from babybitnet.quant import ternarize


@pytest.fixture(scope="module")
def ext():
    e = cpu.load_extension()
    if e is None:
        pytest.skip("C++ extension unavailable")
    return e


# K = 64 and 256: the seed's layers (one half-filled block, two full ones); 130 and 300: partial last blocks.
# M = 32: the sliding window past block_size, where the plane layout is built for every row of the window.
@pytest.mark.parametrize("k", [64, 130, 256, 300])
@pytest.mark.parametrize("m", [1, 2, 7, 32])
def test_ext_linear_is_int_linear_bit_for_bit(ext, k, m):
    g = torch.Generator().manual_seed(k * 100 + m)
    n, groups = 36, 3  # 36: 9 row tiles of 4, and N % 8 = 4 leaves a scalar tail in the rescale
    w_t, s_w = ternarize(torch.randn(n, k, generator=g), groups)
    x = torch.randn(1, m, k, generator=g) * 3
    x[0, 0, 0] = 0.0  # exact zeros and ties of the rounding take the same path as torch's
    bias = torch.randn(n, generator=g)
    want = int_linear(x, w_t.to(torch.int8), s_w)
    packed = pack_2bit(w_t.to(torch.int8))
    assert torch.equal(cpu.ext_linear(x, packed, s_w), want)
    assert torch.equal(cpu.ext_linear(x, packed, s_w, bias, ext=ext), want + bias)


def test_ext_linear_row_with_nan_gives_nan_only_there(ext):
    g = torch.Generator().manual_seed(0)
    w_t, s_w = ternarize(torch.randn(16, 256, generator=g))
    x = torch.randn(32, 256, generator=g)
    x[5, 17] = float("nan")
    y = cpu.ext_linear(x, pack_2bit(w_t.to(torch.int8)), s_w)
    assert y[5].isnan().all() and not y[torch.arange(32) != 5].isnan().any()
    assert torch.equal(y[:5], int_linear(x[:5], w_t, s_w))


@pytest.mark.parametrize("k", [4, 64, 132, 256])
def test_ext_matmul_packed_exact_at_window_sizes(ext, k):
    x_q, w_t = random_case(32, 20, k, seed=k)
    assert torch.equal(cpu.ext_matmul_packed(x_q, pack_2bit(w_t), k), exact(x_q, w_t))


# The AVX2 kernel works in blocks of 128 inputs (32 packed bytes) and tiles of 4 output rows: K = 16, 48, 64 and
# 80 (one partial block), 130 (a full block and a few inputs), 256 (two full), 300 (two and a partial one);
# M from 1 to 32 tokens (the window of the seed's generation); N = 38 leaves a partial tile.
@pytest.mark.parametrize("k", [16, 48, 64, 80, 130, 256, 300])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 32])
def test_ext_linear_exact_at_every_block_and_tile_remainder(ext, k, m):
    g = torch.Generator().manual_seed(k * 1000 + m)
    n = 38
    w_t, s_w = ternarize(torch.randn(n, k, generator=g), 2)
    x = torch.randn(m, k, generator=g) * 2
    bias = torch.randn(n, generator=g)
    packed = pack_2bit(w_t.to(torch.int8))
    assert torch.equal(cpu.ext_linear(x, packed, s_w, bias, ext=ext), int_linear(x, w_t.to(torch.int8), s_w) + bias)


# The largest possible sums (every |x| = 127 with the weight's sign, +-127 K) must come out exact, whatever
# width the kernel accumulates in on the way: K = 4096 and 4160 (a partial block at the end).
@pytest.mark.parametrize("m", [3, 4])
@pytest.mark.parametrize("k", [4096, 4160])
def test_ext_matmul_packed_exact_at_the_int16_bound(ext, k, m):
    x_q, w_t = random_case(m, 6, k, seed=k)
    x_q = torch.where(x_q < 0, -127, 127).to(torch.int8)
    w_t[0] = torch.where(x_q[0] < 0, -1, 1).to(torch.int8)  # row 0, token 0: the largest sum, 127 * k
    w_t[1] = -w_t[0]  # and the most negative one
    want = exact(x_q, w_t)
    assert want[0, 0] == 127 * k and want[0, 1] == -127 * k
    assert torch.equal(cpu.ext_matmul_packed(x_q, pack_2bit(w_t), k), want)


@pytest.mark.parametrize("activation", ["", "relu", "relu2"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_ext_linear_epilogue_is_torchs_ops_bit_for_bit(ext, activation, with_bias):
    # residual + act(layer(x) + bias) in the C++ call: exactly torch's relu, square and add on the layer's output
    g = torch.Generator().manual_seed(len(activation) + with_bias)
    n, k = 36, 130  # a scalar tail (N % 8 = 4) after the AVX2 lanes
    w_t, s_w = ternarize(torch.randn(n, k, generator=g), 3)
    x, residual = torch.randn(2, 3, k, generator=g) * 3, torch.randn(2, 3, n, generator=g)
    x[0, 0, 0] = float("nan")  # a NaN row stays NaN through relu, as in torch
    bias = torch.randn(n, generator=g) if with_bias else None
    packed = pack_2bit(w_t.to(torch.int8))
    y = cpu.ext_linear(x, packed, s_w, bias, ext=ext)
    want = residual + {"": lambda t: t, "relu": torch.relu, "relu2": lambda t: torch.relu(t).square()}[activation](y)
    got = cpu.ext_linear(x, packed, s_w, bias, ext=ext, activation=activation, residual=residual)
    assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())
    assert got.isnan()[0, 0].all() and not got.isnan()[1:].any()
    with pytest.raises(RuntimeError, match="residual must be float32 with the output's shape"):
        cpu.ext_linear(x, packed, s_w, bias, ext=ext, residual=residual[..., :-1])
