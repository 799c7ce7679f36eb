"""The server decodes the clients' models only when something reads them, once, and as Flower would."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, RecordDict
from inprocess_grid import InProcessGrid, tiny_net

from fedlayer.client_app import make_client_app
from fedlayer.config import load_config
from fedlayer.server_app import FederatedRun
from strategies.barrier_analysis import Decoded

BASE = [
    "data.dataset=digits",
    "model.name=mlp",
    "federation.clients=4",
    "federation.rounds=1",
    "analysis.every=0",
]


def assert_same_state(got, expected) -> None:
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key


def test_the_recorder_decodes_the_client_models_once_when_asked_and_anew_after_a_round(tmp_path):
    cfg = load_config(None, BASE)
    run = FederatedRun.prepare(cfg, tmp_path / "run")
    grid = InProcessGrid(make_client_app(cfg), cfg.federation.clients, node_seed=0)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    recorder = run.recorder
    assert recorder._client_states is None  # the round needed none of them (FedAvg: no personal layers)
    states = recorder.client_states
    assert recorder.client_states is states  # decoded once
    base = recorder._global_arrays.to_torch_state_dict()
    replies = {r.content["client"]["partition-id"]: r for r in grid.replies if r.metadata.message_type == "train"}
    assert sorted(states) == ["0", "1", "2", "3"]
    for client, state in states.items():
        assert_same_state(state, {**base, **replies[int(client)].content["arrays"].to_torch_state_dict()})
        assert all(t.numpy().flags.writeable for t in state.values())  # fresh tensors, as Flower's
    recorder.on_train(2, [replies[0]], recorder._global_arrays)
    assert recorder._client_states is None and sorted(recorder.client_states) == ["0"]  # a new round: anew


def test_a_decoded_state_is_the_arrays_over_the_base_decoded_on_first_read_once():
    base_model, own_model = tiny_net(0), tiny_net(1)
    base_arrays = ArrayRecord(base_model.state_dict())
    own = ArrayRecord({k: v for k, v in own_model.state_dict().items() if k.startswith("3.")})  # the head only
    base = Decoded(base_arrays)
    state = Decoded(own, base)
    expected = {**base_arrays.to_torch_state_dict(), **own.to_torch_state_dict()}
    assert list(state) == list(expected) and len(state) == len(expected)
    assert "3.weight" in state and "0.weight" in state and "nothing" not in state
    assert not state._decoded and not base._decoded  # nothing decoded by listing or asking for keys
    assert_same_state(dict(state), expected)
    assert state["3.weight"] is state["3.weight"]  # decoded once
    assert state["0.weight"] is base["0.weight"]  # the base's keys: the base's tensors, shared by every client
    assert set(state._decoded) == {"3.weight", "3.bias"}
