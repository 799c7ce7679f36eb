"""`fedlayer compare`: every strategy under every seed, everything else equal, gathered in one table.

The comparisons here run through the in-process grid (no Ray) via `run_comparison(engine=...)`; one
slow test runs the command on Flower's simulation engine.
"""

from __future__ import annotations

import pandas as pd
import pytest
from flwr.app import Context, RecordDict
from inprocess_grid import InProcessGrid
from shipped_configs import SIMULATIONS

from fedlayer.cli import main
from fedlayer.compare import COMPARISON_COLUMNS, run_comparison, run_path
from fedlayer.config import load_config
from fedlayer.errors import FedlayerError

SETTINGS = [
    "data.dataset=digits", "model.name=cnn", "federation.clients=4", "federation.rounds=2",
    "federation.local_epochs=1", "data.max_train_samples=400", "data.partition=dirichlet", "data.alpha=1.0",
    "analysis.every=1", "analysis.pairs=2", "analysis.samples=32", "analysis.alphas=3",
]  # fmt: skip


def in_process(main_fn, client_app, cfg) -> None:
    """The engine of these tests: the seed's ServerApp main against in-process clients."""
    grid = InProcessGrid(client_app, cfg.federation.clients, node_seed=0)
    main_fn(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    cfg = load_config(None, SETTINGS)
    table = run_comparison(cfg, ["fedavg", "fedper", "first:4"], [0, 1], out, engine=in_process)
    return out, table


def test_table_has_one_row_per_strategy_seed_and_round_with_the_documented_columns(compared):
    out, table = compared
    assert tuple(table.columns) == COMPARISON_COLUMNS
    keys = table[["strategy", "seed", "round"]]
    assert not keys.duplicated().any()
    assert len(table) == 3 * 2 * 3  # strategies x seeds x rounds 0..2
    assert set(table["round"]) == {0, 1, 2}
    assert table.loc[table["round"] > 0, ["global_accuracy", "personal_accuracy_mean", "full_barrier_mean",
                                          "layer_barrier_mean"]].notna().all().all()  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(out / "comparison.parquet"), table)
    assert pd.read_csv(out / "comparison.csv").shape == table.shape
    for name in ("fedavg", "fedper", "first:4"):
        for seed in (0, 1):
            assert (run_path(out, name, seed) / "metrics.parquet").is_file()


def test_rows_agree_with_each_run_directory(compared):
    out, table = compared
    metrics = pd.read_parquet(run_path(out, "fedper", 1) / "metrics.parquet")
    row = table[(table["strategy"] == "fedper") & (table["seed"] == 1) & (table["round"] == 2)].iloc[0]
    local = metrics[(metrics["round"] == 2) & (metrics["split"] == "local-test")]["accuracy"]
    glob = metrics[(metrics["round"] == 2) & (metrics["client"] == "global")].iloc[0]
    assert row["personal_accuracy_mean"] == pytest.approx(local.mean())
    assert row["global_accuracy"] == pytest.approx(glob["accuracy"])
    barriers = pd.read_parquet(run_path(out, "fedper", 1) / "barriers.parquet")
    full = barriers[(barriers["round"] == 2) & (barriers["kind"] == "full")]["loss_barrier_mid"]
    assert row["full_barrier_mean"] == pytest.approx(full.mean())


def test_same_averaged_layers_under_another_name_give_identical_results(compared):
    out, table = compared
    numbers = [c for c in COMPARISON_COLUMNS if c != "strategy"]
    fedavg = table[table["strategy"] == "fedavg"][numbers].reset_index(drop=True)
    every_layer = table[table["strategy"] == "first:4"][numbers].reset_index(drop=True)  # cnn has 4 layers
    pd.testing.assert_frame_equal(fedavg, every_layer)
    for seed in (0, 1):
        for name in ("metrics", "barriers"):
            pd.testing.assert_frame_equal(
                pd.read_parquet(run_path(out, "fedavg", seed) / f"{name}.parquet"),
                pd.read_parquet(run_path(out, "first:4", seed) / f"{name}.parquet"),
            )


def test_seeds_and_strategies_differ_where_they_should(compared):
    _, table = compared
    final = table[table["round"] == 2].set_index(["strategy", "seed"])["personal_accuracy_mean"]
    assert final[("fedavg", 0)] != final[("fedavg", 1)]  # another seed: other partitions and initial model
    assert final[("fedavg", 0)] != final[("fedper", 0)]  # heads kept personal: other personalised models
    start = table[table["round"] == 0].set_index(["strategy", "seed"])["global_accuracy"]
    assert start[("fedavg", 0)] == start[("fedper", 0)]  # one initial model per seed, whatever the strategy


@pytest.mark.parametrize(
    ("strategies", "message"),
    [
        (["fedavg", "nosuch"], "nosuch"),
        (["fedavg", "fedavg"], "listed twice"),
        (["fedavg", "layer9"], "matches no layer"),
    ],
)
def test_a_bad_strategy_fails_before_anything_runs_or_is_written(tmp_path, strategies, message):
    ran = []
    with pytest.raises(FedlayerError, match=message):
        run_comparison(load_config(None, SETTINGS), strategies, [0], tmp_path / "out",
                       engine=lambda *args: ran.append(args))  # fmt: skip
    assert not ran and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--strategies", " , "], "names no strategy"),
        (["--strategies", "fedavg", "--seeds", "0"], "--seeds must be at least 1"),
        (["--strategies", "fedavg,fedsgd"], "fedsgd"),
    ],
)
def test_compare_command_rejects_bad_arguments_with_exit_code_2(tmp_path, capsys, arguments, message):
    code = main(["compare", str(SIMULATIONS / "demo.toml"), "--out", str(tmp_path / "out"), *arguments])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compare_command_on_flowers_simulation_engine(tmp_path, capsys):
    settings = [arg for setting in [*SETTINGS, "federation.rounds=1"] for arg in ("--set", setting)]
    out = tmp_path / "out"
    code = main(["compare", str(SIMULATIONS / "demo.toml"), *settings, "--strategies", "fedavg,lg-fedavg",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    table = pd.read_parquet(out / "comparison.parquet")
    assert len(table) == 2 * 2  # strategies x rounds 0..1, one seed
    printed = capsys.readouterr().out
    assert "lg-fedavg" in printed and "accuracy.png" in printed
    assert {p.name for p in (out / "plots").iterdir()} == {"accuracy.png", "barrier_heatmaps.png", "final.png"}
