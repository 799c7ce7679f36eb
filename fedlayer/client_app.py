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
Each call runs with `simulation.torch_threads` torch threads, whatever `simulation.num_cpus` is: the
thread count changes float summation order, and the results must not depend on how many clients
run at once. With `federation.fault_probability` p > 0, training raises in a round when
`random.Random(f"fault-{seed}-{partition}-{round}").random() < p` (seeded, so runs and resumed runs
fail alike): a way to exercise the server's fault handling.
"""

from __future__ import annotations

import functools
import random
from typing import cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlayer import protocol
from fedlayer.config import Config, config_from_flat, config_hash
from fedlayer.task import client_data, configure_process, head_parameter_names, new_model, train_settings
from fedlayer.training import default_device, evaluate, seed_everything, train_local


@functools.lru_cache(maxsize=2)
def _config_from_run_config(items: tuple) -> Config:
    return config_from_flat(dict(items))


_MODELS: dict[str, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}


def _model_and_initial_state(cfg: Config) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """One model object per config and process (fully overwritten on every message) and its init."""
    key = config_hash(cfg)
    if key not in _MODELS:
        model = new_model(cfg)
        _MODELS[key] = (model, {k: v.clone() for k, v in model.state_dict().items()})
    return _MODELS[key]


def _received(msg: Message) -> tuple[dict[str, torch.Tensor], ConfigRecord]:
    """The arrays and config of a server message (their record names may be a user strategy's own)."""
    content = msg.content
    arrays = next(iter(content.array_records.values()), ArrayRecord())
    config = next(iter(content.config_records.values()), ConfigRecord())
    return arrays.to_torch_state_dict(), config


def injected_fault(seed: int, partition: int, server_round: int, probability: float) -> bool:
    """Whether seeded fault injection makes this client's training fail in this round."""
    return probability > 0 and random.Random(f"fault-{seed}-{partition}-{server_round}").random() < probability


def _local_model(cfg: Config, msg: Message, context: Context):
    """The client's model for this message: received layers, personal layers from state, init for the rest."""
    received, config = _received(msg)
    model, initial = _model_and_initial_state(cfg)
    state = dict(initial)
    personal = protocol.personal_state_key(config.get(protocol.RUN_TAG))
    if personal in context.state.array_records:
        state.update(context.state.array_records[personal].to_torch_state_dict())
    state.update(received)
    model.load_state_dict(state, strict=True)
    return model.to(default_device()), config


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
        pid = int(context.node_config[protocol.PARTITION_ID])
        model, config = _local_model(cfg, msg, context)
        server_round = int(config.get(protocol.SERVER_ROUND, 0))
        fed = cfg.federation
        if injected_fault(cfg.seed, pid, server_round, fed.fault_probability):
            raise RuntimeError(
                f"injected fault (federation.fault_probability = {fed.fault_probability}) "
                f"in round {server_round} for partition {pid}"
            )
        generator = seed_everything(cfg.seed, pid, server_round)
        settings = train_settings(
            cfg,
            proximal_mu=float(cast(float, config.get(protocol.PROXIMAL_MU, fed.proximal_mu))),
            mode=str(config.get(protocol.TRAIN_MODE, "standard")),
        )
        data = client_data(cfg, pid)
        metrics = train_local(
            model,
            data.train_x,
            data.train_y,
            settings,
            head_params=head_parameter_names(model),
            generator=generator,
            device=default_device(),
        )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        reply_state = state
        if config.get(protocol.PERSONAL_MODE) == "client":
            shared = protocol.parse_average_keys(config.get(protocol.AVERAGE_KEYS))
            personal = ArrayRecord({k: v for k, v in state.items() if k not in shared})
            context.state.array_records[protocol.personal_state_key(config.get(protocol.RUN_TAG))] = personal
            reply_state = {k: v for k, v in state.items() if k in shared}
        metrics_record = MetricRecord(
            {
                protocol.NUM_EXAMPLES: metrics.num_examples,
                protocol.TRAIN_LOSS: metrics.loss,
                protocol.TRAIN_ACCURACY: metrics.accuracy,
            }
        )
        return _reply(msg, pid, {protocol.ARRAYS: ArrayRecord(reply_state), protocol.METRICS: metrics_record})

    def evaluate(self, msg: Message, context: Context) -> Message:
        cfg = self.config(context)
        configure_process(cfg)
        pid = int(context.node_config[protocol.PARTITION_ID])
        model, _ = _local_model(cfg, msg, context)
        data = client_data(cfg, pid)
        metrics = evaluate(model, data.test_x, data.test_y, device=default_device())
        metrics_record = MetricRecord(
            {
                protocol.NUM_EXAMPLES: metrics.num_examples,
                protocol.LOSS: metrics.loss,
                protocol.ACCURACY: metrics.accuracy,
            }
        )
        return _reply(msg, pid, {protocol.METRICS: metrics_record})

    def query(self, msg: Message, context: Context) -> Message:
        return _reply(msg, int(context.node_config[protocol.PARTITION_ID]), {})


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
