"""The README's two tables follow the tree: the package's modules, and the lessons with their exercises.

The module table of "## The package" lists every module under ``babybitnet/`` by its dotted name
relative to the package (``data``, ``kernels.triton_gemv``), each once, and nothing that does not
exist. The lesson table of "## The course" has one row per lesson of ``solutions/``, and its
"you write" column names (in backticks) exactly the names that lesson's exercise cells define.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from babybitnet.course.lessons import exercises_of, lesson_files, lesson_number

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "babybitnet"
_CODE = re.compile(r"`([^`]+)`")


def section(text: str, heading: str) -> str:
    """The text of the ``## heading`` section, up to the next heading of level 2."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if not m:
        raise AssertionError(f"README.md has no section '## {heading}'")
    return m.group(1)


def table(text: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with ``header``, as lists of cells."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    if start is None:
        raise AssertionError(f"no table with the header {header!r}")
    rows = []
    for line in lines[start + 2 :]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def modules_in_tree(package: Path) -> set[str]:
    """Dotted names of the package's modules: every .py file except __init__/__main__ and private ones."""
    return {
        ".".join(p.relative_to(package).with_suffix("").parts)
        for p in package.rglob("*.py")
        if not p.name.startswith("_") and "__pycache__" not in p.parts
    }


def modules_in_readme(readme: str) -> list[str]:
    rows = table(section(readme, "The package"), "| module |")
    return [name for row in rows for name in _CODE.findall(row[0])]


def lessons_in_readme(readme: str) -> dict[int, set[str]]:
    """Lesson number -> the backticked names of its "you write" cell."""
    rows = table(section(readme, "The course"), "| # | lesson | you write |")
    out: dict[int, set[str]] = {}
    for row in rows:
        if len(row) != 3 or not row[0].isdigit():
            raise AssertionError(f"a row of the lesson table is not '| NN | lesson | you write |': {row}")
        if int(row[0]) in out:
            raise AssertionError(f"lesson {row[0]} has two rows in the lesson table")
        out[int(row[0])] = set(_CODE.findall(row[2]))
    return out


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_module_table_lists_every_module_once_and_only_those(readme):
    listed = modules_in_readme(readme)
    twice = sorted({m for m in listed if listed.count(m) > 1})
    assert not twice, f"README.md lists these modules more than once: {twice}"
    tree = modules_in_tree(PACKAGE)
    missing, unknown = sorted(tree - set(listed)), sorted(set(listed) - tree)
    assert not missing, f"modules under babybitnet/ that README.md's module table does not list: {missing}"
    assert not unknown, f"README.md's module table lists modules that do not exist under babybitnet/: {unknown}"


def test_the_lesson_table_names_every_exercise_of_every_lesson(readme):
    listed = lessons_in_readme(readme)
    lessons = {lesson_number(p): p for p in lesson_files(ROOT / "solutions")}
    assert sorted(listed) == sorted(lessons), (
        f"README.md's lesson table has lessons {sorted(listed)}, solutions/ has {sorted(lessons)}"
    )
    for n, path in lessons.items():
        names = {name for defined in exercises_of(path).values() for name in defined}
        assert listed[n] == names, (
            f"lesson {n:02d} in README.md's lesson table writes {sorted(listed[n])}, "
            f"but the exercises of {path.name} define {sorted(names)}"
        )


def test_the_checks_see_a_wrong_table(tmp_path):
    """The parsers find a module that is missing or unknown, and a lesson row that names the wrong exercise."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "_private.py", "sub/__init__.py", "sub/b.py"):
        (tmp_path / "pkg" / name).write_text("")
    assert modules_in_tree(tmp_path / "pkg") == {"a", "sub.b"}
    text = (
        "## The course\n\n| # | lesson | you write |\n|---|---|---|\n| 01 | `01_x`: x | `f`, `G` |\n\n"
        "## The package\n\n| module | what it does |\n|---|---|\n| `a`, `sub.c` | things |\n\n## Next\n"
    )
    assert modules_in_readme(text) == ["a", "sub.c"]
    assert lessons_in_readme(text) == {1: {"f", "G"}}
    with pytest.raises(AssertionError, match="no section"):
        section(text, "Missing")
