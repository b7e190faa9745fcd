"""Shared test set-up: the grading options and markers, and one hypothesis profile for all tests.

The graders in tests/exercises/ grade a learner's lessons (``lessons/`` by
default), whose exercises are stubs until the learner writes them. So a plain
``pytest`` (``make test``) leaves that folder out; it runs when asked for:
``pytest -m lesson03``, ``pytest tests/exercises/...``, ``--lessons-dir DIR``
or ``$BABYBITNET_LESSONS_DIR`` (the options are defined in ../conftest.py).
``make test`` proves the graders another way: tests/test_course.py grades
``solutions/`` (all must pass) and ``lessons/`` (all must fail) in subprocesses.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from babybitnet.course.check import ResultCollector
from babybitnet.course.grading import LESSONS_DIR_ENV

EXERCISES = Path(__file__).resolve().parent / "exercises"
N_LESSONS = 16

# No deadline and no too-slow check: a first torch call, or a busy shared CPU, is slow. Derandomized:
# the same examples every run, so `check` gives the same verdict twice and CI does not flake.
settings.register_profile(
    "babybitnet", deadline=None, derandomize=True, print_blob=False, suppress_health_check=[HealthCheck.too_slow]
)
# `check` grades each exercise under a time budget: it reports the first failing example it finds rather
# than spend the budget shrinking it to a smaller one (babybitnet/course/check.py sets this profile).
settings.register_profile(
    "babybitnet-check",
    settings.get_profile("babybitnet"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "babybitnet"))


def pytest_configure(config: pytest.Config) -> None:
    for n in range(1, N_LESSONS + 1):
        config.addinivalue_line("markers", f"lesson{n:02d}: graders of lesson {n} (pytest -m lesson{n:02d})")
    config.addinivalue_line("markers", 'exercise(id): the exercise a grader checks, e.g. exercise("1.2")')
    if path := config.getoption("grading_report"):
        config.pluginmanager.register(ResultCollector(path), "babybitnet-grading-report")


def grading_requested(config: pytest.Config) -> bool:
    """Did this run ask for the graders (a path in tests/exercises, -m lessonNN, or a lessons folder)?"""
    if config.getoption("lessons_dir") or os.environ.get(LESSONS_DIR_ENV):
        return True
    if "lesson" in (config.getoption("markexpr") or ""):
        return True
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        for arg in config.args:
            p = Path(arg.split("::")[0])
            p = (p if p.is_absolute() else config.invocation_params.dir / p).resolve()
            if p == EXERCISES or EXERCISES in p.parents:
                return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.resolve() == EXERCISES and not grading_requested(config):
        return True
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    if grading_requested(config):
        return None
    return "tests/exercises not collected (grade a lesson with: python -m babybitnet check N, or pytest -m lessonNN)"
