"""`fedlayer compare`: every strategy under every seed, everything else equal, gathered in one table.

The comparisons here run through the in-process grid (no Ray) via `run_comparison(engine=...)`; one
slow test runs the command on Flower's simulation engine.
"""

from __future__ import annotations

import pandas as pd
import pytest
from inprocess_grid import in_process_engine
from shipped_configs import SIMULATIONS

import fedlayer.simulation
from fedlayer.analysis.summary import worst_clients_mean
from fedlayer.cli import main
from fedlayer.compare import CLIENT_COLUMNS, COMPARISON_COLUMNS, run_comparison, run_path
from fedlayer.config import load_config
from fedlayer.data.partition import Partitions
from fedlayer.errors import FedlayerError, RunError

SETTINGS = [
    "data.dataset=digits", "model.name=cnn", "federation.clients=4", "federation.rounds=2",
    "federation.local_epochs=1", "data.max_train_samples=400", "data.partition=dirichlet", "data.alpha=1.0",
    "analysis.every=1", "analysis.pairs=2", "analysis.samples=32", "analysis.alphas=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    cfg = load_config(None, SETTINGS)
    table = run_comparison(cfg, ["fedavg", "fedper", "first:4"], [0, 1], out, engine=in_process_engine)
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


def test_run_folders_have_file_system_safe_names_and_the_tables_the_real_ones(compared):
    out, table = compared
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["fedavg", "fedper", "first_4"]
    assert not [p for p in out.rglob("*") if ":" in p.name]
    assert run_path(out, "first:4", 1) == out / "runs" / "first_4" / "seed-1"
    assert "first:4" in set(table["strategy"])
    assert "first:4" in set(pd.read_parquet(out / "clients.parquet")["strategy"])
    assert load_config(run_path(out, "first:4", 1) / "config.toml").strategy.name == "first:4"


def test_the_comparison_keeps_the_config_it_ran_with_its_compare_section_resolved(compared):
    out, _ = compared
    cfg = load_config(out / "config.toml")
    assert cfg.compare.strategies == ["fedavg", "fedper", "first:4"] and cfg.compare.seeds == [0, 1]
    assert cfg.compare.reference == "fedavg" and cfg.federation.clients == 4


def test_clients_table_has_every_clients_result_and_label_distribution(compared):
    out, table = compared
    clients = pd.read_parquet(out / "clients.parquet")
    assert tuple(clients.columns) == CLIENT_COLUMNS
    assert not clients[["strategy", "seed", "round", "client"]].duplicated().any()
    assert len(clients) == 3 * 2 * 2 * 4  # strategies x seeds x rounds 1..2 x clients
    per_run = clients.groupby(["strategy", "seed", "round"])["accuracy"]
    final = table.set_index(["strategy", "seed", "round"]).loc[per_run.mean().index]
    assert per_run.mean().to_numpy() == pytest.approx(final["personal_accuracy_mean"].to_numpy())
    assert per_run.agg(worst_clients_mean).to_numpy() == pytest.approx(final["personal_accuracy_worst10"].to_numpy())
    assert (final["personal_accuracy_worst10"] == per_run.min().to_numpy()).all()  # 4 clients: the worst one
    counts = Partitions.load(run_path(out, "fedper", 1) / "partitions.json").class_counts(split="train")
    row = clients[(clients["strategy"] == "fedper") & (clients["seed"] == 1) & (clients["client"] == "2")].iloc[0]
    assert row["train_examples"] == counts.loc[2].sum() and row["classes"] == (counts.loc[2] > 0).sum()
    assert row["majority_class"] == counts.loc[2].idxmax()
    assert row["majority_share"] == pytest.approx(counts.loc[2].max() / counts.loc[2].sum())


def test_a_classification_comparison_says_so_and_has_no_perplexity(compared):
    out, table = compared
    clients = pd.read_parquet(out / "clients.parquet")
    for frame in (table, clients, pd.read_parquet(run_path(out, "fedavg", 0) / "metrics.parquet")):
        assert set(frame["task"]) == {"classification"}
    assert table[["global_perplexity", "personal_perplexity_mean"]].isna().all().all()
    assert clients["perplexity"].isna().all()


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
        (["fedper", "local"], "compare.reference 'fedavg' is not among the compared strategies"),
    ],
)
def test_a_bad_strategy_fails_before_anything_runs_or_is_written(tmp_path, strategies, message):
    ran = []
    with pytest.raises(FedlayerError, match=message):
        run_comparison(load_config(None, SETTINGS), strategies, [0], tmp_path / "out",
                       engine=lambda *args: ran.append(args))  # fmt: skip
    assert not ran and not (tmp_path / "out").exists()


