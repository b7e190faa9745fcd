"""The course website: the strict mkdocs build, then every page in headless Chromium.

``make test`` builds the site first (``make docs``: ``mkdocs build --strict``, which executes each
lesson once); these tests use that build when it is up to date with its sources, and build it
themselves otherwise. The browser test opens the landing page and every lesson page from a local
server and fails on a JavaScript console error, a failed request, or a request to any other
host; it checks that math was typeset, every image loaded and each lesson shows its outputs, a
picture and its exercise boxes, each solution folded until clicked, and no progress bar, warning or
path of the machine that built the site. It also starts JupyterLab as ``make lab`` does and checks
that a double-clicked lesson opens as a notebook. Screenshots go to site-screenshots/ (ignored by git).

Chromium: Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them with apt-get
when it can). Without them the browser test is skipped, except where ``CI`` or
``BABYBITNET_REQUIRE_BROWSER`` is set: there it fails.
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

import pytest

from babybitnet.course import lessons

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
SHOTS = ROOT / "site-screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BUILD_LIMIT_S = 900
# What the machine that built the site must not leave on a page: its paths, and what tqdm and warnings print.
BUILD_PATHS = (str(ROOT), "/tmp/", ".venv/lib", "site-packages")
PROGRESS_BAR = re.compile(r"\d+%\|| \d+/\d+ \[\d+:\d+|\d+(\.\d+)?it/s\]")
WARNING = re.compile(r"\b[A-Z][A-Za-z]*Warning\b: ")

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
yaml = pytest.importorskip("yaml")


def load_hook():
    spec = importlib.util.spec_from_file_location("course_site", ROOT / "docs" / "hooks" / "course_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = load_hook()


def nav() -> list:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]


LESSONS = hook.nav_lessons(nav())  # lessons/NN_slug.py, as the nav lists them
PAGES = ["index.md", *LESSONS]


def page_path(entry: str) -> str:
    """The URL path of a page: index.md -> '', lessons/01_data.py -> 'lessons/01_data/'."""
    return "" if entry == "index.md" else entry.removesuffix(".py") + "/"


@pytest.fixture(scope="session")
def site() -> Path:
    """site/, built from the current sources (by make docs, or here when it is missing or stale)."""
    stamp = hook.read_json(hook.BUILD_STAMP)
    if stamp.get("inputs") != hook.site_inputs_hash() or not (SITE / "index.html").exists():
        cmd = [sys.executable, "-m", "mkdocs", "build", "--strict"]
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_LIMIT_S)
        assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return SITE


def test_the_nav_lists_lessons_that_exist():
    assert LESSONS, "mkdocs.yml lists no lessons/NN_slug.py"
    for entry in LESSONS:
        assert (ROOT / "solutions" / Path(entry).name).exists(), f"mkdocs.yml lists {entry}: no such solution"


def test_the_build_renders_every_lesson_with_downloads(site):
    index = (site / "index.html").read_text()
    assert "final val loss" in index and "seed_loss_curves.png" in index, "the landing page lacks the README"
    for entry in LESSONS:
        name = Path(entry).name
        folder = site / page_path(entry)
        html = (folder / "index.html").read_text()
        assert "jp-OutputArea-output" in html, f"{entry}: no outputs (was it executed?)"
        assert "Traceback" not in html, f"{entry}: a traceback on the page"
        assert "cdnjs" not in html and "mathjax" not in html.lower(), f"{entry}: loads a script from a CDN"
        assert (folder / name).read_text() == (ROOT / "solutions" / name).read_text()
        assert (folder / f"{Path(name).stem}.exercises.py").read_text() == (ROOT / "lessons" / name).read_text()
        assert 'data-mime-type="application/vnd.jupyter.stderr">' not in html, f"{entry}: an output written to stderr"
        n = len(lessons.exercises_of(ROOT / "solutions" / name))
        assert html.count('<details class="solution">') == n, f"{entry}: not each of its {n} solutions is folded"
    for entry in PAGES:
        html = (site / page_path(entry) / "index.html").read_text()
        leaked = [p for p in BUILD_PATHS if p in html]
        assert not leaked, f"{entry}: the page shows paths of the machine that built it: {leaked}"


def test_the_build_records_the_lessons_it_executed(site):
    """What tests/test_course.py reads instead of running the lessons again: content hash and seconds."""
    assert hook.EXECUTED.exists(), "the build wrote no .cache/executed-lessons.json"
    for name, entry in hook.read_json(hook.EXECUTED).items():
        assert entry["sha256"] == hook.sha256(ROOT / "solutions" / name), f"{name}: a stale record"
        assert entry["seconds"] >= 0
        assert entry.get("cpu_seconds"), f"{name}: the build did not measure the CPU time of its kernel"


# ---------------------------------------------------------------------------------------------
# In the browser


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def browser_missing(reason: str):
    if os.environ.get("CI") or os.environ.get("BABYBITNET_REQUIRE_BROWSER"):
        pytest.fail(f"{reason}; the browser test must run here (CI or BABYBITNET_REQUIRE_BROWSER is set)")
    pytest.skip(f"{reason}: browser test skipped (on Debian: apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        browser_missing("selenium is not installed")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        browser_missing(f"no Chromium ({CHROMIUM}) or ChromeDriver ({CHROMEDRIVER})")
    profile = tempfile.mkdtemp(prefix="babybitnet-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--window-size=1300,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, script: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def network_problems(driver, host: str) -> list[str]:
    """Requests to another host, failed requests and HTTP errors, from Chromium's performance log."""
    problems, urls = [], {}
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            parsed = urlparse(url)
            if parsed.scheme in ("http", "https", "ws", "wss") and parsed.netloc != host:
                problems.append(f"request to another host: {url}")
        elif method == "Network.loadingFailed":
            url = urls.get(params["requestId"], params["requestId"])
            if not params.get("canceled"):
                problems.append(f"failed request: {url} ({params.get('errorText')})")
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            problems.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
    return problems


