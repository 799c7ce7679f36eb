"""The paper's experiments as ready configs (simulations/paper_*.toml and their paper-scale twins).

Each experiment has a CPU config and a paper-scale twin that measures the same thing, and its settings
fit what it is about. Each CPU config gets a smoke run, cut to one round on a few samples of its own
dataset, through the in-process grid (no Ray), and yields the kind of result rows its experiment is
about. The twins need CIFAR and a GPU, so test_simulation_configs.py only resolves them against their model.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context, RecordDict
from inprocess_grid import InProcessGrid
from shipped_configs import SIMULATIONS, compare_strategies, layers_of

from fedlayer.client_app import make_client_app
from fedlayer.config import Config, load_config
from fedlayer.data import load_dataset
from fedlayer.errors import FedlayerError
from fedlayer.server_app import FederatedRun
from fedlayer.task import partitions_for

EXPERIMENTS = ("paper_single_layer", "paper_cumulative", "paper_deep_linear", "paper_robustness", "paper_federated")
CPU = {name: SIMULATIONS / f"{name}.toml" for name in EXPERIMENTS}
SCALE = {name: SIMULATIONS / "paper_scale" / f"{name}.toml" for name in EXPERIMENTS}
SMOKE = [  # one round on a few samples of the config's own dataset
    "federation.rounds=1",
    "federation.local_epochs=1",
    "data.max_train_samples=120",
    "data.max_test_samples=64",
    "analysis.every=1",
    "analysis.samples=16",
    "analysis.alphas=3",
]


def require_dataset(cfg: Config) -> None:
    try:
        load_dataset(cfg.data.dataset, data_dir=cfg.data.data_dir or None)
    except FedlayerError as exc:
        pytest.skip(f"{cfg.data.dataset} is not available here: {exc}")


def smoke_run(path: Path, tmp_path: Path, *overrides: str) -> pd.DataFrame:
    """One cut-down run of the config in process; returns its barriers table."""
    cfg = load_config(path, [*SMOKE, *overrides])
    require_dataset(cfg)
    run = FederatedRun.prepare(cfg, tmp_path / path.stem)
    grid = InProcessGrid(make_client_app(cfg), cfg.federation.clients, node_seed=0)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    run.raise_if_failed()
    return pd.read_parquet(run.run_dir.path / "barriers.parquet")


# ------------------------------------------------------------------ every config (CPU and paper scale)


def test_every_experiment_has_a_cpu_config_and_a_paper_scale_twin():
    assert {p.stem for p in SIMULATIONS.glob("paper_*.toml")} == set(EXPERIMENTS)
    assert {p.stem for p in (SIMULATIONS / "paper_scale").glob("paper_*.toml")} == set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_paper_scale_twin_is_the_same_experiment_on_cifar_with_the_papers_resnet(name):
    cpu, twin = load_config(CPU[name]), load_config(SCALE[name])
    assert twin.data.dataset in ("cifar10", "cifar100")
    if cpu.model.name == "deep-linear":
        assert twin.model.name == "deep-linear"
    else:
        assert (twin.model.name, twin.model.norm) == ("resnet18", "none")
    assert 0 < twin.simulation.num_gpus < 1  # a fraction: several clients share one GPU
    assert twin.strategy.name == cpu.strategy.name
    assert set(cpu.analysis.groups) <= set(twin.analysis.groups)
    assert twin.analysis.bases == cpu.analysis.bases
    assert twin.analysis.random_directions >= cpu.analysis.random_directions
    assert (twin.analysis.every > 0) == (cpu.analysis.every > 0)
    assert len(compare_strategies(SCALE[name])) == len(compare_strategies(CPU[name]))


def test_experiment_settings_match_what_each_experiment_measures():
    single = load_config(CPU["paper_single_layer"])
    assert single.strategy.name == "local" and single.federation.clients == 2
    assert single.data.partition != "iid" and single.analysis.every == 1
    assert {"layers", "full"} <= set(single.analysis.groups) and set(single.analysis.bases) == {"a", "b"}
    assert single.analysis.alphas >= 5
    cumulative = load_config(CPU["paper_cumulative"])
    assert {"shallow", "deep", "minimal"} <= set(cumulative.analysis.groups)
    assert any(g.startswith("window:") for g in cumulative.analysis.groups)
    assert len(layers_of(cumulative)) >= 11  # enough layers for a middle
    assert load_config(CPU["paper_deep_linear"]).model.name == "deep-linear"
    assert load_config(CPU["paper_robustness"]).analysis.random_directions >= 3
    federated = load_config(CPU["paper_federated"])
    assert federated.data.partition == "dirichlet"
    assert partitions_for(load_config(CPU["paper_federated"], ["data.partition=pathological"])).method == "pathological"
    commands = compare_strategies(CPU["paper_federated"])
    assert len(commands) == 2  # the Dirichlet split and the pathological one
    for command in commands:
        assert command[0] == "fedavg" and {"fedper", "lg-fedavg"} <= set(command) and len(command) >= 5


# ------------------------------------------------------------------ smoke runs of the CPU configs


def test_single_layer_config_measures_every_layer_and_the_full_model_on_both_bases(tmp_path):
    barriers = smoke_run(CPU["paper_single_layer"], tmp_path)
    layers = layers_of(load_config(CPU["paper_single_layer"]))
    per_layer = barriers[barriers["kind"] == "layer"]
    assert set(per_layer["group"]) == {layer.name for layer in layers}
    assert set(per_layer["base"]) == {"a", "b"}
    assert (barriers["kind"] == "full").any()


def test_cumulative_config_measures_orderings_and_sliding_windows(tmp_path):
    barriers = smoke_run(CPU["paper_cumulative"], tmp_path)
    count = len(layers_of(load_config(CPU["paper_cumulative"])))
    for ordering in ("shallow", "deep", "minimal"):
        assert sorted(barriers.loc[barriers["kind"] == ordering, "n_layers"].unique()) == list(range(1, count + 1))
    assert (barriers["kind"] == "window").any()


def test_deep_linear_config_has_no_single_layer_barrier(tmp_path):
    barriers = smoke_run(CPU["paper_deep_linear"], tmp_path, "analysis.alphas=5")
    per_layer = barriers[barriers["kind"] == "layer"]
    assert not per_layer.empty
    assert (per_layer["loss_barrier_max"] < 1e-5).all()  # convex along every single-layer cut


def test_robustness_config_adds_random_directions_for_every_layer(tmp_path):
    barriers = smoke_run(CPU["paper_robustness"], tmp_path)
    cfg = load_config(CPU["paper_robustness"])
    random = barriers[barriers["kind"] == "random-direction"]
    assert random.groupby("group")["direction"].nunique().min() == cfg.analysis.random_directions
    assert set(random["group"]) == {layer.name for layer in layers_of(cfg)}


@pytest.mark.parametrize("partition", ["dirichlet", "pathological"])
def test_federated_config_runs_under_both_splits(tmp_path, partition):
    # 10 clients need more than SMOKE's 120 images for a Dirichlet split with at least 10 each
    barriers = smoke_run(CPU["paper_federated"], tmp_path, f"data.partition={partition}", "data.max_train_samples=600")
    assert (barriers["kind"] == "full").any()
