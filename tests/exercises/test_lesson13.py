"""Graders of lesson 13 (13_gpu_kernel): a Triton kernel that unpacks 2-bit packed weights.

Exercise 13.1 is a kernel (``unpack_2bit_kernel``) and its launcher (``unpack_2bit_triton``). Both
are checked against ``babybitnet.packing.unpack_2bit(packed, 4 * KB)`` (padding kept): int8 of
shape (N, 4 * KB), on random shapes (hypothesis: N 1..24, KB 1..24, several tile sizes, so that
N and KB are often no multiple of the tile), a single row, a single byte, exact multiples, and
bytes holding every code. The kernel is also launched by the grader itself, with its own grid,
so a launcher that does not use the kernel cannot pass alone. That launch writes into a bigger
buffer than the tensor and checks that nothing past the tensor changed (masked stores); the
launcher's tests run only after it, since an unmasked store would crash the interpreter.

On a machine without CUDA the kernels run in Triton's interpreter on CPU tensors, switched on
by the root conftest.py (TRITON_INTERPRET=1 before triton decorates the kernel); the
interpreter is slow, so the shapes are small. Without triton every test skips.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from babybitnet.course.grading import GradingError, assert_close, assert_same  # noqa: E402
from babybitnet.packing import pack_2bit, unpack_2bit  # noqa: E402

pytestmark = pytest.mark.lesson13

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TILES = [(4, 8), (1, 1), (2, 16), (8, 4), (16, 32)]  # (BLOCK_N, BLOCK_KB)


def packed_case(n: int, kb: int, seed: int) -> torch.Tensor:
    """uint8 (n, kb) from pack_2bit of random ternary weights; the last byte of each row may hold padding."""
    g = torch.Generator().manual_seed(seed)
    k = 4 * kb - int(torch.randint(0, 4, (1,), generator=g))  # 4*kb - 3 .. 4*kb weights per row
    w_t = torch.randint(-1, 2, (n, k), generator=g).to(torch.int8)
    return pack_2bit(w_t)


def stub_on_gpu(e: Exception) -> bool:
    """A compiled (GPU) kernel that still holds the stub fails to compile instead of raising it."""
    text = str(e)
    return "NotImplementedError" in text and "Exercise 13.1" in text


def call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; the stub's compile error on a GPU said as 'not done yet'."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        if stub_on_gpu(e) and not isinstance(e, NotImplementedError):
            raise GradingError(
                "not done yet: unpack_2bit_kernel() still raises NotImplementedError (Exercise 13.1)"
            ) from e
        raise


GUARD = 99  # what the guarded buffers hold outside the tensors; a kernel that writes there misses a mask


def run_kernel_guarded(kernel, packed: torch.Tensor, tile: tuple[int, int]) -> tuple[torch.Tensor, bool]:
    """Launch the learner's kernel on ``packed`` (N, KB) with the grader's grid; (output (N, 4 KB), wrote outside?).

    Input and output are the first rows of much bigger buffers, so that a kernel without masks
    reads and writes memory that belongs to the grader instead of crashing the interpreter (or
    the GPU): the rows past the output must still hold GUARD afterwards.
    """
    n, kb = packed.shape
    pad = 4 * (n + tile[0] + tile[1] + 2)  # rows: more than any unmasked tile (or a 4x row stride) can reach
    inp = torch.full((pad + n, kb), 0b01010101, dtype=torch.uint8)
    inp[:n] = packed
    out = torch.full((pad + n, 4 * kb), GUARD, dtype=torch.int8)
    inp, out = inp.to(DEVICE), out.to(DEVICE)
    grid = (triton.cdiv(n, tile[0]), triton.cdiv(kb, tile[1]))
    call(kernel[grid], inp, out, n, kb, BLOCK_N=tile[0], BLOCK_KB=tile[1])
    out = out.cpu()
    return out[:n], not bool((out[n:] == GUARD).all())


_masks_ok: dict[int, str | None] = {}


def require_masks(lesson) -> None:
    """Fail in words, before the launcher runs, if the learner's kernel writes outside its output.

    An unmasked store past the end of a tensor would crash the interpreter (it writes raw
    memory) and take every other result with it, so the kernel is first tried in guarded buffers.
    """
    kernel = lesson.get("unpack_2bit_kernel")
    if id(kernel) not in _masks_ok:
        _masks_ok[id(kernel)] = None
        for tile in [(4, 8), (2, 4)]:
            _, outside = run_kernel_guarded(kernel, packed_case(6, 11, seed=7), tile)
            if outside:
                _masks_ok[id(kernel)] = (
                    f"unpack_2bit_kernel with BLOCK_N={tile[0]}, BLOCK_KB={tile[1]} on N=6 rows of KB=11 bytes "
                    "writes past the end of its output: mask the store with rows < N and bytes < KB "
                    "(the tiles at the edges stick out of the tensor)"
                )
                break
    if _masks_ok[id(kernel)]:
        raise AssertionError(_masks_ok[id(kernel)])


def check_launcher(lesson, packed: torch.Tensor, tile: tuple[int, int] | None, case: str = "") -> None:
    fn = lesson.get("unpack_2bit_triton")
    require_masks(lesson)
    before = packed.clone()
    kwargs = {} if tile is None else {"block_n": tile[0], "block_kb": tile[1]}
    shown = "" if tile is None else f", block_n={tile[0]}, block_kb={tile[1]}"
    what = f"unpack_2bit_triton(packed uint8 {tuple(packed.shape)}{shown}){f' {case}' if case else ''}"
    got = call(fn, packed.to(DEVICE), **kwargs)
    if isinstance(got, torch.Tensor):
        if got.device.type != DEVICE:
            raise AssertionError(f"{what} returned a tensor on {got.device}; put the output on packed's device")
        got = got.cpu()
    assert torch.equal(packed, before), "the grader's input changed"
    want = unpack_2bit(packed, 4 * packed.shape[1])
    assert_same(got, want, what + " (unpack_2bit(packed, 4 * KB): int8 of shape (N, 4 * KB))")


@pytest.mark.exercise("13.1")
@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 24), kb=st.integers(1, 24), tile=st.sampled_from(TILES), seed=st.integers(0, 2**16))
@example(n=7, kb=10, tile=(4, 8), seed=0)  # the lesson's shape
@example(n=5, kb=9, tile=(4, 8), seed=1)  # one past a multiple of the tile, both ways
def test_launcher_matches_unpack_2bit(lesson, n, kb, tile, seed):
    check_launcher(lesson, packed_case(n, kb, seed), tile, "on random weights")


@pytest.mark.exercise("13.1")
@pytest.mark.parametrize(
    ("n", "kb"), [(1, 1), (1, 13), (13, 1), (8, 16), (3, 8)], ids=["1x1", "1-row", "1-byte", "multiples", "3x8"]
)
def test_edge_shapes(lesson, n, kb):
    check_launcher(lesson, packed_case(n, kb, seed=n * 100 + kb), None, f"(default tiles, N={n}, KB={kb})")


@pytest.mark.exercise("13.1")
def test_every_code_in_every_position(lesson):
    # the 81 bytes of four ternary codes, and the padding byte 0b01010101 (four zero weights)
    codes = [
        c0 | c1 << 2 | c2 << 4 | c3 << 6 for c0 in range(3) for c1 in range(3) for c2 in range(3) for c3 in range(3)
    ]
    packed = torch.tensor([*codes, 0b01010101, 0b01010101, 0b01010101], dtype=torch.uint8).reshape(6, 14)
    check_launcher(lesson, packed, (4, 8), "with every byte of four ternary codes")


@pytest.mark.exercise("13.1")
@pytest.mark.parametrize("tile", [(4, 8), (2, 4), (1, 1)], ids=["4x8", "2x4", "1x1"])
def test_kernel_with_the_graders_grid(lesson, tile):
    """The learner's kernel, launched here: one program per tile, and nothing written outside the tensor."""
    kernel = lesson.get("unpack_2bit_kernel")
    n, kb = 6, 11  # no multiple of either tile
    packed = packed_case(n, kb, seed=7)
    got, outside = run_kernel_guarded(kernel, packed, tile)
    grid = (triton.cdiv(n, tile[0]), triton.cdiv(kb, tile[1]))
    what = f"unpack_2bit_kernel[{grid}](packed uint8 {(n, kb)}, out, N={n}, KB={kb}, BLOCK_N={tile[0]}, "
    what += f"BLOCK_KB={tile[1]})"
    if outside:
        raise AssertionError(
            f"{what} wrote past the end of its output: mask the store with rows < N and bytes < KB "
            "(the tiles at the edges stick out of the tensor)"
        )
    assert_same(got, unpack_2bit(packed, 4 * kb), what + ", the output")


