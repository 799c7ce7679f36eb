"""`fedlayer bench`: both benchmarks run end to end and report what docs/benchmarks.md quotes (never timed here)."""

import statistics

import pandas as pd
import pytest
from flwr.app import Context, RecordDict
from inprocess_grid import InProcessGrid

from fedlayer.benchmarks.simulation import Measured, plain_pytorch
from fedlayer.cli import main
from fedlayer.client_app import make_client_app
from fedlayer.config import load_config
from fedlayer.memory import is_glibc
from fedlayer.server_app import FederatedRun


def test_bench_barriers_compares_the_engine_with_the_naive_method(capsys):
    code = main(["bench", "barriers", "--model", "mlp", "--samples", "8", "--alphas", "3", "--threads", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "naive per point:" in printed and printed.count("fedlayer engine:") == 2
    assert "speed-up:" in printed and "max |loss diff|:" in printed


@pytest.mark.parametrize("argument", [["--samples", "0"], ["--alphas", "1"], ["--threads", "0"]])
def test_bench_barriers_rejects_bad_arguments(capsys, argument):
    assert main(["bench", "barriers", "--model", "mlp", *argument]) == 2
    assert "bench barriers needs" in capsys.readouterr().err


TINY_ANALYSIS = [
    "data.dataset=digits", "model.name=mlp", "federation.clients=2", "analysis.pairs=1", "analysis.samples=8",
    "analysis.alphas=3", "analysis.groups=full",
]  # fmt: skip


@pytest.mark.slow  # four fresh interpreters import torch
@pytest.mark.skipif(not is_glibc(), reason="bench memory compares glibc's malloc settings")
def test_bench_memory_prints_each_process_against_glibc_defaults(capsys):
    settings = [arg for setting in TINY_ANALYSIS for arg in ("--set", setting)]
    assert main(["bench", "memory", "--rounds", "1", "--warmup", "0", *settings]) == 0
    printed = capsys.readouterr().out
    for row in ("glibc defaults, before", "keep_freed_memory()", "GLIBC_TUNABLES, inherited", "glibc defaults, after"):
        assert row in printed
    assert "page faults" in printed and "fewer faults" in printed and "faster (wall)" in printed
    assert "curves identical in all 4 processes: yes" in printed


@pytest.mark.parametrize("argument", [["--rounds", "0"], ["--warmup", "-1"]])
def test_bench_memory_rejects_bad_arguments(capsys, argument):
    assert main(["bench", "memory", *argument]) == 2
    assert "bench memory needs --rounds >= 1 and --warmup >= 0" in capsys.readouterr().err


SMALL = [
    "data.dataset=digits", "model.name=cnn", "federation.clients=3", "federation.rounds=2", "federation.fraction=1.0",
    "data.max_train_samples=300", "analysis.pairs=1", "analysis.samples=16", "analysis.alphas=3",
    "output.checkpoints=false",
]  # fmt: skip


def test_bench_simulation_summary_uses_rounds_after_the_first_and_the_mean_baseline():
    m = Measured(
        flower_startup=15.0,
        plain_startups=(5.0, 4.0),
        flower=[9.0, 6.0, 7.0, 6.5],
        analysis=[1.0, 1.5, 1.0, 1.5],
        plain_before=[8.0, 6.0, 5.0, 6.0],
        plain_after=[9.0, 5.0, 6.0, 6.0],
        accuracy=(0.5, 0.5),
    )
    assert m.plain == [8.5, 5.5, 5.5, 6.0]
    assert m.ratio == pytest.approx(6.5 / 5.5)
    assert m.analysis_share == pytest.approx(statistics.median([1.5 / 7.5, 1.0 / 8.0, 1.5 / 8.0]))


def test_bench_simulation_plain_side_does_the_work_of_a_fedlayer_run(tmp_path):
    cfg = load_config(
        None,
        ["data.dataset=digits", "model.name=mlp", "federation.clients=10", "federation.fraction=0.3",
         "federation.rounds=3", "analysis.every=0", "output.checkpoints=false"],
    )  # fmt: skip
    run = FederatedRun.prepare(cfg, tmp_path / "run")
    grid = InProcessGrid(make_client_app(cfg), cfg.federation.clients, node_seed=3)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")

    def worked(split: str) -> list[tuple[int, int]]:
        rows = metrics[(metrics["split"] == split) & (metrics["round"] > 0)]
        return sorted((int(r), int(c)) for r, c in zip(rows["round"], rows["client"], strict=True))

    plain = plain_pytorch(cfg, rounds=3, workers=1)
    trained = sorted(plain.trained)
    assert trained == worked("train") == worked("local-test")
    # the same clients, trained alike and averaged alike: the same global model (up to summation order)
    glob = metrics[(metrics["client"] == "global") & (metrics["round"] > 0)].sort_values("round")
    assert [m.loss for m in plain.global_test] == pytest.approx(list(glob["loss"]), rel=1e-4)
    assert [m.accuracy for m in plain.global_test] == pytest.approx(list(glob["accuracy"]), abs=1e-9)
    samples = [frozenset(c for r, c in trained if r == server_round) for server_round in (1, 2, 3)]
    assert [len(s) for s in samples] == [3, 3, 3] and len(set(samples)) > 1  # a sample, drawn anew each round


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("strategy.name=fedper", "strategy.name = 'fedper'"),
        ("strategy.average=body", "strategy.average = 'body'"),
        ("federation.fault_probability=0.2", "federation.fault_probability = 0"),
        ("simulation.num_gpus=0.5", "simulation.num_gpus = 0"),
        ("federation.init=per-client", "federation.init = 'same'"),
    ],
)
def test_bench_simulation_refuses_work_its_plain_side_does_not_do(capsys, setting, named):
    assert main(["bench", "simulation", "--set", setting]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.slow
def test_bench_simulation_command_prints_the_table_and_both_targets(capsys):
    settings = [arg for setting in SMALL for arg in ("--set", setting)]
    assert main(["bench", "simulation", "--rounds", "2", *settings]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "start-up" in printed and "plain before" in printed
    assert "steady-state round" in printed and "(target <= 1.15x)" in printed
    assert "the same work: global test accuracy after round 2" in printed
    assert "per-round barrier analysis" in printed and "(target <= 20%)" in printed
