"""simulations/examples/: each config runs a round of the strategy it compares with the reference, with the
per-round analysis, as written (its file specs relative to the checkout), on an in-process Flower grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict
from inprocess_grid import InProcessGrid
from shipped_configs import EXAMPLES, SIMULATIONS, load_shipped

from fedlayer.client_app import make_client_app
from fedlayer.config import load_config
from fedlayer.data import load_dataset
from fedlayer.server_app import FederatedRun
from fedlayer.task import dataset_for, partitions_for

FAST = ["user_model", "user_data", "hf_folder"]


def run_one_round(name: str, tmp_path, example_hf_folder, monkeypatch) -> pd.DataFrame:
    monkeypatch.chdir(SIMULATIONS.parent)  # the examples name their files relative to the checkout
    path = EXAMPLES / f"{name}.toml"
    shipped = load_shipped(path, example_hf_folder)
    overrides = ["federation.rounds=1", f"strategy.name={shipped.compare.strategies[-1]}"]
    cfg = load_config(path, [f"data.dataset={shipped.data.dataset}", *overrides])
    run = FederatedRun.prepare(cfg, tmp_path / name)
    grid = InProcessGrid(make_client_app(cfg), cfg.federation.clients, node_seed=0)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    barriers = pd.read_parquet(tmp_path / name / "barriers.parquet")
    assert set(barriers["round"]) == {1} and {"full"} <= set(barriers["group"])
    return pd.read_parquet(tmp_path / name / "metrics.parquet")


@pytest.mark.parametrize("name", FAST)
def test_an_example_runs_a_round_with_the_analysis(name, tmp_path, example_hf_folder, monkeypatch):
    metrics = run_one_round(name, tmp_path, example_hf_folder, monkeypatch)
    trained = metrics[(metrics["split"] == "train") & (metrics["status"] == "ok")]
    assert len(trained) == load_config(EXAMPLES / f"{name}.toml").federation.clients


@pytest.mark.slow
def test_the_torchvision_example_runs_a_round_with_the_analysis(tmp_path, example_hf_folder, monkeypatch):
    metrics = run_one_round("torchvision_model", tmp_path, example_hf_folder, monkeypatch)
    assert (metrics.loc[metrics["split"] == "train", "status"] == "ok").all()


def test_the_devices_example_gives_each_client_one_device(monkeypatch):
    monkeypatch.chdir(SIMULATIONS.parent)
    cfg = load_config(EXAMPLES / "user_data.toml")
    groups = dataset_for(cfg).groups
    clients = partitions_for(cfg).clients
    devices = [{groups[i] for i in np.concatenate([c.train_indices, c.test_indices])} for c in clients]
    assert all(len(d) == 1 for d in devices) and len(set().union(*devices)) == cfg.federation.clients


def test_the_hf_folder_script_writes_fashion_mnist_with_its_classes(example_hf_folder):
    data = load_dataset(f"hf:{example_hf_folder()}")
    assert (data.input_shape, data.num_classes, len(data.train_y), len(data.test_y)) == ((1, 28, 28), 10, 12_000, 2_000)
    assert data.class_names[0] == "T-shirt/top"
