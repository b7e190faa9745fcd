"""The Triton ternary GEMV: exact int32 sums from the 2-bit bytes, the layer's numbers, clear errors.

On a machine with CUDA the kernel is compiled and run on the GPU. Without CUDA it runs in
Triton's interpreter on CPU tensors (the root conftest.py sets TRITON_INTERPRET=1 before
anything imports the kernels). Without triton every test skips.
"""

from __future__ import annotations

import pytest
import torch
from helpers import exact
from helpers import ternary_case as case
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

import babybitnet.experiments.bench_kernels as BK  # noqa: E402
import babybitnet.kernels.triton_gemv as TG  # noqa: E402
from babybitnet.addonly import packed_linear  # noqa: E402
from babybitnet.bitlinear import int_linear  # noqa: E402
from babybitnet.kernels import triton_common  # noqa: E402
from babybitnet.kernels.triton_common import interpreted  # noqa: E402
from babybitnet.packing import pack_2bit  # noqa: E402

assert torch.cuda.is_available() or interpreted(), "the root conftest.py sets TRITON_INTERPRET=1 without a GPU"

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = (4, 64, 2)  # (BLOCK_N, BLOCK_K, num_warps): several programs and K steps on small shapes


def run(x: torch.Tensor, w_t: torch.Tensor, **kw) -> torch.Tensor:
    return TG.ternary_matmul(x.to(DEVICE), pack_2bit(w_t).to(DEVICE), w_t.shape[1], **kw).cpu()


# (M, N, K, config): K and N off every block multiple, K off multiples of 4, one and several K steps
SHAPES = [
    (1, 1, 1, SMALL),
    (1, 5, 7, SMALL),
    (2, 70, 300, SMALL),
    (3, 33, 129, (8, 128, 4)),
    (4, 17, 64, (2, 32, 1)),
    (1, 9, 257, None),
    (17, 6, 41, (2, 32, 1)),  # M > 16: a second row of programs along the grid
]


@pytest.mark.parametrize("add_only", [True, False], ids=["add-only", "code-1"])
@pytest.mark.parametrize(("m", "n", "k", "config"), SHAPES)
def test_int8_path_is_exact(m, n, k, config, add_only):
    x_q, w_t = case(m, n, k, seed=m * 1000 + n * 10 + k)
    y = run(x_q, w_t, config=config, add_only=add_only)
    assert y.dtype == torch.int32 and y.shape == (m, n)
    assert torch.equal(y.long(), exact(x_q, w_t, torch.long))


@settings(max_examples=12)
@given(
    m=st.integers(1, 4),
    n=st.integers(1, 70),
    k=st.integers(1, 300),
    config=st.sampled_from([SMALL, (8, 128, 4), (1, 32, 1), (16, 256, 4)]),
    seed=st.integers(0, 2**16),
)
def test_int8_path_is_exact_random(m, n, k, config, seed):
    x_q, w_t = case(m, n, k, seed)
    assert torch.equal(run(x_q, w_t, config=config).long(), exact(x_q, w_t, torch.long))


def test_zero_weights_give_zero():
    x_q, _ = case(2, 11, 90, seed=1)
    y = run(x_q, torch.zeros(11, 90, dtype=torch.int8), config=SMALL)
    assert torch.equal(y, torch.zeros(2, 11, dtype=torch.int32))


@pytest.mark.parametrize("sign", [1, -1])
def test_extremes(sign):
    # |x| = 127 everywhere, all weights +1 / -1 / alternating: the largest sums, both signs
    k = 301
    x_q = torch.full((2, k), 127, dtype=torch.int8)
    x_q[1] = -127
    w_t = torch.stack([torch.full((k,), sign), -torch.full((k,), sign), (-1) ** torch.arange(k)]).to(torch.int8)
    y = run(x_q, w_t, config=SMALL)
    assert torch.equal(y.long(), exact(x_q, w_t, torch.long))
    assert y[0, 0] == sign * 127 * k


def test_float_activations():
    _, w_t = case(1, 37, 150, seed=2)
    x = torch.randn(3, 150, generator=torch.Generator().manual_seed(3))
    y = run(x, w_t, config=SMALL)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), x.double() @ w_t.double().T, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(DEVICE != "cuda", reason="bfloat16 needs the GPU (Triton's interpreter has no bfloat16)")
def test_bf16_activations_on_gpu():
    _, w_t = case(1, 300, 1000, seed=4)
    x = torch.randn(2, 1000, generator=torch.Generator().manual_seed(5)).bfloat16()
    y = run(x, w_t)
    ref = x.double() @ w_t.double().T
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-5  # float32 sums of bf16 inputs


@pytest.mark.parametrize(("shape", "groups"), [((1, 96), 1), ((2, 3, 96), 2), ((5, 96), 3)])
def test_layer_matches_int_linear(shape, groups):
    n, k = 24, shape[-1] - 1  # K = 95: not a multiple of 4
    g = torch.Generator().manual_seed(groups)
    x = torch.randn(*shape[:-1], k, generator=g)
    w_t = torch.randint(-1, 2, (n, k), generator=g).to(torch.int8)
    s_w = torch.rand(groups, generator=g) + 0.5
    packed = pack_2bit(w_t)
    y = TG.triton_packed_linear(x.to(DEVICE), packed.to(DEVICE), s_w.to(DEVICE), k, config=SMALL).cpu()
    assert y.shape == (*shape[:-1], n) and y.dtype == x.dtype
    torch.testing.assert_close(y, int_linear(x, w_t, s_w), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, packed_linear(x, packed, s_w, k), rtol=1e-5, atol=1e-6)


