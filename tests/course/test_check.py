"""``python -m babybitnet check N``: no learner's code can hang it, escape its limits, or make a wrong answer pass.

The end-to-end tests copy a solution lesson to tmp_path, break some of its
exercises on purpose (an endless loop that ignores SIGALRM and catches
BaseException, ``os._exit(0)``, a patched grader, exceptions, ``sys.exit``, a
KeyboardInterrupt, a wrong answer used by a later exercise) and run ``check``
on it in a subprocess, reading its output line by line as it comes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from babybitnet.course import check, lessons
from babybitnet.course.lessons import parse_cells

ROOT = Path(__file__).resolve().parents[2]


def broken_copy(tmp_path: Path, name: str, inside: dict[int, list[str]], after: dict[int, list[str]] | None = None):
    """``solutions/name`` copied to tmp_path, with ``inside[i]`` put at the start of the solution region of
    exercise cell i (indented to fit) and ``after[i]`` at the end of that cell. Returns (path, cells)."""
    lf = parse_cells((ROOT / "solutions" / name).read_text())
    cells = lf.tagged("exercise")
    for i, lines in inside.items():
        at = next(k for k, line in enumerate(cells[i].lines) if "### BEGIN SOLUTION" in line)
        indent = cells[i].lines[at][: len(cells[i].lines[at]) - len(cells[i].lines[at].lstrip())]
        cells[i].lines[at + 1 : at + 1] = [indent + line for line in lines]
    for i, lines in (after or {}).items():
        cells[i].lines += lines
    path = tmp_path / name
    path.write_text(str(lf))
    return path, cells


def line_of(path: Path, snippet: str) -> int:
    text = path.read_text()
    return text[: text.index(snippet)].count("\n") + 1


class Run:
    """``python -m babybitnet check`` in a subprocess; each stdout line with the second it arrived."""

    def __init__(self, *args: str, limit: float = 300, **env: str):
        e = {k: v for k, v in os.environ.items() if k not in ("BABYBITNET_LESSONS_DIR", check.TIMEOUT_ENV)}
        e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [e.get("PYTHONPATH")])])
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "babybitnet", "check", *args],
            cwd=ROOT,
            env={**e, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        reader = threading.Thread(target=lambda: self.lines.extend((time.monotonic() - start, s.rstrip("\n"))
                                                                   for s in proc.stdout))  # fmt: skip
        reader.start()
        try:
            self.returncode = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            reader.join(timeout=10)
        self.seconds = time.monotonic() - start
        self.stderr = proc.stderr.read()
        self.stdout = "\n".join(text for _, text in self.lines)

    def exercise(self, ex: str) -> str:
        found = [text for _, text in self.lines if text.split()[:1] == [ex] and text.startswith("  ")]
        assert len(found) == 1, f"exercise {ex}: {found}\n{self.stdout}\n{self.stderr}"
        return found[0]

    def arrived(self, ex: str) -> float:
        return next(t for t, text in self.lines if text.startswith("  ") and text.split()[:1] == [ex])


def test_an_endless_loop_os_exit_and_a_patched_grader_cannot_fool_check(tmp_path):
    """The acceptance test of issue 14: three ways to break out, each reported; the rest graded; exit 1."""
    path, cells = broken_copy(
        tmp_path,
        "11_packing.py",
        inside={
            1: [  # 11.2: loops forever, ignoring SIGALRM and catching everything that could stop it
                "import signal",
                "signal.signal(signal.SIGALRM, signal.SIG_IGN)",
                "while True:",
                "    try:",
                "        while True:",
                "            pass",
                "    except BaseException:",
                "        pass",
            ],
            2: ["return torch.zeros(w.shape[:-1] + ((w.shape[-1] + 4) // 5,), dtype=torch.uint8)"],  # 11.3: wrong
            3: ["import os", "os._exit(0)"],  # 11.4: leaves, as if all had passed
        },
        after={
            2: [
                "import babybitnet.course.grading as g",
                "",
                "g._diff = lambda *a, **k: None",
                "g.assert_same = lambda *a, **k: None",
            ]
        },  # fmt: skip
    )
    ids = [c.exercise_id for c in cells]
    assert ids == ["11.1", "11.2", "11.3", "11.4"]
    r = Run("11", "--lessons-dir", str(tmp_path))

    assert r.returncode == 1, r.stdout + r.stderr
    assert r.exercise("11.1").endswith("passed"), r.stdout  # graded as usual, though its process was patched too
    loop = r.exercise("11.2")
    assert "did not finish in 20 s (an endless loop? it was at line " in loop, r.stdout
    first = line_of(path, "    try:\n") + 1  # the inner `while True:`, then its `pass`
    assert any(f"line {n} of 11_packing.py, in unpack_2bit)" in loop for n in (first, first + 1)), loop
    wrong = r.exercise("11.3")
    assert "wrong: pack_base3(" in wrong and "the grader was tampered with from the lesson" in wrong, r.stdout
    assert "expected 156, got 0" in wrong, wrong  # the real difference, found by check's own comparison
    assert r.exercise("11.4").endswith("exited (os._exit or sys.exit in your code?)"), r.stdout
    assert "score: 1/4 exercises pass" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    # The budget was kept: the loop ran its 20 s, no more; lines came as each exercise was graded.
    assert r.arrived("11.2") >= 20 and r.seconds < 120, (r.seconds, r.lines)
    assert r.arrived("11.1") < r.arrived("11.2") - 5, r.lines


def test_each_verdict_says_what_the_learners_code_did(tmp_path):
    """An exception, a KeyboardInterrupt and sys.exit in the learner's code: each named with its line."""
    path, cells = broken_copy(
        tmp_path,
        "06_absmean.py",
        inside={
            0: ['raise ValueError("w is not what I expected")'],
            1: ['raise KeyboardInterrupt("stop here")'],
            2: ["import sys", "sys.exit(3)"],
        },
    )
    r = Run("6", "--lessons-dir", str(tmp_path), "--timeout", "60")
    assert r.returncode == 1, r.stdout + r.stderr
    line = line_of(path, "raise ValueError")
    assert r.exercise("6.1").endswith(f"raised ValueError: w is not what I expected (line {line} of 06_absmean.py)")
    line = line_of(path, "raise KeyboardInterrupt")
    assert r.exercise("6.2").endswith(f"raised KeyboardInterrupt: stop here (line {line} of 06_absmean.py)")
    line = line_of(path, "sys.exit(3)")
    assert r.exercise("6.3").endswith(f"exited (sys.exit(3) in your code, line {line} of 06_absmean.py)")
    assert "score: 0/3 exercises pass" in r.stdout
    assert "for at most 60 s" in r.lines[1][1], r.lines[1]  # --timeout
    header = r.lines[0][1]
    assert header.startswith(f"lesson 6: grading {path}, saved ") and "graded as on disk" in header, header


