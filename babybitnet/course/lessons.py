"""The course machinery: lesson files, learner stubs made from solutions, and `check`.

A lesson is a jupytext *percent* file: plain Python whose ``# %%`` lines start
cells, so Python runs it as a script and Jupyter (with jupytext) opens it as a
notebook. The solution of lesson NN lives in ``solutions/NN_slug.py``; the
learner's copy ``lessons/NN_slug.py`` is generated from it by replacing every
region between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` with a
``raise NotImplementedError(...)`` that names the exercise and the command that
checks it. Keeping one source of truth means the stubs can never drift from
the solutions, and ``make test`` proves it (see docs/authoring.md).

``python -m babybitnet check N`` runs the graders of lesson N
(``tests/exercises/test_lessonNN.py``) on the learner's lesson and prints one
line per exercise, in words.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from babybitnet.files import write_text

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
LINE_LENGTH = 120  # ruff's line length (pyproject.toml): stubs must stay `ruff format`-clean

_CELL_MARKER = re.compile(r"^# %%(?:[ \t]|$)")
_TAGS = re.compile(r"tags=(\[[^\]]*\])")
_EXERCISE_ID = re.compile(r"Exercise (\d+)\.(\d+)")
_LESSON_FILE = re.compile(r"^(\d\d)_\w+\.py$")
_DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+([A-Za-z_]\w*)")
_CLASS = re.compile(r"^(\s*)class\s+([A-Za-z_]\w*)")
_MAGIC = re.compile(r"^\s*#\s?(?:%{1,2}[A-Za-z]|![A-Za-z])")  # jupytext's escaped `%time`, `%%bash`, `!pip`


class CourseError(Exception):
    """A problem with a lesson file or the course layout, said in words (no traceback needed)."""


@dataclass
class Cell:
    """One cell of a percent file: its ``# %%`` line, its body lines, and where it starts."""

    marker: str  # the "# %% ..." line itself
    lines: list[str]  # body lines, without line endings
    start: int  # 1-based line number of the marker line

    @property
    def kind(self) -> str:
        return "markdown" if "[markdown]" in self.marker else ("raw" if "[raw]" in self.marker else "code")

    @property
    def tags(self) -> list[str]:
        m = _TAGS.search(self.marker)
        if not m:
            return []
        try:
            return [str(t) for t in json.loads(m.group(1))]
        except json.JSONDecodeError:
            return []

    @property
    def source(self) -> str:
        return "\n".join(self.lines)

    @property
    def exercise_id(self) -> str | None:
        """``"N.M"`` from the first ``Exercise N.M`` in the cell (its docstring), or None."""
        m = _EXERCISE_ID.search(self.source)
        return f"{int(m.group(1))}.{int(m.group(2))}" if m else None


@dataclass
class LessonFile:
    """A parsed percent file. ``str(lesson_file)`` gives back the exact text it was parsed from."""

    header: list[str]  # lines before the first cell (the jupytext YAML header)
    cells: list[Cell] = field(default_factory=list)

    def __str__(self) -> str:
        out = list(self.header)
        for c in self.cells:
            out.append(c.marker)
            out.extend(c.lines)
        return "\n".join(out)

    def tagged(self, tag: str) -> list[Cell]:
        return [c for c in self.cells if c.kind == "code" and tag in c.tags]


def show_markdown(text: str) -> None:
    """Show ``text`` (a markdown table, say) rendered in a notebook, and as plain text anywhere else.

    Lessons print their result tables with it: in Jupyter and on the course site they read as
    tables; ``python lessons/NN_slug.py`` prints the same markdown source.
    """
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # no IPython: a plain script
        print(text)
        return
    shell = get_ipython()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":  # a Jupyter kernel
        display(Markdown(text))
    else:
        print(text)


def parse_cells(text: str) -> LessonFile:
    """Split a percent file into its header and cells, keeping every line so it can be written back unchanged."""
    lines = text.split("\n")
    lf = LessonFile(header=[])
    for i, line in enumerate(lines):
        if _CELL_MARKER.match(line.rstrip("\r")):
            lf.cells.append(Cell(marker=line, lines=[], start=i + 1))
        elif lf.cells:
            lf.cells[-1].lines.append(line)
        else:
            lf.header.append(line)
    return lf


