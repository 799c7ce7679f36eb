"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one.

`atomic_target` replaces a file with `os.replace`. `atomic_swap` puts anything (a file or a directory)
in the place of anything, which `os.replace` cannot do across kinds: it takes two renames, and
`settle` / `readable` make the states between them recoverable and readable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_target(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def staged_path(path: Path) -> Path:
    """Where `atomic_swap` builds the new version of `path`."""
    return path.with_name(f".{path.name}.new")


def retired_path(path: Path) -> Path:
    """Where `atomic_swap` moves the old version of `path` until the new one is in place."""
    return path.with_name(f".{path.name}.old")


@contextlib.contextmanager
def atomic_swap(path: str | Path) -> Iterator[Path]:
    """Yield a staging path next to `path` to build a file or a directory at; on success it takes
    `path`'s place, whatever `path` was (a file, a directory, nothing); on failure it is removed.

    The swap: `path` -> `.NAME.old`, `.NAME.new` -> `path`, then `.NAME.old` is removed. The old
    version is moved aside only once the new one is complete, so a crash leaves either `path` as it
    was (and an unfinished `.NAME.new`, which `settle` removes) or a complete `.NAME.new` with
    `.NAME.old` (which `settle` puts in place, and `readable` reads meanwhile).
    """
    path = Path(path)
    settle(path)
    staged, retired = staged_path(path), retired_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield staged
    except BaseException:
        _remove(staged)
        raise
    if path.exists():
        os.rename(path, retired)
    os.rename(staged, path)
    _remove(retired)


def settle(path: str | Path) -> None:
    """Finish the swap of `path` a crash interrupted, or drop its unfinished new version."""
    path = Path(path)
    staged, retired = staged_path(path), retired_path(path)
    if retired.exists():
        if not path.exists():
            os.rename(staged if staged.exists() else retired, path)
        _remove(retired)
    _remove(staged)


def readable(path: str | Path) -> Path:
    """What a reader reads for `path`: itself, or, between the two renames of a swap, its complete
    new version (the old one when there is none). Reading never settles: a writer may be at work."""
    path = Path(path)
    retired = retired_path(path)
    if path.exists() or not retired.exists():
        return path
    staged = staged_path(path)
    return staged if staged.exists() else retired


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