# ---------------------------------------------------------------- Exercise 13.2: merge_chunks
def chunk_sums(scores: torch.Tensor, values: torch.Tensor, chunk: int) -> tuple[torch.Tensor, ...]:
    """What the kernel's programs leave for one query: (m, l, acc) of every chunk of ``chunk`` positions."""
    parts = []
    for t0 in range(0, scores.shape[0], chunk):
        s, v = scores[t0 : t0 + chunk], values[t0 : t0 + chunk]
        e = torch.exp(s - s.max())
        parts.append((s.max(), e.sum(), e @ v))
    return tuple(torch.stack(t) for t in zip(*parts, strict=True))


def check_merge(lesson, m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor, case: str) -> torch.Tensor:
    from babybitnet.kernels.triton_attention import merge_chunks

    fn = lesson.get("merge_chunks")
    before = (m.clone(), l.clone(), acc.clone())
    got = fn(m, l, acc)
    assert all(torch.equal(a, b) for a, b in zip((m, l, acc), before, strict=True)), "merge_chunks changed its inputs"
    what = f"merge_chunks(m {tuple(m.shape)}, l {tuple(l.shape)}, acc {tuple(acc.shape)} {acc.dtype}) {case}"
    assert_close(got, merge_chunks(m, l, acc), what, atol=1e-6, rtol=1e-6)
    return got


