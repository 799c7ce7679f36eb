"""Client faults, timeouts and bad updates: the run goes on without them, records them, or stops cleanly."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from inprocess_grid import InProcessGrid

from fedlayer.checkpoints import load_checkpoint
from fedlayer.client_app import injected_fault, make_client_app
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
    "analysis.every=0",
    "analysis.samples=64",
    "analysis.alphas=3",
]


def run_with(tmp_path: Path, *overrides: str, client=None, duration=None):
    """Run in process; `client(message, context, app)` may replace fedlayer's ClientApp for some calls;
    `duration(message, context)` declares how long a client takes (see `InProcessGrid`)."""
    cfg = load_config(None, [*BASE, *overrides])
    run = FederatedRun.prepare(cfg, tmp_path / "run")
    app = make_client_app(cfg)
    handler = app if client is None else (lambda message, context: client(message, context, app))
    grid = InProcessGrid(handler, cfg.federation.clients, duration=duration)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    return run


def metrics_of(run) -> pd.DataFrame:
    return pd.read_parquet(run.run_dir.table_path("metrics"))


def partition(context: Context) -> int:
    return int(context.node_config["partition-id"])


def is_train(message: Message) -> bool:
    return message.metadata.message_type == "train"


def train_round(message: Message) -> int:
    return int(message.content["config"]["server-round"])


def with_arrays(reply: Message, change) -> Message:
    """The reply with its arrays changed by `change(dict of numpy arrays)`."""
    arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    change(arrays)
    reply.content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    return reply


def test_injected_faults_are_recorded_and_the_run_goes_on(tmp_path):
    p = 0.3
    expected = {(r, pid) for r in (1, 2) for pid in range(4) if injected_fault(0, pid, r, p)}
    assert 0 < len(expected) < 8  # the seeded faults hit some clients, not all
    metrics = metrics_of(run_with(tmp_path, f"federation.fault_probability={p}"))
    assert list(metrics.columns) == [
        "round", "client", "split", "task", "loss", "perplexity", "accuracy", "num_examples", "num_predictions",
        "status", "error", "bytes_down", "bytes_up", "bytes_personal_down", "bytes_personal_up",
    ]  # fmt: skip
    train = metrics[metrics["split"] == "train"]
    failed = train[train["status"] == "failed"]
    assert {(r, int(c)) for r, c in zip(failed["round"], failed["client"], strict=True)} == expected
    assert failed["error"].str.contains("injected fault").all()
    assert failed["loss"].isna().all() and failed["accuracy"].isna().all() and (failed["num_examples"] == 0).all()
    ok = metrics[metrics["status"] == "ok"]
    assert (ok["error"] == "").all() and ok["loss"].notna().all()
    assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2]
    assert (metrics.loc[metrics["split"] == "local-test", "status"] == "ok").all()  # evaluation is not faulted
    assert list(train["client"]) == ["0", "1", "2", "3"] * 2  # rows by partition, failures included


def test_a_client_that_always_raises_is_left_out_of_the_average(tmp_path):
    def client(message, context, app):
        if is_train(message) and partition(context) == 1:
            raise RuntimeError("disk on fire")
        return app(message, context)

    run = run_with(tmp_path, "federation.rounds=1", client=client)
    metrics = metrics_of(run)
    row = metrics[(metrics["split"] == "train") & (metrics["client"] == "1")].iloc[0]
    assert row["status"] == "failed" and "disk on fire" in row["error"]
    states = run.recorder.client_states
    assert sorted(states) == ["0", "2", "3"]
    weights = metrics[(metrics["split"] == "train") & (metrics["status"] == "ok")].set_index("client")["num_examples"]
    total = weights.sum()
    averaged = load_checkpoint(run.run_dir.checkpoints / "global.safetensors")
    for key, value in averaged.items():
        expected = sum(states[c][key].double().numpy() * weights[c] / total for c in states)
        np.testing.assert_allclose(value.double().numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize(("failing", "min_clients", "got"), [({0, 1, 2, 3}, 1, 0), ({0, 1}, 3, 2)])
def test_too_few_replies_stop_the_run_after_the_last_good_round(tmp_path, failing, min_clients, got):
    def client(message, context, app):
        if is_train(message) and train_round(message) == 2 and partition(context) in failing:
            raise RuntimeError("out of memory")
        return app(message, context)

    with pytest.raises(FedlayerError) as raised:
        run_with(tmp_path, "federation.rounds=3", f"federation.min_clients={min_clients}", client=client)
    message = str(raised.value)
    assert f"round 2: {got} usable training replies from the 4 clients sampled" in message
    assert f"fewer than min_clients = {min_clients}" in message and "out of memory" in message
    run_dir = tmp_path / "run"
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert sorted(set(metrics["round"])) == [0, 1]
    assert json.loads((run_dir / "state.json").read_text())["round"] == 1
    assert [p.name for p in (run_dir / "checkpoints").glob("round-*")] == ["round-1"]


def nan_update(arrays):
    arrays["fc1.weight"][0, 0] = math.nan


def wrong_shape(arrays):
    arrays["fc2.bias"] = np.zeros(3, dtype=np.float32)


def extra_key(arrays):
    arrays["extra.weight"] = np.zeros(2, dtype=np.float32)


def wrong_dtype(arrays):
    arrays["fc3.bias"] = arrays["fc3.bias"].astype(np.float64)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (nan_update, "non-finite values (NaN or inf) in fc1.weight"),
        (wrong_shape, "shape mismatch fc2.bias (3,)"),
        (extra_key, "unexpected keys extra.weight"),
        (wrong_dtype, "dtype mismatch fc3.bias float64 (model: float32)"),
    ],
)
def test_a_bad_update_is_rejected_and_not_averaged(tmp_path, change, reason):
    def client(message, context, app):
        reply = app(message, context)
        if is_train(message) and partition(context) == 2:
            reply = with_arrays(reply, change)
        return reply

    run = run_with(tmp_path, "federation.rounds=1", client=client)
    metrics = metrics_of(run)
    rows = metrics[metrics["status"] != "ok"]
    assert list(zip(rows["client"], rows["split"], rows["status"], strict=True)) == [("2", "train", "rejected")]
    assert reason in rows["error"].iloc[0]
    assert sorted(run.recorder.client_states) == ["0", "1", "3"]
    averaged = load_checkpoint(run.run_dir.checkpoints / "global.safetensors")
    assert all(bool(v.isfinite().all()) for v in averaged.values())


def test_client_mode_reply_must_hold_exactly_the_averaged_keys(tmp_path):
    def client(message, context, app):
        reply = app(message, context)
        if is_train(message) and partition(context) == 0 and train_round(message) == 2:
            reply = with_arrays(reply, lambda a: a.update({"fc3.weight": np.zeros(2, dtype=np.float32)}))
        return reply

    run = run_with(tmp_path, "strategy.name=fedper", "strategy.personal=client", client=client)
    rows = metrics_of(run).query("status != 'ok'")
    assert list(rows["client"]) == ["0"] and list(rows["round"]) == [2]
    assert "unexpected keys fc3.weight" in rows["error"].iloc[0]


def test_a_client_slower_than_the_timeout_is_recorded_as_a_timeout(tmp_path):
    def duration(message, context):
        return 2.5 if is_train(message) and train_round(message) == 1 and partition(context) == 3 else 0.0

    run = run_with(tmp_path, "federation.timeout=2", duration=duration)
    rows = metrics_of(run).query("status != 'ok'")
    assert list(zip(rows["round"], rows["client"], rows["split"], rows["status"], strict=True)) == [
        (1, "3", "train", "timeout")
    ]
    assert "no reply within the round timeout of 2 s" in rows["error"].iloc[0]