def defined_names(source: str) -> list[str]:
    """Names a cell defines at its top level: functions, classes and assigned variables.

    Works on broken code too (falls back to a line scan), so a cell with a syntax
    error can still be matched to the names the graders ask for.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        names = re.findall(r"^(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)", source, flags=re.M)
        names += re.findall(r"^([A-Za-z_]\w*)\s*(?::[^=\n]*)?=(?!=)", source, flags=re.M)
        return list(dict.fromkeys(names))
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return list(dict.fromkeys(names))


def lesson_number(path: str | Path) -> int:
    """The NN of ``NN_slug.py``."""
    m = _LESSON_FILE.match(Path(path).name)
    if not m:
        raise CourseError(f"{path}: a lesson file is named NN_slug.py, e.g. 01_data.py")
    return int(m.group(1))


def lesson_files(folder: str | Path) -> list[Path]:
    """The lesson files ``NN_slug.py`` of a folder, in lesson order."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.py") if _LESSON_FILE.match(p.name))


def _enclosing(lines: list[str], i: int, indent: int) -> str | None:
    """``Class.method`` or ``function`` that line ``i`` (indented by ``indent``) sits in."""
    name, class_indent = None, indent
    for line in reversed(lines[:i]):
        if name is None and (m := _DEF.match(line)) and len(m.group(1)) < indent:
            name, class_indent = m.group(2), len(m.group(1))
        elif name is not None and (m := _CLASS.match(line)) and len(m.group(1)) < class_indent:
            return f"{m.group(2)}.{name}"
    return name


def stub_lines(indent: str, exercise: str, where: str | None, lesson: int) -> list[str]:
    """The ``raise NotImplementedError(...)`` that replaces one solution region, wrapped as ruff would."""
    what = f"write {where}()" if where else "write this part"
    msg = f"Exercise {exercise}: {what}; check it with: python -m babybitnet check {lesson}"
    line = f'{indent}raise NotImplementedError("{msg}")'
    if len(line) <= LINE_LENGTH:
        return [line]
    if len(f'{indent}    "{msg}"') <= LINE_LENGTH:
        return [f"{indent}raise NotImplementedError(", f'{indent}    "{msg}"', f"{indent})"]
    head, tail = msg.split("; ", 1)  # still too long: two implicitly joined strings
    return [f"{indent}raise NotImplementedError(", f'{indent}    "{head}; "', f'{indent}    "{tail}"', f"{indent})"]


def make_stub(text: str, name: str = "<lesson>") -> str:
    """The learner's version of a solution lesson: every solution region becomes a stub.

    ``name`` is the file name (``NN_slug.py``), used for the lesson number and in
    error messages. Raises ``CourseError`` for a malformed file: a region that is
    not closed inside its cell, markers outside an exercise cell, an exercise cell
    without ``Exercise N.M`` or without a region, or a duplicated exercise number.
    """
    number = lesson_number(name)
    lf = parse_cells(text)
    seen: dict[str, int] = {}
    for cell in lf.cells:
        has_marker = any(line.strip().startswith(("### BEGIN SOLUTION", "### END SOLUTION")) for line in cell.lines)
        is_exercise = cell.kind == "code" and "exercise" in cell.tags
        if not is_exercise:
            if has_marker:
                raise CourseError(
                    f"{name}, line {cell.start}: solution markers in a cell that is not tagged "
                    '"exercise"; start the cell with: # %% tags=["exercise"]'
                )
            continue
        ex = cell.exercise_id
        if ex is None:
            raise CourseError(
                f"{name}, line {cell.start}: an exercise cell needs a docstring starting with 'Exercise {number}.M:'"
            )
        if int(ex.split(".")[0]) != number:
            raise CourseError(f"{name}, line {cell.start}: exercise {ex} is in lesson {number}; number it {number}.M")
        if ex in seen:
            raise CourseError(f"{name}, line {cell.start}: exercise {ex} is already defined at line {seen[ex]}")
        seen[ex] = cell.start
        cell.lines = _strip_regions(cell, ex, number, name)
    return str(lf)


