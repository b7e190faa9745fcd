"""The course machinery: solutions -> learner stubs, lessons in sync, and graders that grade.

For every lesson found in solutions/ (discovered, so new lessons are covered
as soon as they exist) this proves that
- lessons/ is what the generator makes from solutions/;
- the lesson follows docs/authoring.md and opens in Jupyter with its cell tags;
- every grader passes on the solution and FAILS on the untouched stubs (a grader
  that passes on a stub checks nothing); every exercise has a grader;
- the solution runs top to bottom as a script within 60 s of CPU time (or did so in the site build,
  which executes it in a Jupyter kernel and records the kernel's CPU time: then it is not run again).
  CPU time, not wall time: another program on the same cores slows a lesson down but does not make
  it do more work, so the budget holds on a busy machine.
The graders run in two pytest subprocesses (one per lessons folder), whose
per-test results come back as JSON through ``--grading-report``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from babybitnet.course import lessons, timing
from babybitnet.course.lessons import CourseError, make_stub, parse_cells, sync_lessons

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = lessons.lesson_files(ROOT / "solutions")
LESSONS = lessons.lesson_files(ROOT / "lessons")
IDS = [p.stem for p in SOLUTIONS]
EXECUTED = ROOT / ".cache" / "executed-lessons.json"  # written by the site build: docs/hooks/course_site.py

HEADER = """# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---
"""


def env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this checkout first on the path, no lessons-dir override."""
    e = {k: v for k, v in os.environ.items() if k != "BABYBITNET_LESSONS_DIR"}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [e.get("PYTHONPATH")])])
    return {**e, **extra}


# ---------------------------------------------------------------------------------------------
# The generator


def test_a_region_becomes_a_stub_at_its_indentation_and_the_rest_is_kept():
    src = HEADER + (
        "\n# %% [markdown]\n# Some *math*: $x^2$\n\n"
        '# %% tags=["exercise"]\n'
        "def square(x):\n"
        '    """Exercise 3.1: x squared."""\n'
        "    # a hint that stays\n"
        "    ### BEGIN SOLUTION\n"
        "    y = x * x\n"
        "    return y\n"
        "    ### END SOLUTION\n"
        "\n\n# %%\nprint(square(3))\n"
    )
    out = make_stub(src, "03_demo.py")
    assert out == src.replace(
        "    ### BEGIN SOLUTION\n    y = x * x\n    return y\n    ### END SOLUTION\n",
        '    raise NotImplementedError("Exercise 3.1: write square(); check it with: python -m babybitnet check 3")\n',
    )
    with pytest.raises(NotImplementedError, match=r"^Exercise 3\.1: write square\(\)"):
        exec(out, {})  # valid Python; the cell that uses the exercise stops with its message


def test_several_regions_in_one_class_each_name_their_method():
    src = HEADER + (
        '\n# %% tags=["exercise"]\n'
        "class Model:\n"
        '    """Exercise 12.3: a model."""\n\n'
        "    def __init__(self, n):\n"
        "        ### BEGIN SOLUTION\n"
        "        self.n = n\n"
        "        ### END SOLUTION\n\n"
        "    def forward(self, x):\n"
        "        if x is None:\n"
        "            ### BEGIN SOLUTION\n"
        "            return 0\n"
        "            ### END SOLUTION\n"
        "        ### BEGIN SOLUTION\n"
        "        return x * self.n\n"
        "        ### END SOLUTION\n"
    )
    out = make_stub(src, "12_model.py")
    assert "### " not in out and "self.n = n" not in out
    msg = "Exercise 12.3: write Model.{}(); check it with: python -m babybitnet check 12"
    assert f'        raise NotImplementedError("{msg.format("__init__")}")' in out.splitlines()
    assert f'                "{msg.format("forward")}"' in out.splitlines()  # wrapped: the line is long
    assert out.count("raise NotImplementedError") == 3
    ast.parse(out)