def test_rescale_is_fused():
    x_q, w_t = case(3, 10, 50, seed=6)
    s_x, s_w = torch.tensor([0.5, 2.0, 4.0]), torch.linspace(1, 3, 10)
    y = run(x_q, w_t, s_x=s_x.to(DEVICE), s_w_rows=s_w.to(DEVICE), config=SMALL)
    want = exact(x_q, w_t, torch.long).double() / (s_x.double()[:, None] * s_w.double()[None, :])
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- errors
def test_errors():
    x_q, w_t = case(2, 8, 20, seed=7)
    x_q, packed = x_q.to(DEVICE), pack_2bit(w_t).to(DEVICE)
    with pytest.raises(ValueError, match="int8 .* or float32"):
        TG.ternary_matmul(x_q.to(torch.int16), packed, 20)
    with pytest.raises(ValueError, match="2-D tensor"):
        TG.ternary_matmul(x_q[0], packed, 20)
    with pytest.raises(ValueError, match="uint8"):
        TG.ternary_matmul(x_q, packed.to(torch.int8), 20)
    with pytest.raises(ValueError, match="K mismatch: x has K=20 .* k=21"):
        TG.ternary_matmul(x_q, packed, 21)
    with pytest.raises(ValueError, match="pack into 5 bytes, but packed rows have 4"):
        TG.ternary_matmul(x_q, packed[:, :4], 20)
    with pytest.raises(ValueError, match="power of 2"):
        TG.ternary_matmul(x_q, packed, 20, config=(3, 64, 4))
    with pytest.raises(ValueError, match="both s_x"):
        TG.ternary_matmul(x_q, packed, 20, s_x=torch.ones(2, device=DEVICE))
    with pytest.raises(ValueError, match="float tensor"):
        TG.triton_packed_linear(x_q, packed, torch.ones(1), 20)
    with pytest.raises(ValueError, match="groups dividing N=8"):
        TG.triton_packed_linear(x_q.float(), packed, torch.ones(3, device=DEVICE), 20)


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU to put the tensors on two devices")
def test_device_mismatch():
    x_q, w_t = case(1, 4, 8, seed=8)
    with pytest.raises(ValueError, match="same device"):
        TG.ternary_matmul(x_q, pack_2bit(w_t).cuda(), 8)


def test_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setattr(triton_common, "interpreted", lambda: False)
    x_q, w_t = case(1, 4, 8, seed=9)
    with pytest.raises(ValueError, match="CUDA GPU .* TRITON_INTERPRET=1"):
        TG.ternary_matmul(x_q, pack_2bit(w_t), 8)


def test_missing_triton_says_pip_install(monkeypatch):
    monkeypatch.setattr(triton_common, "triton", None)
    with pytest.raises(ImportError, match="pip install triton"):
        TG.triton_packed_linear(torch.randn(1, 8), torch.zeros(4, 2, dtype=torch.uint8), torch.ones(1), 8)


# ---------------------------------------------------------------- benchmark
@pytest.mark.skipif(DEVICE == "cuda", reason="checks the CPU-only error")
def test_bench_needs_cuda():
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        BK.bench_kernel()
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        BK.run_once(64, 64)


@pytest.mark.skipif(DEVICE != "cuda", reason="times CUDA kernels")
def test_bench_on_gpu(monkeypatch):
    r = BK.bench_kernel_variants(sizes=((256, 320),), batches=(1, 3), repeats=3, configs=((4, 256, 4), (8, 512, 4)))
    assert [(row["n"], row["k"], row["m"]) for row in r["rows"]] == [(256, 320, 1), (256, 320, 3)]
    assert all(us > 0 for row in r["rows"] for us in row["us"].values())
    assert "triton int8 add-only" in BK.kernel_table(r)
    assert "triton dp4a int8" in BK.kernel_table(r)
    monkeypatch.setenv("BABYBITNET_TUNE", "0")  # the layer's default choice: the user's tuning cache untouched
    layer = BK.bench_kernel(sizes=((256, 320),), batches=(1, 3), repeats=3)
    assert [(row["n"], row["k"], row["m"]) for row in layer["rows"]] == [(256, 320, 1), (256, 320, 3)]
    assert all(row["us"][BK.OURS] > 0 and row["us"][BK.BF16] > 0 for row in layer["rows"])
    labels = BK.run_once(256, 320)
    assert labels[:-1] == [*BK.VARIANTS, "torch bf16"] and labels[-1].startswith(BK.OURS)


def test_kernel_table():
    row = {
        "n": 4096, "k": 4096, "m": 1,
        "us": {"torch bf16": 13.0, "triton int8 add-only": 6.5},
        "gb_per_s": {"torch bf16": 2581.0, "triton int8 add-only": 645.0},
        "speedup_vs_bf16": {"torch bf16": 1.0, "triton int8 add-only": 2.0},
        "config": {"triton int8 add-only": [8, 1024, 4]},
    }  # fmt: skip
    info = {"device": "cuda", "gpu": "NVIDIA H100", "torch": "2.11", "cpu": "x", "cpu_cores": 1, "torch_threads": 1}
    table = BK.kernel_table({"machine": info, "triton": "3.6.0", "repeats": 30, "rows": [row]})
    assert "cuda (NVIDIA H100), torch 2.11, triton 3.6.0" in table
    assert "| 4096 x 4096 | 1 | triton int8 add-only | 8, 1024, 4 | 6.5 | 645 | 2.00 |" in table
    assert "| 4096 x 4096 | 1 | torch bf16 |  | 13.0 | 2,581 | 1.00 |" in table