@pytest.mark.exercise("13.2")
@settings(max_examples=20, deadline=None)
@given(t=st.integers(1, 150), chunk=st.sampled_from([1, 7, 32, 64]), d=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_merge_gives_softmax_attention(lesson, t, chunk, d, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(t, dtype=torch.float64, generator=g) * 5
    values = torch.randn(t, d, dtype=torch.float64, generator=g)
    got = check_merge(lesson, *chunk_sums(scores, values, chunk), f"on {t} positions in chunks of {chunk}")
    assert_close(got, torch.softmax(scores, 0) @ values, "and softmax(scores) @ values over all positions at once")


@pytest.mark.exercise("13.2")
def test_scores_far_apart_do_not_overflow(lesson):
    # exp(900) is inf in float32 and float64: only the common maximum keeps the weights finite
    m = torch.tensor([900.0, 0.0, -900.0])
    l, acc = torch.tensor([2.0, 3.0, 1.0]), torch.tensor([[1.0, -2.0], [4.0, 5.0], [6.0, 7.0]])
    check_merge(lesson, m, l, acc, "with chunk maxima 900, 0 and -900 (subtract the largest before exp)")


@pytest.mark.exercise("13.2")
def test_a_chunk_without_positions_adds_nothing(lesson):
    # chunks past the cached positions: m = -inf, l = 0, acc = 0 (as the kernel's masked chunks)
    m = torch.tensor([1.5, float("-inf"), 0.25, float("-inf")])
    l = torch.tensor([1.7, 0.0, 2.0, 0.0])
    acc = torch.tensor([[0.5, 1.0, -1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 3.0], [0.0, 0.0, 0.0]])
    got = check_merge(lesson, m, l, acc, "with two empty chunks (m = -inf, l = 0, acc = 0)")
    assert torch.isfinite(got).all(), f"merge_chunks with empty chunks gave {got.tolist()}: no NaN may come out"


@pytest.mark.exercise("13.2")
def test_one_chunk_and_float32(lesson):
    m, l, acc = torch.tensor([0.3]), torch.tensor([4.0]), torch.tensor([[2.0, -8.0, 1.0]])
    got = check_merge(lesson, m, l, acc, "with a single chunk (acc / l)")
    assert got.dtype == torch.float32 and got.shape == (3,), (
        f"expected float32 (3,), got {got.dtype} {tuple(got.shape)}"
    )
