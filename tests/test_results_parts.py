"""Part tables: a Parquet part per round, read back whole, compacted at the end, truncated on resume, and
readable and recoverable in every state a crash can leave."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from flwr.app import ArrayRecord, Context, RecordDict
from flwr.serverapp.strategy import FedAvg
from inprocess_grid import InProcessGrid, ProtocolClient, digits, tiny_net

from fedlayer import atomic
from fedlayer.cli import main
from fedlayer.client_app import make_client_app
from fedlayer.config import load_config
from fedlayer.results import PartTable, RunDirectory, directory_kind, read_run, read_table
from fedlayer.server_app import FederatedRun
from strategies import BarrierAnalysis


def metrics_rows(server_round: int) -> pd.DataFrame:
    clients = ["global"] if server_round == 0 else ["0", "1", "global"]
    return pd.DataFrame(
        {
            "round": server_round,
            "client": clients,
            "split": ["test" if c == "global" else "train" for c in clients],
            "loss": [1.0 / (server_round + 1)] * len(clients),
            "num_examples": [10 * (server_round + 1)] * len(clients),
        }
    )


def barrier_rows(server_round: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "round": server_round,
            "client_a": ["0", "0"],
            "client_b": ["1", "1"],
            "group": ["fc1", "full"],
            "loss_barrier_mid": [0.1 * server_round, 0.2 * server_round],
        }
    )


def write_rounds(run_dir: RunDirectory, rounds: range, *, final_round: int | None = None) -> None:
    """Commit `rounds` as the server does: metrics every round, barriers from round 1 on."""
    for server_round in rounds:
        run_dir.add("metrics", metrics_rows(server_round))
        if server_round > 0:
            run_dir.add("barriers", barrier_rows(server_round))
        run_dir.flush(final=server_round == final_round)


def expected(rows, rounds: range) -> pd.DataFrame:
    return pd.concat([rows(r) for r in rounds], ignore_index=True)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def part_rounds(path: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in path.glob("round-*.parquet"))


@pytest.fixture
def run_dir(tmp_path) -> RunDirectory:
    return RunDirectory(tmp_path / "run").create()


# -- writing and reading ---------------------------------------------------------------------------
def test_each_round_is_one_part_and_the_directory_reads_back_as_one_table(run_dir):
    write_rounds(run_dir, range(0, 5))
    metrics = run_dir.table_path("metrics")
    assert metrics.is_dir() and part_rounds(metrics) == [0, 1, 2, 3, 4]
    assert part_rounds(run_dir.table_path("barriers")) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(pd.read_parquet(metrics), expected(metrics_rows, range(5)))
    pd.testing.assert_frame_equal(
        pd.read_parquet(run_dir.path / "barriers.parquet"), expected(barrier_rows, range(1, 5))
    )
    run = read_run(run_dir.path)
    pd.testing.assert_frame_equal(run.metrics, expected(metrics_rows, range(5)))
    assert run.curves is None and run.choices is None
    assert directory_kind(run_dir.path) == "run"
    assert hidden(run_dir.path) == []


def test_only_the_last_committed_rounds_rows_stay_in_memory(run_dir):
    write_rounds(run_dir, range(0, 3))
    pd.testing.assert_frame_equal(run_dir.latest("metrics"), metrics_rows(2))
    pd.testing.assert_frame_equal(run_dir.table("metrics"), expected(metrics_rows, range(3)))  # read from disk


def test_the_final_round_compacts_each_part_table_into_one_file_at_the_same_path(run_dir):
    write_rounds(run_dir, range(0, 4), final_round=3)
    run_dir.replace("choices", pd.DataFrame({"round": [1], "layer": ["fc1"], "averaged": [True]}))
    run_dir.flush(final=True)  # a table set whole stays a file; compacting twice changes nothing
    for name, rows, rounds in (("metrics", metrics_rows, range(4)), ("barriers", barrier_rows, range(1, 4))):
        path = run_dir.table_path(name)
        assert path.is_file()
        pd.testing.assert_frame_equal(pd.read_parquet(path), expected(rows, rounds))
    assert run_dir.table_path("choices").is_file() and hidden(run_dir.path) == []


def test_parts_share_one_schema_when_a_column_is_null_in_one_round_and_widens_later(tmp_path):
    table = PartTable(tmp_path / "t.parquet")
    table.append(pd.DataFrame({"round": [1, 1], "note": [None, None], "count": [1, 2]}))
    table.append(pd.DataFrame({"round": [2], "note": ["late"], "count": [2.5]}))  # null -> string, int -> float
    table.append(pd.DataFrame({"round": [3], "count": [3], "extra": [True]}))  # a missing and a new column
    table.append(pd.DataFrame({"round": [4], "note": [None], "count": [4], "extra": [None]}))  # narrower again
    schemas = {str(pq.read_schema(part)) for part in table.path.glob("round-*.parquet")}
    assert len(schemas) == 1 and len(list(table.path.glob("round-*.parquet"))) == 4
    back = pd.read_parquet(table.path)
    assert list(back.columns) == ["round", "note", "count", "extra"]
    assert back["note"].isna().tolist() == [True, True, False, True, True] and back["note"][2] == "late"
    assert back["count"].tolist() == [1.0, 2.0, 2.5, 3.0, 4.0]
    assert back["extra"].tolist() == [None, None, None, True, None]
    table.compact()
    pd.testing.assert_frame_equal(pd.read_parquet(table.path), back)


def test_a_second_write_in_one_round_joins_that_rounds_part(tmp_path):
    table = PartTable(tmp_path / "t.parquet")
    table.append(metrics_rows(1))
    table.append(metrics_rows(1).assign(client="late"))
    assert part_rounds(table.path) == [1]
    assert pd.read_parquet(table.path)["client"].tolist() == ["0", "1", "global", "late", "late", "late"]


# -- resuming --------------------------------------------------------------------------------------
def test_resume_drops_the_parts_of_rounds_after_the_committed_one(run_dir):
    write_rounds(run_dir, range(0, 6))
    resumed = RunDirectory(run_dir.path)
    resumed.load(3)
    assert part_rounds(run_dir.table_path("metrics")) == [0, 1, 2, 3]
    write_rounds(resumed, range(4, 6))
    pd.testing.assert_frame_equal(read_table(run_dir.table_path("metrics")), expected(metrics_rows, range(6)))
    resumed.load(0)  # no barrier rows left: no barriers table
    assert not run_dir.table_path("barriers").exists() and part_rounds(run_dir.table_path("metrics")) == [0]


def test_a_compacted_table_is_truncated_on_resume_and_split_into_parts_again(run_dir):
    """A crash after the final round's compaction, before its commit: the run resumes from the round before."""
    write_rounds(run_dir, range(0, 4), final_round=3)
    resumed = RunDirectory(run_dir.path)
    resumed.load(2)
    assert run_dir.table_path("metrics").is_file()
    pd.testing.assert_frame_equal(read_table(run_dir.table_path("metrics")), expected(metrics_rows, range(3)))
    write_rounds(resumed, range(3, 5))
    assert part_rounds(run_dir.table_path("metrics")) == [0, 1, 2, 3, 4]
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir.table_path("metrics")), expected(metrics_rows, range(5)))
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir.table_path("barriers")), expected(barrier_rows, range(1, 5)))


