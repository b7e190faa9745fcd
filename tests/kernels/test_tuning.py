"""The per-shape tuner and the dispatch that uses it: buckets, keys, the cache file, failures, capture.

Nothing here is timed: a fake timer returns set microseconds per candidate (a test must not depend on
timing), and the candidates run in Triton's interpreter on CPU tensors where there is no GPU.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from babybitnet.addonly import packed_linear as cpu_packed_linear  # noqa: E402
from babybitnet.kernels import dispatch, tuning  # noqa: E402
from babybitnet.packing import pack_2bit  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def fake_timer(us: dict[str, float], calls: list[str] | None = None):
    def timer(name, fn):
        if calls is not None:
            calls.append(name)
        return us[name]

    return timer


def never(name, fn):
    raise AssertionError(f"the timer ran ({name}) where nothing may be timed")


def consts(**values):
    """Candidates returning fixed outputs: name -> no-argument call."""
    return {name: (lambda v=v: torch.full((2, 3), float(v))) for name, v in values.items()}


# ---------------------------------------------------------------- buckets and keys
@pytest.mark.parametrize(
    "m, bucket, edge",
    [(1, "1", 1), (2, "2-4", 4), (4, "2-4", 4), (5, "5-8", 8), (9, "9-16", 16), (16, "9-16", 16), (17, "17-32", 32),
     (64, "33-64", 64), (65, "65-128", 128), (129, "129-256", 256), (256, "129-256", 256), (257, ">256", 257),
     (4096, ">256", 4096)],
)  # fmt: skip
def test_buckets(m, bucket, edge):
    assert tuning.m_bucket(m) == bucket
    assert tuning.bucket_m(m) == edge
    assert tuning.m_bucket(edge) == bucket  # a bucket is timed at an M of its own


@pytest.mark.parametrize("m", [0, -1, 2.0, True])
def test_bad_token_counts(m):
    with pytest.raises(ValueError, match="tokens"):
        tuning.m_bucket(m)


def test_key_names_every_part():
    key = tuning.tuning_key("packed_linear", 6912, 2560, 3, "NVIDIA H200")
    assert key == "packed_linear|N=6912|K=2560|M=2-4|NVIDIA H200"
    assert tuning.tuning_key("packed_linear", 6912, 2560, 4, "NVIDIA H200") == key  # same bucket, same key
    assert tuning.tuning_key("packed_linear", 6912, 2560, 5, "NVIDIA H200") != key


def test_default_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BABYBITNET_TUNING_CACHE", str(tmp_path / "t.json"))
    assert tuning.default_path() == tmp_path / "t.json"
    monkeypatch.delenv("BABYBITNET_TUNING_CACHE")
    assert tuning.default_path().parts[-3:] == (".cache", "babybitnet", "tuning.json")


# ---------------------------------------------------------------- the tuner
def test_tune_keeps_the_fastest_and_the_file_round_trips(tmp_path):
    path = tmp_path / "cache" / "tuning.json"
    calls: list[str] = []
    tuner = tuning.Tuner(path, fake_timer({"a": 3.0, "b": 1.0, "c": 2.0}, calls))
    cands = consts(a=1, b=1, c=1)
    assert tuner.choose("key1", cands, "a", tune=True) == "b"
    assert sorted(calls) == ["a", "b", "c"]
    data = json.loads(path.read_text())
    assert data["version"] == tuning.VERSION
    assert data["entries"]["key1"] == {"choice": "b", "us": {"a": 3.0, "b": 1.0, "c": 2.0}}
    assert tuner.timings["key1"]["b"] == 1.0
    # a second process reads the file: no timing, the same choice
    again = tuning.Tuner(path, never)
    assert again.choose("key1", cands, "a", tune=True) == "b"
    # entries of other keys are kept when a new one is written
    tuning.Tuner(path, fake_timer({"a": 1.0, "b": 2.0, "c": 3.0})).choose("key2", cands, "c", tune=True)
    assert set(json.loads(path.read_text())["entries"]) == {"key1", "key2"}


def test_no_tuning_gives_the_default_or_the_stored_choice(tmp_path):
    path = tmp_path / "tuning.json"
    cands = consts(a=1, b=1)
    assert tuning.Tuner(path, never).choose("k", cands, "a", tune=False) == "a"
    assert not path.exists()
    tuning.Tuner(path, fake_timer({"a": 2.0, "b": 1.0})).choose("k", cands, "a", tune=True)
    assert tuning.Tuner(path, never).choose("k", cands, "a", tune=False) == "b"


def test_a_stored_choice_that_is_no_longer_a_candidate_is_tuned_again(tmp_path):
    path = tmp_path / "tuning.json"
    tuning.Tuner(path, fake_timer({"a": 2.0, "old": 1.0})).choose("k", consts(a=1, old=1), "a", tune=True)
    assert tuning.Tuner(path, never).choose("k", consts(a=1, new=1), "a", tune=False) == "a"
    assert tuning.Tuner(path, fake_timer({"a": 2.0, "new": 1.0})).choose("k", consts(a=1, new=1), "a", True) == "new"


@pytest.mark.parametrize("text", ["{not json", json.dumps({"version": -1, "entries": {"k": {"choice": "b"}}})])
def test_unreadable_or_old_files_are_ignored(tmp_path, text):
    path = tmp_path / "tuning.json"
    path.write_text(text)
    with pytest.warns(UserWarning) if text.startswith("{not") else contextlib.nullcontext():
        choice = tuning.Tuner(path, fake_timer({"a": 1.0, "b": 2.0})).choose("k", consts(a=1, b=1), "b", tune=True)
    assert choice == "a"
    assert json.loads(path.read_text())["entries"]["k"]["choice"] == "a"  # rewritten, in the current version


def test_failing_and_wrong_candidates_are_skipped(tmp_path):
    def boom():
        raise RuntimeError("out of shared memory")

    cands = {**consts(a=1, wrong=7), "boom": boom}
    tuner = tuning.Tuner(tmp_path / "t.json", fake_timer({"a": 5.0, "wrong": 1.0, "boom": 0.5}))
    with pytest.warns(UserWarning) as record:
        assert tuner.choose("k", cands, "a", tune=True) == "a"
    text = " ".join(str(w.message) for w in record)
    assert "boom" in text and "out of shared memory" in text and "wrong result" in text


def test_a_failing_default_raises(tmp_path):
    def boom():
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError, match="broken"):
        tuning.Tuner(tmp_path / "t.json", fake_timer({})).choose("k", {"a": boom, **consts(b=1)}, "a", tune=True)
    with pytest.raises(ValueError, match="default"):
        tuning.Tuner(tmp_path / "t.json", never).choose("k", consts(b=1), "a", tune=True)


def test_forget(tmp_path):
    path = tmp_path / "t.json"
    tuner = tuning.Tuner(path, fake_timer({"a": 2.0, "b": 1.0}))
    for key in ("x|1", "x|2", "y|1"):
        tuner.choose(key, consts(a=1, b=1), "a", tune=True)
    tuner.forget("x|")
    assert set(json.loads(path.read_text())["entries"]) == {"y|1"}
    assert tuner.lookup("x|1") is None and tuner.lookup("y|1") == "b"


def test_tuning_can_be_switched_off(monkeypatch):
    assert tuning.tuning_enabled()
    monkeypatch.setenv("BABYBITNET_TUNE", "0")
    assert not tuning.tuning_enabled()


# ---------------------------------------------------------------- the dispatch
@pytest.fixture
def tuner(monkeypatch, tmp_path):
    """dispatch with an empty memo and a tuner of its own (a temporary file); returns a setter for the timer."""
    t = tuning.Tuner(tmp_path / "tuning.json", never)
    monkeypatch.setattr(dispatch, "TUNER", t)
    monkeypatch.setattr(dispatch, "_memo", {})
    return t


def test_candidates_and_defaults():
    assert dispatch.default_candidate(1, 40) == "gemv"
    assert dispatch.default_candidate(16, 2048).startswith("bitlinear:")
    assert dispatch.default_candidate(16, 4096).startswith("dp4a:")
    assert dispatch.default_candidate(17, 4096).startswith("mma:")
    for m in (1, 4, 8, 16, 32, 64, 128, 256, 300):
        for n, k in ((2560, 2560), (100, 40)):
            names = dispatch.candidates(m, n, k)
            assert names[0] == dispatch.default_candidate(m, k) and "bf16" in names
            assert len(names) == len(set(names))
            assert ("int_mm" in names) == (m > 16 and n % 8 == 0 and k % 8 == 0)
            if k % 16:
                assert set(names) <= {"gemv", "bf16", "int_mm"}
    assert len(dispatch.candidates(1, 2560, 2560)) <= 12  # each one is a Triton compile the first time
    assert not any(n.startswith("mma") for n in dispatch.candidates(4, 64, 64))
    assert not any(n.startswith(("dp4a", "bitlinear")) for n in dispatch.candidates(256, 64, 64))
    # split K (a 6th number) where K has at least two steps of the tile, never where it would be one program
    for m in (8, 32, 128):
        assert any(n.count(",") == 5 for n in dispatch.candidates(m, 2560, 10240))
        assert not any(n.count(",") == 5 for n in dispatch.candidates(m, 384, 384))


def test_a_norm_to_fuse_keeps_both_gemv_paths_among_the_candidates():
    # both the one-launch kernel and the dp4a path's quantizer apply the norm: the tuner times both
    names = dispatch.candidates(1, 2560, 4096)
    assert names[0] == dispatch.default_candidate(1, 4096) == "dp4a:" + ",".join(map(str, dispatch.DP4A_DEFAULT))
    assert any(n.startswith("bitlinear:") for n in names) and any(n.startswith("dp4a:") for n in names)


@pytest.mark.parametrize(
    "name",
    ["gemv", "bitlinear:4,32,1", "dp4a:4,64,2", "mma:16,16,128,1,1", "mma1:16,16,128,1,1"] + ["bf16"],
)
def test_every_candidate_computes_the_normed_layer(name):
    g = torch.Generator().manual_seed(2)
    x, weight = torch.randn(4, 64, generator=g) * 2, torch.rand(64, generator=g) + 0.5
    w_t = torch.randint(-1, 2, (24, 64), generator=g).to(torch.int8)
    packed, s_w = pack_2bit(w_t), torch.tensor([0.25])
    got = dispatch.run_candidate(name, x.to(DEVICE), packed.to(DEVICE), s_w.to(DEVICE), 64, weight.to(DEVICE), 1e-6)
    want = cpu_packed_linear(F.rms_norm(x, (64,), weight, 1e-6), packed, s_w, 64)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-2, atol=1e-2)


def test_tuned_configs_are_the_kernels_own():
    """The tuner's short lists are configs each kernel knows (its CONFIGS, which bench kernel --variants tries)."""
    from babybitnet.kernels import triton_bitlinear, triton_dp4a, triton_mma

    for tuned, known in ((dispatch.TUNE_BITLINEAR, triton_bitlinear.CONFIGS), (dispatch.TUNE_DP4A, triton_dp4a.CONFIGS),
                         (dispatch.TUNE_MMA, triton_mma.CONFIGS)):  # fmt: skip
        assert tuned and set(tuned) <= set(known)


