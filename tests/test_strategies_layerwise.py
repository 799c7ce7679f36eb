"""LayerSelective around Flower strategies: averaged layers are shared, personal layers stay each client's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAdam, FedAvg
from inprocess_grid import InProcessGrid, ProtocolClient, digits, tiny_net
from torch import nn

from fedlayer.errors import FedlayerError
from fedlayer.layers import model_layers, select_layers
from strategies import LayerSelective
from strategies.sampling import split_replies

BODY = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
HEAD = ["3.weight", "3.bias"]
NODES = 3


def flower(cls=FedAvg, **kwargs):
    return cls(min_available_nodes=NODES, min_train_nodes=NODES, min_evaluate_nodes=NODES, **kwargs)


def initial() -> ArrayRecord:
    return ArrayRecord(tiny_net().state_dict())


def run(strategy, app, *, rounds=2, **grid_kwargs):
    grid = InProcessGrid(app, NODES, **grid_kwargs)
    result = strategy.start(grid=grid, initial_arrays=initial(), num_rounds=rounds)
    assert not grid.exceptions
    return grid, result


def protocol_client() -> ProtocolClient:
    return ProtocolClient(tiny_net, *digits())


def weighted_mean(client: ProtocolClient, key: str, server_round: int) -> np.ndarray:
    x, _ = digits()
    sizes = [len(x[p::NODES]) for p in range(NODES)]
    total = sum(n * client.trained[(p, server_round)][key].astype(np.float64) for p, n in enumerate(sizes))
    return total / sum(sizes)


def assert_shared_and_personal(
    client: ProtocolClient, averaged: list[str], personal: list[str], server_round: int = 1
) -> None:
    """What clients load in the next round: averaged keys equal for all, personal keys their own."""
    nxt = server_round + 1
    for key in averaged:
        for p in range(1, NODES):
            np.testing.assert_array_equal(client.loaded[(p, nxt)][key], client.loaded[(0, nxt)][key])
    for key in personal:
        for p in range(NODES):
            own = client.trained[(p, server_round)][key]
            np.testing.assert_array_equal(client.loaded[(p, nxt)][key], own)


def sent_keys(grid: InProcessGrid, message_type: str, server_round: int) -> list[set[str]]:
    return [
        set(m.content["arrays"].keys())
        for m in grid.delivered
        if (m.metadata.message_type, m.content["config"]["server-round"]) == (message_type, server_round)
    ]


@pytest.mark.parametrize("cls", [FedAvg, FedAdam])
@pytest.mark.parametrize("personal", ["server", "client"])
def test_body_is_averaged_and_head_stays_personal(cls, personal):
    client = protocol_client()
    grid, result = run(LayerSelective(flower(cls), "body", personal=personal), client.app)
    assert_shared_and_personal(client, BODY, HEAD)
    assert not np.array_equal(client.trained[(0, 1)]["3.weight"], client.trained[(1, 1)]["3.weight"])
    for key in ("0.weight", "1.running_mean"):  # the body really is averaged
        assert not np.array_equal(client.loaded[(0, 2)][key], client.trained[(0, 1)][key])
    if cls is FedAvg:
        np.testing.assert_allclose(
            client.loaded[(0, 2)]["0.weight"], weighted_mean(client, "0.weight", 1), rtol=1e-5, atol=1e-6
        )
    for config in client.configs.values():
        assert config["personal-mode"] == personal
        assert config["average-keys"].split(",") == BODY
        assert config["train-mode"] == "standard"
    if personal == "client":  # personal layers never leave the client after its first contact
        assert sent_keys(grid, "train", 1) == [set(BODY + HEAD)] * NODES
        assert sent_keys(grid, "train", 2) == [set(BODY)] * NODES
        assert sent_keys(grid, "evaluate", 2) == [set(BODY)] * NODES
        replied = [set(r.content["arrays"].keys()) for r in grid.replies if r.content.array_records]
        assert replied == [set(BODY)] * 2 * NODES
    else:
        assert sent_keys(grid, "train", 2) == [set(BODY + HEAD)] * NODES
    assert result.arrays["1.num_batches_tracked"].dtype == "int64"


@pytest.mark.parametrize("personal", ["server", "client"])
def test_evaluation_uses_each_clients_personal_layers(personal):
    client = protocol_client()
    run(LayerSelective(flower(), "body", personal=personal), client.app, rounds=1)
    for p in range(NODES):
        for key in HEAD:  # evaluated after round 1 with the head it trained in round 1
            np.testing.assert_array_equal(client.evaluated[(p, 1)][key], client.trained[(p, 1)][key])
        for key in BODY:
            np.testing.assert_array_equal(client.evaluated[(p, 1)][key], client.evaluated[(0, 1)][key])


def quickstart_client_app() -> ClientApp:
    """Written the way Flower's quickstart-pytorch writes its ClientApp (strict load, full reply)."""
    app = ClientApp()
    x, y = digits()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        model = tiny_net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        pid, n = context.node_config["partition-id"], context.node_config["num-partitions"]
        xs, ys = x[pid::n][:64], y[pid::n][:64]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xs), ys)
        loss.backward()
        optimizer.step()
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"train_loss": loss.item(), "num-examples": len(xs)}),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        model = tiny_net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model(x), y).item()
        return Message(RecordDict({"metrics": MetricRecord({"eval_loss": loss, "num-examples": len(x)})}), reply_to=msg)

    return app


