"""Per-client learning rates and initialisation: where each client starts, and with what step size.

`federation.init` = "per-client" starts client k from its own seeded initialisation, "checkpoints" from
a checkpoint of its own; a client's own values last until an average replaces them. A run whose
clients start apart measures the barriers between their starting models as round 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, Context, RecordDict
from inprocess_grid import InProcessGrid, ProtocolClient, digits, tiny_net
from test_strategies_layerwise import BODY, HEAD, NODES, flower, initial

from fedlayer.checkpoints import save_checkpoint
from fedlayer.client_app import make_client_app
from fedlayer.config import load_config
from fedlayer.errors import CheckpointError, ConfigError, RunError
from fedlayer.models import client_init_seed
from fedlayer.server_app import FederatedRun
from fedlayer.task import client_initial_state, new_model, train_settings
from strategies import LayerSelective, SeededGrid

SMALL = [
    "data.dataset=digits",
    "model.name=mlp",
    "federation.clients=2",
    "strategy.name=local",
    "data.partition=iid",
    "analysis.samples=32",
    "analysis.alphas=3",
]


def own_start(partition: int) -> dict[str, torch.Tensor]:
    return tiny_net(seed=100 + partition).state_dict()


def run_seeded(strategy: LayerSelective, client: ProtocolClient, rounds: int = 2) -> None:
    grid = InProcessGrid(client.app, NODES, node_seed=0)
    seeded = SeededGrid(grid, 0, 1.0, grid.partitions)
    strategy.start(grid=seeded, initial_arrays=initial(), num_rounds=rounds)
    assert not grid.exceptions


def assert_loaded(loaded: dict[str, np.ndarray], expected: dict[str, torch.Tensor], keys: list[str]) -> None:
    for key in keys:
        np.testing.assert_array_equal(loaded[key], expected[key].numpy(), err_msg=key)


# ------------------------------------------------------------------ the strategy


@pytest.mark.parametrize("personal", ["server", "client"])
def test_each_client_starts_from_its_own_state_until_an_average_replaces_it(personal):
    client = ProtocolClient(tiny_net, *digits())
    run_seeded(LayerSelective(flower(), "body", personal=personal, client_init=own_start), client)
    for p in range(NODES):  # round 1: every layer the client's own
        assert_loaded(client.loaded[(p, 1)], own_start(p), BODY + HEAD)
    assert not np.array_equal(client.loaded[(0, 1)]["0.weight"], client.loaded[(1, 1)]["0.weight"])
    for key in BODY:  # round 2: the body averaged, the same for everyone
        for p in range(1, NODES):
            np.testing.assert_array_equal(client.loaded[(p, 2)][key], client.loaded[(0, 2)][key])
    for p in range(NODES):  # the head still each client's own line of training
        for key in HEAD:
            np.testing.assert_array_equal(client.loaded[(p, 2)][key], client.trained[(p, 1)][key])


def test_fedavg_averages_the_clients_own_starts_after_round_one():
    client = ProtocolClient(tiny_net, *digits())
    run_seeded(LayerSelective(flower(), "all", client_init=own_start), client)
    assert not np.array_equal(client.loaded[(0, 1)]["0.weight"], client.loaded[(1, 1)]["0.weight"])
    for key in BODY + HEAD:
        np.testing.assert_array_equal(client.loaded[(1, 2)][key], client.loaded[(0, 2)][key])


def test_without_it_every_client_starts_from_the_global_arrays():
    client = ProtocolClient(tiny_net, *digits())
    run_seeded(LayerSelective(flower(), "body"), client)
    start = initial().to_torch_state_dict()
    for p in range(NODES):
        assert_loaded(client.loaded[(p, 1)], start, BODY + HEAD)


def test_a_client_without_a_partition_id_cannot_have_its_own_start():
    client = ProtocolClient(tiny_net, *digits())
    grid = InProcessGrid(client.app, NODES, node_seed=0)  # no SeededGrid: nodes are unnamed at first contact
    strategy = LayerSelective(flower(), "body", client_init=own_start)
    with pytest.raises(RunError, match="partition id"):
        strategy.start(grid=grid, initial_arrays=initial(), num_rounds=1)


def test_an_initial_state_without_every_key_is_an_error():
    client = ProtocolClient(tiny_net, *digits())

    def partial(partition: int) -> ArrayRecord:
        return ArrayRecord({k: v for k, v in own_start(partition).items() if k != "3.bias"})

    with pytest.raises(RunError, match=r"initial state of client \d lacks keys \[.3.bias.\]"):
        run_seeded(LayerSelective(flower(), "body", client_init=partial), client, rounds=1)


# ------------------------------------------------------------------ the config


def test_per_client_learning_rates_reach_each_clients_training():
    cfg = load_config(None, [*SMALL, "federation.lr_per_client=[0.01, 1]"])
    assert [train_settings(cfg, p).lr for p in range(2)] == [0.01, 1.0]
    assert load_config(None, [*SMALL, "federation.lr_per_client=0.01,0.5"]).federation.lr_per_client == [0.01, 0.5]
    plain = load_config(None, [*SMALL, "federation.lr=0.3"])
    assert [train_settings(plain, p).lr for p in range(2)] == [0.3, 0.3]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["federation.lr_per_client=[0.1]"], "'federation.lr_per_client': 1 values for federation.clients = 2"),
        (["federation.lr_per_client=[0.1, -1]"], "'federation.lr_per_client': invalid value"),
        (["federation.lr_per_client=0.1,fast"], "expected a list of numbers"),
        (["federation.init=mine"], "one of 'same', 'per-client', 'checkpoints'"),
        (["federation.init=checkpoints"], "init = 'checkpoints' needs one checkpoint per client"),
        (["federation.init_checkpoints=[a.pt, b.pt]"], "read with init = 'checkpoints' only"),
        (["federation.init=checkpoints", "federation.init_checkpoints=[a.pt]"], "1 values for federation.clients"),
    ],
)
def test_bad_per_client_settings_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [*SMALL, *overrides])


def test_each_clients_own_initialisation_is_seeded_by_seed_and_partition():
    cfg = load_config(None, [*SMALL, "federation.init=per-client"])
    global_model = new_model(cfg)
    first, again = client_initial_state(cfg, 0, global_model), client_initial_state(cfg, 0, global_model)
    second = client_initial_state(cfg, 1, global_model)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["fc1.weight"], second["fc1.weight"])
    assert not torch.equal(first["fc1.weight"], global_model.state_dict()["fc1.weight"])
    assert len({client_init_seed(s, p) for s in range(3) for p in range(50)}) == 150


# ------------------------------------------------------------------ runs


def execute(run: FederatedRun) -> pd.DataFrame:
    grid = InProcessGrid(make_client_app(run.cfg), run.cfg.federation.clients, node_seed=0)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    run.raise_if_failed()
    return pd.read_parquet(run.run_dir.path / "barriers.parquet")


def test_clients_that_start_apart_are_measured_from_round_zero(tmp_path):
    cfg = load_config(None, [*SMALL, "federation.rounds=1", "federation.init=per-client"])
    barriers = execute(FederatedRun.prepare(cfg, tmp_path / "apart"))
    assert sorted(barriers["round"].unique()) == [0, 1]
    assert {"layer", "full"} <= set(barriers.loc[barriers["round"] == 0, "kind"])
    same = execute(FederatedRun.prepare(cfg.replace(federation={"init": "same"}), tmp_path / "same"))
    assert sorted(same["round"].unique()) == [1]  # one start: nothing to measure before training


def test_zero_rounds_measures_two_checkpoints_without_training(tmp_path):
    cfg = load_config(None, [*SMALL, "federation.rounds=0"])
    paths = []
    for seed in (3, 4):
        paths.append(tmp_path / f"model-{seed}.safetensors")
        save_checkpoint(new_model(cfg, seed=seed).state_dict(), paths[-1])
    cfg = cfg.replace(federation={"init": "checkpoints", "init_checkpoints": [str(p) for p in paths]})
    run = FederatedRun.prepare(cfg, tmp_path / "pair")
    barriers = execute(run)
    assert set(barriers["round"]) == {0} and (barriers["kind"] == "full").any()
    metrics = pd.read_parquet(tmp_path / "pair" / "metrics.parquet")
    assert set(metrics["split"]) == {"test"}  # the global model only: no client trained
    assert load_config(tmp_path / "pair" / "config.toml").federation.init_checkpoints == [str(p) for p in paths]


def test_a_missing_or_misfit_checkpoint_fails_before_the_run_directory_exists(tmp_path):
    cfg = load_config(None, [*SMALL, "federation.rounds=0"])
    other = tmp_path / "other.safetensors"
    save_checkpoint({"weight": torch.zeros(3)}, other)
    for checkpoints, message in (
        ([str(tmp_path / "absent.safetensors"), str(other)], "absent.safetensors"),
        ([str(other), str(other)], r"federation.init_checkpoints\[0\]"),
    ):
        bad = cfg.replace(federation={"init": "checkpoints", "init_checkpoints": checkpoints})
        with pytest.raises(CheckpointError, match=message):
            FederatedRun.prepare(bad, tmp_path / "never")
        assert not (tmp_path / "never").exists()