def _strip_regions(cell: Cell, ex: str, number: int, name: str) -> list[str]:
    out: list[str] = []
    begin: int | None = None  # index in cell.lines of the open BEGIN marker
    n_regions = 0
    for i, line in enumerate(cell.lines):
        s = line.strip()
        lineno = cell.start + 1 + i
        if s.startswith(BEGIN):
            if begin is not None:
                raise CourseError(
                    f"{name}, line {lineno}: {BEGIN} inside the region opened at line "
                    f"{cell.start + 1 + begin}; close that one first with {END}"
                )
            begin = i
        elif s.startswith(END):
            if begin is None:
                raise CourseError(f"{name}, line {lineno}: {END} without a {BEGIN} before it")
            opener = cell.lines[begin]
            indent = opener[: len(opener) - len(opener.lstrip())]
            out.extend(stub_lines(indent, ex, _enclosing(cell.lines, begin, len(indent)), number))
            begin = None
            n_regions += 1
        elif begin is None:
            out.append(line)
    if begin is not None:
        raise CourseError(
            f"{name}, line {cell.start + 1 + begin}: {BEGIN} has no matching {END} "
            f"before the end of its cell (exercise {ex})"
        )
    if n_regions == 0:
        raise CourseError(
            f"{name}, line {cell.start}: exercise {ex} has no {BEGIN} ... {END} region; "
            "put the part the learner writes between them"
        )
    return out


@dataclass
class SyncProblem:
    path: Path
    what: str  # "stale", "missing" or "orphan"

    def __str__(self) -> str:
        shown = _display(self.path)
        return {
            "stale": f"{shown} differs from what its solution generates",
            "missing": f"{shown} is missing",
            "orphan": f"{shown} has no solution in solutions/ (remove it, or add the solution)",
        }[self.what]


def sync_lessons(solutions_dir: str | Path, lessons_dir: str | Path, write: bool = True) -> list[SyncProblem]:
    """Make ``lessons_dir`` match ``solutions_dir``; with ``write=False`` only report what differs.

    Returns the files that were (or would be) rewritten, plus lessons without a
    solution ("orphan"), which are reported but never deleted.
    """
    solutions_dir, lessons_dir = Path(solutions_dir), Path(lessons_dir)
    problems = []
    for src in lesson_files(solutions_dir):
        dst = lessons_dir / src.name
        want = make_stub(src.read_text(encoding="utf-8"), src.name)
        have = dst.read_text(encoding="utf-8") if dst.exists() else None
        if have != want:
            problems.append(SyncProblem(dst, "missing" if have is None else "stale"))
            if write:
                lessons_dir.mkdir(parents=True, exist_ok=True)
                write_text(dst, want)  # atomic: an interrupted `make lessons` never leaves half a lesson
    known = {p.name for p in lesson_files(solutions_dir)}
    problems += [SyncProblem(p, "orphan") for p in lesson_files(lessons_dir) if p.name not in known]
    return problems


def repo_root(need: str = "tests/exercises") -> Path:
    """The course repository this package was loaded from (lessons and graders live there, not in the package)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / need).exists():
        raise CourseError(
            f"{need}/ not found next to the babybitnet package (looked in {root}). The lessons and their "
            "graders come with the course repository: clone it, run `make install` there (or "
            "`pip install -e '.[dev]'`), and run this command from the clone."
        )
    return root


def find_lesson(number: int, lessons_dir: str | Path) -> Path:
    """``lessons_dir/NN_*.py`` for lesson ``number``; a clear error if there is none or several."""
    found = [p for p in lesson_files(lessons_dir) if lesson_number(p) == number]
    if len(found) == 1:
        return found[0]
    if not found:
        have = ", ".join(p.name for p in lesson_files(lessons_dir)) or "no lessons"
        raise CourseError(f"no lesson {number:02d} in {lessons_dir} (expected a file {number:02d}_*.py; found {have})")
    raise CourseError(f"several files for lesson {number:02d} in {lessons_dir}: {', '.join(p.name for p in found)}")


def resolve_lessons_dir(lessons_dir: str | Path | None, root: Path) -> Path:
    """``--lessons-dir`` as given (or ``$BABYBITNET_LESSONS_DIR``): relative to the current directory if it
    exists there, else to the repo; ``lessons/`` when neither is set."""
    lessons_dir = lessons_dir or os.environ.get("BABYBITNET_LESSONS_DIR")
    if not lessons_dir:
        return root / "lessons"
    p = Path(lessons_dir)
    if p.is_absolute() or p.is_dir():
        return p.resolve()
    if (root / p).is_dir():
        return root / p
    raise CourseError(f"lessons folder not found: {lessons_dir}")


def exercises_of(path: Path) -> dict[str, list[str]]:
    """Exercise id -> names its cell defines, in lesson order."""
    lf = parse_cells(path.read_text(encoding="utf-8"))
    return {c.exercise_id: defined_names(c.source) for c in lf.tagged("exercise") if c.exercise_id}


def _display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)