def test_a_long_stub_line_is_wrapped_as_ruff_formats_it():
    name = "a_rather_long_function_name_that_makes_the_line_long"
    src = HEADER + (
        f'\n# %% tags=["exercise"]\nclass Outer:\n    """Exercise 4.2: long."""\n\n    def {name}(self):\n'
        "        ### BEGIN SOLUTION\n        return 1\n        ### END SOLUTION\n"
    )
    out = make_stub(src, "04_long.py")
    assert max(len(line) for line in out.splitlines()) <= lessons.LINE_LENGTH
    assert '        raise NotImplementedError(\n            "Exercise 4.2: write Outer.' in out
    assert '"check it with: python -m babybitnet check 4"' in out  # two strings: one is too long
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--diff", "--stdin-filename", "x.py", "-"],
        input=out,
        capture_output=True,
        text=True,
    )
    if "No module named ruff" in ruff.stderr:
        pytest.skip("ruff is not installed")
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr


@pytest.mark.parametrize(
    ("cell", "error"),
    [
        ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", r"line 17: ### BEGIN SOLUTION has no matching ### END"),
        ("def f():\n    return 1\n    ### END SOLUTION\n", r"line 18: ### END SOLUTION without a ### BEGIN"),
        (
            "def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n",
            r"line 18: ### BEGIN SOLUTION inside the region",
        ),
        ("def f():\n    return 1\n", r"exercise 2\.1 has no ### BEGIN SOLUTION \.\.\. ### END SOLUTION region"),
    ],
)
def test_malformed_regions_are_clear_errors(cell, error):
    src = HEADER + f'\n# %% tags=["exercise"]\n"""Exercise 2.1: demo."""\n{cell}'
    with pytest.raises(CourseError, match=error):
        make_stub(src, "02_demo.py")


def test_exercise_cells_must_be_numbered_once_in_their_lesson():
    region = "    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION\n"
    cell = '# %% tags=["exercise"]\ndef f():\n    """{}"""\n' + region
    with pytest.raises(CourseError, match="needs a docstring starting with 'Exercise 2.M:'"):
        make_stub(HEADER + cell.format("no number"), "02_x.py")
    with pytest.raises(CourseError, match="exercise 3.1 is in lesson 2"):
        make_stub(HEADER + cell.format("Exercise 3.1: x"), "02_x.py")
    with pytest.raises(CourseError, match="exercise 2.1 is already defined at line 13"):
        make_stub(HEADER + cell.format("Exercise 2.1: x") + cell.format("Exercise 2.1: y"), "02_x.py")
    with pytest.raises(CourseError, match='not tagged "exercise"'):
        make_stub(HEADER + "# %%\ndef f():\n" + region, "02_x.py")


def test_parse_cells_round_trips_and_reads_tags():
    src = HEADER + '\n# %% [markdown] tags=["intro"]\n# Hi\n\n# %% tags=["imports", "x"]\nimport os\n# %%\n1\n'
    lf = parse_cells(src)
    assert str(lf) == src
    assert [(c.kind, c.tags, c.start) for c in lf.cells] == [
        ("markdown", ["intro"], 14),
        ("code", ["imports", "x"], 17),
        ("code", [], 19),
    ]
    assert lessons.defined_names("def f(:\n    pass\nclass K:\n    pass\nX = 1\n") == ["f", "K", "X"]


def test_sync_writes_and_check_mode_reports_stale_missing_and_orphan_lessons(tmp_path):
    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    sol.mkdir()
    les.mkdir()
    body = '\n# %% tags=["exercise"]\ndef f():\n    """Exercise 1.1: f."""\n    ### BEGIN SOLUTION\n    return 1\n'
    (sol / "01_a.py").write_text(HEADER + body + "    ### END SOLUTION\n")
    (sol / "02_b.py").write_text(HEADER + body.replace("1.1", "2.1") + "    ### END SOLUTION\n")
    (les / "03_c.py").write_text(HEADER)
    assert {(p.path.name, p.what) for p in sync_lessons(sol, les, write=False)} == {
        ("01_a.py", "missing"),
        ("02_b.py", "missing"),
        ("03_c.py", "orphan"),
    }
    assert not (les / "01_a.py").exists()  # check mode changes nothing
    sync_lessons(sol, les)
    assert [p.what for p in sync_lessons(sol, les, write=False)] == ["orphan"]
    (les / "01_a.py").write_text((les / "01_a.py").read_text() + "# edited by hand\n")
    assert [(p.path.name, p.what) for p in sync_lessons(sol, les, write=False)][0] == ("01_a.py", "stale")


