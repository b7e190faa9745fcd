"""babybitnet.grading: messages in words, safe lesson loading, time limits, one-line failures."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from babybitnet.course import grading
from babybitnet.course.grading import (
    ExerciseTimeout,
    GradingError,
    LearnerInterrupt,
    assert_close,
    assert_rounded,
    assert_same,
    classify_failure,
    describe_failure,
    load_lesson,
    time_limit,
)
from babybitnet.course.lessons import make_stub


def message(fn, got, expected, *args, **kwargs) -> str:
    with pytest.raises(AssertionError) as e:
        fn(got, expected, *args, **kwargs)
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# assert_same / assert_close


def test_shape_dtype_and_first_mismatch_are_said_in_words():
    assert message(assert_same, torch.zeros(8, 4), torch.zeros(4, 8), "x") == "x: expected shape (4, 8), got (8, 4)"
    got = torch.zeros(3, dtype=torch.float32)
    assert message(assert_same, got, torch.zeros(3, dtype=torch.long), "x") == (
        "x: expected dtype torch.int64, got torch.float32"
    )
    expected = torch.zeros(4, 8)
    expected.view(-1)[19:31] = 1.0  # 12 ones, the first at row 2, column 3
    assert message(assert_same, torch.zeros(4, 8), expected, "x") == (
        "x: first mismatch at index (2, 3): expected 1.0, got 0.0 (12 of 32 values differ)"
    )
    assert message(assert_same, torch.tensor([1, 2, 3, 5]), torch.tensor([1, 2, 3, 4]), "v") == (
        "v: first mismatch at index 3: expected 4, got 5 (1 of 4 values differ)"
    )


def test_equal_things_pass():
    t = torch.randn(3, 4)
    for value in (t, t.numpy(), [1, 2, 3], (t, [1.5, "a"]), {"a": 1, "b": [t]}, "text", 3, 2.5, True, None, []):
        assert_same(value, value, "itself")
        assert_close(value, value, "itself")
    assert_same(torch.tensor([math.nan, 1.0]), torch.tensor([math.nan, 1.0]), "nan matches nan")
    assert_same([1, 2], (1, 2), "a list matches a tuple with the same items")


def test_numpy_arrays():
    a = np.arange(6).reshape(2, 3)
    assert message(assert_same, a.astype(np.float32), a, "a") == "a: expected dtype int64, got float32"
    assert message(assert_same, a.T, a, "a") == "a: expected shape (2, 3), got (3, 2)"
    b = a.copy()
    b[1, 2] = 9
    assert (
        message(assert_same, b, a, "a") == "a: first mismatch at index (1, 2): expected 5, got 9 (1 of 6 values differ)"
    )


def test_lists_dicts_strings_and_scalars():
    assert message(assert_same, [1, 2, 3], [1, 2, 4], "ids") == (
        "ids: first mismatch at index 2: expected 4, got 3 (1 of 3 values differ)"
    )
    assert message(assert_same, [1, 2], [1, 2, 3], "ids") == "ids: expected 3 items, got 2"
    assert message(assert_same, {"a": 0, "b": 2}, {"a": 0, "b": 1}, "stoi") == "stoi['b']: expected 1, got 2"
    assert "missing keys 'c'" in message(assert_same, {"a": 0}, {"a": 0, "c": 1}, "stoi")
    assert message(assert_same, "helo", "hello", "s") == "s: expected 'hello', got 'helo'"
    long = "x" * 100
    assert "first difference at character 50" in message(assert_same, long[:50] + "y" + long[51:], long, "s")
    assert message(assert_same, 3.0, 3, "n") == "n: expected an int, got a float (3.0)"
    assert message(assert_same, 1, True, "flag") == "flag: expected a bool, got an int (1)"
    assert ".item()" in message(assert_same, torch.tensor(3), 3, "n")
    assert ".tolist()" in message(assert_same, torch.tensor([1, 2]), [1, 2], "ids")
    assert "torch.tensor(...)" in message(assert_same, [1, 2], torch.tensor([1, 2]), "ids")
    nested = message(assert_same, (torch.zeros(2), torch.ones(3)), (torch.zeros(2), torch.ones(2)), "pair")
    assert nested == "pair[1]: expected shape (2,), got (3,)"


def test_assert_close_tolerates_small_differences_only():
    x = torch.randn(5, 5)
    assert_close(x + 1e-7, x, "x")
    msg = message(assert_close, x + 1e-2, x, "x", atol=1e-4, rtol=0)
    assert msg.startswith("x: first mismatch at index (0, 0)") and "25 of 25 values differ" in msg
    assert "largest difference 0.01" in msg
    assert_close(1, 1.0000001, "a number")
    assert "expected 2.0, got 2.1" in message(assert_close, 2.1, 2.0, "a number")
    assert "expected 0.1, got 0.1000001" in message(assert_same, 0.1000001, 0.1, "digits enough to see the difference")


# ---------------------------------------------------------------------------------------------
# load_lesson: every failing cell is reported against its exercise, the rest still loads

HEADER = "# ---\n# jupyter:\n#   jupytext:\n#     formats: py:percent\n# ---\n"

BROKEN = (
    HEADER
    + '''
# %% tags=["imports"]
import math

# %% tags=["exercise"]
def broken(x):
    """Exercise 9.1: a syntax error."""
    return (x


# %% tags=["exercise"]
def hang():
    """Exercise 9.2: an endless loop while the cell runs."""


while True:
    pass


# %% tags=["exercise"]
def double(x):
    """Exercise 9.3: correct."""
    return 2 * x


# %% tags=["exercise"]
def boom():
    """Exercise 9.4: an exception while the cell runs."""


value = 1 / 0


# %% tags=["exercise"]
def spin():
    """Exercise 9.5: an endless loop when called."""
    while True:
        pass


# %%
raise RuntimeError("a training cell: the grader never runs it")
'''
)


def line_of(text: str, snippet: str) -> int:
    return text[: text.index(snippet)].count("\n") + 1


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_each_broken_exercise_is_reported_and_the_others_load(tmp_path):
    path = write(tmp_path, "09_broken.py", BROKEN)
    start = time.monotonic()
    lesson = load_lesson(path, timeout=0.5)
    assert time.monotonic() - start < 10
    line = line_of(BROKEN, "return (x")
    with pytest.raises(
        GradingError, match=rf"^Exercise 9\.1 did not load: syntax error at line {line} of 09_broken.py"
    ):
        lesson.get("broken")
    with pytest.raises(GradingError, match=r"^Exercise 9\.2 did not load: it kept running for 0.5 s"):
        lesson.get("hang")
    line = line_of(BROKEN, "value = 1 / 0")
    with pytest.raises(
        GradingError, match=rf"^Exercise 9\.4 did not load: it raised ZeroDivisionError at line {line}\b"
    ):
        lesson.get("boom")
    assert lesson.get("double")(21) == 42
    assert lesson.get("math") is math
    with pytest.raises(GradingError, match=r"defines no `triple`.*double"):
        lesson.get("triple")
    spin = lesson.get("spin")
    line = line_of(BROKEN, "        pass\n\n\n# %%\nraise")  # the loop is this line and the one before
    with pytest.raises(
        ExerciseTimeout, match=rf"^Exercise 9\.5: too slow \(it was at line (?:{line - 1}|{line}) of 09_"
    ):
        with time_limit(0.3, "Exercise 9.5: too slow"):
            spin()


def test_a_failing_imports_cell_fails_every_exercise(tmp_path):
    path = write(tmp_path, "09_imports.py", BROKEN.replace("import math", "import not_a_module_xyz"))
    lesson = load_lesson(path, timeout=0.5)
    with pytest.raises(GradingError, match="09_imports.py did not load, its imports cell .*not_a_module_xyz"):
        lesson.get("double")


def test_stub_failures_are_one_line_naming_the_exercise(tmp_path):
    solution = HEADER + (
        '\n# %% tags=["exercise"]\nclass Model:\n    """Exercise 9.1: a class with a stub."""\n\n'
        "    def forward(self, x):\n        ### BEGIN SOLUTION\n        return x\n        ### END SOLUTION\n"
    )
    lesson = load_lesson(write(tmp_path, "09_stub.py", make_stub(solution, "09_stub.py")))
    with pytest.raises(NotImplementedError) as e:
        lesson.get("Model")().forward(1)
    assert describe_failure(e.value) == "not done yet: Model.forward() still raises NotImplementedError (Exercise 9.1)"
    group = Exception("hypothesis found two errors")
    group.exceptions = (ValueError("other"), e.value)  # what an ExceptionGroup has (also on Python 3.10)
    assert describe_failure(group).startswith("not done yet: Model.forward()")


def test_errors_raised_in_the_learners_code_name_the_line(tmp_path):
    src = HEADER + '\n# %% tags=["exercise"]\ndef f(xs):\n    """Exercise 9.1: indexes."""\n    return xs[5]\n'
    path = write(tmp_path, "09_index.py", src)
    with pytest.raises(IndexError) as e:
        load_lesson(path).get("f")([1])
    assert (
        describe_failure(e.value, path)
        == f"raised IndexError: list index out of range (line {line_of(src, 'xs[5]')} of 09_index.py)"
    )
    assert describe_failure(AssertionError("x: expected 1, got 2\nmore")) == "x: expected 1, got 2"


def test_failures_are_classified_by_what_the_learners_code_did(tmp_path):
    src = HEADER + (
        '\n# %% tags=["exercise"]\ndef f(how):\n    """Exercise 9.1: misbehaves."""\n'
        "    if how == 'exit':\n        raise SystemExit(3)\n"
        "    if how == 'interrupt':\n        raise KeyboardInterrupt('stop')\n"
        "    return None\n"
    )
    path = write(tmp_path, "09_odd.py", src)
    f = load_lesson(path).get("f")

    def kind_of(how):
        try:
            try:
                _ = f(how).shape  # what a grader does with the answer
            except KeyboardInterrupt as e:  # what `check`'s child process does with it
                raise LearnerInterrupt(str(e)) from e
        except (Exception, SystemExit) as e:
            return classify_failure(e, path)

    line = line_of(src, "raise SystemExit")
    assert kind_of("exit") == ("exited", f"exited (sys.exit(3) in your code, line {line} of 09_odd.py)")
    line = line_of(src, "raise KeyboardInterrupt")
    assert kind_of("interrupt") == ("raised", f"raised KeyboardInterrupt: stop (line {line} of 09_odd.py)")
    kind, text = kind_of("none")
    assert kind == "error" and text.startswith("raised AttributeError: 'NoneType' object has no attribute 'shape'")
    assert "in the grader, not in 09_odd.py" in text
    assert classify_failure(AssertionError("x: expected 1, got 2")) == ("wrong", "x: expected 1, got 2")
    assert classify_failure(GradingError("Exercise 9.1 did not load")) == ("lesson", "Exercise 9.1 did not load")


def test_a_keyboard_interrupt_while_loading_is_the_lessons_only_in_checks_child(tmp_path, monkeypatch):
    src = HEADER + '\n# %% tags=["exercise"]\ndef f():\n    """Exercise 9.1: interrupts."""\n\n\n'
    src += "raise KeyboardInterrupt\n"
    path = write(tmp_path, "09_ki.py", src)
    with pytest.raises(KeyboardInterrupt):  # a real Ctrl-C stops the grading
        load_lesson(path)
    monkeypatch.setattr(grading, "interrupts_are_the_lessons", True)
    with pytest.raises(GradingError, match=r"^Exercise 9\.1 did not load: it raised KeyboardInterrupt at line"):
        load_lesson(path).get("f")


# ---------------------------------------------------------------------------------------------
# Recording comparisons, for `check` to re-run them in its own process


def roundtrip(value):
    """What `check`'s parent reads back: encode, torch.save, torch.load(weights_only=True), decode."""
    buf = io.BytesIO()
    torch.save(grading.encode_plain(value), buf)
    buf.seek(0)
    return grading.decode_plain(torch.load(buf, weights_only=True))


