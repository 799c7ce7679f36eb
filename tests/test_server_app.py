"""fedlayer's ServerApp and ClientApp together, in process (no Ray): tables, checkpoints, analysis, errors."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import Context, RecordDict
from inprocess_grid import InProcessGrid

from fedlayer.analysis import pairwise_curves
from fedlayer.checkpoints import load_checkpoint
from fedlayer.client_app import make_client_app
from fedlayer.config import load_config
from fedlayer.errors import FedlayerError
from fedlayer.server_app import FederatedRun

BASE = [
    "data.dataset=digits",
    "data.partition=dirichlet",
    "data.alpha=1.0",
    "model.name=mlp",
    "federation.clients=4",
    "federation.rounds=2",
    "federation.batch_size=32",
    "federation.lr=0.1",
    "analysis.samples=64",
    "analysis.alphas=3",
]


def run_in_process(tmp_path: Path, *overrides: str, name: str = "run", node_seed: int | None = None):
    cfg = load_config(None, [*BASE, *overrides])
    run = FederatedRun.prepare(cfg, tmp_path / name)
    grid = InProcessGrid(make_client_app(cfg), cfg.federation.clients, node_seed=node_seed)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    return run, grid


def test_run_directory_holds_config_partitions_tables_and_checkpoints(tmp_path):
    run, _ = run_in_process(tmp_path, "strategy.name=fedper")
    path = run.run_dir.path
    for name in (
        "config.toml",
        "partitions.json",
        "metrics.parquet",
        "barriers.parquet",
        "curves.parquet",
        "checkpoints/global.safetensors",
        "checkpoints/client-0-personal.safetensors",
    ):
        assert (path / name).exists(), name
    assert load_config(path / "config.toml") == run.cfg
    metrics = pd.read_parquet(path / "metrics.parquet")
    assert list(metrics.columns) == [
        "round", "client", "split", "task", "loss", "perplexity", "accuracy", "num_examples", "num_predictions",
        "status", "error", "bytes_down", "bytes_up", "bytes_personal_down", "bytes_personal_up",
    ]  # fmt: skip
    assert set(metrics["split"]) == {"train", "local-test", "test"}
    assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2]
    assert set(metrics.loc[metrics["split"] == "train", "client"]) == {"0", "1", "2", "3"}
    barriers = pd.read_parquet(path / "barriers.parquet")
    for column in (
        "round",
        "client_a",
        "client_b",
        "group",
        "kind",
        "base",
        "bn",
        "loss_barrier_mid",
        "loss_barrier_max",
        "error_barrier_mid",
        "error_barrier_max",
    ):
        assert column in barriers.columns, column
    assert set(barriers["round"]) == {1, 2}
    assert len(barriers.groupby(["client_a", "client_b"])) == 6  # all pairs of 4 clients
    personal = load_checkpoint(path / "checkpoints/client-0-personal.safetensors")
    assert set(personal) == {"fc3.weight", "fc3.bias"}  # fedper: the head is personal


def test_observer_tables_agree_with_the_engine_on_the_same_models(tmp_path):
    run, _ = run_in_process(tmp_path, "federation.rounds=1", "analysis.pairs=2")
    stored = pd.read_parquet(run.run_dir.path / "barriers.parquet")
    states = {k: {n: t.clone() for n, t in v.items()} for k, v in run.recorder.client_states.items()}
    a = run.cfg.analysis
    _, direct = pairwise_curves(
        run.model,
        states,
        run.analysis.data,
        pairs=a.pairs,
        seed=run.cfg.seed * 100_003 + 1,
        groups=list(a.groups),
        alphas=a.alphas,
    )
    stored = stored.drop(columns=["round", "task"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(stored, direct.reset_index(drop=True), check_exact=False, atol=1e-9)


def test_two_runs_of_one_config_give_identical_tables(tmp_path):
    first, _ = run_in_process(tmp_path, "federation.fraction=0.5", name="a")
    second, _ = run_in_process(tmp_path, "federation.fraction=0.5", name="b")
    for table in ("metrics", "barriers", "curves"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(first.run_dir.table_path(table)),
            pd.read_parquet(second.run_dir.table_path(table)),
            check_exact=True,
        )


def test_fedper_keeps_heads_personal_and_bodies_equal(tmp_path):
    run, grid = run_in_process(tmp_path, "strategy.name=fedper", "analysis.every=0")
    states = run.recorder.client_states
    clients = sorted(states)
    for key in ("fc1.weight", "fc2.weight"):
        # after aggregation the bodies agree: what round-2 clients received was the same body
        received = [
            m.content["arrays"].to_torch_state_dict()[key] for m in grid.delivered if m.metadata.message_type == "train"
        ][-4:]
        assert all(torch.equal(received[0], r) for r in received[1:])
    heads = [states[c]["fc3.weight"] for c in clients]
    assert not torch.equal(heads[0], heads[1])


def test_personal_client_mode_hides_personal_layers_from_the_analysis(tmp_path):
    run, _ = run_in_process(tmp_path, "strategy.name=fedper", "strategy.personal=client")
    barriers = pd.read_parquet(run.run_dir.path / "barriers.parquet")
    assert "fc3" not in set(barriers["group"])
    assert "full" not in set(barriers["group"])
    assert {"fc1", "fc2"} <= set(barriers["group"])


def test_barrier_aware_records_its_choices(tmp_path):
    run, _ = run_in_process(tmp_path, "strategy.name=barrier-aware", "strategy.threshold=0.05")
    history = run.strategy.history_frame()
    assert set(history["round"]) == {1, 2}
    assert set(history["layer"]) == {"fc1", "fc2", "fc3"}
    assert (history["averaged"] == (history["barrier"] < 0.05)).all()
    assert (run.run_dir.path / "choices.parquet").exists()
    # the strategy decides on the round's own analysis: its barriers are the analysed single layers' means
    analysed = pd.read_parquet(run.run_dir.path / "barriers.parquet").query("kind == 'layer'")
    means = analysed.groupby(["round", "group"])["loss_barrier_mid"].mean()
    for row in history.itertuples():
        assert row.barrier == means[(row.round, row.layer)]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.name=fedmagic", "fedmagic"),
        ("strategy.average=conv9", "conv9"),
        ("strategy.class=collections:OrderedDict", "is not a flwr.serverapp.strategy.Strategy subclass"),
        ("strategy.class=no.such.module:Strategy", "no.such.module"),
        ("analysis.groups=window:99", "window"),
    ],
)
def test_bad_strategy_or_groups_fail_before_training_and_leave_nothing(tmp_path, override, message):
    cfg = load_config(None, [*BASE, override])
    with pytest.raises(FedlayerError, match=message):
        FederatedRun.prepare(cfg, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_barrier_cli_analyses_the_checkpoints_of_two_never_averaged_clients(tmp_path, capsys):
    """docs/run-directory.md, 'Barriers between two checkpoints': a `local` run's personal layers are full models."""
    from fedlayer.cli import main

    run, _ = run_in_process(tmp_path, "strategy.name=local", "analysis.every=0")
    folder = run.run_dir.checkpoints
    out = tmp_path / "pair"
    code = main(
        [
            "barrier",
            str(folder / "client-0-personal.safetensors"),
            str(folder / "client-1-personal.safetensors"),
            "--model",
            "mlp",
            "--dataset",
            "digits",
            "--groups",
            "layers,full,shallow",
            "--alphas",
            "5",
            "--samples",
            "128",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    barriers = pd.read_parquet(out / "barriers.parquet")
    assert {"layer", "full", "shallow"} <= set(barriers["kind"])
    assert (out / "curves.parquet").exists()


@pytest.mark.parametrize(("strategy", "shown"), [("fedper", True), ("fedavg", False)])
def test_the_progress_line_shows_personalised_accuracy_when_layers_stay_personal(tmp_path, capsys, strategy, shown):
    run, _ = run_in_process(tmp_path, f"strategy.name={strategy}", "analysis.every=0", "federation.rounds=1")
    printed = capsys.readouterr().err
    line = next(line for line in printed.splitlines() if "round 1/1" in line)
    assert ("personalised" in line) == shown
    if shown:
        local = pd.read_parquet(run.run_dir.table_path("metrics")).query("round == 1 and split == 'local-test'")
        assert f"personalised {100 * local['accuracy'].mean():5.1f}%" in line
