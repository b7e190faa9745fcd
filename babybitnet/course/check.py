"""``python -m babybitnet check N``: grade a learner's lesson, one line per exercise, as soon as it is graded.

The graders are pytest tests (``tests/exercises/test_lessonNN.py``, each marked
``@pytest.mark.exercise("N.M")``). The learner's code may do anything: loop
forever while catching ``BaseException``, ignore SIGALRM, call ``os._exit(0)``,
patch the grader's comparisons. So ``check`` never runs it in its own process:

- **One child process per exercise.** Each runs pytest on that exercise's
  grader tests only (:class:`_Child` is its plugin), in a process group of its
  own, at most two at a time. Before the lesson is loaded it opens what it
  reports through: a pipe from this process, and a file for ``faulthandler``.
- **A hard time budget, kept here.** The budget (``--timeout``,
  ``$BABYBITNET_CHECK_TIMEOUT``, default 20 s per exercise) starts when the
  child has imported everything and collected its tests, just before the
  lesson's code first runs. When it runs out, ``faulthandler`` in the child
  (a thread of C, which no ``except`` or signal handler of the lesson stops)
  dumps where it was, so the verdict can name the line of the endless loop,
  and ends it; a moment later this process kills the child's whole process
  group in any case.
- **The verdict is decided here, from what the child reports.** A child that
  stops reporting exited (``os._exit``, ``sys.exit``) or was killed; only a
  test reported as passed can pass. And the comparison helpers of
  :mod:`babybitnet.course.grading` record what they compared (the learner's
  value and the expected one, copied to plain data); the child sends the records
  of each test, serialised with ``torch.save``, and this process re-runs every
  comparison with its own, untouched copy of the helpers. A lesson that patches
  ``grading._diff`` or ``grading.assert_same`` fools the child, not this
  process: its wrong answer fails here with the real difference. A test that
  reports passing but recorded no comparison, though its source calls a helper
  (:func:`~babybitnet.course.grading.comparing_tests`), fails too.

This stops mistakes and casual tampering, not a determined forger: code that
writes fake records into the pipe could still pass. Every other exercise is
graded whatever one of them does; ``check`` exits 0 only when all pass.

:class:`ResultCollector` is the plugin behind the test suite's ``--grading-report``.
"""

from __future__ import annotations

import ast
import contextlib
import faulthandler
import io
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pytest

from babybitnet.course.lessons import (
    CourseError,
    _display,
    defined_names,
    exercises_of,
    find_lesson,
    parse_cells,
    repo_root,
    resolve_lessons_dir,
)
from babybitnet.files import write_text

TIMEOUT_ENV = "BABYBITNET_CHECK_TIMEOUT"
DEFAULT_TIMEOUT_S = 20.0
START_LIMIT_S = 180.0  # importing torch and collecting the graders, on a very busy machine
JOBS = 2  # children at a time: two cores are enough for a lesson in well under a minute
GRACE_S = 0.5  # after the budget, before the kill: faulthandler's dump is written first
MESSAGE_LIMIT = 500
TAMPERED = "the grader was tampered with from the lesson"
LEAVE_ALONE = "leave babybitnet.course.grading and pytest alone"


@dataclass
class TestResult:
    nodeid: str
    exercise: str | None
    lesson: int | None
    outcome: str = "passed"  # passed, failed, error, skipped
    message: str = ""


