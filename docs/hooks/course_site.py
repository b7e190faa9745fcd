"""mkdocs hook: the course's lessons and landing page on the website.

- Lessons: every ``lessons/NN_slug.py`` entry in the ``nav`` of mkdocs.yml is rendered from
  ``solutions/NN_slug.py`` (complete, so no exercise stub raises). mkdocs-jupyter executes it
  (once per content change: its cache is .cache/mkdocs-jupyter) and renders its outputs.
  Only files named in the nav are built, so a half-written lesson in solutions/ stays off the site.
- Each exercise cell gets a visible box: "Exercise N.M: write f()" and the command that checks it; the
  cell itself, the solution, is folded in a ``<details>`` block below it, shown only when clicked.
- Each lesson page links first to the learner's version (lessons/, with stubs), and in small print at the
  end of that box to the solution shown on the page.
- Nothing of the machine that built the site reaches a page: the notebooks run with ``TQDM_DISABLE=1``
  (tqdm's own switch: no progress bars), and output written to stderr (warnings, progress bars, paths of
  the build machine's packages) is left out of the page; the build log names each one it leaves out.
- The landing page (docs/index.md) is README.md with its course first: the introduction, "## The course"
  (what you build, the lessons, how to begin), then the other sections (results and all) in README order;
  its paths are made relative to docs/.
- MathJax and mermaid.js from a CDN, which nbconvert's template adds to every notebook, are removed: KaTeX,
  vendored in docs/assets/katex, typesets the math of every page (docs/assets/math.js).
- The build records which lessons it executed, with their content hash, wall seconds and CPU seconds
  (the kernel process's user + system time: load on the machine does not change it), in
  .cache/executed-lessons.json; tests/test_course.py then does not execute them a second time.
"""

from __future__ import annotations

import ast
import hashlib
import html
import json
import logging
import os
import re
import resource
import shutil
import sys
import time
from pathlib import Path