PAGE_FACTS = """
const md = Array.from(document.querySelectorAll('.jp-RenderedMarkdown, .md-content .md-typeset'));
const rawDollars = md.map(el => {
  const copy = el.cloneNode(true);
  const skip = '.katex, code, pre, script, style, .jp-InputArea, .jp-OutputArea, .clipboard-copy-txt';
  copy.querySelectorAll(skip).forEach(k => k.remove());
  const m = copy.textContent.match(/\\$[^$\\s][^$]*\\$/);
  return m ? m[0].slice(0, 120) : null;
}).filter(x => x);
return {
  katex: document.querySelectorAll('.katex').length,
  katexErrors: document.querySelectorAll('.katex-error').length,
  rawDollars: rawDollars,
  images: Array.from(document.images).map(i => ({src: i.src.slice(0, 80), ok: i.complete && i.naturalWidth > 0})),
  outputImages: document.querySelectorAll('.jp-OutputArea-output img').length,
  outputs: document.querySelectorAll('.jp-OutputArea-output').length,
  // each box right before its exercise cell, folded in a <details> (nbconvert nests a second div with the
  // same classes: the outer one is the cell)
  exerciseBoxes: Array.from(document.querySelectorAll('.admonition.exercise'))
    .filter(b => b.nextElementSibling && b.nextElementSibling.matches('details.solution')
                 && b.nextElementSibling.querySelector('.celltag_exercise')).length,
  exerciseCells: Array.from(document.querySelectorAll('.jp-Cell.celltag_exercise'))
    .filter(c => !c.parentElement.closest('.celltag_exercise')).length,
  shownSolutions: Array.from(document.querySelectorAll('.jp-Cell.celltag_exercise'))
    .filter(c => c.checkVisibility()).length,
  errorOutputs: document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    .length,
  widgets: document.querySelectorAll('[data-mime-type*="jupyter.widget"]').length,
  outputText: Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(o => o.textContent).join('\\n'),
  text: document.body.innerText,
  contentWidth: document.querySelector('.md-content').getBoundingClientRect().width,
  height: Math.max(document.body.scrollHeight, document.documentElement.scrollHeight),
};
"""