class ResultCollector:
    """A pytest plugin that records each grader test's exercise, outcome and one-line message.

    The test suite's ``--grading-report FILE`` option writes them as JSON
    (tests/test_course.py reads it). The exercise and message come from
    ``report.user_properties``, which ``tests/exercises/conftest.py`` fills in.
    It also records each test's comparisons: a test that passes without the
    comparison its source makes is reported as failed, since ``check`` would
    take it for a grader tampered with (its helper calls must not be conditional).
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, json_path: str | Path | None = None):
        self.results: dict[str, TestResult] = {}
        self.collect_errors: list[str] = []
        self.json_path = json_path
        self._comparing: dict[Path, set[str]] = {}

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.collect_errors.append(f"{report.nodeid}: {report.longreprtext.strip()[-2000:]}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        from babybitnet.course import grading

        with grading.recording() as comparisons:
            try:
                return (yield)
            finally:
                if item.path not in self._comparing:
                    self._comparing[item.path] = grading.comparing_tests(item.path)
                must = getattr(item, "originalname", item.name) in self._comparing[item.path]
                if must and not any(c["passed"] and c["args"] is not None for c in comparisons):
                    item.user_properties.append(("compared_nothing", True))

    def pytest_runtest_logreport(self, report: Any) -> None:
        props = dict(report.user_properties)
        r = self.results.get(report.nodeid)
        if r is None:
            r = self.results[report.nodeid] = TestResult(report.nodeid, props.get("exercise"), props.get("lesson"))
        if report.failed and r.outcome in ("passed", "skipped"):
            r.outcome = "failed" if report.when == "call" else "error"
            lines = report.longreprtext.strip().splitlines()
            r.message = props.get("grading_message") or (lines[-1] if lines else report.when + " failed")
        elif report.skipped and r.outcome == "passed":
            r.outcome = "skipped"
        elif report.when == "call" and report.passed and props.get("compared_nothing"):
            r.outcome = "failed"
            r.message = (
                "passed without recording the comparison its source makes, which `check` takes for a grader "
                "tampered with: call the assert_* helpers (and as_float) unconditionally"
            )

    def pytest_sessionfinish(self, session: Any) -> None:
        if self.json_path:
            data = {"results": [asdict(r) for r in self.results.values()], "collect_errors": self.collect_errors}
            write_text(self.json_path, json.dumps(data, indent=1))


# ---------------------------------------------------------------------------------------------
# The parent: one child per exercise, a budget each, verdicts in words


def check_timeout(timeout: float | None = None) -> float:
    """The budget per exercise: ``timeout`` if given, else ``$BABYBITNET_CHECK_TIMEOUT``, else 20 s."""
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if not raw:
            return DEFAULT_TIMEOUT_S
        try:
            timeout = float(raw)
        except ValueError:
            raise CourseError(f"{TIMEOUT_ENV} should be a number of seconds, got {raw!r}") from None
    if not timeout > 0 or timeout != timeout or timeout == float("inf"):
        raise CourseError(f"the time limit per exercise should be a positive number of seconds, got {timeout:g}")
    return float(timeout)


def check_lesson(
    number: int, lessons_dir: str | Path | None = None, out: TextIO | None = None, timeout: float | None = None
) -> int:
    """Grade lesson ``number``, printing one line per exercise as soon as it is graded, then a score.

    ``timeout``: seconds per exercise (default: :func:`check_timeout`). Returns 0 if
    every exercise passes, else 1. Raises ``CourseError`` for a missing lesson or grader file.
    """
    out = out or sys.stdout
    budget = check_timeout(timeout)
    root = repo_root()
    folder = resolve_lessons_dir(lessons_dir, root)
    lesson = find_lesson(number, folder).resolve()
    graders = root / "tests" / "exercises" / f"test_lesson{number:02d}.py"
    if not graders.exists():
        raise CourseError(f"lesson {number} has no graded exercises yet ({graders.relative_to(root)} does not exist)")

    names = exercises_of(lesson)
    graded = set(re.findall(r"""\bexercise\(\s*["'](\d+\.\d+)["']""", graders.read_text(encoding="utf-8")))
    order = sorted(set(names) | graded, key=_ex_key)
    shown = _display(lesson)
    say = _Printer(out, order, names, _uses_earlier(lesson))
    say.line(
        f"lesson {number}: grading {shown}, {_saved_ago(lesson)} "
        "(a notebook edited in Jupyter but not saved is graded as on disk)"
    )
    say.line(f"each exercise in a process of its own, for at most {budget:g} s (--timeout S to change it)")
    for ex in order:
        if ex not in graded:
            say.verdict(ex, "none", "no graders yet")
    jobs = [_Job(ex) for ex in order if ex in graded]
    with tempfile.TemporaryDirectory(prefix="babybitnet-check-") as tmp:
        _Runner(jobs, lesson, folder, graders, root, Path(tmp), budget).run(
            lambda job: say.verdict(job.exercise, *job.verdict)
        )
    results = [say.kinds[ex] for ex in order if say.kinds[ex] != "none"]
    passed = sum(1 for kind in results if kind == "passed")
    say.line(f"score: {passed}/{len(results)} exercises pass")
    if passed < len(results):
        extra = "" if lessons_dir is None else f" --lessons-dir {lessons_dir}"
        say.line(
            f"edit {shown}, then run this again (details, with tracebacks: "
            f"python -m pytest tests/exercises/{graders.name}{extra})"
        )
        return 1
    return 0


@dataclass
class _Job:
    """One exercise's child process and what it reported."""

    exercise: str
    proc: subprocess.Popen | None = None
    fd: int = -1
    buffer: bytearray = field(default_factory=bytearray)
    spawned: float = 0.0
    deadline: float | None = None  # set when the child says it starts running tests
    tests: list[str] | None = None  # the grader tests it runs, in order (from its "start" message)
    collect_errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)
    timed_out: bool = False
    start_timed_out: bool = False
    garbled: str | None = None
    log: Path | None = None
    dump: Path | None = None
    verdict: tuple[str, str] = ("", "")


class _Runner:
    """Runs the children, two at a time, each under its budget, and decides each verdict when it ends."""

    def __init__(
        self, jobs: list[_Job], lesson: Path, folder: Path, graders: Path, root: Path, tmp: Path, budget: float
    ):
        self.pending, self.running = list(jobs), []
        self.lesson, self.folder, self.graders, self.root, self.tmp = lesson, folder, graders, root, tmp
        self.budget = budget
        self.selector = selectors.DefaultSelector()
        self.comparing: set[str] | None = None

    def run(self, done: Any) -> None:
        try:
            while self.pending or self.running:
                while self.pending and len(self.running) < JOBS:
                    self._spawn(self.pending.pop(0))
                now = time.monotonic()
                wake = min(self._limit(job) for job in self.running)
                for key, _ in self.selector.select(timeout=min(max(wake - now, 0.0), 0.2)):
                    self._read(key.data)
                now = time.monotonic()
                for job in list(self.running):
                    over = now >= self._limit(job)
                    if job.proc.poll() is None and not over:
                        continue
                    if job.proc.poll() is None:
                        job.timed_out, job.start_timed_out = job.deadline is not None, job.deadline is None
                    self._finish(job)
                    done(job)
        finally:
            for job in self.running:  # interrupted (Ctrl-C): leave nothing behind
                _kill(job.proc)
            self.selector.close()

    def _limit(self, job: _Job) -> float:
        return job.deadline + GRACE_S if job.deadline is not None else job.spawned + START_LIMIT_S

    def _spawn(self, job: _Job) -> None:
        read_fd, write_fd = os.pipe()
        stem = job.exercise.replace(".", "_")
        job.log, job.dump = self.tmp / f"{stem}.log", self.tmp / f"{stem}.faulthandler"
        spec = {
            "exercise": job.exercise,
            "fd": write_fd,
            "dump": str(job.dump),
            "lesson": str(self.lesson),
            "lessons_dir": str(self.folder),
            "graders": str(self.graders),
            "root": str(self.root),
            "budget": self.budget,
        }
        package_root = str(Path(__file__).resolve().parents[2])
        # No plugin auto-loading (anyio's imports trio: a second more per child; hypothesis's is named in
        # _child_main); no SIGALRM limit per test (the budget is kept here); one thread (two children at a time).
        env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "BABYBITNET_CALL_TIMEOUT": "0"}
        env.update(HYPOTHESIS_PROFILE="babybitnet-check", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        code = "import sys; from babybitnet.course.check import _child_main; sys.exit(_child_main(sys.argv[1]))"
        with open(job.log, "wb") as log:
            job.proc = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                env=env,
                start_new_session=True,  # a process group of its own: killed whole, and no Ctrl-C reaches it
            )
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        job.fd, job.spawned = read_fd, time.monotonic()
        self.selector.register(read_fd, selectors.EVENT_READ, job)
        self.running.append(job)

    def _read(self, job: _Job) -> None:
        """Read what the child wrote; on end of file stop listening."""
        while job.fd >= 0:
            try:
                chunk = os.read(job.fd, 1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                self._close(job)
                return
            job.buffer += chunk
            self._messages(job)

    def _messages(self, job: _Job) -> None:
        import torch

        while len(job.buffer) >= 8 and job.garbled is None:
            size = int.from_bytes(job.buffer[:8], "big")
            if size > 1 << 34:
                job.garbled = "a message of an impossible size"
                return
            if len(job.buffer) < 8 + size:
                return
            payload, job.buffer = bytes(job.buffer[8 : 8 + size]), job.buffer[8 + size :]
            try:
                msg = torch.load(io.BytesIO(payload), weights_only=True)
                self._handle(job, msg)
            except Exception as e:  # noqa: BLE001 - whatever the child wrote, it is not a report
                job.garbled = f"{type(e).__name__}: {e}"

    def _handle(self, job: _Job, msg: dict) -> None:
        kind = msg["type"]
        if kind == "start":
            job.tests = [str(t) for t in msg["tests"]]
            job.collect_errors = [str(e) for e in msg["collect_errors"]]
            job.skipped = [str(s) for s in msg["skipped"]]
            job.deadline = time.monotonic() + self.budget
        elif kind == "result":
            job.results[str(msg["test"])] = msg

    def _close(self, job: _Job) -> None:
        if job.fd >= 0:
            self.selector.unregister(job.fd)
            os.close(job.fd)
            job.fd = -1

    def _finish(self, job: _Job) -> None:
        _kill(job.proc)  # a child that ended may have left processes of its own; one that did not, too
        self._read(job)  # what it wrote before it ended
        self._close(job)
        self.running.remove(job)
        job.verdict = self._verdict(job)

    def _verdict(self, job: _Job) -> tuple[str, str]:
        """(kind, words) for one exercise, from what its child reported and how it ended."""
        from babybitnet.course import grading

        lesson_name = self.lesson.name
        if job.tests is None or job.collect_errors:
            if job.start_timed_out:
                return "course", f"could not start its grader within {START_LIMIT_S:g} s (is the computer very busy?)"
            detail = " ".join(job.collect_errors) or _tail(job.log)
            return "course", _one_line(f"could not be graded, a bug in the course (please report it): {detail}")
        if not job.tests:
            if job.skipped:
                return "none", f"not graded here: {job.skipped[0]}"
            return "none", "no graders yet"
        if self.comparing is None:
            self.comparing = grading.comparing_tests(self.graders)
        problems: list[tuple[str, str]] = []
        for test in job.tests:
            r = job.results.get(test)
            if r is None:  # the child stopped during this test: the later ones never ran
                problems.append(self._stopped(job, lesson_name))
                break
            if r["outcome"] == "failed":
                problems.append((str(r["kind"]), _verdict_text(str(r["kind"]), str(r["message"]), job.exercise)))
            elif r["outcome"] == "passed":
                checked, problem = grading.verify_comparisons(list(r["comparisons"]))
                if problem is not None:
                    problems.append(("wrong", f"wrong: {problem} ({TAMPERED}, so it passed there)"))
                elif checked == 0 and _test_name(test) in self.comparing:
                    problems.append(("tampered", f"{TAMPERED}: its checks compared nothing ({LEAVE_ALONE})"))
        if not problems:
            return "passed", "passed"
        kind, text = problems[0]
        others = len({t for _, t in problems[1:] if t != text})
        more = f" (+{others} more failing check{'s' if others > 1 else ''})" if others else ""
        return kind, _one_line(text) + more

    def _stopped(self, job: _Job, lesson_name: str) -> tuple[str, str]:
        """Why the child reported no result for a test: the budget ran out, it exited, or it garbled its report."""
        where = _where(job.dump, self.lesson)
        if job.timed_out or _dumped_on_timeout(job.dump):
            at = f" it was at {where}" if where else ""
            return "timeout", f"did not finish in {self.budget:g} s (an endless loop?{at})"
        if job.garbled:
            return "exited", f"garbled its report to check (does your code write to file descriptors?): {job.garbled}"
        code = job.proc.returncode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            at = f" at {where}" if where else ""
            return "exited", f"crashed ({name}{at})"
        return "exited", "exited (os._exit or sys.exit in your code?)"


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # no process groups: the child alone
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _where(dump: Path | None, lesson: Path) -> str | None:
    """'line L of NN_slug.py, in f' for the innermost frame in the lesson in faulthandler's dump, if any."""
    try:
        text = dump.read_text(encoding="utf-8", errors="replace") if dump else ""
    except OSError:
        return None
    for m in re.finditer(r'File "(.+)", line (\d+) in (\S+)', text):
        if Path(m.group(1)) == lesson:
            func = m.group(3)
            return f"line {m.group(2)} of {lesson.name}" + (f", in {func}" if func != "<module>" else "")
    return None


def _dumped_on_timeout(dump: Path | None) -> bool:
    """Did the child's faulthandler timer (the budget) end it?"""
    with contextlib.suppress(OSError):
        return bool(dump) and "Timeout (" in dump.read_text(encoding="utf-8", errors="replace")
    return False


def _tail(log: Path | None, n: int = 1500) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace").strip() if log else ""
    except OSError:
        text = ""
    return (text[-n:] if text else "its process ended without a word").replace("\n", " | ")


def _test_name(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[")[0]


def _verdict_text(kind: str, message: str, exercise: str) -> str:
    if kind == "not done":
        return message.removesuffix(f" (Exercise {exercise})")
    if kind == "wrong":
        return f"wrong: {message}"
    if kind == "lesson":
        return message.removeprefix(f"Exercise {exercise} ")
    return message


class _Printer:
    """Prints each exercise's line as soon as it is decided (and the verdicts of the exercises it uses are)."""

    def __init__(self, out: TextIO, order: list[str], names: dict[str, list[str]], uses: dict[str, list]):
        self.out, self.order, self.names, self.uses = out, order, names, uses
        self.width = max((len(", ".join(names.get(ex, []))) for ex in order), default=0)
        self.kinds: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.printed: set[str] = set()

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def verdict(self, exercise: str, kind: str, text: str) -> None:
        self.kinds[exercise], self.texts[exercise] = kind, text
        progress = True
        while progress:
            progress = False
            for ex in self.order:
                if ex in self.kinds and ex not in self.printed and self._ready(ex):
                    self._print(ex)
                    progress = True

    def _ready(self, ex: str) -> bool:
        return self.kinds[ex] == "passed" or all(dep in self.kinds for _, dep in self.uses.get(ex, []))

    def _print(self, ex: str) -> None:
        self.printed.add(ex)
        kind, text = self.kinds[ex], self.texts[ex]
        own_stub = kind == "not done" and "(Exercise " not in text  # its own stub: the suffix was removed
        if kind not in ("passed", "none") and not own_stub:
            for name, dep in self.uses.get(ex, []):
                if self.kinds.get(dep) not in (None, "passed", "none"):
                    state = "is not done yet" if self.kinds[dep] == "not done" else "fails"
                    text = f"uses your `{name}` ({dep}), which {state}: fix {dep} first"
                    self.kinds[ex] = "uses"
                    break
        label = f"  {ex:<5} {', '.join(self.names.get(ex, [])):<{self.width}}  "
        self.line(label + text)


def _uses_earlier(lesson: Path) -> dict[str, list[tuple[str, str]]]:
    """For each exercise, the (name, exercise) of the earlier exercises' functions and classes its cell uses."""
    out: dict[str, list[tuple[str, str]]] = {}
    earlier: list[tuple[str, list[str]]] = []
    for cell in parse_cells(lesson.read_text(encoding="utf-8")).tagged("exercise"):
        ex = cell.exercise_id
        if ex is None:
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            used: set[str] = set()
        else:
            used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        own = defined_names(cell.source)
        out[ex] = [(name, dep) for dep, names in earlier for name in names if name in used and name not in own]
        earlier.append((ex, own))
    return out


def _saved_ago(path: Path, now: float | None = None) -> str:
    mtime = path.stat().st_mtime
    age = (time.time() if now is None else now) - mtime
    if age < 60:
        return "saved just now" if age < 10 else f"saved {age:.0f} s ago"
    if age < 3600:
        return f"saved {age // 60:.0f} min ago"
    if age < 86400:
        return f"saved {age // 3600:.0f} h {age % 3600 // 60:.0f} min ago"
    return f"saved on {time.strftime('%Y-%m-%d %H:%M', time.localtime(mtime))}"


def _ex_key(ex: str) -> tuple[int, ...]:
    return tuple(int(x) for x in ex.split(".")) if re.fullmatch(r"\d+\.\d+", ex) else (10**6,)


def _one_line(msg: str, limit: int = MESSAGE_LIMIT) -> str:
    """``msg`` on one line; a very long one is cut at a word boundary, never inside a number or a word."""
    msg = " ".join(msg.split())
    if len(msg) <= limit:
        return msg
    cut = msg.rfind(" ", 0, limit - 4)
    return msg if cut <= 0 else msg[:cut] + " ..."


# ---------------------------------------------------------------------------------------------
# The child: pytest on one exercise's graders, reporting through a pipe


def _send(fd: int, msg: dict) -> None:
    """One message to the parent: 8 bytes of length, then ``torch.save`` of plain data."""
    import torch

    buf = io.BytesIO()
    torch.save(msg, buf)
    data = memoryview(len(buf.getbuffer()).to_bytes(8, "big") + buf.getvalue())
    while data:
        data = data[os.write(fd, data) :]


class _Child:
    """The pytest plugin of a child process: runs one exercise's grader tests and reports each to the parent."""

    def __init__(self, exercise: str, fd: int, lesson: Path, budget: float, dump: TextIO):
        self.exercise, self.fd, self.lesson, self.budget, self.dump = exercise, fd, lesson, budget, dump
        self.collect_errors: list[str] = []
        self.skipped: list[str] = []
        self.results: dict[str, dict] = {}
        self.comparisons: dict[str, list] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        def exercise(item: pytest.Item) -> str | None:
            mark = item.get_closest_marker("exercise")
            return str(mark.args[0]) if mark and mark.args else None

        drop = [item for item in items if exercise(item) != self.exercise]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = [item for item in items if exercise(item) == self.exercise]

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append(f"{report.nodeid}: {report.longreprtext.strip()[-1500:]}")
        elif report.skipped and isinstance(report.longrepr, tuple):
            self.skipped.append(str(report.longrepr[2]).removeprefix("Skipped: "))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session):
        tests = [item.nodeid for item in session.items]
        _send(self.fd, {"type": "start", "tests": tests, "collect_errors": self.collect_errors,
                        "skipped": self.skipped})  # fmt: skip
        # At the end of the budget: say where it was, and end. The parent kills it a moment later anyway, but
        # a child whose parent is gone (killed itself) must not loop on alone.
        faulthandler.dump_traceback_later(self.budget, file=self.dump, exit=True)
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item):
        try:
            return (yield)  # the lesson is loaded here, by the `lesson` fixture
        except KeyboardInterrupt as e:
            raise _interrupt(e) from e

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        from babybitnet.course import grading

        with grading.recording() as comparisons:
            self.comparisons[item.nodeid] = comparisons
            try:
                return (yield)
            except KeyboardInterrupt as e:
                raise _interrupt(e) from e

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item):
        try:
            return (yield)
        except KeyboardInterrupt as e:
            raise _interrupt(e) from e

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        from babybitnet.course import grading

        rep = yield
        r = self.results.setdefault(item.nodeid, {"outcome": "passed", "kind": "", "message": ""})
        if rep.failed and r["outcome"] != "failed":
            if call.excinfo is not None:
                kind, message = grading.classify_failure(call.excinfo.value, self.lesson)
            else:
                kind, message = "error", (rep.longreprtext.strip().splitlines() or [f"{call.when} failed"])[-1]
            r.update(outcome="failed", kind=kind, message=message)
        elif rep.skipped and r["outcome"] == "passed":
            r["outcome"] = "skipped"
        if call.when == "teardown":
            msg = {"type": "result", "test": item.nodeid, **r, "comparisons": self.comparisons.pop(item.nodeid, [])}
            _send(self.fd, msg)
        return rep

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        faulthandler.cancel_dump_traceback_later()


def _interrupt(e: KeyboardInterrupt) -> Exception:
    from babybitnet.course import grading

    return grading.LearnerInterrupt(str(e))


def _child_main(spec_json: str) -> int:
    """The child process: ``spec_json`` says which exercise, where to report, and the budget."""
    spec = json.loads(spec_json)
    from babybitnet.course import grading  # before any of the lesson's code: its own copy, as the parent's

    grading.interrupts_are_the_lessons = True
    dump = open(spec["dump"], "w", encoding="utf-8")  # noqa: SIM115 - open until the process ends
    faulthandler.enable(file=dump)  # a crash (segfault) says where, too
    plugin = _Child(spec["exercise"], int(spec["fd"]), Path(spec["lesson"]), float(spec["budget"]), dump)
    root = Path(spec["root"])
    args = [spec["graders"], "--lessons-dir", spec["lessons_dir"], "--rootdir", str(root)]
    args += ["-c", str(root / "pyproject.toml"), "-p", "no:cacheprovider", "-p", "no:faulthandler"]
    args += ["-p", "_hypothesis_pytestplugin", "-q", "--no-header"]
    pytest.main(args, plugins=[plugin])
    return 0
