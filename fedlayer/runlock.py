"""One run per folder: a run directory is claimed by one live process; an old run is never silently overwritten.

`claim(path, ...)` checks, before any training, that the folder can be written, that no live
process is writing it (the lock file `run.lock` names the process; a lock left by a dead process is
taken over, with a note) and, for a new run, that it holds no earlier run (a committed round,
`state.json`, or a finished comparison, `comparison.parquet`) unless `overwrite` clears it first. A
run that stopped before committing anything left nothing to lose: a new run may take its folder.
The lock is released when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fedlayer.atomic import write_bytes
from fedlayer.errors import RunError

LOCK_FILE = "run.lock"
RUN_MARKERS = ("state.json", "comparison.parquet")  # a run with a committed round; a finished comparison


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _holder(lock: Path) -> dict | None:
    """Who holds a lock file: {pid, host, command, since}, or None when it is unreadable."""
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"cannot write to the output folder {str(path)!r}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def claim(
    path: str | Path, *, resume: bool = False, overwrite: bool = False, note: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """Hold the run directory `path` for this process while the block runs.

    Parameters
    ----------
    path : str or Path
        The run (or comparison) directory; created if missing.
    resume : bool, default False
        Continue the run in the folder (it must hold one); otherwise start a new one.
    overwrite : bool, default False
        For a new run: clear a folder that holds an earlier run instead of refusing it.
    note : callable, optional
        Told, in one line, when a dead process's lock is taken over or an old run is cleared.

    Raises
    ------
    RunError
        The folder cannot be written, a live process holds it, or (new run, no `overwrite`) it
        holds an earlier run.
    """
    folder = Path(path).resolve()
    if resume and not folder.is_dir():
        raise RunError(f"cannot resume {str(folder)!r}: no such run directory")
    _check_writable(folder)
    lock = folder / LOCK_FILE
    holder = _holder(lock) if lock.exists() else None
    if holder is not None and holder.get("host") == socket.gethostname() and _alive(holder["pid"]):
        raise RunError(
            f"{folder} is being written by process {holder['pid']} ({holder.get('command', '?')}, since "
            f"{holder.get('since', '?')}); wait for it to finish, stop it, or give another --out"
        )
    if holder is not None and note is not None:
        note(f"took over the lock of process {holder['pid']}, which no longer runs")
    earlier = [name for name in RUN_MARKERS if (folder / name).exists()]
    if earlier and not resume:
        if not overwrite:
            what, resumable = ("a run", True) if "state.json" in earlier else ("a comparison", False)
            continue_it = f"continue it with `fedlayer run --resume {folder}`, " if resumable else ""
            raise RunError(
                f"{folder} already holds {what} ({', '.join(earlier)}); {continue_it}give another --out, "
                "or pass --overwrite to replace it"
            )
        _clear(folder, keep=lock)
        if note is not None:
            note(f"cleared the earlier run in {folder} (output.overwrite, or --overwrite)")
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_bytes(lock, json.dumps(mine).encode())
    try:
        yield folder
    finally:
        if (_holder(lock) or {}).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def _clear(folder: Path, *, keep: Path) -> None:
    """Remove everything in `folder` but `keep`."""
    for entry in folder.iterdir():
        if entry == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
