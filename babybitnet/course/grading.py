"""Grading: load a learner's lesson safely and compare its answers with the reference, in words.

The graders (``tests/exercises/test_lessonNN.py``) use three things from here:

- ``load_lesson`` runs only a lesson's ``imports`` and ``exercise`` cells, one
  at a time, in a fresh module, under a time limit. A cell that does not load
  (syntax error, exception, endless loop) is recorded against its exercise, so
  the other exercises are still graded; ``Lesson.get(name)`` then fails with
  that message.
- ``assert_same`` / ``assert_close`` compare a learner's answer with the
  reference package and say what differs: shape, dtype, the first mismatching
  index with both values, how many values differ.
- ``describe_failure`` turns whatever a grader raised into one line, e.g.
  "not done yet: encode() still raises NotImplementedError (Exercise 1.2)".

Time limits use SIGALRM, so they only apply in the main thread on Unix; elsewhere
they are off. Environment variables ``BABYBITNET_LOAD_TIMEOUT`` (per cell,
default 10 s) and ``BABYBITNET_CALL_TIMEOUT`` (per grader test, default 60 s)
change them. The learner's code runs in the same process, so it can defeat them
(``signal.signal(SIGALRM, SIG_IGN)``); ``python -m babybitnet check`` therefore
grades each exercise in a child process that it kills (:mod:`babybitnet.course.check`).

For the same reason every ``assert_*`` helper (and ``as_float``) can record what it
compared: inside ``with recording() as comparisons:`` each outermost call appends
``{"helper", "args", "passed"}`` with the arguments copied to plain data (tensors,
numpy arrays, lists, dicts, numbers, strings). ``check``'s child process sends them
to the parent, which re-runs them with :func:`verify_comparisons`: a lesson that
patches ``_diff`` or ``assert_same`` here changes what the child concludes, not
what the parent does.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import itertools
import math
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from babybitnet.course import lessons

LESSONS_DIR_ENV = "BABYBITNET_LESSONS_DIR"

# True in `check`'s child process, where no Ctrl-C can arrive: a KeyboardInterrupt is then the lesson's own.
interrupts_are_the_lessons = False


def load_timeout() -> float:
    return float(os.environ.get("BABYBITNET_LOAD_TIMEOUT", "10"))


def call_timeout() -> float:
    return float(os.environ.get("BABYBITNET_CALL_TIMEOUT", "60"))


class GradingError(Exception):
    """Something wrong with the learner's lesson, said in one line; shown without a traceback."""


class ExerciseTimeout(BaseException):
    """Raised inside code that ran past its time limit.

    A BaseException (like KeyboardInterrupt) so that ``except Exception`` in the
    learner's code, and hypothesis' search for a smaller failing example, do not
    swallow it and run the endless loop again.
    """


class LearnerInterrupt(Exception):
    """A KeyboardInterrupt that the learner's code raised, re-raised as an Exception (its ``__cause__``).

    ``check``'s child process turns it into this so that pytest fails that one
    test instead of stopping: no Ctrl-C reaches the child, which runs in a
    process group of its own, so a KeyboardInterrupt there is the lesson's.
    """


