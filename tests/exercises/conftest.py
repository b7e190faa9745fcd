"""The graders' plumbing: which lesson to grade, time limits, and failures said in one line.

- The ``lesson`` fixture loads the lesson named by the test module's
  ``lessonNN`` marker from ``--lessons-dir`` / ``$BABYBITNET_LESSONS_DIR`` /
  ``lessons/``, once per session (loading runs only its imports and exercise cells).
- Each grader test runs under ``BABYBITNET_CALL_TIMEOUT`` seconds, so an endless
  loop in a learner's function fails that exercise instead of hanging the run.
  (A SIGALRM, which the learner's code can ignore: ``python -m babybitnet check``
  turns it off and kills the exercise's child process instead, see
  babybitnet/course/check.py, which also re-checks every comparison recorded here.)
- A stub that still raises NotImplementedError, a cell that did not load, or a
  timeout is reported as one line naming the exercise, not a wall of traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from babybitnet.course import grading, lessons

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
_loaded: dict[tuple[Path, int], grading.Lesson] = {}


def lessons_dir(config: pytest.Config) -> Path:
    chosen = config.getoption("lessons_dir") or os.environ.get(grading.LESSONS_DIR_ENV)
    return lessons.resolve_lessons_dir(chosen, ROOT)


def lesson_number(node: pytest.Item | pytest.Collector) -> int | None:
    for mark in node.iter_markers():
        if m := re.fullmatch(r"lesson(\d\d)", mark.name):
            return int(m.group(1))
    return None


def exercise_id(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("exercise")
    return str(mark.args[0]) if mark and mark.args else None


@pytest.fixture(scope="module")
def lesson(request: pytest.FixtureRequest) -> grading.Lesson:
    """The learner's lesson for this test module (its ``pytestmark = pytest.mark.lessonNN``)."""
    n = lesson_number(request.node)
    if n is None:
        raise grading.GradingError(f"{request.node.name} needs a lesson marker: pytestmark = pytest.mark.lesson01")
    key = (lessons_dir(request.config), n)
    if key not in _loaded:
        _loaded[key] = grading.load_lesson(n, key[0])
    return _loaded[key]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.user_properties += [("exercise", exercise_id(item)), ("lesson", lesson_number(item))]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    label = f"Exercise {exercise_id(item)}" if exercise_id(item) else item.name
    limit = grading.call_timeout()
    with grading.time_limit(limit, f"{label}: did not finish in {limit:g} s, an endless loop?"):
        return (yield)


def _plain(exc: BaseException) -> bool:
    """Failures whose one-line message says it all (a traceback would only confuse)."""
    leaves = grading.exception_leaves(exc)
    return any(grading.stub_message(e) for e in leaves) or isinstance(
        leaves[0], (grading.GradingError, grading.ExerciseTimeout, lessons.CourseError)
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    rep = yield
    if rep.failed and call.excinfo is not None:
        les = getattr(item, "funcargs", {}).get("lesson")
        msg = grading.describe_failure(call.excinfo.value, les.path if isinstance(les, grading.Lesson) else None)
        rep.user_properties = [*rep.user_properties, ("grading_message", msg)]
        if _plain(call.excinfo.value):
            rep.longrepr = msg
    return rep