import mkdocs.exceptions
import mkdocs.plugins
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
EXECUTED = CACHE / "executed-lessons.json"
BUILD_STAMP = CACHE / "site-build.json"
STAGING = CACHE / "site-lessons"
LESSON_ENTRY = re.compile(r"^lessons/(\d\d)_[A-Za-z0-9_]+\.py$")
_MATHJAX = re.compile(r"\s*<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.DOTALL)
_MERMAID = re.compile(r'<script type="module">(?:(?!</script>).)*?jp-Mermaid.*?</script>', re.DOTALL)
# Jupyter widgets (tqdm's notebook progress bars): their outputs, their saved state, and the loader that would
# fetch a renderer from a CDN. The site shows no progress bars.
_WIDGET_OUTPUT = re.compile(
    r'<div class="jp-OutputArea-child">\s*<div class="jp-OutputPrompt jp-OutputArea-prompt"></div>\s*'
    r'<div class="jupyter-widgets jp-OutputArea-output"[^>]*>.*?</script>\s*</div>\s*</div>',
    re.DOTALL,
)
_WIDGET_STATE = re.compile(r'<script type="application/vnd\.jupyter\.widget-state\+json">.*?</script>', re.DOTALL)
_WIDGET_LOADER = re.compile(r"<script>\s*\(function\(\) \{\s*function addWidgetsRenderer\(\).*?</script>", re.DOTALL)
_EXERCISE_CELL = re.compile(r'<div class="jp-Cell jp-CodeCell [^"]*\bcelltag_exercise\b[^"]*">')
_DIV_TAG = re.compile(r"<div[\s>]|</div>")
_STDERR = re.compile(
    r'<div class="[^"]*\bjp-OutputArea-output\b[^"]*" data-mime-type="application/vnd\.jupyter\.stderr"'
)
_OUTPUT_CHILD = '<div class="jp-OutputArea-child'
log = logging.getLogger("mkdocs.hooks.course_site")

_executed: dict[str, dict] = {}


# ---------------------------------------------------------------------------------------------
# Helpers (tests/test_site.py and tests/test_course.py import them too)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def nav_lessons(nav) -> list[str]:
    """The ``lessons/NN_slug.py`` entries of a nav (nested lists and dicts), in order."""
    found: list[str] = []

    def walk(item) -> None:
        if isinstance(item, str):
            if LESSON_ENTRY.match(item):
                found.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                walk(value)
        elif isinstance(item, list):
            for value in item:
                walk(value)

    walk(nav)
    return found


def site_inputs_hash() -> str:
    """One hash of everything the site is built from: stale site/ when it changes."""
    h = hashlib.sha256()
    paths = [ROOT / "mkdocs.yml", ROOT / "README.md"]
    for folder in ("docs", "solutions", "lessons"):
        paths += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in paths:
        if p.exists():
            h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------
# Build events


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def on_config(config):
    """Time every notebook mkdocs-jupyter executes (a cache hit executes nothing)."""
    from mkdocs_jupyter import convert

    # The kernels inherit this process's environment: tqdm reads TQDM_DISABLE as the default of `disable`.
    os.environ["TQDM_DISABLE"] = "1"
    original = getattr(convert.nb2html, "__wrapped__", convert.nb2html)

    def timed_nb2html(nb_path, *args, **kwargs):
        # The notebook runs in a kernel, a child process that nbclient shuts down and waits for before
        # nb2html returns: the growth of RUSAGE_CHILDREN is that kernel's CPU time (and that of any process
        # it waited for). Wall time also counts the waiting for the cores of a busy machine; CPU time does not.
        cpu, start = _children_cpu_seconds(), time.perf_counter()
        out = original(nb_path, *args, **kwargs)
        if kwargs.get("execute"):
            path = Path(nb_path)
            cpu = _children_cpu_seconds() - cpu
            _executed[path.name] = {
                "sha256": sha256(path),
                "seconds": round(time.perf_counter() - start, 1),
                # A kernel not yet waited for counts nothing: no record then (a test runs the lesson itself).
                "cpu_seconds": round(cpu, 1) if cpu > 0 else None,
            }
        return out

    timed_nb2html.__wrapped__ = original
    convert.nb2html = timed_nb2html
    _executed.clear()
    return config


@mkdocs.plugins.event_priority(100)  # before mkdocs-jupyter, which then takes these files as notebooks
def on_files(files, config):
    # mkdocs-jupyter needs a real file under a source folder, so each lesson is copied to .cache/site-lessons/.
    shutil.rmtree(STAGING, ignore_errors=True)
    for entry in nav_lessons(config["nav"]):
        source = ROOT / "solutions" / Path(entry).name
        if not source.exists():
            raise mkdocs.exceptions.PluginError(f"mkdocs.yml lists {entry}, but there is no solutions/{source.name}")
        (STAGING / entry).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, STAGING / entry)
        files.append(File(entry, str(STAGING), config["site_dir"], config["use_directory_urls"]))
    return files


def course_first(readme: str) -> str:
    """README.md with its "## The course" section moved up, right after the introduction."""
    parts = re.split(r"(?m)^(?=## )", readme)
    intro, sections = parts[0], parts[1:]
    course = [s for s in sections if s.startswith("## The course\n")]
    if len(course) != 1:
        raise mkdocs.exceptions.PluginError("README.md needs one '## The course' section for the landing page")
    return intro + course[0] + "".join(s for s in sections if s is not course[0])


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    readme = course_first((ROOT / "README.md").read_text(encoding="utf-8"))
    readme = readme.replace("](docs/", "](")  # README's paths are relative to the repository
    for entry in nav_lessons(config["nav"]):
        stem = Path(entry).stem
        readme = readme.replace(f"| `{stem}`:", f"| [`{stem}`]({entry}):")
    return markdown.replace("{{ README }}", readme)


def on_page_content(content, page, config, files):
    if not LESSON_ENTRY.match(page.file.src_uri):
        return content
    content = _MERMAID.sub("", _MATHJAX.sub("", content))  # both would load from a CDN
    content = _WIDGET_LOADER.sub("", _WIDGET_STATE.sub("", _WIDGET_OUTPUT.sub("", content)))
    source = ROOT / "solutions" / Path(page.file.src_uri).name
    n = int(source.name[:2])
    content = drop_stderr_outputs(content, page.file.src_uri)
    content = fold_solutions(content, exercise_boxes(source, n), page.file.src_uri)
    intro = (
        '<div class="admonition info lesson-downloads"><p class="admonition-title">'
        "Work through this lesson yourself</p>"
        f'<p><a href="{source.stem}.exercises.py" download="{source.name}"><strong>Download the lesson with its '
        f"exercises</strong></a> (or open <code>lessons/{source.name}</code> of the repository with "
        f"<code>make lab</code>), write each exercise, and check your answers with "
        f"<code>python -m babybitnet check {n}</code>. This page is the completed lesson, run top to bottom; "
        "each exercise's solution stays folded until you click <em>Show the solution</em>.</p>"
        f'<p class="solution-download"><a href="{source.name}" download>the completed file</a></p></div>\n'
    )
    return intro + content