@pytest.mark.parametrize(
    "name",
    ["gemv", "bitlinear:4,32,1", "dp4a:4,64,2", "mma:16,16,128,1,1", "mma1:16,16,128,1,1", "bf16", "int_mm"]
    + ["mma:16,16,128,1,1,2"],  # split K: K = 256 below is two steps of 128, one program each
)
def test_every_candidate_computes_the_layer(name):
    g = torch.Generator().manual_seed(1)
    m = 4 if name.startswith("bitlinear") else 20  # _int_mm wants more than 16 rows
    k = 256 if name.count(",") == 5 else 64
    x = torch.randn(m, k, generator=g)
    w_t = torch.randint(-1, 2, (24, k), generator=g).to(torch.int8)
    packed, s_w = pack_2bit(w_t), torch.tensor([0.25])
    got = dispatch.run_candidate(name, x.to(DEVICE), packed.to(DEVICE), s_w.to(DEVICE), k).cpu()
    torch.testing.assert_close(got, cpu_packed_linear(x, packed, s_w, k), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="unknown"):
        dispatch.run_candidate("cublas", x, packed, s_w, 64)


def test_interpreter_and_cpu_take_the_fixed_default(tuner):
    """No GPU: the default, and the tuner is never asked (its timer would raise)."""
    x, packed = torch.randn(20, 64, device=DEVICE), pack_2bit(torch.ones(8, 64, dtype=torch.int8)).to(DEVICE)
    if DEVICE == "cuda":
        pytest.skip("on a GPU the dispatch tunes (the other tests drive it through tuned_choice)")
    assert dispatch.choice(x, packed, torch.ones(1), 64) == dispatch.default_candidate(20, 64)
    y = torch.ops.babybitnet.packed_linear(x, packed, torch.ones(1), 64)
    torch.testing.assert_close(y, cpu_packed_linear(x, packed, torch.ones(1), 64), rtol=1e-4, atol=1e-4)
    assert not tuner.file().exists()


