"""The add-only matmul: every implementation equals the exact int64 product, on any shape and at the extremes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
import warnings

import pytest
import torch
from helpers import exact
from helpers import ternary_case as random_case
from hypothesis import given, settings
from hypothesis import strategies as st

from babybitnet import addonly as A
from babybitnet.bitlinear import int_linear
from babybitnet.course.grading import MULTIPLIES, CallRecorder
from babybitnet.experiments import bench_kernels as BK
from babybitnet.kernels import cpu
from babybitnet.packing import pack_2bit
from babybitnet.quant import ternarize

PACKED_IMPLS = {"packed": A.addonly_matmul_packed, "lut": A.lut_matmul}


@pytest.fixture(scope="module")
def ext():
    """The compiled kernel, or a skip saying why it is not there."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = cpu.load_extension()
    if module is None:
        why = "; ".join(str(w.message) for w in caught) or f"{cpu.NO_EXT_ENV} is set"
        pytest.skip(f"C++ extension unavailable: {why}")
    return module


def all_results(x_q: torch.Tensor, w_t: torch.Tensor, with_loop: bool = True) -> dict[str, torch.Tensor]:
    """Every implementation's answer; the C++ one only if it is loaded."""
    k, packed = x_q.shape[1], pack_2bit(w_t)
    out = {"masks": A.addonly_matmul(x_q, w_t)}
    if with_loop:
        out["loop"] = A.addonly_matmul_loop(x_q, w_t)
    out.update({name: fn(x_q, packed, k) for name, fn in PACKED_IMPLS.items()})
    if cpu.load_extension() is not None:
        out["ext"] = cpu.ext_matmul_packed(x_q, packed, k)
    return out


def assert_all_exact(x_q: torch.Tensor, w_t: torch.Tensor, with_loop: bool = True) -> None:
    want = exact(x_q, w_t)
    for name, got in all_results(x_q, w_t, with_loop).items():
        assert got.dtype == torch.int32 and got.shape == want.shape, name
        assert torch.equal(got, want), f"{name} differs from the exact product"


# ---------------------------------------------------------------- exactness
def test_packer_matches_spec():
    """The worked example of the format: [-1, 0, +1, +1] -> 0b10_10_01_00; padding with code 0b01."""
    w = torch.tensor([[-1, 0, 1, 1, 1]], dtype=torch.int8)
    assert pack_2bit(w).tolist() == [[0b10100100, 0b01010110]]


@settings(max_examples=40)
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 40),
    k=st.integers(1, 300),
    seed=st.integers(0, 2**31 - 1),
)
def test_exact_on_random_shapes(m, n, k, seed):
    x_q, w_t = random_case(m, n, k, seed)
    assert_all_exact(x_q, w_t, with_loop=m * n * k <= 20_000)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 31, 127, 128, 129, 255, 256, 257, 300, 515])
def test_exact_for_awkward_k(k):
    x_q, w_t = random_case(3, 7, k, seed=k)
    assert_all_exact(x_q, w_t)


def test_all_zero_weights_give_zero():
    x_q, _ = random_case(4, 1, 130, seed=1)
    w_t = torch.zeros(6, 130, dtype=torch.int8)
    for name, got in all_results(x_q, w_t).items():
        assert torch.equal(got, torch.zeros(4, 6, dtype=torch.int32)), name


@pytest.mark.parametrize("w", [1, -1])
@pytest.mark.parametrize("x", [127, -127])
def test_extremes(x, w):
    """All weights +1 or -1 and every activation at +-127: the largest sums the accumulators must hold."""
    k = 300
    x_q = torch.full((2, k), x, dtype=torch.int8)
    w_t = torch.full((3, k), w, dtype=torch.int8)
    for name, got in all_results(x_q, w_t).items():
        assert torch.equal(got, torch.full((2, 3), x * w * k, dtype=torch.int32)), name