def _div_end(html_text: str, start: int) -> int:
    """The index just past the ``</div>`` that closes the ``<div`` opening at ``start``.

    Counting tags is safe here: nbconvert escapes every ``<`` of code and text it renders.
    """
    depth = 0
    for m in _DIV_TAG.finditer(html_text, start):
        depth += -1 if m.group(0) == "</div>" else 1
        if depth == 0:
            return m.end()
    raise mkdocs.exceptions.PluginError(f"unbalanced <div> in a rendered notebook, from offset {start}")


def drop_stderr_outputs(content: str, where: str) -> str:
    """Leave out every output a cell wrote to stderr: warnings and progress bars, with the build machine's paths."""
    while m := _STDERR.search(content):  # (the page's CSS names this mime type too, in a selector)
        start = content.rfind(_OUTPUT_CHILD, 0, m.start())
        if start < 0:
            raise mkdocs.exceptions.PluginError(f"{where}: a stderr output outside an output area")
        end = _div_end(content, start)
        text = html.unescape(re.sub(r"<[^>]+>", "", content[start:end])).strip()
        log.info(f"{where}: left out what a cell wrote to stderr: {text.splitlines()[0][:200] if text else ''}")
        content = content[:start] + content[end:]
    return content


def fold_solutions(content: str, boxes: list[str], where: str) -> str:
    """Each exercise's box, then its cell (the solution) folded in a click-to-reveal ``<details>`` block."""
    cells = list(_EXERCISE_CELL.finditer(content))
    if len(cells) != len(boxes):
        raise mkdocs.exceptions.PluginError(f"{where}: {len(boxes)} exercises, {len(cells)} exercise cells rendered")
    out, last = [], 0
    for m, box in zip(cells, boxes, strict=True):
        end = _div_end(content, m.start())
        out += [content[last : m.start()], box, '<details class="solution"><summary>Show the solution</summary>\n']
        out += [content[m.start() : end], "</details>\n"]
        last = end
    return "".join(out) + content[last:]


def exercise_boxes(source: Path, n: int) -> list[str]:
    if str(ROOT) not in sys.path:  # the package from this checkout, installed or not
        sys.path.insert(0, str(ROOT))
    from babybitnet.course.lessons import parse_cells

    boxes = []
    for cell in parse_cells(source.read_text(encoding="utf-8")).tagged("exercise"):
        names = [d.name for d in ast.parse(cell.source).body if isinstance(d, (ast.FunctionDef, ast.ClassDef))]
        what = f": write <code>{html.escape(names[0])}</code>" if names else ""
        boxes.append(
            f'<div class="admonition exercise" id="exercise-{cell.exercise_id}"><p class="admonition-title">'
            f"Exercise {cell.exercise_id}{what}</p><p>In <code>lessons/{source.name}</code> this cell stops with "
            f"<code>NotImplementedError</code> until you write it. Check it with "
            f"<code>python -m babybitnet check {n}</code>. Try it before you open the solution below.</p></div>\n"
        )
    return boxes


def on_post_page(output, page, config):
    if LESSON_ENTRY.match(page.file.src_uri):
        stub = ROOT / "lessons" / Path(page.file.src_uri).name
        target = Path(page.file.abs_dest_path).parent / f"{stub.stem}.exercises.py"
        if stub.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(stub, target)
    return output


def on_post_build(config):
    CACHE.mkdir(exist_ok=True)
    # Keep earlier records whose lesson is unchanged (mkdocs-jupyter's cache skipped them this time).
    record = {}
    for name, entry in {**read_json(EXECUTED), **_executed}.items():
        path = ROOT / "solutions" / name
        if path.exists() and entry.get("sha256") == sha256(path):
            record[name] = entry
    EXECUTED.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    BUILD_STAMP.write_text(json.dumps({"inputs": site_inputs_hash(), "site_dir": config["site_dir"]}) + "\n")
