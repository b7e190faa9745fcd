"""Command-line options of the test suite, registered here at the repository root.

pytest reads options from the conftest.py files it finds before it parses the
command line; in ``pytest --lessons-dir solutions -m lesson03`` it would take
``solutions`` for a test path and never reach tests/conftest.py. A conftest at
the root is always found, first: so it also sets ``TRITON_INTERPRET``. The rest of the set-up lives in
tests/conftest.py.
"""

from __future__ import annotations

import os

import pytest
import torch

# The one place the tests choose Triton's interpreter: without a GPU, the kernels run on CPU tensors in it.
# It must be set before triton.jit decorates any kernel, i.e. before anything imports babybitnet.kernels.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("babybitnet", "babybitnet grading")
    group.addoption(
        "--lessons-dir",
        default=None,
        help="folder of the lessons the graders grade (default: lessons/, or $BABYBITNET_LESSONS_DIR)",
    )
    group.addoption("--grading-report", default=None, metavar="FILE", help="write each grader's result as JSON")