@pytest.mark.parametrize("k", [4096, 8192 + 130])
@pytest.mark.parametrize("sign", [1, -1])
def test_no_overflow_at_large_k(ext, k, sign):
    """|sums| up to 127 * k, far beyond int16, over several 4096-input stretches: catches narrow accumulators
    (an int16-lane variant of the kernel that flushed every 64 blocks of 128 instead of 32 failed at k=8322)."""
    x_q = torch.full((2, k), 127 * sign, dtype=torch.int8)
    x_q[1, ::2] = -127 * sign  # a second token whose sum cancels out
    w_t = torch.ones(3, k, dtype=torch.int8)
    w_t[1] = -1
    w_t[2, 1::2] = 0  # and a row that keeps half of them
    want = exact(x_q, w_t)
    assert want.abs().max() == 127 * k  # the case really is extreme
    assert torch.equal(cpu.ext_matmul_packed(x_q, pack_2bit(w_t), k), want)
    assert torch.equal(A.addonly_matmul_packed(x_q, pack_2bit(w_t), k), want)


def test_ext_random_large(ext):
    """The sizes the benchmark uses (one token and a batch), rows of random ternary weights."""
    for m in (1, 8):
        x_q, w_t = random_case(m, 96, 4096, seed=m)
        assert torch.equal(cpu.ext_matmul_packed(x_q, pack_2bit(w_t), 4096), exact(x_q, w_t))


def test_ext_obeys_thread_count(ext):
    """Rows are split with at::parallel_for; the answer must not depend on how many threads split them."""
    x_q, w_t = random_case(5, 203, 1000, seed=3)
    packed, old = pack_2bit(w_t), torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(cpu.ext_matmul_packed(x_q, packed, 1000))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(results[0], exact(x_q, w_t)) and torch.equal(results[1], results[0])


def test_empty_shapes():
    x_q = torch.zeros(0, 8, dtype=torch.int8)
    w_t = torch.zeros(5, 8, dtype=torch.int8)
    for name, got in all_results(x_q, w_t).items():
        assert got.shape == (0, 5), name


# ---------------------------------------------------------------- no multiplication on the operands
@pytest.mark.parametrize("name", ["masks", "packed", "lut"])
def test_pure_torch_versions_never_multiply(name):
    x_q, w_t = random_case(3, 9, 37, seed=0)
    packed = pack_2bit(w_t)
    fn = {
        "masks": lambda: A.addonly_matmul(x_q, w_t),
        **{k: lambda f=f: f(x_q, packed, 37) for k, f in PACKED_IMPLS.items()},
    }
    with CallRecorder() as rec:
        got = fn[name]()
    assert torch.equal(got, exact(x_q, w_t))
    assert rec.names, "the recorder saw nothing: it would not catch a multiplication either"
    assert not rec.names & MULTIPLIES, f"{name} multiplies: {rec.names & MULTIPLIES}"


def test_recorder_catches_a_matmul():
    with CallRecorder() as rec:
        torch.ones(2, 2) @ torch.ones(2, 2)
    assert rec.names & MULTIPLIES


# ---------------------------------------------------------------- the layer
@pytest.mark.parametrize("no_ext", [False, True])
@pytest.mark.parametrize("groups", [1, 12])
def test_packed_linear_matches_int_linear(monkeypatch, groups, no_ext):
    if no_ext:
        monkeypatch.setenv(cpu.NO_EXT_ENV, "1")
    g = torch.Generator().manual_seed(groups)
    k, n = 130, 48
    w_t, s_w = ternarize(torch.randn(n, k, generator=g), groups)
    w_t = w_t.to(torch.int8)
    x = torch.randn(2, 3, k, generator=g) * 3
    want = int_linear(x, w_t, s_w)
    got = A.packed_linear(x, pack_2bit(w_t), s_w, k)
    assert got.shape == (2, 3, n) and got.dtype == x.dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- the layer in one C++ call
def linear_case(m: int, n: int, k: int, groups: int, seed: int):
    """Float activations (m, k), ternary int8 weights (n, k) with ``groups`` scales of different sizes, a bias."""
    g = torch.Generator().manual_seed(seed)
    w_t, s_w = ternarize(torch.randn(n, k, generator=g) * (0.5 + torch.rand(n, 1, generator=g)), groups)
    return torch.randn(m, k, generator=g) * 3, w_t.to(torch.int8), s_w, torch.randn(n, generator=g)


