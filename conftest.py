"""Command-line options of the test suite, registered here at the repository root.

pytest reads options from the conftest.py files it finds before it parses the
command line; in ``pytest --lessons-dir solutions -m lesson03`` it would take
``solutions`` for a test path and never reach tests/conftest.py. A conftest at
the root is always found. The rest of the set-up lives in tests/conftest.py.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("babybitnet", "babybitnet grading")
    group.addoption(
        "--lessons-dir",
        default=None,
        help="folder of the lessons the graders grade (default: lessons/, or $BABYBITNET_LESSONS_DIR)",
    )
    group.addoption("--grading-report", default=None, metavar="FILE", help="write each grader's result as JSON")
