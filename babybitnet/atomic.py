"""Writing a file without ever losing the old one: a temporary beside it, flushed, then renamed over it.

Every file babybitnet writes (checkpoints, packed models, results, plots, lessons, the kernels'
tuning cache) goes through :func:`atomic_path`: a crash, a kill or Ctrl-C in the middle leaves the
old file or the new one, never half of one. This module imports nothing of babybitnet, so the
lowest layers (the kernels) can use it too; :mod:`babybitnet.files` re-exports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

# ---------------------------------------------------------------- writing without losing the old file
# A temporary is named ".NAME.HOST-PID-RANDOM.tmp": the host and pid let a later write to NAME tell
# the leftovers of a killed writer (SIGKILL runs no cleanup) from the file of one still writing.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TMP_NAME = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{16}")
STALE_TMP_S = 60.0  # and untouched this long: a writer that is alive keeps its file's mtime fresh


def _temporary_for(path: Path) -> Path:
    """Create (empty) and return a new temporary file beside ``path``."""
    while True:
        tmp = path.parent / f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(8)}.tmp"
        try:
            # 0o666 less the umask, as a plain open() would (mkstemp's 0o600 would make the renamed file private)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # 64 random bits: practically never
            continue
        return tmp


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else (PermissionError), or cannot tell
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries that killed writes to ``path`` left beside it; return them.

    Only those of this host whose writer process is gone and that nobody touched for
    ``STALE_TMP_S`` seconds. POSIX only (on Windows ``os.kill`` would end the process).
    """
    path = Path(path)
    if os.name != "posix":
        return []
    prefix, removed, now = f".{path.name}.", [], time.time()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        m = _TMP_NAME.fullmatch(entry.name[len(prefix) : -len(".tmp")])
        if m is None or m["host"] != _HOST or _process_exists(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime >= STALE_TMP_S:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds, rename it over ``path``.

    A failure (or Ctrl-C) inside the block removes the temporary file and leaves ``path`` as it was.
    A SIGKILL cannot be caught: it leaves ``path`` as it was and a stray ``.NAME.*.tmp`` beside it,
    which the next write to ``path`` removes (:func:`remove_stale_temporaries`). The temporary has
    no meaningful suffix: a writer that guesses the format from the name (matplotlib) needs ``format=``.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the path of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temporary_for(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # flush what the writer wrote to the disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")