# -- crash windows ---------------------------------------------------------------------------------
def test_a_part_left_half_written_is_ignored_by_readers_and_removed_on_resume(run_dir):
    write_rounds(run_dir, range(0, 3))
    partial = run_dir.table_path("metrics") / ".round-000003.parquet.x1y2.tmp"
    partial.write_bytes(b"PAR1 half a part")
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir.table_path("metrics")), expected(metrics_rows, range(3)))
    pd.testing.assert_frame_equal(read_run(run_dir.path).metrics, expected(metrics_rows, range(3)))
    RunDirectory(run_dir.path).load(2)
    assert not partial.exists()


class Crash(Exception):
    """Stands for the process dying."""


def crash_at(monkeypatch, step: str) -> None:
    """Make a swap stop at `step`: before its first rename, between its renames, or before the old
    version is removed."""
    renames = {"before the swap": 1, "between the renames": 2}
    if step in renames:
        calls, real = [], os.rename

        def rename(src, dst):
            calls.append(src)
            if len(calls) == renames[step]:
                raise Crash(step)
            real(src, dst)

        monkeypatch.setattr(atomic.os, "rename", rename)
    else:

        def rmtree(path, *args, **kwargs):
            raise Crash(step)

        monkeypatch.setattr(atomic.shutil, "rmtree", rmtree)


