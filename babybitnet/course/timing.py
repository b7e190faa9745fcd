"""``python -m babybitnet.course.timing [NN ...]``: how long each lesson takes to run top to bottom.

Every lesson must run as a script in at most :data:`CPU_LIMIT_S` seconds of **CPU time** (user + system,
all its threads, and any process it waited for). CPU time, not wall time: on a busy machine a lesson
waits for the cores and its wall time grows without bound, but the work it does stays the same, so a
budget in CPU seconds mostly holds whatever else runs (the wall time is reported too, for the reader).
Mostly: where two virtual CPUs share one physical core, each does less per second while both are busy,
and the same lesson then costs more CPU seconds (lesson 11 once took 112 s in a site build beside
other work on our 2-vCPU machine, and 45 s alone).

Each lesson runs in a subprocess of its own, in the lesson's folder (where Jupyter starts its kernel),
with matplotlib's non-interactive backend; its CPU time comes from ``os.wait4``, the kernel's own
accounting of that very process, so nothing the lesson does can bias it. A lesson that uses far more
than the budget is stopped (``RLIMIT_CPU`` at :data:`STOP_FACTOR` times the budget) rather than left to
run for an hour, and a lesson that hangs without using the CPU is stopped after ``wall_limit`` seconds.

``make lesson-times`` runs them all; ``--json FILE`` writes the table as JSON.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from babybitnet.course import lessons
from babybitnet.files import write_json

CPU_LIMIT_S = 60.0  # per lesson, on 2 cores: docs/authoring.md and issue 14
STOP_FACTOR = 3  # a lesson past this many budgets is stopped: it is over budget whatever it would take
WALL_LIMIT_S = 3600.0  # a lesson that sleeps or deadlocks uses no CPU: this stops it


def _cpu_cap(seconds: float):
    """preexec_fn: the kernel sends SIGXCPU, then SIGKILL, once the child has used this much CPU."""
    soft = max(1, int(seconds))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))

    return cap


def run_lesson(
    path: Path, cpu_limit: float = CPU_LIMIT_S, wall_limit: float = WALL_LIMIT_S, env: dict | None = None
) -> dict:
    """Run one lesson as a script in its folder; its CPU seconds (user + sys), wall seconds and outcome."""
    path = Path(path).resolve()
    root = path.parent.parent
    child_env = {**(os.environ if env is None else env), "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}
    child_env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [child_env.get("PYTHONPATH")])])
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        p = subprocess.Popen(
            [sys.executable, path.name],
            cwd=path.parent,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_cpu_cap(cpu_limit * STOP_FACTOR),
            start_new_session=True,  # its own process group: a stop reaches what it started, too
        )
        hung = False
        while True:  # poll with wait4, which reports this child's own rusage once it has ended
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > wall_limit and not hung:
                hung = True
                os.killpg(p.pid, signal.SIGKILL)
            time.sleep(0.05)
        wall = time.perf_counter() - start
        p.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
        log.seek(0)
        tail = log.read()[-4000:].decode("utf-8", "replace")
    cpu = usage.ru_utime + usage.ru_stime
    rc = p.returncode
    if hung:
        error = f"stopped after {wall_limit:.0f} s of wall time (it hangs?)"
    elif rc in (-signal.SIGXCPU, -signal.SIGKILL) and cpu >= cpu_limit * STOP_FACTOR - 1:
        error = f"stopped after {cpu:.0f} s of CPU time, {STOP_FACTOR} times the budget"
    elif rc != 0:
        error = f"exited with status {rc}"
    else:
        error = None
    return {
        "lesson": path.stem,
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "limit_s": cpu_limit,
        "ok": error is None and cpu <= cpu_limit,
        "error": error,
        "output_tail": tail if error else "",
    }


def lesson_times(
    folder: str | Path = "solutions", only: list[int] | None = None, cpu_limit: float = CPU_LIMIT_S
) -> list[dict]:
    """Run every lesson of ``folder`` (or those numbered in ``only``), one after the other; one record each."""
    folder = lessons.resolve_lessons_dir(folder, lessons.repo_root("solutions"))
    paths = lessons.lesson_files(folder)
    if only:
        missing = sorted(set(only) - {lessons.lesson_number(p) for p in paths})
        if missing:
            have = ", ".join(p.stem for p in paths) or "none"
            raise lessons.CourseError(f"no lesson {', '.join(map(str, missing))} in {folder} (there: {have})")
        paths = [p for p in paths if lessons.lesson_number(p) in only]
    return [run_lesson(p, cpu_limit=cpu_limit) for p in paths]


def format_table(rows: list[dict]) -> str:
    lines = ["| lesson | CPU s | wall s | within budget? |", "|---|---:|---:|---|"]
    for r in rows:
        verdict = "yes" if r["ok"] else (r["error"] or f"no: over {r['limit_s']:.0f} s of CPU")
        lines.append(f"| {r['lesson']} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m babybitnet.course.timing",
        description=f"Run each lesson top to bottom and report its CPU time (budget: {CPU_LIMIT_S:.0f} s each).",
    )
    parser.add_argument("lessons", nargs="*", type=int, metavar="NN", help="lesson numbers (default: all)")
    parser.add_argument("--folder", default="solutions", help="the lessons to run (default: solutions)")
    parser.add_argument("--limit", type=float, default=CPU_LIMIT_S, help="CPU seconds allowed per lesson")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        rows = []
        folder = lessons.resolve_lessons_dir(args.folder, lessons.repo_root("solutions"))
        for n in args.lessons or [lessons.lesson_number(p) for p in lessons.lesson_files(folder)]:
            row = lesson_times(folder, only=[n], cpu_limit=args.limit)[0]  # one at a time: a line as each ends
            print(f"{row['lesson']}: {row['cpu_s']:.1f} s CPU, {row['wall_s']:.1f} s wall", flush=True)
            rows.append(row)
    except lessons.CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    for r in rows:
        if r["error"]:
            print(f"\n{r['lesson']}: {r['error']}; the end of its output:\n{r['output_tail']}", file=sys.stderr)
    if args.json:
        write_json(args.json, rows)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