@pytest.mark.parametrize("m", [1, 2, 3, 32])
@pytest.mark.parametrize("k", [1, 5, 64, 65, 128, 129, 192, 200, 384])
def test_ext_linear_is_int_linear_bit_for_bit(ext, m, k):
    """Quantize, add-only GEMV, rescale and bias in one C++ call: int_linear's very floats, not just close ones.

    k = 64, 129, 192 end in a block with at most 64 inputs, which the kernel runs two tokens at a time (m = 3:
    a pair, then a lone token); n = 14 leaves a partial tile of 4 rows.
    """
    n = 14
    x, w_t, s_w, bias = linear_case(m, n, k, groups=2, seed=100 * m + k)
    packed = pack_2bit(w_t)
    want = int_linear(x, w_t, s_w)
    assert torch.equal(cpu.ext_linear(x, packed, s_w), want)
    assert torch.equal(cpu.ext_linear(x, packed, s_w, bias), want + bias)
    assert torch.equal(A.packed_linear(x, packed, s_w, k), want)
    got = cpu.ext_linear(x.reshape(1, m, 1, k), packed, s_w)  # leading dimensions are kept
    assert got.shape == (1, m, 1, n) and torch.equal(got.reshape(m, n), want)


def test_ext_linear_rounds_ties_to_even_and_keeps_nan(ext):
    """A row whose largest |x| is 127 has s_x = 1 exactly, so x = 0.5, 1.5, 2.5 are ties: torch.round sends
    them to the even neighbour, and so must the kernel. A row with a NaN or an inf is NaN throughout, as in
    int_linear (NaN times a zero weight is still NaN); an all-zero row gives zeros, and a row below the
    quantizer's eps (1e-5, compared in float32) its own tiny numbers."""
    k = 40
    x = torch.randn(5, k)
    x[0] = torch.arange(k) - 19.5  # halves: every one a tie
    x[0, 0] = 127.0
    x[1, 5] = float("nan")
    x[2, 3] = float("inf")
    x[3] = 0.0
    x[4] *= 1e-7
    w_t, s_w = ternarize(torch.randn(8, k))
    w_t = w_t.to(torch.int8)
    want, got = int_linear(x, w_t, s_w), cpu.ext_linear(x, pack_2bit(w_t), s_w)
    assert torch.equal(got[0], want[0]) and torch.equal(got[3], torch.zeros(8)) and torch.equal(got[4], want[4])
    assert got[1:3].isnan().all() and want[1:3].isnan().all()


def test_ext_linear_obeys_thread_count(ext):
    """Enough work (5 x 203 x 1000) for at::parallel_for to split the rows: any split gives the same floats."""
    x, w_t, s_w, _ = linear_case(5, 203, 1000, groups=7, seed=9)
    packed, old = pack_2bit(w_t), torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(cpu.ext_linear(x, packed, s_w))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(results[0], int_linear(x, w_t, s_w)) and torch.equal(results[1], results[0])


def test_ext_linear_refuses_wrong_shapes(ext):
    x, w_t, s_w, bias = linear_case(2, 8, 20, groups=1, seed=3)
    packed = pack_2bit(w_t)
    with pytest.raises(RuntimeError, match="K=21"):
        cpu.ext_linear(torch.randn(2, 21), packed, s_w)
    with pytest.raises(RuntimeError, match="groups"):
        cpu.ext_linear(x, packed, torch.ones(3))
    with pytest.raises(RuntimeError, match="bias"):
        cpu.ext_linear(x, packed, s_w, bias[:5])
    with pytest.raises(RuntimeError, match="float32"):
        cpu.ext_linear(x.double(), packed, s_w)


def test_row_scales_follow_groups():
    s_w = torch.tensor([1.0, 2.0, 3.0])
    assert A.row_scales(s_w, 6).tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]


