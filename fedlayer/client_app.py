"""Flower ClientApp (Message API): local training and personalised evaluation of one client.

It speaks the client protocol of `fedlayer.protocol` (the record names and config keys are all
defined there):
- train: loads the arrays it receives (over its personal layers from `context.state` in
  `personal-mode = "client"`, over the initial model for anything else), trains with the config's
  `train-mode` and `proximal-mu`, and replies with its trained arrays (all of them, or in client
  mode only the `average-keys`), a MetricRecord (`num-examples`, `train-loss`, `train-accuracy`)
  and the `client` record with its `partition-id`.
- evaluate: the client's personalised model on its local test split (`num-examples`, `loss`,
  `accuracy` as a fraction).
- query: replies with its `partition-id`, so the server can sample by partition, not by node id.
Every handler first checks the node's `partition-id` and `num-partitions` (Flower's node-config)
against `federation.clients`, so that a SuperNode started for another federation size is one
clear error naming it, not an IndexError deep in the data code.
Each call runs with `simulation.torch_threads` torch threads, whatever `simulation.num_cpus` is: the
thread count changes float summation order, and the results must not depend on how many clients
run at once. With `federation.fault_probability` p > 0, training raises in a round when
`random.Random(f"fault-{seed}-{partition}-{round}").random() < p` (seeded, so runs and resumed runs
fail alike): a way to exercise the server's fault handling.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlayer import protocol
from fedlayer.config import Config, config_from_flat, config_hash
from fedlayer.errors import ConfigError
from fedlayer.records import array_record, tensors
from fedlayer.task import client_data, configure_process, head_parameter_names, new_model, train_settings
from fedlayer.training import default_device, evaluate, seed_everything, train_local

NUM_PARTITIONS = "num-partitions"  # Flower's node-config key next to protocol.PARTITION_ID


@functools.lru_cache(maxsize=2)
def _config_from_run_config(items: tuple) -> Config:
    return config_from_flat(dict(items))


@dataclass(frozen=True)
class _Warm:
    """What a config needs on every message, built on its first one and kept by the process (a Ray actor
    serves many clients): one model object on the device (every message overwrites all of it), its
    initial state (on the CPU) and its head parameters."""

    model: torch.nn.Module
    initial: dict[str, torch.Tensor]
    head_params: list[str]


_WARM: dict[str, _Warm] = {}


def _warm(cfg: Config) -> _Warm:
    key = config_hash(cfg)
    if key not in _WARM:
        model = new_model(cfg)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        _WARM[key] = _Warm(model.to(default_device()), initial, head_parameter_names(model))
    return _WARM[key]


def _received(msg: Message) -> tuple[dict[str, torch.Tensor], ConfigRecord]:
    """The arrays and config of a server message (their record names may be a user strategy's own)."""
    content = msg.content
    arrays = next(iter(content.array_records.values()), ArrayRecord())
    config = next(iter(content.config_records.values()), ConfigRecord())
    return tensors(arrays), config


def partition_id(cfg: Config, context: Context) -> int:
    """This node's partition id, checked against `federation.clients` (ConfigError naming both otherwise)."""
    node_config, clients = context.node_config, cfg.federation.clients
    fix = (
        f"start each of the {clients} SuperNodes with --node-config 'partition-id=K num-partitions={clients}' "
        f"(K = 0..{clients - 1}), or set federation.clients to the number of SuperNodes"
    )
    if protocol.PARTITION_ID not in node_config:
        raise ConfigError(f"this SuperNode's node-config {dict(node_config)} has no '{protocol.PARTITION_ID}': {fix}")
    pid = int(cast(int, node_config[protocol.PARTITION_ID]))
    partitions = int(cast(int, node_config.get(NUM_PARTITIONS, clients)))
    if not 0 <= pid < clients or partitions != clients:
        raise ConfigError(
            f"this SuperNode has partition-id={pid} num-partitions={partitions}, which does not fit "
            f"federation.clients = {clients}: {fix}"
        )
    return pid


def injected_fault(seed: int, partition: int, server_round: int, probability: float) -> bool:
    """Whether seeded fault injection makes this client's training fail in this round."""
    return probability > 0 and random.Random(f"fault-{seed}-{partition}-{server_round}").random() < probability


def _local_model(cfg: Config, msg: Message, context: Context) -> tuple[_Warm, ConfigRecord]:
    """The config's warm model, loaded for this message: received layers, personal layers from state, init
    for the rest; and the message's config."""
    received, config = _received(msg)
    warm = _warm(cfg)
    state = dict(warm.initial)
    personal = protocol.personal_state_key(config.get(protocol.RUN_TAG))
    if personal in context.state.array_records:
        state.update(tensors(context.state.array_records[personal]))
    state.update(received)
    warm.model.load_state_dict(state, strict=True)
    return warm, config


class FedlayerClient:
    """The handlers of fedlayer's ClientApp, bound to a config (or reading Flower's run-config)."""

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg

    def config(self, context: Context) -> Config:
        if self.cfg is not None:
            return self.cfg
        return _config_from_run_config(tuple(sorted(context.run_config.items())))

    def train(self, msg: Message, context: Context) -> Message:
        cfg = self.config(context)
        configure_process(cfg)
        pid = partition_id(cfg, context)
        warm, config = _local_model(cfg, msg, context)
        server_round = int(cast(int, config.get(protocol.SERVER_ROUND, 0)))
        fed = cfg.federation
        if injected_fault(cfg.seed, pid, server_round, fed.fault_probability):
            raise RuntimeError(
                f"injected fault (federation.fault_probability = {fed.fault_probability}) "
                f"in round {server_round} for partition {pid}"
            )
        generator = seed_everything(cfg.seed, pid, server_round)
        settings = train_settings(
            cfg,
            pid,
            proximal_mu=float(cast(float, config.get(protocol.PROXIMAL_MU, fed.proximal_mu))),
            mode=str(config.get(protocol.TRAIN_MODE, "standard")),
        )
        data = client_data(cfg, pid)
        metrics = train_local(
            warm.model,
            data.train_x,
            data.train_y,
            settings,
            head_params=warm.head_params,
            generator=generator,
            device=default_device(),
        )
        state = {k: v.detach().cpu() for k, v in warm.model.state_dict().items()}
        reply_state = state
        if config.get(protocol.PERSONAL_MODE) == "client":
            shared = protocol.parse_average_keys(config.get(protocol.AVERAGE_KEYS))
            personal = array_record({k: v for k, v in state.items() if k not in shared})
            context.state.array_records[protocol.personal_state_key(config.get(protocol.RUN_TAG))] = personal
            reply_state = {k: v for k, v in state.items() if k in shared}
        metrics_record = MetricRecord(
            {
                protocol.NUM_EXAMPLES: metrics.num_examples,
                protocol.TRAIN_LOSS: metrics.loss,
                protocol.TRAIN_ACCURACY: metrics.accuracy,
            }
        )
        return _reply(msg, pid, {protocol.ARRAYS: array_record(reply_state), protocol.METRICS: metrics_record})

    def evaluate(self, msg: Message, context: Context) -> Message:
        cfg = self.config(context)
        configure_process(cfg)
        pid = partition_id(cfg, context)
        warm, _ = _local_model(cfg, msg, context)
        data = client_data(cfg, pid)
        metrics = evaluate(warm.model, data.test_x, data.test_y, device=default_device())
        metrics_record = MetricRecord(
            {
                protocol.NUM_EXAMPLES: metrics.num_examples,
                protocol.LOSS: metrics.loss,
                protocol.ACCURACY: metrics.accuracy,
            }
        )
        return _reply(msg, pid, {protocol.METRICS: metrics_record})

    def query(self, msg: Message, context: Context) -> Message:
        return _reply(msg, partition_id(self.config(context), context), {})


def _reply(msg: Message, pid: int, records: dict) -> Message:
    """A reply with `records` and the `client` record naming this client's partition."""
    content = RecordDict({**records, protocol.CLIENT: ConfigRecord({protocol.PARTITION_ID: pid})})
    return Message(content=content, reply_to=msg)


def make_client_app(cfg: Config | None = None) -> ClientApp:
    """A ClientApp bound to `cfg`; with None it reads the config from Flower's run-config (`flwr run`)."""
    client = FedlayerClient(cfg)
    client_app = ClientApp()
    client_app.train()(client.train)
    client_app.evaluate()(client.evaluate)
    client_app.query()(client.query)
    return client_app


app = make_client_app()
