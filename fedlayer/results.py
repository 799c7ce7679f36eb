"""The run directory: config snapshot, Parquet tables, safetensors checkpoints, all written atomically.

Layout of a run directory:
    config.toml          the resolved config
    partitions.json      client indices, class counts, content hash
    metrics.parquet      round, client ('global' or a partition id), split, loss, accuracy, num_examples,
                         status ('ok', 'failed', 'rejected', 'timeout'), error (why, '' when ok); a failed
                         client's row has NaN loss and accuracy and num_examples 0
    barriers.parquet     one row per (round, client pair, group, base)
    curves.parquet       one row per (round, client pair, group, base, alpha)
    choices.parquet      barrier-aware strategy: which layers were averaged each round
    checkpoints/         global.safetensors, client-<id>-personal.safetensors (latest round, for users);
                         round-<R>/ the last committed round's state for resuming (fedlayer.resume)
    state.json           the last committed round (written last: the commit of a round)
    plots/               PNG figures
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fedlayer.atomic import atomic_target, write_bytes
from fedlayer.errors import FedlayerError

TABLES = ("metrics", "barriers", "curves", "choices")


def write_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame as Parquet atomically."""
    with atomic_target(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FedlayerError(f"table {str(path)!r} does not exist")
    return pd.read_parquet(path)


class RunDirectory:
    """One run's folder; tables accumulate in memory and are rewritten whole each round."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self._rows: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def table_path(self, name: str) -> Path:
        return self.path / f"{name}.parquet"

    def create(self) -> RunDirectory:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        return write_bytes(target, text.encode())

    def add(self, name: str, frames: pd.DataFrame | Iterable[pd.DataFrame]) -> None:
        """Queue rows for table `name`; `flush()` writes them."""
        if isinstance(frames, pd.DataFrame):
            frames = [frames]
        self._rows[name].extend(f for f in frames if not f.empty)

    def replace(self, name: str, frame: pd.DataFrame) -> None:
        """Set table `name` to `frame` as a whole (for tables kept elsewhere, e.g. a strategy's history)."""
        self._rows[name] = [frame] if not frame.empty else []

    def table(self, name: str) -> pd.DataFrame:
        rows = self._rows[name]
        if len(rows) > 1:
            rows[:] = [pd.concat(rows, ignore_index=True)]
        return rows[0] if rows else pd.DataFrame()

    def load(self, upto: int) -> None:
        """Reload the tables written so far, truncated on disk and in memory to rounds <= `upto`.

        Temporary files of writes a crash interrupted are removed.
        """
        for partial in self.path.rglob(".*.tmp"):
            partial.unlink()
        for name in TABLES:
            path = self.table_path(name)
            if not path.exists():
                self._rows[name] = []
                continue
            frame = pd.read_parquet(path)
            frame = frame[frame["round"] <= upto].reset_index(drop=True)
            self._rows[name] = [frame] if not frame.empty else []
            if frame.empty:
                path.unlink()
            else:
                write_parquet(frame, path)

    def flush(self) -> None:
        """Rewrite every non-empty table atomically (called once per completed round)."""
        for name in TABLES:
            if self._rows[name]:
                write_parquet(self.table(name), self.table_path(name))