def _small_candidates(m, n, k):
    return [dispatch.default_candidate(m, k), "bf16", "mma:16,16,128,1,1"]


def test_tuned_choice_tunes_once_per_bucket(tuner, monkeypatch):
    monkeypatch.setattr(dispatch, "candidates", _small_candidates)
    calls: list[str] = []
    tuner.timer = fake_timer({"mma:64,64,256,4,3": 3.0, "bf16": 2.0, "mma:16,16,128,1,1": 1.0}, calls)
    x, packed = torch.randn(20, 64, device=DEVICE), pack_2bit(torch.ones(8, 64, dtype=torch.int8)).to(DEVICE)
    s_w = torch.ones(1, device=DEVICE)
    assert dispatch.tuned_choice(x, packed, s_w, 64, "GPU", capturing=False) == "mma:16,16,128,1,1"
    assert len(calls) == 3
    assert dispatch.tuned_choice(x[:17], packed, s_w, 64, "GPU", capturing=False) == "mma:16,16,128,1,1"
    assert len(calls) == 3  # 17 and 20 tokens share the bucket 17-32: no second tuning
    entries = json.loads(tuner.file().read_text())["entries"]
    assert list(entries) == ["packed_linear|N=8|K=64|M=17-32|GPU"]
    norm = torch.ones(64, device=DEVICE)
    dispatch.tuned_choice(x, packed, s_w, 64, "GPU", capturing=False, norm_weight=norm, norm_eps=1e-6)
    assert len(calls) == 6  # a layer with a norm first is timed on its own: the candidates do more work
    assert "packed_linear+norm|N=8|K=64|M=17-32|GPU" in json.loads(tuner.file().read_text())["entries"]


