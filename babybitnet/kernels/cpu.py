"""The add-only matmul as a C++ extension for the CPU: AVX2 sign/add over 2-bit packed weights.

``csrc/ternary_gemv.cpp`` is built on first use by ``torch.utils.cpp_extension`` and cached per
torch version, CPU model (it is compiled with ``-march=native``), source and flags. Where it cannot
be built (no compiler, no ninja) :func:`load_extension` warns once and returns None, and callers use
the pure-torch versions of :mod:`babybitnet.addonly`. Two entry points: :func:`ext_matmul_packed` (int8
activations in, exact int32 sums out) and :func:`ext_linear` (the whole float32 inference layer in one call:
quantize each token, add, rescale, + bias), which ``PackedBitLinear`` runs on the CPU.

A build killed half way (Ctrl-C twice, SIGKILL, a closed laptop) leaves torch's lock file
(``lock``, a ``FileBaton``) in the build directory, and torch then waits for it forever in every
later process. So we build under a lock of our own (``flock``), which the operating system drops
when its holder dies: whoever holds it knows that no one else is building, and removes a ``lock``
left behind. A build another live process is running is waited for ``LOCK_WAIT_S`` at most.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from babybitnet.packing import check_packed_matmul
from babybitnet.quant import EPS

NO_EXT_ENV = "BABYBITNET_NO_EXT"  # set to 1 to never build or use the C++ kernel
_SOURCE = Path(__file__).resolve().parent / "csrc" / "ternary_gemv.cpp"
LOCK_WAIT_S = 300.0  # how long to wait for another process's build before using pure torch
STALE_BATON_S = 600.0  # without flock (Windows): torch's lock file counts as stale after this long
BUILD_LOCK = "babybitnet-build.lock"  # ours, beside torch's "lock"
CPU_ACTS = {"": 0, "relu": 1, "relu2": 2}  # the activations the C++ layer applies itself (its act argument)
_ext: ModuleType | None = None
_ext_tried = False


def _build_directory() -> Path:
    """Where the compiled kernel lives: per torch version and CPU model, since we compile with -march=native,
    and per source and flags, so that two checkouts (or versions) never build over each other's files."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("model name")), "")
    except OSError:
        cpu = ""
    source = hashlib.sha1(_SOURCE.read_bytes()).hexdigest()
    key = f"{sys.platform} {cpu} {sys.version_info[:2]} {source} {_compile_flags()}"
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    name = f"torch-{torch.__version__.replace('+', '_')}-{tag}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "babybitnet" / "ext" / name
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK):
            return cache
    except OSError:
        pass
    tmp = Path(tempfile.gettempdir()) / f"babybitnet-ext-{os.getuid() if hasattr(os, 'getuid') else 0}" / name
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def _compile_flags() -> list[str]:
    if sys.platform == "win32":
        return ["/O2"]  # MSVC: the portable scalar path (no __AVX2__ unless /arch:AVX2)
    # -ffp-contract=off: no fused multiply-add, so that ternary_linear's float steps round exactly as torch's ops do
    flags = ["-O3", "-march=native", "-ffp-contract=off"]
    # at::parallel_for's OpenMP backend is header code (#pragma omp parallel): without -fopenmp it runs on one thread
    if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info():
        flags.append("-fopenmp")
    return flags