def test_an_exercise_that_fails_because_of_an_earlier_one_says_so(tmp_path):
    """3.3 (Head) calls the learner's attention_weights (3.2): when 3.2 is wrong, 3.3 says fix 3.2 first."""
    _, cells = broken_copy(
        tmp_path,
        "03_attention.py",
        inside={
            0: ['raise NotImplementedError("Exercise 3.1: write causal_average(); check it with: check 3")'],
            1: ["return F.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)  # the future not hidden"],
        },
    )
    assert [c.exercise_id for c in cells] == ["3.1", "3.2", "3.3"]
    r = Run("3", "--lessons-dir", str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not done yet: causal_average() still raises NotImplementedError" in r.exercise("3.1"), r.stdout
    assert "wrong: " in r.exercise("3.2"), r.stdout
    assert r.exercise("3.3").endswith("uses your `attention_weights` (3.2), which fails: fix 3.2 first"), r.stdout


# ---------------------------------------------------------------------------------------------
# The pieces, without processes


def test_which_exercises_use_earlier_ones_is_read_from_the_learners_cells():
    uses = check._uses_earlier(ROOT / "solutions" / "03_attention.py")
    assert uses == {"3.1": [], "3.2": [], "3.3": [("attention_weights", "3.2")]}
    path = ROOT / "solutions" / "09_bitlinear.py"
    uses, names = check._uses_earlier(path), lessons.exercises_of(path)
    assert [dep for _, dep in uses["9.2"]] == ["9.1"] and uses["9.2"][0][0] in names["9.1"], uses
    assert uses["9.1"] == []


def test_long_messages_are_cut_at_a_word_boundary_only():
    short = "x: expected 0.123456, got 0.5"
    assert check._one_line(short) == short
    assert check._one_line("a\n  b") == "a b"
    long = " ".join(f"{i / 7:.6f}" for i in range(200))
    cut = check._one_line(long, limit=100)
    assert cut.endswith(" ...") and len(cut) <= 100
    assert long.startswith(cut.removesuffix(" ...") + " ")  # whole numbers only
    assert check._one_line("y" * 600, limit=100) == "y" * 600  # no space to cut at: not cut


def test_saved_ago_in_words(tmp_path):
    p = tmp_path / "01_x.py"
    p.write_text("")
    t = p.stat().st_mtime
    assert check._saved_ago(p, t + 3) == "saved just now"
    assert check._saved_ago(p, t + 42) == "saved 42 s ago"
    assert check._saved_ago(p, t + 185) == "saved 3 min ago"
    assert check._saved_ago(p, t + 2 * 3600 + 300) == "saved 2 h 5 min ago"
    assert check._saved_ago(p, t + 3 * 86400).startswith("saved on ")


def test_where_the_loop_was_comes_from_faulthandlers_dump(tmp_path):
    lesson = tmp_path / "06_absmean.py"
    dump = tmp_path / "dump"
    dump.write_text(
        "Timeout (0:00:20)!\nThread 0x01 (most recent call first):\n"
        f'  File "{lesson}", line 42 in ternarize\n'
        '  File "/repo/tests/exercises/test_lesson06.py", line 40 in check_ternarize\n'
        f'  File "{lesson}", line 7 in <module>\n'
    )
    assert check._where(dump, lesson) == "line 42 of 06_absmean.py, in ternarize"
    assert check._where(tmp_path / "missing", lesson) is None


def test_the_time_budget_comes_from_the_option_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv(check.TIMEOUT_ENV, raising=False)
    assert check.check_timeout() == check.DEFAULT_TIMEOUT_S == 20
    monkeypatch.setenv(check.TIMEOUT_ENV, "7.5")
    assert check.check_timeout() == 7.5 and check.check_timeout(3) == 3
    monkeypatch.setenv(check.TIMEOUT_ENV, "soon")
    with pytest.raises(lessons.CourseError, match="BABYBITNET_CHECK_TIMEOUT should be a number of seconds"):
        check.check_timeout()
    with pytest.raises(lessons.CourseError, match="positive number of seconds"):
        check.check_timeout(0)


def test_the_grading_report_fails_a_grader_that_compares_only_sometimes(tmp_path):
    """`check` takes a passing test without the comparison its source makes for a grader tampered with; the
    suite's --grading-report (which tests/test_course.py reads) reports such a grader as failing on the solution."""
    for rel in ("conftest.py", "tests/conftest.py", "tests/exercises/conftest.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    (tmp_path / "tests/exercises/test_lesson09.py").write_text(
        "import pytest\n\nfrom babybitnet.course.grading import assert_same\n\npytestmark = pytest.mark.lesson09\n\n\n"
        '@pytest.mark.exercise("9.1")\ndef test_always(lesson):\n    assert_same(lesson.get("f")(2), 4, "f(2)")\n\n\n'
        '@pytest.mark.exercise("9.1")\ndef test_sometimes(lesson):\n    if lesson.get("f")(2) != 4:\n'
        '        assert_same(lesson.get("f")(2), 4, "f(2)")\n'
    )
    (tmp_path / "lessons").mkdir()
    (tmp_path / "lessons" / "09_demo.py").write_text(
        '# %% tags=["imports"]\nimport math\n\n# %% tags=["exercise"]\ndef f(x):\n    """Exercise 9.1: square."""\n'
        "    return x * x\n"
    )
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pytest", "tests/exercises", "--lessons-dir", "lessons", "--grading-report"]
    cmd += [str(report), "-p", "no:cacheprovider", "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert report.exists(), r.stdout + r.stderr
    results = {x["nodeid"].split("::")[-1]: x for x in json.loads(report.read_text())["results"]}
    assert results["test_always"]["outcome"] == "passed"
    assert results["test_sometimes"]["outcome"] == "failed"
    assert "call the assert_* helpers (and as_float) unconditionally" in results["test_sometimes"]["message"]
