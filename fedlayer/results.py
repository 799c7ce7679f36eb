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

A comparison directory holds comparison.parquet (one row per strategy, seed and round) and one run
directory per (strategy, seed) at runs/<strategy>/seed-<seed>/. Everything that draws or reports on
results reads them through `read_run` and `read_comparison`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedlayer.atomic import atomic_target, write_bytes
from fedlayer.config import Config, load_config
from fedlayer.errors import DataError, FedlayerError

TABLES = ("metrics", "barriers", "curves", "choices")
RUN_MARKER = "metrics.parquet"
COMPARISON = "comparison.parquet"
COMPARISON_REQUIRED = ("strategy", "seed", "round", "global_accuracy", "personal_accuracy_mean")


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


def table_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / f"{name}.parquet"


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
        return table_path(self.path, name)

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


# -- reading finished runs -------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    """What a run directory holds, as written: its config and each table, None where absent.

    `config` is None for a folder without config.toml (one written by `fedlayer barrier`, which
    holds only curves and barriers): figures of it then carry no line naming the run.
    """

    path: Path
    config: Config | None
    metrics: pd.DataFrame | None
    barriers: pd.DataFrame | None
    curves: pd.DataFrame | None
    choices: pd.DataFrame | None
    partitions: Path | None


def read_run(path: str | Path) -> RunRecord:
    """Read a run directory's config and tables; a path that is not a directory is a DataError."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"run directory {str(path)!r} {'is a file' if path.exists() else 'does not exist'}")
    tables = {name: read_optional(table_path(path, name)) for name in TABLES}
    partitions = path / "partitions.json"
    return RunRecord(path, read_config(path), **tables, partitions=partitions if partitions.is_file() else None)


def read_optional(path: Path) -> pd.DataFrame | None:
    """A stored table, or None when the run did not write it (e.g. no analysis)."""
    return read_table(path) if path.exists() else None


def read_config(run_dir: str | Path) -> Config | None:
    """The run's config.toml as a validated Config; None when the folder has none."""
    path = Path(run_dir) / "config.toml"
    if not path.exists():
        return None
    try:
        return load_config(path)
    except FedlayerError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def describe_run(config: Config | None) -> str:
    """One line naming the strategy, model, data, split, clients and seed, for figure subtitles and reports."""
    if config is None:
        return ""
    return f"{config.strategy.name} · {describe_setting(config)} · seed {config.seed}"


def describe_setting(config: Config | None) -> str:
    """What every strategy of a comparison shares: the model, the data, the split and the clients."""
    if config is None:
        return ""
    data, model = config.data, config.model
    detail = {
        "dirichlet": f" (α={data.alpha})",
        "pathological": f" ({data.classes_per_client} classes/client)",
        "shard": f" ({data.shards_per_client} shards/client)",
    }.get(data.partition, "")
    norm = "" if model.norm == "none" else f" ({model.norm})"
    return f"{model.name}{norm} on {data.dataset} · {data.partition}{detail} · {config.federation.clients} clients"


# -- reading comparisons ---------------------------------------------------------------------------
def directory_kind(path: str | Path) -> str:
    """'run' (holds metrics.parquet) or 'comparison' (holds comparison.parquet); anything else is a DataError."""
    path = Path(path)
    if (path / COMPARISON).is_file():
        return "comparison"
    if (path / RUN_MARKER).is_file():
        return "run"
    what = "a directory" if path.is_dir() else "a path that does not exist" if not path.exists() else "a file"
    raise DataError(
        f"{str(path)!r} is {what}, not a run directory (with {RUN_MARKER}) "
        f"or a comparison directory (with {COMPARISON})"
    )


def run_path(compare_dir: str | Path, strategy: str, seed: int) -> Path:
    """The run directory of one (strategy, seed) of a comparison."""
    return Path(compare_dir) / "runs" / str(strategy) / f"seed-{seed}"


def read_comparison(compare_dir: str | Path) -> pd.DataFrame:
    """comparison.parquet, checked to have rows and the columns every summary and figure needs."""
    table = read_optional(Path(compare_dir) / COMPARISON)
    if table is None:
        raise DataError(f"{str(compare_dir)!r} is not a comparison directory: it has no {COMPARISON}")
    missing = [c for c in COMPARISON_REQUIRED if c not in table.columns]
    if missing or table.empty:
        problem = f"lacks the columns {', '.join(missing)}" if missing else "has no rows"
        raise DataError(f"{Path(compare_dir) / COMPARISON} {problem}; expected {', '.join(COMPARISON_REQUIRED)}")
    return table


def comparison_runs(compare_dir: str | Path, comparison: pd.DataFrame) -> list[tuple[str, int, Path]]:
    """(strategy, seed, run directory) for each run of the comparison whose directory holds a run."""
    pairs = comparison[["strategy", "seed"]].drop_duplicates().itertuples(index=False)
    found = [(s, int(seed), run_path(compare_dir, s, seed)) for s, seed in pairs]
    return [(s, seed, path) for s, seed, path in found if (path / RUN_MARKER).is_file()]