def test_quickstart_client_unchanged_gets_layerwise_averaging():
    grid, _ = run(LayerSelective(flower(), "head"), quickstart_client_app())
    round_of = {m.metadata.message_id: m.content["config"]["server-round"] for m in grid.delivered}
    trained = {
        r.metadata.src_node_id: r.content["arrays"]
        for r in grid.replies
        if r.metadata.message_type == "train" and round_of[r.metadata.reply_to_message_id] == 1
    }
    sent = {
        m.metadata.dst_node_id: m.content["arrays"]
        for m in grid.delivered
        if m.metadata.message_type == "train" and m.content["config"]["server-round"] == 2
    }
    assert set(sent) == set(trained) == set(grid.contexts)
    nodes = sorted(sent)
    mean = sum(trained[n]["3.weight"].numpy().astype(np.float64) for n in nodes) / NODES  # equal sizes (64)
    for node in nodes:
        np.testing.assert_allclose(sent[node]["3.weight"].numpy(), mean, rtol=1e-5, atol=1e-6)
        for key in BODY:
            np.testing.assert_array_equal(sent[node][key].numpy(), trained[node][key].numpy())


def test_all_averages_like_fedavg():
    client = protocol_client()
    _, plain = run(flower(), client.app)
    _, layered = run(LayerSelective(flower(), "all"), client.app)
    assert list(layered.arrays.keys()) == list(plain.arrays.keys())
    for key in plain.arrays.keys():
        np.testing.assert_allclose(layered.arrays[key].numpy(), plain.arrays[key].numpy(), rtol=1e-6, atol=1e-7)
    assert plain.arrays["1.num_batches_tracked"].dtype == "float64"  # Flower's averaging
    assert layered.arrays["1.num_batches_tracked"].dtype == "int64"  # kept


def test_all_aggregates_exactly_like_fedavg_on_the_same_replies():
    client = protocol_client()
    grid = InProcessGrid(client.app, NODES, shuffle_seed=3)
    strategy = LayerSelective(flower(), "all")
    replies = grid.send_and_receive(strategy.configure_train(1, initial(), ConfigRecord(), grid))
    ours, _ = strategy.aggregate_train(1, replies)
    theirs, _ = flower().aggregate_train(1, split_replies(replies)[0])
    for key in theirs.keys():
        np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy().astype(ours[key].dtype))


@pytest.mark.parametrize("personal", ["server", "client"])
def test_none_averages_nothing_but_aggregates_metrics(personal):
    client = protocol_client()
    _, result = run(LayerSelective(flower(), "none", personal=personal), client.app)
    assert_shared_and_personal(client, [], BODY + HEAD)
    assert "train-loss" in result.train_metrics_clientapp[1]
    assert "loss" in result.evaluate_metrics_clientapp[2]


def test_reply_order_does_not_change_the_result():
    results = []
    for seed in (1, 2):
        _, result = run(LayerSelective(flower(), "body"), protocol_client().app, node_seed=seed, shuffle_seed=seed)
        results.append(result.arrays)
    for key in results[0].keys():
        np.testing.assert_array_equal(results[0][key].numpy(), results[1][key].numpy())


def test_errored_replies_are_dropped_and_a_new_client_gets_the_initial_personal_layers():
    client = protocol_client()

    def flaky(message, context):
        train = message.metadata.message_type == "train"
        if train and message.content["config"]["server-round"] == 1 and context.node_config["partition-id"] == 1:
            raise RuntimeError("boom")
        return client.app(message, context)

    grid = InProcessGrid(flaky, NODES)
    strategy = LayerSelective(flower(), "body")
    strategy.start(grid=grid, initial_arrays=initial(), num_rounds=2)
    assert len(grid.exceptions) == 1
    assert set(strategy.personal_state) == {"0", "1", "2"}  # partition 1 too, after round 2
    for key in HEAD:
        np.testing.assert_array_equal(client.loaded[(1, 2)][key], initial()[key].numpy())
        np.testing.assert_array_equal(client.loaded[(0, 2)][key], client.trained[(0, 1)][key])