STEPS = ["before the swap", "between the renames", "before the old version is removed"]


@pytest.mark.parametrize("step", STEPS)
def test_a_compaction_a_crash_interrupted_reads_whole_and_is_settled_on_resume(run_dir, monkeypatch, step):
    write_rounds(run_dir, range(0, 4))
    path = run_dir.table_path("metrics")
    with monkeypatch.context() as patch:
        crash_at(patch, step)
        with pytest.raises(Crash):
            PartTable(path).compact()
    assert path.exists() == (step != "between the renames")
    whole = expected(metrics_rows, range(4))
    pd.testing.assert_frame_equal(read_table(path), whole)
    pd.testing.assert_frame_equal(read_run(run_dir.path).metrics, whole)
    assert directory_kind(run_dir.path) == "run"
    assert hidden(run_dir.path)  # what the crash left

    RunDirectory(run_dir.path).load(3)
    assert hidden(run_dir.path) == []
    assert path.is_file() == (step != "before the swap")  # a complete new version is put in place
    pd.testing.assert_frame_equal(pd.read_parquet(path), whole)
    PartTable(path).compact()
    assert path.is_file()
    pd.testing.assert_frame_equal(pd.read_parquet(path), whole)


@pytest.mark.parametrize("step", STEPS)
def test_a_widening_rebuild_a_crash_interrupted_reads_as_before_or_after_it(run_dir, monkeypatch, step):
    write_rounds(run_dir, range(0, 3))
    path = run_dir.table_path("metrics")
    wider = metrics_rows(3).assign(loss=[None, None, None], extra=["x", "y", "z"])  # a new column: a rebuild
    with monkeypatch.context() as patch:
        crash_at(patch, step)
        with pytest.raises(Crash):
            PartTable(path).append(wider)
    back = read_table(path)
    rebuilt = step != "before the swap"
    assert back["round"].max() == (3 if rebuilt else 2) and ("extra" in back.columns) == rebuilt
    RunDirectory(run_dir.path).load(2)  # the round was not committed
    assert hidden(run_dir.path) == [] and part_rounds(path) == [0, 1, 2]
    pd.testing.assert_frame_equal(read_table(path)[list(metrics_rows(0).columns)], expected(metrics_rows, range(3)))


def test_an_unfinished_new_version_is_ignored_and_removed(run_dir):
    write_rounds(run_dir, range(0, 2))
    path = run_dir.table_path("metrics")
    atomic.staged_path(path).write_bytes(b"PAR1 half a compaction")
    pd.testing.assert_frame_equal(read_table(path), expected(metrics_rows, range(2)))
    RunDirectory(run_dir.path).load(1)
    assert hidden(run_dir.path) == [] and path.is_dir()


# -- fedlayer's ServerApp and the barrier-analysis wrapper -----------------------------------------
FAST = [
    "data.dataset=digits", "model.name=mlp", "federation.clients=3", "federation.rounds=2",
    "federation.batch_size=64", "analysis.samples=32", "analysis.alphas=3", "output.checkpoints=false",
]  # fmt: skip


def execute(run: FederatedRun) -> None:
    grid = InProcessGrid(make_client_app(run.cfg), run.cfg.federation.clients, node_seed=0)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))


