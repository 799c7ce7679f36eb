"""The run directory: config snapshot, Parquet tables, safetensors checkpoints, all written atomically.

Layout of a run directory:
    config.toml          the resolved config
    partitions.json      client indices, class counts, content hash
    vocabulary.json      a language dataset's vocabulary: the token of each id, in id order
    metrics.parquet      round, client ('global' or a partition id), split, task, loss, perplexity, accuracy,
                         num_examples, num_predictions, status ('ok', 'failed', 'rejected', 'timeout'), error
                         (why, '' when ok); a failed client's row has NaN loss and accuracy and num_examples 0
    barriers.parquet     one row per (round, client pair, group, base), with its task
    curves.parquet       one row per (round, client pair, group, base, alpha), with its task
    choices.parquet      barrier-aware strategy: which layers were averaged each round
    checkpoints/         global.safetensors, client-<id>-personal.safetensors (latest round, for users);
                         round-<R>/ the last committed round's state for resuming (fedlayer.resume)
    state.json           the last committed round (written last: the commit of a round)
    plots/               PNG figures

Tables that grow by rounds (metrics, barriers, curves) are part tables (`PartTable`): while a run goes on,
TABLE.parquet is a directory of one Parquet part per round (round-000001.parquet, written once,
atomically), which pandas and pyarrow read as one table; the run's last round compacts it into one
Parquet file at the same path. So a round's commit costs the same in round 1,000 as in round 10. Tables
set whole (choices) are single files, rewritten atomically.

A comparison directory holds comparison.parquet (one row per strategy, seed and round), clients.parquet
(one row per strategy, seed, round and client), config.toml (the config it ran from, its [compare] section
as resolved) and one run directory per (strategy, seed) at runs/<folder>/seed-<seed>/, where <folder> is
the strategy's name made safe for any file system (`run_folder_name`: first:2 -> first_2).

An analysis folder holds barriers.parquet and/or curves.parquet alone (no config.toml, no metrics.parquet):
what fedlayer's barrier-analysis strategy wrapper writes inside a Flower app of one's own. Its figures and
report show the barriers only.

Every table says which task its rows measure (`TASK`): classification (one prediction per sample) or
language modelling (one prediction per token, `fedlayer.task_kinds`). Losses, accuracies and error rates
are means over predictions either way; a language row adds its perplexity (`PERPLEXITY`). Tables written
before fedlayer recorded the task are classification (`table_task`), and `task_terms` says how figures,
reports and the terminal name what a task measures.

Everything that draws or reports on results reads them through `read_run`, `read_comparison`,
`read_clients` and `read_compare_settings`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fedlayer.atomic import atomic_swap, atomic_target, readable, settle, write_bytes
from fedlayer.config import CompareConfig, Config, load_config
from fedlayer.errors import DataError, FedlayerError
from fedlayer.task_kinds import CLASSIFICATION, LANGUAGE, PREDICTION_UNITS
from fedlayer.task_kinds import perplexity as per_token_perplexity

TABLES = ("metrics", "barriers", "curves", "choices")
RUN_MARKER = "metrics.parquet"
ANALYSIS_TABLES = ("barriers", "curves")
ANALYSIS_COLUMNS = ("round", "client_a", "client_b")
COMPARISON = "comparison.parquet"
COMPARISON_REQUIRED = ("strategy", "seed", "round", "global_accuracy", "personal_accuracy_mean")
CLIENTS = "clients.parquet"
MAX_FOLDER_NAME = 64
PART = re.compile(r"round-(\d+)\.parquet")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# -- what a table's rows measure ---------------------------------------------------------------------
TASK = "task"
"""Column of metrics, barriers, curves, comparison and clients tables: the task kind (`fedlayer.task_kinds.TASKS`)
its row measures."""
PERPLEXITY = "perplexity"
"""Column next to `loss` (metrics and clients tables): exp(loss), the perplexity per token, on language rows;
NaN on classification rows, where the loss per sample is the measure."""
NUM_PREDICTIONS = "num_predictions"
"""Column of metrics.parquet next to `num_examples`: the predictions in the data a row was computed on, which
its loss and accuracy average over (the samples in classification, the tokens, windows x positions, in
language modelling)."""


@dataclass(frozen=True)
class TaskTerms:
    """How figures, reports and the terminal name what a task measures.

    Attributes
    ----------
    accuracy : str
        The accuracy: "accuracy", or "next-token accuracy" (the share of positions whose next token is
        predicted; for character-level text such as Shakespeare, the next character).
    counted : str
        What `NUM_PREDICTIONS` counts, in the plural: "examples" or "tokens".
    cross_entropy : str
        What the loss is: "cross-entropy", or "cross-entropy per token".
    perplexity : bool
        Whether the task reports perplexity (language modelling).
    """

    accuracy: str
    counted: str
    cross_entropy: str
    perplexity: bool

    @property
    def error(self) -> str:
        """The error rate the error barriers measure (100 − accuracy, in percentage points)."""
        return self.accuracy.replace("accuracy", "error")


_TOKEN = PREDICTION_UNITS[LANGUAGE]
TERMS = {
    CLASSIFICATION: TaskTerms("accuracy", "examples", "cross-entropy", perplexity=False),
    LANGUAGE: TaskTerms(f"next-{_TOKEN} accuracy", f"{_TOKEN}s", f"cross-entropy per {_TOKEN}", perplexity=True),
}


def table_task(table: pd.DataFrame | None) -> str:
    """The task a table's rows measure, from its `TASK` column; classification for a table without one (written
    before fedlayer recorded it) or without rows."""
    if table is None or TASK not in table.columns or table.empty:
        return CLASSIFICATION
    return str(table[TASK].dropna().iloc[0]) if table[TASK].notna().any() else CLASSIFICATION


def task_terms(task: str) -> TaskTerms:
    """`TERMS` of `task` (classification's for a task this version does not know)."""
    return TERMS.get(task, TERMS[CLASSIFICATION])


def perplexity(loss: float, task: str) -> float:
    """A row's `PERPLEXITY`: exp(loss) for language modelling (inf where that overflows), NaN for
    classification and for a NaN loss (a failed client)."""
    if task != LANGUAGE or math.isnan(loss):
        return math.nan
    return per_token_perplexity(loss)


def write_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame as Parquet atomically."""
    with atomic_target(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def read_table(path: str | Path) -> pd.DataFrame:
    """A stored table, whole: one Parquet file, or a part table's directory (a run not finished) read as one."""
    path = Path(path)
    if not table_exists(path):
        raise FedlayerError(f"table {str(path)!r} does not exist")
    return pd.read_parquet(readable(path))


def table_exists(path: str | Path) -> bool:
    """Whether a table is stored at `path`, as a file or a part table's directory (even mid-compaction)."""
    return readable(path).exists()


def table_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / f"{name}.parquet"


# -- part tables: a Parquet part per round, compacted at the end ----------------------------------
def part_name(server_round: int) -> str:
    return f"round-{server_round:06d}.parquet"


class PartTable:
    """A table that grows by rounds, at `path`: while it grows, a directory of one Parquet part per round
    (`round-000001.parquet`, each written once, atomically), which pandas and pyarrow read as one table;
    once complete, `compact()` makes it one Parquet file at the same path.

    Every part has one schema, so that the directory reads as one table: new rows are cast to it, and
    rows that need a wider one (a column null so far and now a string, a new column, integers that
    become floats) rebuild the table in the wider schema. So does the first part (its directory appears
    whole) and appending to a compacted table (a resumed run). A rebuild, like a compaction, is swapped
    in atomically (`fedlayer.atomic.atomic_swap`): a crash leaves the table before or after it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._schema: pa.Schema | None = None  # the parts' schema, once read or written here

    def append(self, frame: pd.DataFrame) -> None:
        """Add `frame`'s rows (with a `round` column), a part per round; a round's part written earlier
        in this round gets them too."""
        if frame.empty:
            return
        new = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
        schema = self._part_schema()
        if schema is not None and _widen(schema, new.schema).equals(schema):
            for server_round, rows in _by_round(_cast(new, schema)):
                part = self.path / part_name(server_round)
                if part.exists():
                    rows = pa.concat_tables([pq.read_table(part), rows])
                with atomic_target(part) as tmp:
                    pq.write_table(rows, tmp)
            return
        settle(self.path)
        tables = [pq.read_table(self.path).replace_schema_metadata(None), new] if self.path.exists() else [new]
        wider = _widen(*(table.schema for table in tables))
        with atomic_swap(self.path) as staged:
            staged.mkdir()
            for server_round, rows in _by_round(pa.concat_tables([_cast(table, wider) for table in tables])):
                pq.write_table(rows, staged / part_name(server_round))
        self._schema = wider

    def compact(self) -> None:
        """Rewrite the parts as one Parquet file at the same path (nothing to do when it is one)."""
        settle(self.path)
        if self.path.is_dir():
            table = pq.read_table(self.path)
            with atomic_swap(self.path) as staged:
                pq.write_table(table, staged)

    def truncate(self, upto: int) -> None:
        """Drop the rows of rounds after `upto` (a resumed run redoes them), settling an interrupted swap."""
        settle(self.path)
        if self.path.is_dir():
            parts = _parts(self.path)
            for server_round, part in parts:
                if server_round > upto:
                    part.unlink()
            if all(server_round > upto for server_round, _ in parts):
                shutil.rmtree(self.path)
        elif self.path.is_file():
            truncate_file(self.path, upto)

    def _part_schema(self) -> pa.Schema | None:
        """The schema of the parts (read from one of them once); None when the table is not a directory."""
        if not self.path.is_dir():
            return None
        if self._schema is None:
            with os.scandir(self.path) as entries:
                part = next((entry.path for entry in entries if PART.fullmatch(entry.name)), None)
            self._schema = pq.read_schema(part).remove_metadata() if part is not None else None
        return self._schema


def truncate_file(path: Path, upto: int) -> None:
    """Drop the rows of rounds after `upto` from a one-file table (removed when none is left)."""
    table = pq.read_table(path)
    kept = table.filter(pc.field("round") <= upto)
    if kept.num_rows == 0:
        path.unlink()
    elif kept.num_rows < table.num_rows:
        with atomic_target(path) as tmp:
            pq.write_table(kept, tmp)


def _parts(path: Path) -> list[tuple[int, Path]]:
    """(round, file) of each part of a part table's directory, by round."""
    found = ((PART.fullmatch(entry.name), entry.path) for entry in os.scandir(path))
    return sorted((int(match.group(1)), Path(file)) for match, file in found if match)


def _widen(*schemas: pa.Schema) -> pa.Schema:
    """The narrowest schema all of `schemas` cast to (null -> any type, int -> float, new columns added)."""
    return pa.unify_schemas(list(schemas), promote_options="permissive").remove_metadata()


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in `schema`: its columns cast and ordered, a column it lacks all null."""
    columns = [
        table[field.name].cast(field.type) if field.name in table.column_names else pa.nulls(table.num_rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _by_round(table: pa.Table) -> Iterable[tuple[int, pa.Table]]:
    """`table`'s rows grouped by round, rounds ascending, rows in their order."""
    rounds = sorted(pc.unique(table["round"]).to_pylist())
    if len(rounds) == 1:
        yield rounds[0], table
        return
    for server_round in rounds:
        yield server_round, table.filter(pc.equal(table["round"], server_round))


class RunDirectory:
    """One run's folder. Each round's new rows are written once, as a part of each part table, and only
    the rows of the round last written stay in memory (`latest`): a long run's commits and memory do
    not grow with its rounds."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self._parts = {name: PartTable(self.table_path(name)) for name in TABLES}
        self._added: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}  # since the last flush
        self._whole: dict[str, pd.DataFrame] = {}  # tables set whole since the last flush
        self._latest: dict[str, pd.DataFrame] = {name: pd.DataFrame() for name in TABLES}

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def table_path(self, name: str) -> Path:
        return table_path(self.path, name)

    def create(self) -> RunDirectory:
        """The folder of a new run. Tables an earlier attempt left in it (one that committed no round, or a
        comparison's run that was interrupted) are dropped: a round's part would otherwise mix their rows
        with this run's."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.load(upto=-1)
        return self

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        return write_bytes(target, text.encode())

    def add(self, name: str, frames: pd.DataFrame | Iterable[pd.DataFrame]) -> None:
        """Queue rows for part table `name`; `flush()` writes them."""
        if isinstance(frames, pd.DataFrame):
            frames = [frames]
        self._added[name].extend(f for f in frames if not f.empty)

    def replace(self, name: str, frame: pd.DataFrame) -> None:
        """Set table `name` to `frame` as a whole (for tables kept elsewhere, e.g. a strategy's history)."""
        if name not in TABLES:
            raise KeyError(name)
        self._whole[name] = frame

    def table(self, name: str) -> pd.DataFrame:
        """Table `name` as written so far, read from disk (empty when there is none)."""
        path = self.table_path(name)
        return read_table(path) if table_exists(path) else pd.DataFrame()

    def latest(self, name: str) -> pd.DataFrame:
        """The rows the last `flush()` added to table `name`: the last committed round's (for progress)."""
        return self._latest[name]

    def load(self, upto: int) -> None:
        """Truncate the tables on disk to rounds <= `upto`, to continue the run after round `upto`.

        Temporary files of writes a crash interrupted are removed, and interrupted swaps settled.
        """
        for partial in self.path.rglob(".*.tmp"):
            partial.unlink()
        for table in self._parts.values():
            table.truncate(upto)

    def flush(self, *, final: bool = False) -> None:
        """Write the rows added since the last flush (called once per completed round); `final`: the run's
        last round, whose part tables are then compacted (before its commit: a finished run's tables are
        single files)."""
        for name, frames in self._added.items():
            rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
            self._parts[name].append(rows)
            self._latest[name] = rows
            frames.clear()
        for name, frame in self._whole.items():
            if not frame.empty:
                write_parquet(frame, self.table_path(name))
        self._whole.clear()
        if final:
            for table in self._parts.values():
                table.compact()


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
    return read_table(path) if table_exists(path) else None


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
        "natural": f" (by {data.partition_by})" if data.partition_by else "",
    }.get(data.partition, "")
    norm = "" if model.norm == "none" else f" ({model.norm})"
    return f"{model.name}{norm} on {data.dataset} · {data.partition}{detail} · {config.federation.clients} clients"


def check_analysis_tables(run: RunRecord) -> None:
    """A folder's barrier tables must say which round and client pair each row is about, as a run's do.

    Raises
    ------
    DataError
        If barriers.parquet or curves.parquet lacks one of `ANALYSIS_COLUMNS` (e.g. the tables of
        `fedlayer barrier`, which compares two checkpoints and draws its own figures).
    """
    for name in ANALYSIS_TABLES:
        table = getattr(run, name)
        missing = [c for c in ANALYSIS_COLUMNS if table is not None and c not in table.columns]
        if missing:
            raise DataError(
                f"{table_path(run.path, name)} lacks the columns {', '.join(missing)}; figures and reports "
                f"of a run or analysis folder need {', '.join(ANALYSIS_COLUMNS)} (the tables of "
                "`fedlayer barrier` have none: that command draws their figures itself)"
            )


# -- reading comparisons ---------------------------------------------------------------------------
def directory_kind(path: str | Path) -> str:
    """What a folder holds: 'comparison' (comparison.parquet), 'run' (metrics.parquet) or 'analysis'
    (barriers.parquet or curves.parquet alone); anything else is a DataError."""
    path = Path(path)
    if (path / COMPARISON).is_file():
        return "comparison"
    if table_exists(path / RUN_MARKER):
        return "run"
    if any(table_exists(table_path(path, name)) for name in ANALYSIS_TABLES):
        return "analysis"
    what = "a directory" if path.is_dir() else "a path that does not exist" if not path.exists() else "a file"
    raise DataError(
        f"{str(path)!r} is {what}, not a run directory (with {RUN_MARKER}), a comparison directory "
        f"(with {COMPARISON}) or an analysis folder (with {' or '.join(f'{n}.parquet' for n in ANALYSIS_TABLES)})"
    )


def run_folder_name(strategy: str) -> str:
    """The folder of a strategy's runs in a comparison: its name where that is safe on every file system
    (letters, digits, '.', '_', '-': fedavg, lg-fedavg), else each run of other characters replaced by '_'
    (first:2 -> first_2, re:^(conv1|fc2)$ -> re_conv1_fc2_). A leading '.' becomes '_' (no hidden
    folders), and a name longer than MAX_FOLDER_NAME is cut and ends with a hash of the full name.
    The tables keep the strategy's real name; `fedlayer.compare` refuses two strategies of one folder."""
    name = _UNSAFE.sub("_", str(strategy))
    name = "_" + name[1:] if name.startswith(".") else name
    if len(name) > MAX_FOLDER_NAME:
        digest = hashlib.sha256(str(strategy).encode()).hexdigest()[:8]
        name = f"{name[: MAX_FOLDER_NAME - 9]}-{digest}"
    return name


def run_path(compare_dir: str | Path, strategy: str, seed: int) -> Path:
    """The run directory of one (strategy, seed) of a comparison: runs/<run_folder_name>/seed-<seed>."""
    return Path(compare_dir) / "runs" / run_folder_name(strategy) / f"seed-{seed}"


def find_run(compare_dir: str | Path, strategy: str, seed: int) -> Path | None:
    """The run directory of one (strategy, seed) if it holds a run: at `run_path`, or where comparisons
    made before folder names were made safe put it (runs/<strategy>/seed-<seed>); else None."""
    for path in (run_path(compare_dir, strategy, seed), Path(compare_dir) / "runs" / str(strategy) / f"seed-{seed}"):
        if table_exists(path / RUN_MARKER):
            return path
    return None


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
    found = [(s, int(seed), find_run(compare_dir, s, int(seed))) for s, seed in pairs]
    return [(s, seed, path) for s, seed, path in found if path is not None]


def read_clients(compare_dir: str | Path) -> pd.DataFrame | None:
    """clients.parquet of a comparison (one row per strategy, seed, round and client), or None when the
    comparison has none (made before fedlayer wrote it)."""
    return read_optional(Path(compare_dir) / CLIENTS)


def read_compare_settings(compare_dir: str | Path, comparison: pd.DataFrame) -> CompareConfig:
    """The [compare] section a comparison ran with, from its config.toml; for a comparison without one
    (made before fedlayer wrote it), its strategies and seeds as the table has them, the reference
    'fedavg' when it is one of them (else the first strategy) and the default target."""
    config = read_config(compare_dir)
    if config is not None:
        return config.compare
    strategies = list(dict.fromkeys(comparison["strategy"]))
    reference = "fedavg" if "fedavg" in strategies else strategies[0]
    seeds = sorted(int(seed) for seed in comparison["seed"].unique())
    return CompareConfig(strategies=strategies, seeds=seeds, reference=reference)