def test_server_mode_needs_full_replies():
    client = protocol_client()

    def partial(message, context):
        reply = client.app(message, context)
        if message.metadata.message_type == "train":
            head = {k: v for k, v in reply.content["arrays"].items() if k in HEAD}
            reply.content["arrays"] = ArrayRecord(head)
        return reply

    with pytest.raises(FedlayerError, match="full model"):
        LayerSelective(flower(), "body").start(
            grid=InProcessGrid(partial, NODES), initial_arrays=initial(), num_rounds=1
        )


def test_selector_is_checked_before_training():
    strategy = LayerSelective(FedAvg(), "conv")
    with pytest.raises(FedlayerError, match=r"'conv'.*0, 1, 3"):
        strategy.resolve(tiny_net())
    assert [layer.name for layer in LayerSelective(FedAvg(), "head", layers=tiny_net()).selected] == ["3"]


def test_bad_arrays_and_modes_are_errors():
    with pytest.raises(FedlayerError, match="personal mode"):
        LayerSelective(FedAvg(), "body", personal="nobody")
    with pytest.raises(FedlayerError, match="Strategy"):
        LayerSelective(object(), "body")
    strategy = LayerSelective(flower(), "body", layers=tiny_net())
    arrays = initial()
    del arrays["3.bias"]
    with pytest.raises(FedlayerError, match="3.bias"):
        strategy.configure_train(1, arrays, ConfigRecord(), InProcessGrid(protocol_client().app, NODES))


def test_exclusions_in_selectors():
    layers = model_layers(tiny_net())
    assert [layer.name for layer in select_layers(layers, "all,-norm")] == ["0", "3"]
    assert [layer.name for layer in select_layers(layers, "-head")] == ["0", "1"]
    assert [layer.name for layer in select_layers(layers, "body,-0")] == ["1"]
    with pytest.raises(FedlayerError, match="no layer"):
        select_layers(layers, "norm,-norm")


class RecurrentNet(nn.Module):
    """Digits as 8 rows of 8 pixels through an LSTM: at layer unit "tensor", "lstm.weight_ih_l0" (input weights
    with their bias) and "lstm.weight_hh_l0" (recurrent weights with theirs) are two layers."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.lstm(x.reshape(-1, 8, 8))[0][:, -1])


def recurrent_net() -> nn.Module:
    torch.manual_seed(0)
    return RecurrentNet()


@pytest.mark.parametrize("personal", ["server", "client"])
def test_at_layer_unit_tensor_exactly_the_selected_tensors_are_averaged(personal):
    client = ProtocolClient(recurrent_net, *digits())
    strategy = LayerSelective(flower(), "lstm.weight_ih_l0,fc", layer_unit="tensor", personal=personal)
    grid = InProcessGrid(client.app, NODES)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(recurrent_net().state_dict()), num_rounds=2)
    assert not grid.exceptions
    averaged = ["lstm.weight_ih_l0", "lstm.bias_ih_l0", "fc.weight", "fc.bias"]
    assert strategy.average_keys == averaged and strategy.personal_keys == ["lstm.weight_hh_l0", "lstm.bias_hh_l0"]
    assert_shared_and_personal(client, averaged, strategy.personal_keys)
    assert not np.array_equal(client.loaded[(0, 2)]["lstm.weight_hh_l0"], client.loaded[(1, 2)]["lstm.weight_hh_l0"])
    assert client.configs[(0, 1)]["average-keys"] == ",".join(averaged)


def test_the_layer_unit_is_checked_with_the_selector():
    with pytest.raises(FedlayerError, match="unknown layer unit 'tensors'; valid choices: module, tensor"):
        LayerSelective(FedAvg(), "all", layer_unit="tensors")
    with pytest.raises(FedlayerError, match="it names the module lstm, which is no layer at layer_unit = 'tensor'"):
        LayerSelective(FedAvg(), "re:^lstm$", layer_unit="tensor", layers=RecurrentNet())
    with pytest.raises(FedlayerError, match="set layer_unit = 'tensor'"):
        LayerSelective(FedAvg(), "lstm.weight_ih_l0", layers=RecurrentNet())
    with pytest.raises(FedlayerError, match="layers given are of layer unit module, not 'tensor'"):
        LayerSelective(FedAvg(), "all", layer_unit="tensor", layers=model_layers(RecurrentNet()))
    whole = LayerSelective(FedAvg(), "lstm", layer_unit="tensor", layers=RecurrentNet())  # a module: all its units
    assert [layer.name for layer in whole.selected] == ["lstm.weight_ih_l0", "lstm.weight_hh_l0"]