def test_recorded_values_come_back_as_the_same_types_and_values():
    value = {
        "t": torch.randn(3, 2)[:, 1],
        "b": torch.tensor([1.5], dtype=torch.bfloat16),
        "p": torch.nn.Parameter(torch.ones(2)),
        "a": np.arange(6, dtype=np.int16).reshape(2, 3),
        "n": np.float32(0.25),
        7: [1, 2, 3],
        "mixed": (1, "x", None, True, 2.5, 1 + 2j, b"ab", torch.long, torch.Size([2, 3])),
        "nested": [[{"k": (1.0,)}]],
    }
    back = roundtrip(value)
    assert_same(back, value, "the round trip")
    assert type(back["p"]) is torch.Tensor and type(back["mixed"]) is tuple and type(back[7]) is list
    assert type(back["n"]) is np.float32 and back["a"].dtype == np.int16
    assert roundtrip(list(range(10**5))) == list(range(10**5))  # a long encoded text: fast and compact

    class Mine:
        pass

    assert grading.encode_plain([1, Mine()]) is None  # not plain data: not recorded (and never re-run)

    class Text(str):  # could compare equal to anything
        pass

    assert grading.encode_plain(Text("x")) is None


def test_a_patched_diff_fools_the_process_it_is_in_not_the_verification(monkeypatch):
    with grading.recording() as comparisons:
        assert_same(torch.ones(3), torch.ones(3), "right")
        assert_rounded(torch.ones(2), torch.ones(2), torch.ones(2), "rounded")  # one record, not two
        with pytest.raises(AssertionError):
            assert_close(1.0, 2.0, "a failure the grader expects")
        with monkeypatch.context() as m:
            m.setattr(grading, "_diff", lambda *a, **k: None)  # what a lesson could do
            assert_same(torch.zeros(3), torch.ones(3), "wrong")  # passes: the helper is fooled
    assert [(c["helper"], c["passed"]) for c in comparisons] == [
        ("assert_same", True),
        ("assert_rounded", True),
        ("assert_close", False),
        ("assert_same", True),
    ]
    buf = io.BytesIO()
    torch.save(comparisons, buf)  # as the child sends them
    buf.seek(0)
    checked, problem = grading.verify_comparisons(torch.load(buf, weights_only=True))
    assert checked == 3  # the failed one is not re-run: the grader caught it and the test went on
    assert problem == "wrong: first mismatch at index 0: expected 1.0, got 0.0 (3 of 3 values differ)"
    assert grading.verify_comparisons(comparisons[:2]) == (2, None)
    assert grading.verify_comparisons([]) == (0, None)
    assert assert_same(1, 1, "no recording outside the block") is None and grading._recording is None


def test_which_grader_tests_must_record_a_comparison(tmp_path):
    path = write(
        tmp_path,
        "test_lesson09.py",
        "from babybitnet.course.grading import as_float, assert_same\n\n"
        "def check_it(x):\n    assert_same(x, 1, 'x')\n\n"
        "def through(x):\n    check_it(x)\n\n"
        "def test_direct(lesson):\n    as_float(1.0, 'y')\n\n"
        "def test_through_two_helpers(lesson):\n    through(1)\n\n"
        "def test_plain(lesson):\n    assert 1 == 1\n",
    )
    assert grading.comparing_tests(path) == {"test_direct", "test_through_two_helpers"}


def test_time_limits_nest_and_restore_the_outer_one():
    def busy(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    with time_limit(5, "outer"):
        with time_limit(0.2, "inner"):
            busy(0.05)
        with pytest.raises(ExerciseTimeout, match="^inner"):
            with time_limit(0.2, "inner"):
                busy(2)
        busy(0.05)  # the outer limit is still running, not expired
    with pytest.raises(ExerciseTimeout, match="^outer"):
        with time_limit(0.3, "outer"):
            with time_limit(5, "inner"):
                busy(2)