# ---------------------------------------------------------------- the fallback
def test_no_ext_env_forces_pure_torch(monkeypatch):
    monkeypatch.setenv(cpu.NO_EXT_ENV, "1")
    assert cpu.load_extension() is None
    calls = []
    real = A.addonly_matmul_packed
    monkeypatch.setattr(A, "addonly_matmul_packed", lambda *a: calls.append(1) or real(*a))
    x_q, w_t = random_case(2, 5, 21, seed=4)
    assert torch.equal(A.matmul_packed(x_q, pack_2bit(w_t), 21), exact(x_q, w_t))
    assert calls, "the fallback was not used"
    with pytest.raises(RuntimeError, match="unavailable"):
        cpu.ext_matmul_packed(x_q, pack_2bit(w_t), 21)


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.delenv(cpu.NO_EXT_ENV, raising=False)
    monkeypatch.setattr(cpu, "_ext", None)
    monkeypatch.setattr(cpu, "_ext_tried", False)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="ninja"):
        assert cpu.load_extension() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must stay quiet
        assert cpu.load_extension() is None
    x_q, w_t = random_case(2, 5, 21, seed=5)
    assert torch.equal(A.matmul_packed(x_q, pack_2bit(w_t), 21), exact(x_q, w_t))


# ---------------------------------------------------------------- errors
def test_errors():
    x_q, w_t = random_case(2, 3, 10, seed=6)
    packed = pack_2bit(w_t)
    with pytest.raises(ValueError, match="int8"):
        A.addonly_matmul(x_q.float(), w_t)
    with pytest.raises(ValueError, match="int8"):
        A.addonly_matmul_packed(x_q.float(), packed, 10)
    with pytest.raises(ValueError, match=r"K=10.*K=11"):
        A.addonly_matmul(x_q, torch.zeros(3, 11, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"ternary.*2"):
        A.addonly_matmul_loop(x_q, w_t * 2)
    with pytest.raises(ValueError, match=r"K=10.*k=12"):
        A.lut_matmul(x_q, packed, 12)
    with pytest.raises(ValueError, match=r"k=9.*3 bytes.*4 bytes"):
        A.addonly_matmul_packed(x_q[:, :9], torch.zeros(3, 4, dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="uint8"):
        A.addonly_matmul_packed(x_q, packed.to(torch.int8), 10)
    with pytest.raises(ValueError, match=r"K=10.*k=8"):
        A.packed_linear(torch.randn(4, 10), packed, torch.ones(1), 8)
    with pytest.raises(ValueError, match="groups"):
        A.packed_linear(torch.randn(4, 10), packed, torch.ones(2), 10)


def test_ext_rejects_minus_128(ext):
    """sign(-128, -1) wraps around in int8, so the kernel refuses -128 rather than answer wrong."""
    x_q, w_t = random_case(2, 3, 300, seed=7)
    x_q[1, 257] = -128
    with pytest.raises(ValueError, match=r"\[-127, 127\]"):
        cpu.ext_matmul_packed(x_q, pack_2bit(w_t), 300)
    assert torch.equal(A.addonly_matmul_packed(x_q, pack_2bit(w_t), 300), exact(x_q, w_t))  # pure torch copes


# ---------------------------------------------------------------- the benchmark
def test_bench_matmul_small():
    res = BK.bench_matmul(sizes=(64,), batches=(1, 3), repeats=2)
    assert [(r["n"], r["m"]) for r in res["rows"]] == [(64, 1), (64, 3)]
    row = res["rows"][0]
    assert row["speedup_vs_fp32"]["torch fp32 F.linear"] == 1.0
    assert "lut_matmul (pure torch)" in row["us"] and all(v > 0 for v in row["us"].values())
    assert ("C++ kernel (ternary_matmul_packed)" in row["us"]) == (cpu.load_extension() is not None)
    table = BK.matmul_table(res)
    assert "faster than fp32" in table and "| 64 x 64 | 3 |" in table and res["machine"]["cpu"] in table


def test_bench_rejects_a_wrong_backend(monkeypatch):
    monkeypatch.setattr(BK, "lut_matmul", lambda x_q, packed, k: torch.zeros(x_q.shape[0], packed.shape[0]))
    with pytest.raises(RuntimeError, match="lut_matmul"):
        BK.bench_matmul(sizes=(16,), batches=(1,), repeats=1)


# ---------------------------------------------------------------- the build directory and its lock
def _fake_torch_load(calls):
    """``cpp_extension.load`` as torch does it, but without compiling: a FileBaton named "lock" in the build directory,
    where torch would wait forever (``baton.wait()``) for a lock someone left; here that is a failure."""
    from torch.utils.cpp_extension import FileBaton

    def load(name, sources, extra_cflags, build_directory, verbose):
        baton = FileBaton(os.path.join(build_directory, "lock"))
        if not baton.try_acquire():
            raise AssertionError("torch would wait forever for the lock file")
        try:
            calls.append(build_directory)
            return types.SimpleNamespace(ternary_matmul_packed=None)  # stands for the compiled module
        finally:
            baton.release()

    return load


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """load_extension() as on a first call, building (with the fake load) into a build directory under tmp_path."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(cpu.NO_EXT_ENV, raising=False)
    monkeypatch.setattr(cpu, "_ext", None)
    monkeypatch.setattr(cpu, "_ext_tried", False)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(cpu.shutil, "which", lambda name: f"/usr/bin/{name}")
    calls = []
    monkeypatch.setattr(cpp_extension, "load", _fake_torch_load(calls))
    build_dir = cpu._build_directory()
    assert build_dir.is_relative_to(tmp_path)
    return build_dir, calls


def _reset(monkeypatch):
    monkeypatch.setattr(cpu, "_ext", None)
    monkeypatch.setattr(cpu, "_ext_tried", False)


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_one(fresh_build):
    build_dir, calls = fresh_build
    (build_dir / "lock").touch()  # what a build killed half way leaves behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu.load_extension() is not None  # built (here: the fake load ran), no warning
    assert calls == [str(build_dir)] and not (build_dir / "lock").exists()


HOLD_LOCK = """
import fcntl, pathlib, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f.fileno(), fcntl.LOCK_EX)
pathlib.Path(sys.argv[2]).touch()  # and torch's lock, as a build in progress has
print("LOCKED", flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_build_in_progress_is_waited_for_then_given_up_and_a_killed_one_is_cleaned(fresh_build, monkeypatch):
    build_dir, calls = fresh_build
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(build_dir / cpu.BUILD_LOCK), str(build_dir / "lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "LOCKED\n"
        # another live process is building: wait LOCK_WAIT_S, then one warning and the pure-torch fallback
        monkeypatch.setattr(cpu, "LOCK_WAIT_S", 0.5)
        start = time.monotonic()
        with pytest.warns(RuntimeWarning, match=r"unavailable, using pure torch instead \(another process has been"):
            assert cpu.load_extension() is None
        assert 0.5 <= time.monotonic() - start < 30 and calls == []  # its lock was left alone
        assert (build_dir / "lock").exists()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert cpu.load_extension() is None  # once: no second warning, no second wait
        # the builder is killed half way: the OS drops its flock; torch's lock file stays behind
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert (build_dir / "lock").exists()
    _reset(monkeypatch)
    assert cpu.load_extension() is not None and calls == [str(build_dir)]
    assert not (build_dir / "lock").exists()


def test_build_directory_is_per_source_and_flags(fresh_build, tmp_path, monkeypatch):
    build_dir, _ = fresh_build
    edited = tmp_path / "ternary_gemv.cpp"
    edited.write_bytes(cpu._SOURCE.read_bytes() + b"\n// edited\n")
    monkeypatch.setattr(cpu, "_SOURCE", edited)
    other_source = cpu._build_directory()
    assert other_source != build_dir and other_source.parent == build_dir.parent
    monkeypatch.setattr(cpu, "_SOURCE", tmp_path / "ternary_gemv.cpp")
    monkeypatch.setattr(cpu, "_compile_flags", lambda: ["-O0"])
    assert cpu._build_directory() not in (build_dir, other_source)