@contextlib.contextmanager
def time_limit(seconds: float | None, message: str) -> Iterator[None]:
    """Raise ``ExerciseTimeout(message + where it was)`` if the block runs longer than ``seconds``.

    Nests: an outer limit is restored (minus the time spent) when the block ends.
    A no-op for ``seconds`` None or <= 0, off the main thread, or without SIGALRM.
    """
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not seconds or seconds <= 0 or not usable:
        yield
        return

    def on_alarm(signum: int, frame: types.FrameType | None) -> None:
        if outer_first and callable(old_handler):
            old_handler(signum, frame)  # the outer limit ran out first: its message
        where = f" (it was at line {frame.f_lineno} of {Path(frame.f_code.co_filename).name})" if frame else ""
        raise ExerciseTimeout(message + where)

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    outer_first = 0 < old_delay < seconds
    if outer_first:  # an outer limit runs out first: keep its deadline
        signal.setitimer(signal.ITIMER_REAL, old_delay)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(old_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


# ---------------------------------------------------------------------------------------------
# Loading a lesson


@dataclass
class ExerciseCell:
    id: str | None  # "N.M"
    names: list[str]  # what the cell defines at its top level
    line: int  # where the cell starts in the lesson file
    error: str | None = None  # why it did not load, in words


@dataclass
class Lesson:
    """The objects a learner's lesson defines in its imports and exercise cells."""

    path: Path
    namespace: dict[str, Any]
    exercises: list[ExerciseCell] = field(default_factory=list)
    error: str | None = None  # an imports cell failed: nothing can be graded

    def get(self, name: str) -> Any:
        """What the exercise cells defined under ``name``; ``GradingError`` in words if it did not load."""
        if self.error:
            raise GradingError(self.error)
        for ex in self.exercises:
            if name in ex.names and ex.error:
                label = f"Exercise {ex.id}" if ex.id else f"the exercise cell at line {ex.line}"
                raise GradingError(f"{label} did not load: {ex.error}")
        if name in self.namespace:
            return self.namespace[name]
        defined = ", ".join(n for ex in self.exercises for n in ex.names) or "nothing"
        raise GradingError(
            f"{self.path.name} defines no `{name}` in its exercise cells (they define: {defined}); "
            f'keep the name from the lesson, and keep the cell\'s tags=["exercise"] line'
        )


_counter = itertools.count()


def lessons_dir_default() -> Path:
    """``$BABYBITNET_LESSONS_DIR`` if set, else ``lessons/`` of the repository."""
    env = os.environ.get(LESSONS_DIR_ENV)
    root = lessons.repo_root("lessons")
    return lessons.resolve_lessons_dir(env, root) if env else root / "lessons"


def load_lesson(
    lesson: int | str | Path, lessons_dir: str | Path | None = None, *, timeout: float | None = None
) -> Lesson:
    """Run the imports and exercise cells of a lesson in a fresh module and return what they defined.

    ``lesson`` is a lesson number (looked up as ``NN_*.py`` in ``lessons_dir``,
    default ``lessons/`` or ``$BABYBITNET_LESSONS_DIR``) or a file path. Training
    and plotting cells never run, so loading takes about as long as the imports.
    Each cell runs under ``timeout`` seconds (default ``BABYBITNET_LOAD_TIMEOUT``).
    """
    if isinstance(lesson, int):
        folder = Path(lessons_dir) if lessons_dir is not None else lessons_dir_default()
        path = lessons.find_lesson(lesson, folder)
    else:
        path = Path(lesson)
    path = path.resolve()
    timeout = load_timeout() if timeout is None else timeout
    cells = lessons.parse_cells(path.read_text(encoding="utf-8")).cells

    module = types.ModuleType(f"babybitnet_lesson_{path.stem}_{next(_counter)}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # dataclasses and pickling look classes up here
    result = Lesson(path=path, namespace=module.__dict__)
    for cell in cells:
        if cell.kind != "code":
            continue
        if "imports" in cell.tags:
            err = _run_cell(cell, module.__dict__, path, timeout)
            if err:
                result.error = f"{path.name} did not load, its imports cell (line {cell.start}) failed: {err}"
                return result
        elif "exercise" in cell.tags:
            ex = ExerciseCell(cell.exercise_id, lessons.defined_names(cell.source), cell.start)
            ex.error = _run_cell(cell, module.__dict__, path, timeout)
            result.exercises.append(ex)
    return result


def _run_cell(cell: lessons.Cell, ns: dict[str, Any], path: Path, timeout: float) -> str | None:
    """Run one cell; None if it ran, else what went wrong, in words."""
    source = "\n" * cell.start + cell.source  # so line numbers match the file
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        return f"syntax error at line {e.lineno} of {path.name}: {e.msg}"
    try:
        with time_limit(timeout, "still running"):
            exec(code, ns)
    except ExerciseTimeout:
        return f"it kept running for {timeout:g} s while being defined (an endless loop outside a function?)"
    except BaseException as e:  # a learner's cell may raise anything, even SystemExit
        if isinstance(e, KeyboardInterrupt) and not interrupts_are_the_lessons:
            raise  # Ctrl-C: stop grading
        line = _last_line_in(e, path)
        at = f" at line {line} of {path.name}" if line else ""
        return f"it raised {type(e).__name__}{at}: {e}"
    return None


def _last_line_in(exc: BaseException, path: Path) -> int | None:
    """The line of the deepest traceback frame that is in ``path``."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# ---------------------------------------------------------------------------------------------
# Recording what the helpers compared (for `check`, which re-runs the comparisons in its own process)


class _Recording:
    def __init__(self) -> None:
        self.comparisons: list[dict[str, Any]] = []
        self.depth = 0  # > 0 inside a helper: assert_rounded's own assert_same is not recorded again


_recording: _Recording | None = None
_HELPERS: dict[str, Callable[..., Any]] = {}


@contextlib.contextmanager
def recording() -> Iterator[list[dict[str, Any]]]:
    """Record every outermost ``assert_*`` / ``as_float`` call in the block into the list it yields."""
    global _recording
    outer, _recording = _recording, _Recording()
    try:
        yield _recording.comparisons
    finally:
        _recording = outer


def _recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make helper ``fn`` record its arguments (copied before the call) and whether it passed."""

    @functools.wraps(fn)
    def helper(*args: Any, **kwargs: Any) -> Any:
        rec = _recording
        if rec is None or rec.depth:
            return fn(*args, **kwargs)
        entry = {"helper": fn.__name__, "args": encode_plain((args, kwargs)), "passed": False}
        rec.comparisons.append(entry)
        rec.depth += 1
        try:
            result = fn(*args, **kwargs)
        finally:
            rec.depth -= 1
        entry["passed"] = True
        return result

    _HELPERS[fn.__name__] = helper
    return helper


def verify_comparisons(comparisons: list[dict[str, Any]]) -> tuple[int, str | None]:
    """Re-run the recorded comparisons that passed where they were made.

    Returns how many could be re-run, and the first one's failure message, or None
    when all of them pass here too. A comparison whose arguments could not be
    copied (``args`` None) is skipped, and not counted.
    """
    checked = 0
    for c in comparisons:
        if not c.get("passed") or c.get("args") is None or c.get("helper") not in _HELPERS:
            continue
        checked += 1
        try:
            args, kwargs = decode_plain(c["args"])
            _HELPERS[c["helper"]](*args, **kwargs)
        except AssertionError as e:
            return checked, str(e).strip().splitlines()[0] if str(e).strip() else "assertion failed"
        except Exception as e:  # noqa: BLE001 - a record that cannot be re-run did not pass
            return checked, f"{c['helper']} could not be re-run on what was recorded ({type(e).__name__}: {e})"
    return checked, None


def comparing_tests(grader_file: str | Path) -> set[str]:
    """Names of the test functions in ``grader_file`` that call a recording helper, directly or through
    the file's own functions: when one passes, it must have recorded a comparison.

    Read from the source, so the lesson's code has no say in it.
    """
    tree = ast.parse(Path(grader_file).read_text(encoding="utf-8"))
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    calls = {
        f.name: {c.func.id for c in ast.walk(f) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
        for f in funcs
    }
    comparing = set(_HELPERS)
    while grown := {name for name, called in calls.items() if name not in comparing and called & comparing}:
        comparing |= grown
    return {name for name in calls if name.startswith("test") and name in comparing}


class _NotPlain(Exception):
    pass


_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype)


def encode_plain(x: Any) -> Any:
    """``x`` as plain data that ``torch.load(..., weights_only=True)`` reads back, or None if it holds other things.

    Containers become tagged tuples, so ``decode_plain`` rebuilds the same types
    (list or tuple, dict, numpy array and scalar); tensors become detached CPU
    copies of class ``torch.Tensor``. Anything else (a learner's own object, a
    subclass of str or int) makes the whole value unrecordable.
    """
    try:
        return _encode(x, 0)
    except Exception:  # noqa: BLE001 - whatever the object does, it is just not recordable
        return None


def _encode(x: Any, depth: int) -> Any:
    if depth > 40:
        raise _NotPlain("nested too deeply")
    t = type(x)
    if t in _SCALARS:
        return ("v", x)
    if isinstance(x, torch.Tensor):
        y = x.detach().to("cpu", copy=True)
        return ("t", y if type(y) is torch.Tensor else y.as_subclass(torch.Tensor))
    if isinstance(x, np.ndarray) and x.dtype.kind in "biufc":
        return ("a", x.dtype.str, tuple(x.shape), np.ascontiguousarray(x).tobytes())
    if isinstance(x, np.generic) and x.dtype.kind in "biufc":
        return ("n", x.dtype.str, x.tobytes())
    if t is torch.Size:
        return ("z", tuple(int(d) for d in x))
    if t is list or t is tuple:
        if x and type(x[0]) in (int, float, str) and all(type(v) is type(x[0]) for v in x):
            return ("p" if t is list else "q", list(x))  # a long list of plain numbers (an encoded text): as is
        return ("l" if t is list else "u", [_encode(v, depth + 1) for v in x])
    if t is dict:
        return ("d", [(_encode(k, depth + 1), _encode(v, depth + 1)) for k, v in x.items()])
    raise _NotPlain(t.__name__)


def decode_plain(x: Any) -> Any:
    """The value that ``encode_plain`` encoded."""
    tag = x[0]
    if tag == "v" or tag == "t":
        return x[1]
    if tag == "a":
        return np.frombuffer(x[3], dtype=np.dtype(x[1])).reshape(x[2]).copy()
    if tag == "n":
        return np.frombuffer(x[2], dtype=np.dtype(x[1]))[0]
    if tag == "z":
        return torch.Size(x[1])
    if tag == "p" or tag == "q":
        return list(x[1]) if tag == "p" else tuple(x[1])
    if tag == "l":
        return [decode_plain(v) for v in x[1]]
    if tag == "u":
        return tuple(decode_plain(v) for v in x[1])
    if tag == "d":
        return {decode_plain(k): decode_plain(v) for k, v in x[1]}
    raise ValueError(f"not an encoded value: tag {tag!r}")


# ---------------------------------------------------------------------------------------------
# Comparing answers


@_recorded
def assert_same(got: Any, expected: Any, what: str) -> None:
    """Fail unless ``got`` equals ``expected`` exactly: same type, shape, dtype and values.

    Works for tensors, numpy arrays, lists and tuples (interchangeable), dicts,
    strings and scalars, nested. The message starts with ``what`` (say how the
    learner's object was called) and says in words what differs.
    """
    problem = _diff(got, expected, False, 0.0, 0.0)
    if problem:
        raise AssertionError(_message(what, *problem))


@_recorded
def assert_close(got: Any, expected: Any, what: str, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Like ``assert_same``, but floats may differ by ``atol + rtol * |expected|`` (NaN matches NaN)."""
    problem = _diff(got, expected, True, atol, rtol)
    if problem:
        raise AssertionError(_message(what, *problem))


# torch functions (and tensor operators) that multiply: `a * b` is recorded as "mul", `a @ b` as "matmul"
MULTIPLIES = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply", "multiply_", "matmul", "__matmul__",
              "__rmatmul__", "mm", "bmm", "mv", "dot", "vdot", "inner", "outer", "einsum", "tensordot", "linear",
              "bilinear", "_int_mm", "addmm", "addbmm", "baddbmm", "addmv", "addr", "linalg_multi_dot",
              "linalg_vecdot", "chain_matmul", "kron", "prod", "cumprod", "conv1d", "conv2d"}  # fmt: skip


class CallRecorder(TorchFunctionMode):
    """Records the name of every torch function (and tensor operator) called inside its ``with`` block.

    ``rec.names & MULTIPLIES`` then says whether some code multiplied tensors (lesson 12's add-only matmul).
    """

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@_recorded
def as_float(value: Any, what: str) -> float:
    """``value`` if it is a Python float, else a failure that says what came back (a tensor: use ``.item()``)."""
    if isinstance(value, torch.Tensor):
        raise AssertionError(f"{what} should return a Python float (use .item()), got a tensor")
    if not isinstance(value, float):
        raise AssertionError(f"{what} should return a Python float, got {type(value).__name__}")
    return value


@_recorded
def assert_pair(got: Any, what: str, names: str = "(a, b)") -> tuple:
    """``got`` as a 2-tuple, or a failure that says what came back instead (``names`` e.g. "(w_t, s_w)")."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        kind = f"{len(got)} items" if isinstance(got, (tuple, list)) else type(got).__name__
        raise AssertionError(f"{what} should return a pair {names}, got {kind}")
    return tuple(got)


@_recorded
def assert_rounded(got: Any, unrounded: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """``got == want`` for rounded values, except where ``unrounded`` sits within float rounding of a .5 tie.

    Two correct answers may compute ``x * s`` in a different order and land on
    either side of a tie; both roundings are accepted there, nowhere else.
    """
    if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == want.dtype:
        u = unrounded.double()
        near_tie = ((u - u.floor() - 0.5).abs() <= 1e-5 * u.abs().clamp(min=1.0)) & ((got - want).abs() <= 1)
        want = torch.where(near_tie, got, want)
    assert_same(got, want, what)


def _message(what: str, path: str, msg: str) -> str:
    head = f"{what}{path}".strip()
    return f"{head}: {msg}" if head else msg


def _kind(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return "a torch.Tensor"
    if isinstance(x, np.ndarray):
        return "a numpy array"
    if x is None:
        return "None"
    name = type(x).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _type_problem(got: Any, expected: Any) -> tuple[str, str]:
    msg = f"expected {_kind(expected)}, got {_kind(got)}"
    if isinstance(got, torch.Tensor) and got.numel() == 1 and _is_scalar(expected):
        msg += " (.item() turns a one-element tensor into a number)"
    elif isinstance(got, torch.Tensor) and isinstance(expected, (list, tuple)):
        msg += " (.tolist() turns a tensor into a list)"
    elif isinstance(got, (list, tuple)) and isinstance(expected, torch.Tensor):
        msg += " (torch.tensor(...) turns a list into a tensor)"
    elif _is_scalar(got) or isinstance(got, str):
        msg += f" ({_short(got)})"
    return "", msg


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (bool, int, float, complex, np.generic))


def _short(x: Any, limit: int = 80) -> str:
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _fmt_pair(e: Any, g: Any) -> tuple[str, str]:
    """Both values, with just enough digits to see that they differ."""
    e, g = (v.item() if isinstance(v, np.generic) else v for v in (e, g))
    if isinstance(e, float) and isinstance(g, float):
        for digits in (6, 9, 17):
            se, sg = f"{e:.{digits}g}", f"{g:.{digits}g}"
            if se != sg:
                break
        return _floaty(se), _floaty(sg)
    return _short(e), _short(g)


def _floaty(s: str) -> str:
    return s if any(ch in s for ch in ".enai") else s + ".0"


def _diff(got: Any, exp: Any, close: bool, atol: float, rtol: float) -> tuple[str, str] | None:
    """(where, what differs) for the first difference, or None when ``got`` matches ``exp``."""
    if isinstance(exp, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return _type_problem(got, exp)
        if tuple(got.shape) != tuple(exp.shape):
            return "", f"expected shape {tuple(exp.shape)}, got {tuple(got.shape)}"
        if got.dtype != exp.dtype:
            return "", f"expected dtype {exp.dtype}, got {got.dtype}"
        return _diff_values(_to_numpy(got), _to_numpy(exp), close, atol, rtol)
    if isinstance(exp, np.ndarray):
        if not isinstance(got, np.ndarray):
            return _type_problem(got, exp)
        if got.shape != exp.shape:
            return "", f"expected shape {exp.shape}, got {got.shape}"
        if got.dtype != exp.dtype:
            return "", f"expected dtype {exp.dtype}, got {got.dtype}"
        return _diff_values(got, exp, close, atol, rtol)
    if isinstance(exp, str):
        return _diff_str(got, exp)
    if isinstance(exp, Mapping):
        return _diff_dict(got, exp, close, atol, rtol)
    if isinstance(exp, (list, tuple)):
        return _diff_seq(got, exp, close, atol, rtol)
    if exp is None or _is_scalar(exp):
        return _diff_scalar(got, exp, close, atol, rtol)
    if got != exp:
        return "", f"expected {_short(exp)}, got {_short(got)}"
    return None


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.resolve_conj().numpy()


def _diff_values(g: np.ndarray, e: np.ndarray, close: bool, atol: float, rtol: float) -> tuple[str, str] | None:
    """Element-wise comparison of two arrays of the same shape and dtype."""
    if e.dtype.kind in "fc":
        both_nan = np.isnan(g) & np.isnan(e)
        if close:
            with np.errstate(invalid="ignore", over="ignore"):
                ok = (g == e) | (np.abs(g - e) <= atol + rtol * np.abs(e)) | both_nan
        else:
            ok = (g == e) | both_nan
    else:
        ok = g == e
    ok = np.asarray(ok)
    if ok.all():
        return None
    bad = np.argwhere(~ok)
    first = tuple(int(i) for i in bad[0])
    se, sg = _fmt_pair(e[first], g[first])
    where = "" if not first else f"at index {first[0] if len(first) == 1 else first}: "
    msg = f"first mismatch {where}expected {se}, got {sg} ({len(bad)} of {ok.size} values differ"
    if close and e.dtype.kind in "fc":
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(g - e)[~ok]
        d = d[np.isfinite(d)]
        if d.size:
            msg += f"; largest difference {float(d.max()):.3g}, allowed {atol:g} + {rtol:g} * |expected|"
    return "", msg + ")"


def _diff_str(got: Any, exp: str) -> tuple[str, str] | None:
    if not isinstance(got, str):
        return _type_problem(got, exp)
    if got == exp:
        return None
    if len(exp) <= 60 and len(got) <= 60:
        return "", f"expected {exp!r}, got {got!r}"
    i = next((k for k, (a, b) in enumerate(zip(got, exp, strict=False)) if a != b), min(len(got), len(exp)))
    lo = max(0, i - 20)
    return "", (
        f"first difference at character {i}: expected ...{exp[lo : i + 20]!r}..., got ...{got[lo : i + 20]!r}... "
        f"(expected {len(exp)} characters, got {len(got)})"
    )


def _diff_scalar(got: Any, exp: Any, close: bool, atol: float, rtol: float) -> tuple[str, str] | None:
    g = got.item() if isinstance(got, np.generic) else got
    e = exp.item() if isinstance(exp, np.generic) else exp
    if e is None:
        return None if g is None else _type_problem(got, exp)
    if isinstance(e, bool) or isinstance(g, bool):
        ok_type = isinstance(g, bool) and isinstance(e, bool)
    elif isinstance(e, int):
        ok_type = isinstance(g, int) or (close and isinstance(g, float))
    elif isinstance(e, float):
        ok_type = isinstance(g, float) or (close and isinstance(g, int))
    else:
        ok_type = isinstance(g, (int, float, complex))
    if not ok_type:
        return _type_problem(got, exp)
    if g == e or (isinstance(e, float) and isinstance(g, float) and math.isnan(e) and math.isnan(g)):
        return None
    if close and not isinstance(e, bool) and abs(g - e) <= atol + rtol * abs(e):
        return None
    se, sg = _fmt_pair(e, g)
    return "", f"expected {se}, got {sg}"


def _diff_seq(got: Any, exp: list | tuple, close: bool, atol: float, rtol: float) -> tuple[str, str] | None:
    if not isinstance(got, (list, tuple)):
        return _type_problem(got, exp)
    if len(got) != len(exp):
        return "", f"expected {len(exp)} items, got {len(got)}"
    plain = (int, float, str, bool)
    if not close and all(type(a) is type(b) and type(b) in plain for a, b in zip(got, exp, strict=False)):
        if got == exp:
            return None  # fast path for long lists (an encoded text)
    diffs = [(i, d) for i, (a, b) in enumerate(zip(got, exp, strict=False)) if (d := _diff(a, b, close, atol, rtol))]
    if not diffs:
        return None
    i, (path, msg) = diffs[0]
    if all(_is_scalar(x) or isinstance(x, str) or x is None for x in exp):
        return "", f"first mismatch at index {i}: {msg} ({len(diffs)} of {len(exp)} values differ)"
    return f"[{i}]{path}", msg


def _diff_dict(got: Any, exp: Mapping, close: bool, atol: float, rtol: float) -> tuple[str, str] | None:
    if not isinstance(got, Mapping):
        return _type_problem(got, exp)
    missing = [k for k in exp if k not in got]
    extra = [k for k in got if k not in exp]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if extra:
            parts.append(f"unexpected keys {_few(extra)}")
        return "", f"{' and '.join(parts)} ({len(exp)} keys expected, got {len(got)})"
    diffs = [(k, d) for k in exp if (d := _diff(got[k], exp[k], close, atol, rtol))]
    if not diffs:
        return None
    k, (path, msg) = diffs[0]
    if len(diffs) > 1:
        msg += f" ({len(diffs)} of {len(exp)} entries differ)"
    return f"[{k!r}]{path}", msg


def _few(keys: list, n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------------
# Reporting


def exception_leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside an exception group (hypothesis raises one for several distinct failures)."""
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, (list, tuple)) and inner:
        return [leaf for e in inner for leaf in exception_leaves(e)]
    return [exc]


def stub_message(exc: BaseException) -> str | None:
    """'not done yet: ...' if ``exc`` is (caused by) the NotImplementedError of a lesson stub."""
    seen = 0
    while exc is not None and seen < 10:
        msg = str(exc)
        if isinstance(exc, NotImplementedError) and msg.startswith("Exercise "):
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            code = tb.tb_frame.f_code if tb is not None else None
            name = getattr(code, "co_qualname", getattr(code, "co_name", None)) if code else None
            ex = msg.split(":")[0]
            if name and name != "<module>":
                return f"not done yet: {name}() still raises NotImplementedError ({ex})"
            return f"not done yet: {msg}"
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def classify_failure(exc: BaseException, lesson_path: str | Path | None = None) -> tuple[str, str]:
    """What a grader raised, as (kind, one line in words).

    kind is "not done" (a stub's NotImplementedError), "wrong" (an AssertionError: a
    comparison failed), "lesson" (the lesson did not load, or lacks a name), "timeout",
    "exited" (SystemExit), "raised" (an exception raised in the lesson's code, with
    its line), or "error" (raised in the grader's code, most likely on what the
    learner's code returned).
    """
    leaves = exception_leaves(exc)
    for leaf in leaves:
        if stub := stub_message(leaf):
            return "not done", stub
    first = leaves[0]
    if isinstance(first, LearnerInterrupt) and first.__cause__ is not None:
        first = first.__cause__
    if isinstance(first, (GradingError, lessons.CourseError)):
        return "lesson", str(first)
    if isinstance(first, ExerciseTimeout):
        return "timeout", str(first)
    if isinstance(first, AssertionError):
        text = str(first).strip()
        return "wrong", text.splitlines()[0] if text else "assertion failed"
    path = Path(lesson_path).resolve() if lesson_path is not None else None
    line = _last_line_in(first, path) if path is not None else None
    where = f"line {line} of {path.name}" if path is not None and line is not None else None
    if isinstance(first, SystemExit):
        call = "sys.exit()" if first.code is None else f"sys.exit({first.code!r})"
        return "exited", f"exited ({call} in your code{', ' + where if where else '?'})"
    text = f"{type(first).__name__}: {first}" if str(first) else type(first).__name__
    if where:
        return "raised", f"raised {text} ({where})"
    if path is not None:
        return "error", f"raised {text} (in the grader, not in {path.name}: on what your code returned?)"
    return "error", f"raised {text}"


def describe_failure(exc: BaseException, lesson_path: str | Path | None = None) -> str:
    """One line, in words, for what a grader raised (see :func:`classify_failure`)."""
    return classify_failure(exc, lesson_path)[1]