def test_lessons_are_in_sync_with_solutions():
    problems = sync_lessons(ROOT / "solutions", ROOT / "lessons", write=False)
    assert not problems, "\n".join(map(str, problems)) + "\nrun: make lessons"


def test_lessons_check_command_exit_code():
    r = subprocess.run(
        [sys.executable, "-m", "babybitnet", "lessons", "--check"], cwd=ROOT, env=env(), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# Each lesson follows the contract (docs/authoring.md)


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_lesson_follows_the_authoring_contract(path):
    text = path.read_text()
    lf = parse_cells(text)
    n = lessons.lesson_number(path)
    assert "format_name: percent" in "\n".join(lf.header), f"{path.name}: start with the jupytext header"
    magics = [
        f"line {c.start + 1 + i}: {line.strip()}"
        for c in lf.cells
        if c.kind == "code"
        for i, line in enumerate(c.lines)
        if lessons._MAGIC.match(line)
    ]
    assert not magics, f"{path.name} uses IPython magics, which do not run as a script: {magics}"
    exercises = lf.tagged("exercise")
    if not exercises:
        return
    assert lf.tagged("imports"), f'{path.name}: put the imports the exercises need in a cell tagged ["imports"]'
    for cell in exercises:
        tree = ast.parse(cell.source)
        defs = [d for d in tree.body if isinstance(d, (ast.FunctionDef, ast.ClassDef))]
        assert defs, f"{path.name}, line {cell.start}: an exercise cell defines a function or class"
        doc = ast.get_docstring(defs[0]) or ""
        assert doc.startswith(f"Exercise {cell.exercise_id}:"), (
            f"{path.name}, line {cell.start}: the docstring of {defs[0].name} should start with "
            f"'Exercise {cell.exercise_id}:'"
        )
    last = [c for c in lf.cells if c.source.strip()][-1]
    assert f"python -m babybitnet check {n}" in last.source, (
        f"{path.name}: the last cell should say how to check the exercises: python -m babybitnet check {n}"
    )


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_converts_to_a_notebook_that_keeps_its_cell_tags(path, tmp_path):
    ipynb = tmp_path / f"{path.stem}.ipynb"
    r = subprocess.run(
        [sys.executable, "-m", "jupytext", "--to", "ipynb", "--output", str(ipynb), str(path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    nb = json.loads(ipynb.read_text())
    cells = parse_cells(path.read_text()).cells
    assert [c["cell_type"] for c in nb["cells"]] == [c.kind for c in cells]
    assert [c["metadata"].get("tags", []) for c in nb["cells"]] == [c.tags for c in cells]


def test_jupyter_opens_a_lesson_as_a_notebook():
    """What JupyterLab does on "Open With > Notebook": jupytext's contents manager reads the .py file."""
    pytest.importorskip("jupyter_server")
    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class

    if not LESSONS:
        pytest.skip("no lessons yet")
    path = LESSONS[0]
    manager = build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(ROOT))
    model = manager.get(f"lessons/{path.name}", type="notebook")
    assert model["type"] == "notebook"
    tags = [c["metadata"].get("tags", []) for c in model["content"]["cells"]]
    assert tags == [c.tags for c in parse_cells(path.read_text()).cells]


# ---------------------------------------------------------------------------------------------
# The graders pass on solutions/ and fail on the stubs in lessons/


@pytest.fixture(scope="session")
def graded(tmp_path_factory) -> dict[str, dict]:
    """Results of every grader in tests/exercises on solutions/ and on lessons/, one subprocess each."""
    out = {}
    for folder in ("solutions", "lessons"):
        report = tmp_path_factory.mktemp("grading") / f"{folder}.json"
        cmd = [sys.executable, "-m", "pytest", "tests/exercises", "--lessons-dir", folder, "--grading-report"]
        cmd += [str(report), "-p", "no:cacheprovider", "-q", "--no-header"]
        r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=1200)
        assert report.exists(), f"pytest on {folder}/ wrote no report:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        data = json.loads(report.read_text())
        assert not data["collect_errors"], "graders did not import:\n" + "\n".join(data["collect_errors"])
        out[folder] = data
    return out


def results_for(graded: dict, folder: str, n: int) -> list[dict]:
    return [r for r in graded[folder]["results"] if r["lesson"] == n]


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_every_exercise_has_graders_that_pass_on_the_solution(graded, path):
    n = lessons.lesson_number(path)
    exercises = lessons.exercises_of(path)
    results = results_for(graded, "solutions", n)
    if not exercises:
        assert not results, f"lesson {n} has graders but no exercise cells"
        return
    assert results, (
        f"{path.name} has exercises {sorted(exercises)} but no graders: add tests/exercises/test_lesson{n:02d}.py"
    )
    failing = [f"{r['nodeid']}: {r['message']}" for r in results if r["outcome"] != "passed"]
    assert not failing, "graders that fail on the solution:\n" + "\n".join(failing)
    graded_ids = {r["exercise"] for r in results}
    assert not set(exercises) - graded_ids, f"exercises without a grader: {sorted(set(exercises) - graded_ids)}"
    unknown = [r["nodeid"] for r in results if r["exercise"] not in exercises]
    assert not unknown, f'graders whose @pytest.mark.exercise("N.M") names no exercise of {path.name}: {unknown}'


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_every_grader_fails_on_the_untouched_stubs(graded, path):
    n = lessons.lesson_number(path)
    results = results_for(graded, "lessons", n)
    passing = not_failing(results)
    assert not passing, (
        f"these graders do not fail on the stubs of lessons/{path.name}, so they cannot tell a learner's "
        f"answer from no answer:\n" + "\n".join(passing)
    )


def not_failing(results: list[dict]) -> list[str]:
    return [r["nodeid"] for r in results if r["outcome"] not in ("failed", "error")]


def test_the_stub_proof_catches_a_grader_that_checks_nothing(tmp_path):
    """A mini course in tmp_path: one grader calls the exercise, one never does. Only the first fails on the stub."""
    for rel in ("conftest.py", "tests/conftest.py", "tests/exercises/conftest.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    (tmp_path / "tests/exercises/test_lesson09.py").write_text(
        "import pytest\n\npytestmark = pytest.mark.lesson09\n\n\n"
        '@pytest.mark.exercise("9.1")\ndef test_calls_it(lesson):\n    assert lesson.get("f")(2) == 4\n\n\n'
        '@pytest.mark.exercise("9.1")\ndef test_checks_nothing(lesson):\n    assert callable(lesson.get("f"))\n'
    )
    solution = HEADER + (
        '\n# %% tags=["exercise"]\ndef f(x):\n    """Exercise 9.1: square."""\n'
        "    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION\n"
    )
    (tmp_path / "lessons").mkdir()
    (tmp_path / "lessons" / "09_demo.py").write_text(make_stub(solution, "09_demo.py"))
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pytest", "tests/exercises", "--lessons-dir", "lessons", "--grading-report"]
    cmd += [str(report), "-p", "no:cacheprovider", "-q"]
    subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    results = {r["nodeid"].split("::")[-1]: r for r in json.loads(report.read_text())["results"]}
    assert results["test_calls_it"]["outcome"] == "failed"
    assert results["test_calls_it"]["message"] == "not done yet: f() still raises NotImplementedError (Exercise 9.1)"
    assert results["test_calls_it"]["exercise"] == "9.1" and results["test_calls_it"]["lesson"] == 9
    assert not_failing(list(results.values())) == ["tests/exercises/test_lesson09.py::test_checks_nothing"]


def test_every_grader_file_belongs_to_a_lesson(graded):
    known = {lessons.lesson_number(p) for p in SOLUTIONS}
    orphans = sorted({r["nodeid"].split("::")[0] for r in graded["solutions"]["results"] if r["lesson"] not in known})
    assert not orphans, f"graders without a lesson in solutions/ (or without a lessonNN marker): {orphans}"


# ---------------------------------------------------------------------------------------------
# The solutions run top to bottom; `check` says what is wrong, in words


def run_by_the_site_build(path: Path) -> float | None:
    """CPU seconds the site build's kernel took to execute this very file (same content hash), or None.

    `make test` builds the site first (`make docs`), and mkdocs-jupyter executes every lesson in
    the nav top to bottom in a Jupyter kernel, failing on any error; docs/hooks/course_site.py
    records each one it ran in .cache/executed-lessons.json. A lesson is not executed twice.
    """
    try:
        record = json.loads(EXECUTED.read_text()).get(path.name)
    except (OSError, ValueError):
        return None
    if record and record.get("sha256") == hashlib.sha256(path.read_bytes()).hexdigest():
        cpu = record.get("cpu_seconds")  # absent in a record of an older build: then run it here
        return None if cpu is None else float(cpu)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_solution_lesson_runs_as_a_script(path):
    limit = timing.CPU_LIMIT_S
    cpu = run_by_the_site_build(path)
    if cpu is not None and cpu <= limit:  # ran without error in the site build, this content: not again
        return
    # Not run by the site build, or over the budget there. CPU seconds are not quite proof against a busy
    # machine (two vCPUs that share one physical core each do less per second when both are busy), so a
    # lesson over its budget in the build is timed once more on its own before the test says so.
    site = "" if cpu is None else f" (and {cpu:.0f} s in the site build)"
    run = timing.run_lesson(path, cpu_limit=limit, env=env())
    assert run["error"] is None, f"{path.name}: {run['error']}:\n{run['output_tail']}"
    assert run["cpu_s"] <= limit, (
        f"{path.name} used {run['cpu_s']:.0f} s of CPU ({run['wall_s']:.0f} s wall){site}; the budget is {limit:.0f} s "
        "(python -m babybitnet.course.timing times every lesson)"
    )


def test_lesson_times_counts_cpu_not_waiting(tmp_path):
    """A lesson that sleeps costs wall time, not CPU; one that computes costs CPU; one that fails says so."""
    folder = tmp_path / "solutions"
    folder.mkdir()
    (folder / "01_sleeps.py").write_text("import time\ntime.sleep(1.5)\n")
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass\n"
    (folder / "02_computes.py").write_text(busy)
    (folder / "03_fails.py").write_text("raise SystemExit(3)\n")
    rows = {r["lesson"]: r for r in timing.lesson_times(folder, cpu_limit=30)}
    assert rows["01_sleeps"]["wall_s"] >= 1.5 and rows["01_sleeps"]["cpu_s"] < 1.0, rows["01_sleeps"]
    assert rows["01_sleeps"]["ok"]
    assert rows["02_computes"]["cpu_s"] >= 1.0 and rows["02_computes"]["ok"], rows["02_computes"]
    assert rows["03_fails"]["error"] == "exited with status 3" and not rows["03_fails"]["ok"]
    over = timing.lesson_times(folder, only=[2], cpu_limit=0.5)
    assert [r["lesson"] for r in over] == ["02_computes"] and not over[0]["ok"]  # over its budget: not ok


def run_check(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "babybitnet", "check", *args],
        cwd=ROOT,
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def exercise_lines(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line.startswith("  ")}


needs_lesson_01 = pytest.mark.skipif(not (ROOT / "solutions" / "01_data.py").exists(), reason="lesson 01 not there")


@needs_lesson_01
def test_check_on_the_stubs_says_each_exercise_is_not_done():
    r = run_check("1")
    assert r.returncode == 1, r.stdout + r.stderr
    exercises = lessons.exercises_of(ROOT / "lessons" / "01_data.py")
    lines = exercise_lines(r.stdout)
    assert set(lines) == set(exercises)
    for line in lines.values():
        assert "not done yet" in line and "NotImplementedError" in line, line
    assert f"score: 0/{len(exercises)} exercises pass" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


@needs_lesson_01
def test_check_on_the_solutions_passes():
    r = run_check("1", "--lessons-dir", "solutions")
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(lessons.exercises_of(ROOT / "solutions" / "01_data.py"))
    assert f"score: {n}/{n} exercises pass" in r.stdout
    assert all(line.endswith("passed") for line in exercise_lines(r.stdout).values()), r.stdout


@needs_lesson_01
def test_check_reports_broken_exercises_and_grades_the_others(tmp_path):
    """A syntax error, an endless loop while defining, an endless loop when called: each is one line."""
    lf = parse_cells((ROOT / "solutions" / "01_data.py").read_text())
    cells = lf.tagged("exercise")
    assert len(cells) >= 4
    cells[0].lines.append("oops = (")
    cells[1].lines += ["while True:", "    pass"]
    i = next(i for i, line in enumerate(cells[2].lines) if "### BEGIN SOLUTION" in line)
    indent = cells[2].lines[i][: len(cells[2].lines[i]) - len(cells[2].lines[i].lstrip())]
    cells[2].lines[i + 1 : i + 1] = [f"{indent}while True:", f"{indent}    pass"]
    (tmp_path / "01_data.py").write_text(str(lf))

    r = run_check("1", "--lessons-dir", str(tmp_path), BABYBITNET_LOAD_TIMEOUT="1", BABYBITNET_CHECK_TIMEOUT="10")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = exercise_lines(r.stdout)
    ids = [c.exercise_id for c in cells]
    assert "did not load: syntax error at line" in lines[ids[0]], r.stdout
    assert "did not load: it kept running for 1 s" in lines[ids[1]], r.stdout
    assert "did not finish in 10 s (an endless loop? it was at line" in lines[ids[2]], r.stdout
    assert all(lines[ex].endswith("passed") for ex in ids[3:]), r.stdout


def test_check_says_clearly_when_there_is_no_such_lesson():
    r = run_check("99")
    assert r.returncode == 2 and "no lesson 99" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_repo_root_error_says_what_to_do():
    with pytest.raises(CourseError, match="clone"):
        lessons.repo_root("no/such/folder")


def test_plain_pytest_leaves_the_graders_out_unless_asked():
    def collected(*args: str) -> str:
        cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args]
        return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True).stdout

    assert "tests/exercises" not in collected()  # plain `pytest`, as `make test` runs it
    if (ROOT / "tests" / "exercises" / "test_lesson01.py").exists():
        assert "tests/exercises/test_lesson01.py" in collected("-m", "lesson01")
        assert "tests/exercises/test_lesson01.py" in collected("--lessons-dir", "solutions", "-m", "lesson01")


def test_show_markdown_prints_outside_a_notebook(capsys, monkeypatch):
    lessons.show_markdown("| a | b |\n|---|---|\n| 1 | 2 |")
    assert capsys.readouterr().out == "| a | b |\n|---|---|\n| 1 | 2 |\n"
    shown = []

    class ZMQInteractiveShell:  # what a Jupyter kernel's get_ipython() returns
        pass

    ipython = pytest.importorskip("IPython")
    monkeypatch.setattr(ipython, "get_ipython", lambda: ZMQInteractiveShell())
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    lessons.show_markdown("| x |")
    assert capsys.readouterr().out == "" and [type(o).__name__ for o in shown] == ["Markdown"]