def test_each_call_of_a_timed_candidate_reads_another_copy_of_the_weights(tuner, monkeypatch):
    # cold weights, as in a model: the calls of one timing cycle through copies that add up to twice the L2
    two = lambda m, n, k: [dispatch.default_candidate(m, k), "bf16"]  # noqa: E731 -- cheap in the interpreter
    monkeypatch.setattr(dispatch, "candidates", two)
    x, packed = torch.randn(20, 64, device=DEVICE), pack_2bit(torch.ones(8, 64, dtype=torch.int8)).to(DEVICE)
    monkeypatch.setattr(tuning, "l2_bytes", lambda device=None: 2 * packed.numel())  # -> 4 copies
    seen: list[int] = []
    run = dispatch.run_candidate
    monkeypatch.setattr(dispatch, "run_candidate", lambda nm, x, w, *a: seen.append(w.data_ptr()) or run(nm, x, w, *a))
    copies: dict[str, int] = {}

    def timer(name, fn):
        seen.clear()
        for _ in range(8):
            fn()
        copies[name] = len(set(seen))
        return {"bf16": 1.0}.get(name, 2.0)

    tuner.timer = timer
    assert dispatch.tuned_choice(x, packed, torch.ones(1, device=DEVICE), 64, "GPU", capturing=False) == "bf16"
    assert copies == dict.fromkeys(two(32, 8, 64), 4)
    weight_copies, clones = tuning.weight_copies, []
    assert weight_copies(100, 1000) == 20 and weight_copies(10**9, 1000) == 1
    assert weight_copies(1, 10**9) == tuning.MOST_COPIES
    # a choice already stored: nothing is timed, and no copy of the weights is made
    monkeypatch.setattr(tuning, "weight_copies", lambda *a, **kw: clones.append(1) or 4)
    dispatch._memo.clear()
    assert dispatch.tuned_choice(x, packed, torch.ones(1, device=DEVICE), 64, "GPU", capturing=False) == "bf16"
    assert clones == []