def screenshot(driver, path: Path, full: bool) -> None:
    if not full:
        driver.save_screenshot(str(path))
        return
    height = min(driver.execute_script("return document.documentElement.scrollHeight"), 16000)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": 1300, "height": height, "scale": 1}},
    )
    path.write_bytes(base64.b64decode(shot["data"]))


SET_PALETTE = """
const i = arguments[0];
const input = document.querySelectorAll('[data-md-component=palette] input')[i];
__md_set('__palette', {index: i, color: {
  media: input.getAttribute('data-md-color-media'), scheme: input.getAttribute('data-md-color-scheme'),
  primary: input.getAttribute('data-md-color-primary'), accent: input.getAttribute('data-md-color-accent')}});
"""


def show_in_palette(driver, scheme: str) -> None:
    """Reload the page in the light ('default') or dark ('slate') palette, as the reader's toggle picks it."""
    media = "light" if scheme == "default" else "dark"
    driver.execute_script(SET_PALETTE, 0 if scheme == "default" else 1)
    driver.refresh()
    wait_for(driver, "return document.readyState === 'complete'", "the page to load")
    wait_for(driver, "return document.documentElement.dataset.mathTypeset === 'true'", "KaTeX to typeset the math")
    wait_for(driver, "return Array.from(document.images).every(i => i.complete)", "the images")
    wait_for(driver, f"return document.body.dataset.mdColorScheme === '{scheme}'", f"the {media} palette", 10)


