"""Pick the fastest kernel per shape ONCE: time the candidates on the GPU, keep the winner, remember it.

Which kernel (and which tile config) is fastest depends on the shape: at batch 1 a GEMV that keeps
many loads in flight, at batch 256 a tensor-core GEMM with big tiles, and the crossover moves with
N, K and the GPU. Rules written by hand are right on the machine they were measured on; a tuner
measures on this one. The first call of a shape on a CUDA GPU times every candidate, keeps the
fastest and stores it, in memory and in a JSON file (``~/.cache/babybitnet/tuning.json``, or
``$BABYBITNET_TUNING_CACHE``), so the next process starts tuned.

The key is (kernel, N, K, M bucket, device name). Tokens are bucketed (:data:`M_BUCKETS`: 1, 2-4,
5-8, ..., 129-256, >256), each bucket timed at its largest M: a decode step at 3 tokens and one
at 4 share the choice, and which M came first does not matter.

Timing (:func:`cuda_graph_us`): CUDA-graph replays of many calls back to back, as the layers of a
decode step run, so that Python and launch overheads are not measured (in a model the layer runs
inside a graph) and a kernel that starts early (PDL) overlaps the call before it as in the model.
Each call reads its own copy of the weights (:func:`weight_copies`: together twice the L2 cache),
so the weights come from memory as in a model whose layers are far larger than the cache; a layer
so small that 64 copies fit in the cache is timed from the cache, as a small model runs.

No tuning where timing would mislead or break things: in Triton's interpreter and on the CPU
(a fixed default: tests stay deterministic), while a CUDA graph is being captured (the cached
choice, else the default: timing needs synchronization, which capture forbids), or with
``BABYBITNET_TUNE=0``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from babybitnet.atomic import write_json

M_BUCKETS = (1, 4, 8, 16, 32, 64, 128, 256)  # upper edges: 1, 2-4, 5-8, 9-16, 17-32, 33-64, 65-128, 129-256, >256
VERSION = 5  # of the candidates' code and timing: a newer version ignores older files' entries (5: longer MMA steps)
MOST_COPIES = 64  # weight copies per timing at most (and calls per timed graph)
DEFAULT_L2 = 50 * 2**20  # bytes, where torch does not say (an H100's L2 is 50 MiB)
Timer = Callable[[str, Callable[[], object]], float]  # (candidate's name, its call) -> microseconds per call


def m_bucket(m: int) -> str:
    """The bucket of ``m`` tokens: '1', '2-4', '5-8', ..., '129-256', '>256'."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"the number of tokens must be an int >= 1, got {m!r}")
    low = 1
    for edge in M_BUCKETS:
        if m <= edge:
            return str(edge) if low == edge else f"{low}-{edge}"
        low = edge + 1
    return f">{M_BUCKETS[-1]}"


def bucket_m(m: int) -> int:
    """The M that :func:`m_bucket`'s bucket of ``m`` is timed at: its upper edge (past the last: m itself)."""
    m_bucket(m)  # validates
    return next((edge for edge in M_BUCKETS if m <= edge), m)


def tuning_key(kernel: str, n: int, k: int, m: int, device: str) -> str:
    """The cache key: 'kernel|N=..|K=..|M=bucket|device name'."""
    return f"{kernel}|N={n}|K={k}|M={m_bucket(m)}|{device}"


