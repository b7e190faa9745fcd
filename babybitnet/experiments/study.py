"""What every study shares: model names, the measured results, running the runs, writing and plotting results.

A study (``compare``, ``ablate``, ``ladder``, ``scale``, ``finetune``, the benchmarks) writes a
``results.json`` (everything, machine-readable) and a ``table.md`` (the summary) into its output
folder, often with a plot; the full-size results the course quotes ship in ``babybitnet/results/``.

The studies with many independent runs (``ablate``, ``finetune``, ``scale``) hand them to
:func:`run_study`, which runs them one after another or in worker processes and gives each result
back as soon as it is finished, so that the study can rewrite its files (:func:`write_results`)
after every run: a study cut short keeps what it finished. With ``--resume`` it carries on from
there: :func:`resumed_results` reads the earlier ``results.json`` and refuses one made another way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from tqdm.auto import tqdm

from babybitnet.files import atomic_path, write_json, write_text
from babybitnet.runtime import machine_info, worker_pool

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NAMES = {"gpt": "babyGPT", "bitnet": "babyBitNet"}
MEASURED = Path(__file__).resolve().parent.parent / "results"  # results.json of the full-size runs the course quotes

T = TypeVar("T")


def measured(name: str) -> dict:
    """A measured result shipped with the package (``babybitnet/results/<name>.json``), e.g. "compare_recipe".

    Each file says which command wrote it and on which machine (its "command" and "machine" keys).
    """
    path = MEASURED / f"{name}.json"
    if not path.is_file():
        have = sorted(p.stem for p in MEASURED.glob("*.json"))
        raise FileNotFoundError(f"no measured result {name!r} in {MEASURED}; there are: {have}")
    return json.loads(path.read_text())


def ran_on(device: torch.device | str) -> dict:
    """The keys of a results.json that say where it ran: ``device``, ``torch`` (version) and ``machine``."""
    return {"device": str(device), "torch": torch.__version__, "machine": machine_info(device)}


def run_record(r: dict, model: torch.nn.Module, cfg) -> dict:
    """A training run's summary (from ``train``) with the model and training configs that made it."""
    return {**r, "model_config": model.config.to_dict(), "train_config": cfg.to_dict()}


def run_study(
    tasks: Sequence[tuple],
    run: Callable[..., T],
    record: Callable[[T], None],
    jobs: int = 1,
    one_thread: bool = True,
    desc: str = "study",
    progress: bool = True,
) -> None:
    """Run ``run(*task)`` for every task; call ``record(result)`` here as soon as each one has finished.

    ``jobs == 1`` (or a single task) runs the tasks in order in this process; more runs them in
    ``jobs`` worker processes (:func:`babybitnet.runtime.worker_pool`, one CPU thread each with
    ``one_thread``), and the results come back in the order they finish. For a worker to take it,
    ``run`` must be picklable: a top-level function, or a ``functools.partial`` of one.
    ``record`` is where a study saves what it has, so a study cut short keeps its finished runs.
    If a task (or ``record``) fails, the tasks not yet started are dropped and the error is raised.
    ``progress`` shows a bar of finished tasks (leave it off when each task shows its own).
    """
    jobs = max(1, min(jobs, len(tasks)))
    bar = tqdm(total=len(tasks), desc=f"{desc} ({jobs} jobs)", disable=not progress, dynamic_ncols=True)
    try:
        if jobs == 1:
            for task in tasks:
                record(run(*task))
                bar.update()
            return
        pool = worker_pool(jobs, one_thread)
        try:
            futures = [pool.submit(run, *task) for task in tasks]
            for f in as_completed(futures):
                record(f.result())
                bar.update()
        finally:
            # on an error, drop the tasks not yet started rather than run them for nothing
            pool.shutdown(cancel_futures=True)
    finally:
        bar.close()


def _legacy(key: str, value: object) -> object:
    """An earlier results.json's value in today's form: ``data`` was the text's name before ``data_record``."""
    if key == "data" and isinstance(value, str):
        return {"text": value}
    return value


def resumed_results(
    path: str | Path,
    results: dict,
    keys: Sequence[str] = (),
    run_settings: Mapping[str, object] | None = None,
    entries: Mapping[str, Mapping[str, object]] | None = None,
) -> dict | None:
    """The earlier ``results.json`` at ``path`` that a study may carry on from; None when there is none.

    Resuming puts the earlier runs beside new ones in one summary, which only means something if
    both were made the same way. So it compares the earlier file with ``results``, the new study's
    results (before any run), and raises a one-line ValueError naming every setting that differs:

    * ``study`` and each of ``keys``: top-level settings (a legacy ``data`` string is the text's name);
    * ``run_settings``: training settings that every earlier run's ``train_config`` must have;
    * ``entries``: for each key (e.g. ``{"sizes": sizes}``), an entry that both files name must be
      the same, while new entries may be added (more sizes); the message calls one entry by the key's
      singular ("size 'a'").

    What to keep of the earlier runs (and how to fill in what older files lack) is the study's choice.
    """
    path = Path(path)
    if not path.is_file():
        return None
    old = json.loads(path.read_text(encoding="utf-8"))
    differ = [
        f"{k} {_legacy(k, old.get(k))!r} there, {results[k]!r} now"
        for k in ("study", *keys)
        if _legacy(k, old.get(k)) != results[k]
    ]
    for k, v in (run_settings or {}).items():  # the settings every run shares: compare them run by run
        wrong = [t for r in old.get("runs", []) if (t := r.get("train_config", {}).get(k)) != v]
        if wrong:
            differ.append(f"{k} {wrong[0]!r} there, {v!r} now")
    for key, now in (entries or {}).items():
        before = old.get(key) or {}
        differ += [
            f"{key.removesuffix('s')} {name!r} is {before[name]} there, {spec} now"
            for name, spec in now.items()
            if name in before and before[name] != spec
        ]
    if differ:
        raise ValueError(
            f"cannot resume {path}: it was made with other settings ({'; '.join(differ)}); "
            "choose another output folder (--out) or the same settings"
        )
    return old


def write_results(
    out: str | Path,
    results: dict,
    table: str,
    plots: Mapping[str, Callable[[dict, Path], object]] | None = None,
) -> Path:
    """Write ``results.json``, ``table.md`` and the ``plots`` into the folder ``out`` (made if needed); return it.

    ``plots`` maps a file name to the function that draws it: ``{"scale.png": plot_scale}`` calls
    ``plot_scale(results, out / "scale.png")``. Every file is written atomically.
    """
    out = Path(out)
    write_json(out / "results.json", results)
    write_text(out / "table.md", table)
    for name, plot in (plots or {}).items():
        plot(results, out / name)
    return out


# ---------------------------------------------------------------- plots
def new_figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib figure for a file: not pyplot's, so it needs no display and changes no backend."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Lay ``fig`` out and save it to ``path`` atomically, in the format of its suffix (``.png``)."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the temporary name has no suffix to tell matplotlib the format
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    return path


@contextmanager
def loss_plot(path: str | Path, title: str, ylabel: str) -> Iterator[Axes]:
    """Loss against step: draw the lines on the axes this yields; then it is labelled, gridded and saved."""
    fig = new_figure((8, 5))
    ax = fig.subplots()
    yield ax
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