def test_a_finished_comparison_is_kept_unless_overwrite_is_asked(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "comparison.parquet").write_bytes(b"an earlier comparison")
    ran = []

    def engine(*args):
        ran.append(args)
        raise KeyboardInterrupt  # stop here: what matters is whether it started

    with pytest.raises(RunError, match=r"already holds a comparison \(comparison.parquet\); give another --out"):
        run_comparison(load_config(None, SETTINGS), ["fedavg"], [0], out, engine=engine)
    assert not ran and (out / "comparison.parquet").read_bytes() == b"an earlier comparison"
    with pytest.raises(KeyboardInterrupt):
        run_comparison(load_config(None, [*SETTINGS, "output.overwrite=true"]), ["fedavg"], [0], out, engine=engine)
    assert ran and not (out / "comparison.parquet").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--strategies", " , "], "names no strategy"),
        (["--strategies", "fedavg", "--seeds", "0"], "--seeds must be at least 1"),
        (["--strategies", "fedavg,fedsgd"], "fedsgd"),
        (["--strategies", "fedper,local"], "compare.reference 'fedavg' is not among the compared strategies"),
        (["--strategies", "fedavg,fedper", "--reference", "local"], "compare.reference 'local' is not among"),
        (["--set", "compare.seeds=[0,0]"], "seeds are listed twice"),
    ],
)
def test_compare_command_rejects_bad_arguments_with_exit_code_2(tmp_path, capsys, arguments, message):
    code = main(["compare", str(SIMULATIONS / "demo.toml"), "--out", str(tmp_path / "out"), *arguments])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_command_takes_strategies_and_seeds_from_the_config(tmp_path, capsys, monkeypatch):
    """`fedlayer compare CONFIG` with no flags: the demo's [compare] section, here with one seed."""
    ran = []

    def engine(main_fn, client_app, cfg, **_):
        ran.append(cfg.seed)
        in_process_engine(main_fn, client_app, cfg)

    monkeypatch.setattr(fedlayer.simulation, "simulate", engine)
    settings = [arg for setting in [*SETTINGS, "federation.rounds=1", "seed=3"] for arg in ("--set", setting)]
    out = tmp_path / "out"
    assert main(["compare", str(SIMULATIONS / "demo.toml"), *settings, "--out", str(out)]) == 0
    demo = load_config(SIMULATIONS / "demo.toml")
    table = pd.read_parquet(out / "comparison.parquet")
    assert list(dict.fromkeys(table["strategy"])) == demo.compare.strategies == ["fedavg", "fedper", "lg-fedavg"]
    assert ran == [3] and set(table["seed"]) == {3}  # compare.seeds is empty: the config's seed
    printed = capsys.readouterr().out
    assert "One seed: no confidence interval" in printed and "clients.png" in printed
    assert (out / "clients.parquet").is_file() and (out / "plots" / "clients.png").is_file()


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
    assert {p.name for p in (out / "plots").iterdir()} == {"accuracy.png", "barrier_heatmaps.png", "final.png",
                                                            "clients.png", "communication.png"}  # fmt: skip