def default_path() -> Path:
    """Where the choices are stored: ``$BABYBITNET_TUNING_CACHE``, else ``~/.cache/babybitnet/tuning.json``."""
    env = os.environ.get("BABYBITNET_TUNING_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "babybitnet" / "tuning.json"


def tuning_enabled() -> bool:
    """False if ``BABYBITNET_TUNE=0``: then every shape takes the fixed default."""
    return os.environ.get("BABYBITNET_TUNE", "1") != "0"


# ---------------------------------------------------------------- timing
def l2_bytes(device: torch.device | None = None) -> int:
    """The L2 cache of a CUDA GPU (None: the current one), in bytes; 50 MiB if torch does not say or
    ``device`` is not a CUDA device (the tests drive the tuner with CPU tensors)."""
    if device is not None and device.type != "cuda":
        return DEFAULT_L2
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    return getattr(torch.cuda.get_device_properties(index), "L2_cache_size", DEFAULT_L2)


def weight_copies(nbytes: int, l2: int, most: int = MOST_COPIES) -> int:
    """How many copies of a weight buffer of ``nbytes`` add up to twice the L2 cache of ``l2`` bytes
    (1 for large matrices, at most ``most``)."""
    return max(1, min(most, math.ceil(2 * l2 / max(nbytes, 1))))


def graph_us(fns: dict[str, list[Callable[[], object]]], loops: dict[str, int], repeats: int) -> dict[str, float]:
    """Median GPU microseconds per call of each contender, from CUDA-graph replays timed with CUDA events.

    ``fns[name]`` is a list of calls that read different weight copies (so that a replay reads
    more than the L2 cache holds: cold weights, as in a real model); the graph of ``name`` replays
    them ``loops[name]`` times back to back. Contenders are interleaved: a burst of load hits them
    alike. Every call must be capturable (no synchronization); each runs twice first, outside the
    graphs (Triton compiles there, cuBLAS makes its handles).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for calls in fns.values():
            for f in calls * 2:
                f()
    torch.cuda.current_stream().wait_stream(side)
    graphs = {}
    for name, calls in fns.items():
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(loops[name]):
                for f in calls:
                    f()
        graphs[name] = g
    times: dict[str, list[float]] = {name: [] for name in fns}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for g in graphs.values():
        g.replay()
    for _ in range(repeats):
        for name, g in graphs.items():
            start.record()
            g.replay()
            end.record()
            end.synchronize()
            times[name].append(1e3 * start.elapsed_time(end) / (loops[name] * len(fns[name])))
    return {name: statistics.median(t) for name, t in times.items()}


def cuda_graph_us(fn: Callable[[], object], calls: int = MOST_COPIES, repeats: int = 5) -> float:
    """GPU microseconds of one ``fn()``, from CUDA-graph replays of ``calls`` calls back to back
    (:func:`graph_us` of one contender). ``fn`` should read a different copy of its weights at each
    call (cycling through :func:`weight_copies` of them), so that ``calls`` calls read more than the
    cache holds. The median of ``repeats`` timed replays, per call.
    """
    return graph_us({"fn": [fn]}, {"fn": calls}, repeats)["fn"]


def _close(y: torch.Tensor, ref: torch.Tensor) -> bool:
    """Whether a candidate's output matches the default's up to bf16 rounding (relative norm < 1e-2)."""
    if y.shape != ref.shape:
        return False
    y, ref = y.double(), ref.double()
    return bool(torch.isfinite(y).all()) and float((y - ref).norm()) <= 1e-2 * float(ref.norm()) + 1e-6


# ---------------------------------------------------------------- the tuner
class Tuner:
    """Choices per key, in memory and in a JSON file: ``choose`` times the candidates the first time.

    ``timer`` measures one candidate (default :func:`cuda_graph_us`); tests pass a fake one.
    """

    def __init__(self, path: str | Path | None = None, timer: Timer | None = None) -> None:
        self.path = Path(path) if path is not None else None  # None: default_path() when first needed
        self.timer = timer or (lambda name, fn: cuda_graph_us(fn))
        self.choices: dict[str, str] = {}
        self.timings: dict[str, dict[str, float]] = {}  # key -> candidate -> µs, of the tunings of this process
        self._loaded = False

    def file(self) -> Path:
        """The JSON file of this tuner."""
        return self.path if self.path is not None else default_path()

    def _read(self) -> dict:
        """The file's entries of this :data:`VERSION` ({} if none, unreadable or older)."""
        try:
            data = json.loads(self.file().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            warnings.warn(f"ignoring the tuning cache {self.file()}: {e}", stacklevel=3)
            return {}
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("entries"), dict):
            return {}
        return data["entries"]

    def load(self) -> None:
        """Read the file's choices into memory (once; the choices of this process win)."""
        if not self._loaded:
            self._loaded = True
            for key, entry in self._read().items():
                if isinstance(entry, dict) and isinstance(entry.get("choice"), str):
                    self.choices.setdefault(key, entry["choice"])

    def lookup(self, key: str) -> str | None:
        """The stored choice for ``key``, or None."""
        self.load()
        return self.choices.get(key)

    def choose(self, key: str, candidates: dict[str, Callable[[], torch.Tensor]], default: str, tune: bool) -> str:
        """The candidate to run for ``key``: the stored choice if it is still a candidate; else, if
        ``tune``, the fastest of ``candidates`` (timed now, then stored); else ``default``."""
        if default not in candidates:
            raise ValueError(f"the default {default!r} is not one of the candidates {sorted(candidates)}")
        known = self.lookup(key)
        if known in candidates:
            return known
        if not tune:
            return default
        return self.tune(key, candidates, default)

    def tune(self, key: str, candidates: dict[str, Callable[[], torch.Tensor]], default: str) -> str:
        """Time every candidate, keep the fastest for ``key`` (memory and file) and return it.

        A candidate that raises (a tile config too big for this GPU's shared memory) or whose
        output differs from the default's is skipped with a warning. A progress bar says what is being
        timed: the first use of a shape compiles every candidate (about a second each), once.
        """
        ref = candidates[default]()
        us: dict[str, float] = {}
        what = key.rsplit("|", 1)[0]  # without the device's name
        bar = tqdm(candidates.items(), desc=f"tuning {what} (once: the choice is cached)", unit="kernel", leave=False)
        for name, fn in bar:
            try:
                if name != default and not _close(fn(), ref):
                    warnings.warn(f"tuning {key}: {name} gives a wrong result, skipped", stacklevel=2)
                    continue
                us[name] = float(self.timer(name, fn))
            except Exception as e:  # noqa: BLE001 -- any failure of one candidate: try the others
                if name == default:
                    raise
                warnings.warn(f"tuning {key}: {name} failed ({type(e).__name__}: {e}), skipped", stacklevel=2)
        best = min(us, key=us.get)
        self.choices[key], self.timings[key] = best, us
        self.save(key, best, us)
        return best

    def save(self, key: str, choice: str, us: dict[str, float]) -> None:
        """Add one entry to the file, atomically, keeping the entries other processes wrote meanwhile."""
        entries = self._read()
        entries[key] = {"choice": choice, "us": {name: round(t, 3) for name, t in us.items()}}
        try:
            write_json(self.file(), {"version": VERSION, "entries": dict(sorted(entries.items()))})
        except OSError as e:  # a read-only home: the choice still holds for this process
            warnings.warn(f"could not write the tuning cache {self.file()}: {e}", stacklevel=2)

    def forget(self, prefix: str = "") -> None:
        """Drop the choices whose key starts with ``prefix`` (all by default) from memory and file: re-tune them."""
        self.load()
        self.choices = {k: v for k, v in self.choices.items() if not k.startswith(prefix)}
        entries = {k: v for k, v in self._read().items() if not k.startswith(prefix)}
        if self.file().exists():
            write_json(self.file(), {"version": VERSION, "entries": entries})