def test_a_crash_after_the_final_compaction_resumes_to_the_tables_of_an_uninterrupted_run(tmp_path):
    cfg = load_config(None, FAST)
    whole = FederatedRun.prepare(cfg, tmp_path / "whole")
    execute(whole)
    for name in ("metrics", "barriers", "curves"):
        assert whole.run_dir.table_path(name).is_file()
    assert hidden(whole.run_dir.path) == []
    assert set(whole.analysis.barriers["round"]) == {2}  # the server keeps the last round's rows only

    broken = FederatedRun.prepare(cfg, tmp_path / "broken")
    commit = broken.recorder.on_commit

    def crashing(server_round, arrays):
        if server_round == 2:  # the tables are compacted, round 2 is not committed
            raise Crash
        commit(server_round, arrays)

    broken.recorder.on_commit = crashing
    with pytest.raises(Crash):
        execute(broken)
    assert json.loads((tmp_path / "broken" / "state.json").read_text())["round"] == 1
    assert broken.run_dir.table_path("metrics").is_file()
    execute(FederatedRun.resume(tmp_path / "broken"))
    for name in ("metrics", "barriers", "curves"):
        path = broken.run_dir.table_path(name)
        assert path.is_file()
        pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(whole.run_dir.table_path(name)), obj=name)


class StopsInRound(FedAvg):
    """FedAvg that dies while aggregating round `stop` (the ServerApp of one's own crashing)."""

    def __init__(self, stop: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stop = stop

    def aggregate_train(self, server_round, replies):
        if server_round == self.stop:
            raise Crash
        return super().aggregate_train(server_round, replies)


def analyse(out: Path, inner: FedAvg, rounds: int) -> BarrierAnalysis:
    nodes = 3
    strategy = BarrierAnalysis(inner, tiny_net(), (digits()[0][-64:], digits()[1][-64:]), alphas=3, out_dir=out)
    grid = InProcessGrid(ProtocolClient(tiny_net, *digits()).app, nodes)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(tiny_net().state_dict()), num_rounds=rounds)
    return strategy


def test_barrier_analysis_writes_parts_that_plot_and_report_read_and_compacts_them_when_it_ends(tmp_path, capsys):
    nodes = {"min_available_nodes": 3, "min_train_nodes": 3, "min_evaluate_nodes": 3}
    stopped = tmp_path / "stopped"
    with pytest.raises(Crash):
        analyse(stopped, StopsInRound(3, **nodes), rounds=4)
    assert part_rounds(stopped / "barriers.parquet") == [1, 2] and part_rounds(stopped / "curves.parquet") == [1, 2]
    assert directory_kind(stopped) == "analysis"
    assert set(read_run(stopped).barriers["round"]) == {1, 2}
    assert main(["plot", str(stopped)]) == 0 and (stopped / "plots" / "barrier_heatmap.png").is_file()
    assert main(["report", str(stopped)]) == 0 and "## Layer-wise barriers" in (stopped / "report.md").read_text()
    capsys.readouterr()

    finished = tmp_path / "finished"
    strategy = analyse(finished, FedAvg(**nodes), rounds=2)
    for name in ("barriers", "curves"):
        assert (finished / f"{name}.parquet").is_file()
    pd.testing.assert_frame_equal(pd.read_parquet(finished / "barriers.parquet"), strategy.barriers)
    assert set(strategy.barriers["round"]) == {1, 2} and hidden(finished) == []


def test_a_new_run_in_a_folder_an_earlier_attempt_left_starts_with_no_rows(tmp_path):
    """An interrupted comparison's run, started again: its old parts must not mix with the new rows."""
    earlier = RunDirectory(tmp_path).create()
    for server_round in range(3):
        earlier.add("metrics", pd.DataFrame({"round": [server_round], "loss": [1.0]}))
        earlier.flush()
    again = RunDirectory(tmp_path).create()
    again.add("metrics", pd.DataFrame({"round": [0], "loss": [2.0]}))
    again.flush()
    assert pd.read_parquet(tmp_path / "metrics.parquet").to_dict("list") == {"round": [0], "loss": [2.0]}