def test_capture_never_tunes(tuner, monkeypatch):
    """While a CUDA graph is captured: the stored choice, else the default, and nothing is timed or memoized."""
    monkeypatch.setattr(dispatch, "candidates", _small_candidates)
    x, packed = torch.randn(20, 64, device=DEVICE), pack_2bit(torch.ones(8, 64, dtype=torch.int8)).to(DEVICE)
    s_w = torch.ones(1, device=DEVICE)
    assert dispatch.tuned_choice(x, packed, s_w, 64, "GPU", capturing=True) == "mma:64,64,256,4,3"
    assert dispatch._memo == {} and not tuner.file().exists()
    # after the capture the shape is tuned; a later capture takes that choice
    tuner.timer = fake_timer({"mma:64,64,256,4,3": 3.0, "bf16": 1.0, "mma:16,16,128,1,1": 2.0})
    assert dispatch.tuned_choice(x, packed, s_w, 64, "GPU", capturing=False) == "bf16"
    dispatch._memo.clear()
    tuner.timer = never
    assert dispatch.tuned_choice(x, packed, s_w, 64, "GPU", capturing=True) == "bf16"


def test_switched_off_tuning_takes_the_default(tuner, monkeypatch):
    monkeypatch.setenv("BABYBITNET_TUNE", "0")
    x, packed = torch.randn(3, 64, device=DEVICE), pack_2bit(torch.ones(8, 64, dtype=torch.int8)).to(DEVICE)
    got = dispatch.tuned_choice(x, packed, torch.ones(1, device=DEVICE), 64, "GPU", capturing=False)
    assert got == dispatch.default_candidate(4, 64)
    assert not tuner.file().exists()


@pytest.mark.parametrize(
    "name",
    ["gemv", "bitlinear:4,32,1", "dp4a:4,64,2", "mma:16,16,128,1,1", "mma1:16,16,128,1,1"] + ["bf16"],
)
def test_every_candidate_computes_the_epilogue(name):
    # residual + relu2(layer): in the dp4a kernels' store, after the kernel for the others; the same numbers
    g = torch.Generator().manual_seed(3)
    x, residual = torch.randn(4, 64, generator=g) * 2, torch.randn(4, 24, generator=g)
    w_t = torch.randint(-1, 2, (24, 64), generator=g).to(torch.int8)
    packed, s_w = pack_2bit(w_t), torch.tensor([0.25])
    args = (x.to(DEVICE), packed.to(DEVICE), s_w.to(DEVICE), 64, None, 0.0)
    got = dispatch.run_candidate(name, *args, "relu2", residual.to(DEVICE))
    want = residual + torch.relu(cpu_packed_linear(x, packed, s_w, 64)).square()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="activation must be one of"):
        torch.ops.babybitnet.packed_linear(*args, "tanh", None)


def test_each_epilogue_is_tuned_under_its_own_key(tuner, monkeypatch):
    monkeypatch.setattr(dispatch, "candidates", _small_candidates)
    tuner.timer = fake_timer({"mma:64,64,256,4,3": 3.0, "bf16": 2.0, "mma:16,16,128,1,1": 1.0}, [])
    x, packed = torch.randn(20, 64, device=DEVICE), pack_2bit(torch.ones(8, 64, dtype=torch.int8)).to(DEVICE)
    s_w, residual = torch.ones(1, device=DEVICE), torch.zeros(20, 8, device=DEVICE)
    dispatch.tuned_choice(x, packed, s_w, 64, "GPU", capturing=False, activation="relu2")
    dispatch.tuned_choice(x, packed, s_w, 64, "GPU", capturing=False, residual=residual)
    entries = json.loads(tuner.file().read_text())["entries"]
    assert sorted(entries) == [f"packed_linear+{fused}|N=8|K=64|M=17-32|GPU" for fused in ("relu2", "residual")]
    assert dispatch.kernel_name(True, "gelu", True) == "packed_linear+norm+gelu+residual"
    dispatch.forget()
    assert json.loads(tuner.file().read_text())["entries"] == {}