@pytest.mark.parametrize("entry", PAGES)
def test_page_in_headless_chromium(browser, server, entry):
    driver = browser
    driver.get_log("browser")  # drop what earlier pages left
    driver.get_log("performance")
    driver.get(server + page_path(entry))
    wait_for(driver, "return document.readyState === 'complete'", "the page to load")
    show_in_palette(driver, "default")
    facts = driver.execute_script(PAGE_FACTS)
    name = Path(entry).stem
    screenshot(driver, SHOTS / f"{name}.png", full=False)
    screenshot(driver, SHOTS / f"{name}.full.png", full=True)

    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    problems = network_problems(driver, urlparse(server).netloc)
    assert not errors, f"{entry}: JavaScript console errors:\n" + "\n".join(errors)
    assert not problems, f"{entry}:\n" + "\n".join(problems)
    assert facts["katex"] > 0, f"{entry}: no math was typeset"
    assert facts["katexErrors"] == 0, f"{entry}: {facts['katexErrors']} formulas KaTeX could not typeset"
    assert not facts["rawDollars"], f"{entry}: math left untypeset: {facts['rawDollars']}"
    broken = [i["src"] for i in facts["images"] if not i["ok"]]
    assert facts["images"] and not broken, f"{entry}: images that did not load: {broken}"
    assert "Traceback" not in facts["text"], f"{entry}: a traceback on the page"
    shown = facts["text"] + "\n" + facts["outputText"]
    leaked = [p for p in BUILD_PATHS if p in shown]
    assert not leaked, f"{entry}: the page shows paths of the machine that built it: {leaked}"
    bars = PROGRESS_BAR.search(facts["outputText"])
    assert not bars and not facts["widgets"], f"{entry}: a progress bar on the page: {bars and bars.group(0)!r}"
    warning = WARNING.search(shown)
    what = warning.group(0) if warning else "an output written to stderr"
    assert not warning and not facts["errorOutputs"], f"{entry}: a warning on the page: {what!r}"
    assert facts["contentWidth"] >= 900, f"{entry}: the text column is {facts['contentWidth']:.0f} px at 1300 px"
    if entry != "index.md":
        assert facts["outputs"] > 0, f"{entry}: no cell outputs"
        assert facts["outputImages"] > 0, f"{entry}: no picture among the outputs"
        n = len(lessons.exercises_of(ROOT / "solutions" / Path(entry).name))
        assert facts["exerciseCells"] == n, f"{entry}: {facts['exerciseCells']} exercise cells on the page, {n} in it"
        assert facts["exerciseBoxes"] == n, f"{entry}: {n} exercises, {facts['exerciseBoxes']} boxes before them"
        assert facts["shownSolutions"] == 0, f"{entry}: {facts['shownSolutions']} solutions shown before a click"
        if n:  # a click on "Show the solution" shows it
            driver.execute_script("document.querySelector('details.solution > summary').click()")
            shown = "return document.querySelector('details.solution .jp-Cell.celltag_exercise').checkVisibility()"
            wait_for(driver, shown, "the first solution to show after a click", 5)

    # The dark palette: the same page, no errors, and a screenshot to look at.
    show_in_palette(driver, "slate")
    screenshot(driver, SHOTS / f"{name}.dark.png", full=False)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    problems = network_problems(driver, urlparse(server).netloc)
    assert not errors, f"{entry} (dark palette): JavaScript console errors:\n" + "\n".join(errors)
    assert not problems, f"{entry} (dark palette):\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# JupyterLab, as `make lab` starts it: a double-clicked lesson opens as a notebook


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path, request):
    """JupyterLab on a copy of lessons/01_data.py, with the course's settings (jupyter/overrides.json, which
    `make install` copies into the virtualenv's lab settings folder) or, for the control, with none.

    Everything else of Jupyter's is in tmp_path too, so the settings of whoever runs the test (say, a
    `jupytext-config set-default-viewer` of their own) cannot make it pass.
    """
    pytest.importorskip("jupyterlab")
    folder, settings = tmp_path / "lessons", tmp_path / "lab-settings"
    folder.mkdir()
    settings.mkdir()
    shutil.copyfile(ROOT / "lessons" / "01_data.py", folder / "01_data.py")
    if request.param:
        shutil.copyfile(ROOT / "jupyter" / "overrides.json", settings / "overrides.json")
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    # The Makefile's `lab` target: python -m jupyter lab --notebook-dir=lessons; here on a port and token of its own.
    cmd = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={folder}", "--no-browser"]
    cmd += [f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--LabApp.app_settings_dir={settings}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root; Jupyter refuses that otherwise
        cmd.append("--allow-root")
    with open(tmp_path / "jupyterlab.log", "wb") as log:
        server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                with urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base, token
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


OPENED_AS = """
const title = arguments[0];
const cells = Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-Cell'));
const editors = document.querySelectorAll('.jp-FileEditor').length;
// a notebook once its cells hold the lesson (a panel that is still loading shows one empty cell)
return cells.length > 1 && cells.some(c => c.textContent.includes(title)) ? 'notebook' : (editors ? 'text' : null);
"""


@pytest.mark.parametrize(
    "jupyterlab, expected",
    [(True, "notebook"), (False, "text")],  # without the course's settings: the control, a text editor
    ids=["with the course's settings", "without them"],
    indirect=["jupyterlab"],
)
def test_a_double_clicked_lesson_opens_as_a_notebook_in_jupyterlab(browser, jupyterlab, expected):
    base, token = jupyterlab
    driver = browser
    driver.get(f"{base}/lab?token={token}")
    item = "Array.from(document.querySelectorAll('.jp-DirListing-item')).find(e => e.textContent.includes('01_data'))"
    wait_for(driver, f"return ({item}) !== undefined", "the file browser to list 01_data.py", 120)
    # the double-click a reader makes, as the file browser receives it (its own handler opens the default viewer)
    driver.execute_script(f"({item}).dispatchEvent(new MouseEvent('dblclick', {{bubbles: true, button: 0}}))")
    cells = lessons.parse_cells((ROOT / "lessons" / "01_data.py").read_text()).cells
    first = next(c for c in cells if c.kind == "markdown")
    title = next(line for line in first.source.splitlines() if line.strip()).lstrip("# ").strip()
    deadline = time.monotonic() + 120
    while (opened := driver.execute_script(OPENED_AS, title)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    screenshot(driver, SHOTS / f"jupyterlab-{expected}.png", full=False)
    assert opened == expected, f"a double-clicked lesson opened as {opened}, not as a {expected}"