@contextlib.contextmanager
def _build_lock(build_dir: Path, timeout: float) -> Iterator[None]:
    """Hold the build directory's lock for the block; remove torch's ``lock`` if a killed build left it.

    TimeoutError if another live process holds it longer than ``timeout`` seconds.
    """
    baton = build_dir / "lock"  # what torch.utils.cpp_extension creates while it builds
    try:
        import fcntl
    except ImportError:  # Windows: no flock; judge torch's lock by its age
        with contextlib.suppress(OSError):
            if time.time() - baton.stat().st_mtime > STALE_BATON_S:
                baton.unlink()
        yield
        return
    with open(build_dir / BUILD_LOCK, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"another process has been building it in {build_dir} for over {timeout:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")  # who holds it, for a person looking; the lock itself is the flock
            f.flush()
            # we hold the lock, so no babybitnet process is building here: a torch lock is a killed build's
            with contextlib.suppress(FileNotFoundError):
                baton.unlink()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def load_extension() -> ModuleType | None:
    """The compiled C++ kernel, built on first use (20 s to a minute) and cached, or None if it cannot be built.

    None comes with one warning saying why (no compiler, no ninja, a build error); callers then
    use the pure-torch code. ``BABYBITNET_NO_EXT=1`` skips the kernel without trying.
    """
    global _ext, _ext_tried
    if os.environ.get(NO_EXT_ENV, "") not in ("", "0"):
        return None
    if _ext_tried:
        return _ext
    _ext_tried = True
    try:
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            raise RuntimeError("ninja is not installed (pip install ninja)")
        compiler = os.environ.get("CXX", "cl" if sys.platform == "win32" else "c++")
        if not any(map(shutil.which, (compiler, "g++", "clang++"))):
            raise RuntimeError(f"no C++ compiler found ({compiler}, g++ or clang++)")
        build_dir = _build_directory()
        with _build_lock(build_dir, LOCK_WAIT_S):
            _ext = cpp_extension.load(
                name="babybitnet_ternary_gemv",
                sources=[str(_SOURCE)],
                extra_cflags=_compile_flags(),
                build_directory=str(build_dir),
                verbose=False,
            )
    except Exception as e:  # any failure means "use the fallback", and we say why
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(
            f"babybitnet: the C++ add-only kernel is unavailable, using pure torch instead ({first_line}). "
            f"Set {NO_EXT_ENV}=1 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        _ext = None
    return _ext


def ext_matmul_packed(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """``x_q @ W_t^T`` with the C++ kernel: int8 (M, k) in [-127, 127], uint8 (N, ceil(k/4)), k -> int32 (M, N).

    Raises RuntimeError if the extension is unavailable (see :func:`load_extension`).
    """
    check_packed_matmul(x_q, packed, k)
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"the C++ kernel is unavailable ({NO_EXT_ENV} is set or it failed to build)")
    if k % 4:
        x_q = F.pad(x_q, (0, 4 * packed.shape[1] - k))  # the kernel wants K_pad = 4 * bytes per row; zeros add nothing
    # the kernel itself rejects -128 (ValueError): it negates int8 values, and -(-128) does not fit in int8
    return ext.ternary_matmul_packed(x_q, packed)


def ext_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    s_w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ext: ModuleType | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 0.0,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """BitLinear inference in one C++ call: float32 (..., K), uint8 (N, ceil(K/4)), s_w float32 (G,) -> (..., N).

    Quantizes each token (absmax, 8 bits), runs the add-only GEMV and rescales (+ ``bias`` (N,)), bit for bit
    :func:`babybitnet.bitlinear.int_linear` with the unpacked weights. ``norm_weight`` float32 (K,): first the
    RMSNorm of each token, ``F.rms_norm(x, (K,), norm_weight, norm_eps)`` up to float rounding (the C++
    sums its squares in 8 lanes, torch in its own blocks), so that the norm in front of a layer costs no
    torch call of its own.
    ``activation`` ("", "relu", "relu2"; :data:`CPU_ACTS`) and ``residual`` float32 (..., N): the epilogue
    ``residual + act(y)``, bit for bit torch's ops on the layer's output, in the same call.
    The one way into the C++ layer: both
    ``PackedBitLinear`` on the CPU and :func:`babybitnet.addonly.packed_linear` end here. No Python checks:
    this is the hot path of ``PackedBitLinear``, which checks its shapes once at construction (the C++ side
    still refuses wrong shapes and dtypes, with a RuntimeError). ``ext``: the loaded extension, when the caller
    has just called :func:`load_extension` (each call reads the environment, about a microsecond). Raises
    RuntimeError if the extension is unavailable.
    """
    if ext is None:
        ext = load_extension()
        if ext is None:
            raise RuntimeError(f"the C++ kernel is unavailable ({NO_EXT_ENV} is set or it failed to build)")
    return ext.ternary_linear(x, packed, s_w, bias, EPS, norm_weight, norm_eps, CPU_ACTS[activation], residual)
