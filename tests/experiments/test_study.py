"""The study runner and writer every study shares (babybitnet/experiments/study.py).

The tasks run in worker processes, so they are top-level functions of this module; files in a
temporary folder are how a worker and the parent tell each other what has happened.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from babybitnet.experiments.study import loss_plot, resumed_results, run_study, write_results

PNG = b"\x89PNG\r\n\x1a\n"


def square(x: int, log: list | None = None) -> int:
    if log is not None:
        log.append(("run", x))
    return x * x


def where(x: int) -> tuple[int, int, int]:
    """The task, the process it ran in and that process's torch threads."""
    return x, os.getpid(), torch.get_num_threads()


def first_or_wait(go: str, x: int) -> int:
    """Task 0 finishes at once; the others only once ``go`` exists (the parent makes it when it records task 0)."""
    deadline = time.monotonic() + 60
    while x != 0 and not Path(go).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go} never appeared: task 0 was not recorded before the others finished")
        time.sleep(0.05)
    return x


def fail_or_mark(folder: str, x: int) -> int:
    """Task 0 fails at once; every other task takes a while and leaves a file saying it ran."""
    if x == 0:
        raise RuntimeError("task 0 failed")
    time.sleep(1.5)
    (Path(folder) / f"ran{x}").touch()
    return x


def test_serial_runs_in_order_here_and_records_each_result_before_the_next_task():
    log: list = []
    run_study([(1, log), (2, log), (3, log)], square, lambda r: log.append(("record", r)), progress=False)
    assert log == [("run", 1), ("record", 1), ("run", 2), ("record", 4), ("run", 3), ("record", 9)]


def test_serial_stops_at_the_first_error():
    log: list = []

    def run(x: int) -> int:
        log.append(x)
        if x == 2:
            raise ValueError("bad task")
        return x

    with pytest.raises(ValueError, match="bad task"):
        run_study([(1,), (2,), (3,)], run, log.append, progress=False)
    assert log == [1, 1, 2]  # ran 1, recorded 1, ran 2 and failed; 3 never ran


def test_one_task_runs_here_even_with_several_jobs():
    seen: list = []
    run_study([(7,)], where, seen.append, jobs=4, progress=False)
    assert [(x, pid) for x, pid, _ in seen] == [(7, os.getpid())]


def test_pool_runs_every_task_in_worker_processes_with_one_thread():
    seen: list = []

    def record(result: tuple) -> None:
        assert os.getpid() == parent  # records are made here, in the parent
        seen.append(result)

    parent = os.getpid()
    run_study([(x,) for x in range(4)], where, record, jobs=2, progress=False)
    assert sorted(x for x, _, _ in seen) == [0, 1, 2, 3]
    assert parent not in {pid for _, pid, _ in seen}
    assert {threads for _, _, threads in seen} == {1}  # one_thread=True


def test_pool_records_a_result_as_soon_as_it_is_finished(tmp_path):
    # task 1 cannot finish before task 0 is recorded: a runner that recorded only at the end would time out
    go = tmp_path / "go"
    recorded: list = []

    def record(x: int) -> None:
        recorded.append(x)
        go.touch()

    run_study([(str(go), 0), (str(go), 1)], first_or_wait, record, jobs=2, progress=False)
    assert recorded == [0, 1]


def test_pool_error_drops_the_tasks_not_started(tmp_path):
    tasks = [(str(tmp_path), x) for x in range(10)]
    with pytest.raises(RuntimeError, match="task 0 failed"):
        run_study(tasks, fail_or_mark, lambda _: None, jobs=2, progress=False)
    ran = len(list(tmp_path.glob("ran*")))
    # two workers and a few queued calls may still finish; 9 runs of 1.5 s would take about 7 s
    assert ran <= 5, f"{ran} of 9 tasks ran after the first one failed"


def test_write_results_writes_json_table_and_plots_atomically(tmp_path):
    out = tmp_path / "study"
    results = {"study": "x", "runs": [{"step": [0, 1, 2], "val": [3.0, 2.5, 2.2]}]}
    calls: list = []

    def plot(r: dict, path: Path) -> None:
        calls.append((r, path))
        with loss_plot(path, "a title", "loss") as ax:
            ax.plot(r["runs"][0]["step"], r["runs"][0]["val"], label="val")

    assert write_results(out, results, "| a |\n", {"curves.png": plot}) == out
    assert json.loads((out / "results.json").read_text()) == results
    assert (out / "table.md").read_text() == "| a |\n"
    assert calls == [(results, out / "curves.png")]
    assert (out / "curves.png").read_bytes()[:8] == PNG
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "results.json", "table.md"]  # no temporaries


def test_a_failed_plot_leaves_the_old_file(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="drawing failed"), loss_plot(path, "t", "loss") as ax:
        ax.plot([0, 1], [1, 0])
        raise RuntimeError("drawing failed")
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


# ---------------------------------------------------------------- resuming
def test_resumed_results_gives_back_a_matching_file_and_none_without_one(tmp_path):
    assert resumed_results(tmp_path / "results.json", {"study": "s"}) is None  # nothing to resume: a fresh start
    runs = [{"train_config": {"lr": 1}}]
    old = {"study": "s", "iters": 10, "data": "tinyshakespeare", "sizes": {"a": 1}, "runs": runs}
    (tmp_path / "results.json").write_text(json.dumps(old))
    now = {"study": "s", "iters": 10, "data": {"text": "tinyshakespeare"}}  # the legacy data string is the text
    got = resumed_results(tmp_path / "results.json", now, ["iters", "data"], {"lr": 1}, {"sizes": {"a": 1, "b": 2}})
    assert got == old  # a new size "b" may be added to the earlier "a"


@pytest.mark.parametrize(
    "change, says",
    [
        (dict(now={"study": "t", "iters": 10}), "study 's' there, 't' now"),
        (dict(now={"study": "s", "iters": 20}), "iters 10 there, 20 now"),
        (dict(run_settings={"lr": 2}), "lr 1 there, 2 now"),
        (dict(entries={"sizes": {"a": 3}}), "size 'a' is 1 there, 3 now"),
    ],
)
def test_resumed_results_refuses_other_settings_in_one_line_saying_which(tmp_path, change, says):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"study": "s", "iters": 10, "sizes": {"a": 1}, "runs": [{"train_config": {"lr": 1}}]}))
    kw = {"now": {"study": "s", "iters": 10}, "run_settings": None, "entries": None, **change}
    with pytest.raises(ValueError) as err:
        resumed_results(path, kw["now"], ["iters"], kw["run_settings"], kw["entries"])
    msg = str(err.value)
    assert msg.startswith(f"cannot resume {path}: it was made with other settings (") and "\n" not in msg
    assert says in msg and "--out" in msg  # which setting differs, and what to do
