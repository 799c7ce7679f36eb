"""Test utilities: a Flower Grid that runs ClientApps in this process, and a reference client.

`InProcessGrid` lets strategies and ServerApp mains be tested in seconds without Ray. It behaves
like Flower's grids where it matters: random 64-bit node ids, one `Context` per node with
node_config {"partition-id", "num-partitions"} and a `state` that persists across rounds, message
ids and reply_to metadata, a ClientApp exception returned as an error reply, and message contents
copied in both directions (as a real transport would), so a client cannot change what the server
holds. Nodes can die and new ones join (`kill`, `add_node`), as SuperNodes of a deployment do.
Creating one sets Flower's task identity (run id, SuperLink node id), as a ServerApp runtime does,
so strategies can build Messages.

`ProtocolClient` is a minimal ClientApp that follows fedlayer's client protocol (see
`strategies.layerwise`) and records, per (partition, round), the state it loaded and trained;
`tiny_net` and `digits` are a small model and real data for it.
"""

from __future__ import annotations

import copy
import functools
import math
import random
from collections.abc import Callable, Iterable
from uuid import uuid4

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.server.superlink.linkstate.utils import NODE_UNAVAILABLE_ERROR_REASON
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from fedlayer import protocol


class InProcessGrid(Grid):
    """Delivers messages to `client_app` (one Context per node), synchronously, in this process.

    `node_seed` fixes the node ids (default: random like Flower's); `shuffle_seed` returns replies in a
    seeded random order instead of sending order (to test that results do not depend on it).
    `duration(message, context)` declares how many seconds a client takes for a message (default 0:
    the clock is simulated, never measured, so a test does not depend on the machine's speed);
    `send_and_receive(timeout=t)` leaves out the replies whose client took longer than t seconds, as
    if the clients ran in parallel and those replies came too late.
    `delivered` and `replies` log every instruction as a client received it and every reply.
    """

    def __init__(
        self,
        client_app: ClientApp | Callable[[Message, Context], Message],
        num_nodes: int,
        *,
        run_config: dict | None = None,
        node_seed: int | None = None,
        shuffle_seed: int | None = None,
        duration: Callable[[Message, Context], float] | None = None,
    ) -> None:
        self._rng = random.Random(node_seed) if node_seed is not None else random.SystemRandom()
        node_ids: list[int] = []
        for _ in range(num_nodes):
            node_ids.append(self._new_node_id(node_ids))
        self._run = Run.create_empty(run_id=self._rng.getrandbits(63))
        self.client_app = client_app
        self.run_config = dict(run_config or {})
        self.contexts: dict[int, Context] = {}
        self.dead: set[int] = set()
        self.unavailable: set[int] = set()  # dead nodes the SuperLink answers for
        for pid, node in enumerate(node_ids):
            self._join(node, pid, num_nodes)
        self.delivered: list[Message] = []
        self.replies: list[Message] = []
        self.exceptions: list[BaseException] = []
        self._pending: dict[str, Message] = {}
        self._took: dict[str, float] = {}  # message id -> seconds its client took (declared)
        self._duration = duration or (lambda message, context: 0.0)
        self._shuffle = random.Random(shuffle_seed) if shuffle_seed is not None else None
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    @property
    def partitions(self) -> dict[int, int]:
        """{node id: partition id}."""
        return {node: int(ctx.node_config["partition-id"]) for node, ctx in self.contexts.items()}

    def node_of(self, partition: int) -> int:
        """The live node holding `partition`."""
        return next(node for node, pid in self.partitions.items() if pid == partition and node not in self.dead)

    def add_node(self, partition: int, num_partitions: int | None = None) -> int:
        """A node joins with node_config {partition-id, num-partitions} (by default: the number of live
        nodes afterwards) and an empty state, under a new random node id, as a (re)started SuperNode does."""
        node = self._new_node_id(self.contexts)
        self._join(node, partition, len(self.get_node_ids()) + 1 if num_partitions is None else num_partitions)
        return node

    def _new_node_id(self, taken: Iterable[int]) -> int:
        node = self._rng.getrandbits(64)
        while node in (0, SUPERLINK_NODE_ID, *taken):
            node = self._rng.getrandbits(64)
        return node

    def _join(self, node: int, partition: int, num_partitions: int) -> None:
        self.contexts[node] = Context(
            run_id=self._run.run_id,
            node_id=node,
            node_config={"partition-id": partition, "num-partitions": num_partitions},
            state=RecordDict(),
            run_config=dict(self.run_config),
        )

    def kill(self, node: int, *, noticed: bool = False) -> None:
        """The node dies, as a SuperNode killed with SIGKILL: it leaves `get_node_ids()`, and messages to
        it (also the one it is handling now) are accepted but never answered; once the SuperLink has
        `noticed` (its heartbeats stopped), the SuperLink answers them with Flower's "Node Unavailable"
        error reply, sent from the SuperLink's own node id."""
        self.dead.add(node)
        if noticed:
            self.unavailable.add(node)

    # ------------------------------------------------------------------ Grid API

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> set[int]:
        return set(self.contexts) - self.dead

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            md = message.metadata
            if md.dst_node_id not in self.contexts:
                raise ValueError(f"no node {md.dst_node_id}")
            if md.reply_to_message_id or md.ttl <= 0:
                raise ValueError(f"invalid instruction message: {md}")
            md.__dict__["_message_id"] = str(uuid4())
            received = _transported(message)
            ids.append(md.message_id)
            if md.dst_node_id in self.unavailable:
                self._took[md.message_id] = 0.0
                self._pending[md.message_id] = _unavailable(received)
                continue
            if md.dst_node_id in self.dead:
                self._took[md.message_id] = math.inf
                continue
            self.delivered.append(received)
            reply = _transported(self._handle(received))
            self._took[md.message_id] = self._duration(received, self.contexts[md.dst_node_id])
            if md.dst_node_id in self.dead:  # killed while handling it
                self._took[md.message_id] = math.inf
                continue
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            self.replies.append(reply)
            self._pending[md.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._pending.pop(i) for i in message_ids if i in self._pending]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        ids = self.push_messages(messages)
        if timeout is not None:
            ids = [i for i in ids if self._took[i] <= timeout]
        replies = self.pull_messages(ids)
        if self._shuffle is not None:
            self._shuffle.shuffle(replies)
        return replies

    def _handle(self, message: Message) -> Message:
        """Run the ClientApp; like Flower, an exception becomes an error reply."""
        try:
            reply = self.client_app(message, self.contexts[message.metadata.dst_node_id])
            if not isinstance(reply, Message) or reply.metadata.reply_to_message_id != message.metadata.message_id:
                raise TypeError("a ClientApp must return Message(content, reply_to=message)")
            return reply
        except Exception as exc:  # noqa: BLE001 - reported to the server, as Flower does
            self.exceptions.append(exc)
            error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}")
            return Message(error, reply_to=message)


def in_process_engine(main_fn, client_app, cfg, **_) -> None:
    """A stand-in for Flower's simulation engine (`fedlayer.simulation.simulate`): the ServerApp's main
    against in-process ClientApps on an `InProcessGrid` with seeded node ids."""
    grid = InProcessGrid(client_app, cfg.federation.clients, node_seed=0)
    main_fn(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))


def _unavailable(message: Message) -> Message:
    """The error reply Flower's SuperLink sends for a node that stopped sending heartbeats."""
    reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, NODE_UNAVAILABLE_ERROR_REASON), reply_to=message)
    reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    reply.metadata.__dict__["_message_id"] = str(uuid4())
    return reply


def _transported(message: Message) -> Message:
    """A copy of a message as the other side would receive it (content copied, metadata copied)."""
    payload = message.error if message.has_error() else copy.deepcopy(message.content)
    return Message(payload, metadata=copy.copy(message.metadata))


# ---------------------------------------------------------------------- a reference client


def tiny_net(seed: int = 0) -> nn.Module:
    """Layers "0" (Linear), "1" (BatchNorm1d: a norm layer with an int64 buffer), "3" (Linear head)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits (1,797 real 8x8 images, shipped with it): x in [0, 1], shape (N, 64)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data / 16.0, dtype=torch.float32), torch.tensor(data.target, dtype=torch.int64)


PERSONAL_STATE = "personal"


def numpy_state(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


class ProtocolClient:
    """A ClientApp following fedlayer's client protocol, recording what it does.

    - With no personal layers in `context.state` it loads what it receives strictly (like Flower's
      quickstart); otherwise it loads its stored personal layers, then what it received, strictly.
    - Train: one SGD step on its partition; replies {"arrays", "metrics" (num-examples, train-loss),
      "client": ConfigRecord({"partition-id": pid})}. With config "personal-mode" = "client" it stores
      the keys NOT in "average-keys" in `context.state["personal"]` and replies with only the others.
    - Evaluate: loss on its partition; replies "metrics" (num-examples, loss) and "client".
    `loaded`, `trained`, `configs` and `evaluated` are keyed by (partition id, server round).
    """

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        lr: float = 0.1,
        batch: int = 64,
        name_partition: bool = True,
    ) -> None:
        self.model_fn, self.x, self.y, self.lr, self.batch = model_fn, x, y, lr, batch
        self.name_partition = name_partition
        self.loaded: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self.trained: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self.evaluated: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self.configs: dict[tuple[int, int], dict] = {}
        self.app = ClientApp()
        self.app.train()(self.train)
        self.app.evaluate()(self.evaluate)
        self.app.query()(self.query)

    def data(self, context: Context) -> tuple[torch.Tensor, torch.Tensor]:
        pid, n = int(context.node_config[protocol.PARTITION_ID]), int(context.node_config["num-partitions"])
        return self.x[pid::n], self.y[pid::n]

    def model(self, message: Message, context: Context) -> nn.Module:
        model = self.model_fn()
        state = {}
        if PERSONAL_STATE in context.state.array_records:
            state.update(context.state.array_records[PERSONAL_STATE].to_torch_state_dict())
        state.update(message.content[protocol.ARRAYS].to_torch_state_dict())
        model.load_state_dict(state, strict=True)
        return model

    def _reply(self, message: Message, context: Context, records: dict) -> Message:
        if self.name_partition:
            records[protocol.CLIENT] = ConfigRecord(
                {protocol.PARTITION_ID: int(context.node_config[protocol.PARTITION_ID])}
            )
        return Message(RecordDict(records), reply_to=message)

    def train(self, message: Message, context: Context) -> Message:
        config = message.content[protocol.CONFIG]
        key = (int(context.node_config[protocol.PARTITION_ID]), int(config[protocol.SERVER_ROUND]))
        self.configs[key] = dict(config)
        model = self.model(message, context)
        self.loaded[key] = numpy_state(model.state_dict())
        x, y = self.data(context)
        generator = torch.Generator().manual_seed(1000 * key[0] + key[1])
        batch = torch.randperm(len(x), generator=generator)[: self.batch]
        model.train()
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= self.lr * param.grad
        state = model.state_dict()
        self.trained[key] = numpy_state(state)
        if config.get(protocol.PERSONAL_MODE) == "client":
            shared = protocol.parse_average_keys(config.get(protocol.AVERAGE_KEYS))
            context.state[PERSONAL_STATE] = ArrayRecord({k: v for k, v in state.items() if k not in shared})
            state = {k: v for k, v in state.items() if k in shared}
        metrics = MetricRecord({protocol.NUM_EXAMPLES: len(x), protocol.TRAIN_LOSS: float(loss.detach())})
        return self._reply(message, context, {protocol.ARRAYS: ArrayRecord(state), protocol.METRICS: metrics})

    def evaluate(self, message: Message, context: Context) -> Message:
        key = (
            int(context.node_config[protocol.PARTITION_ID]),
            int(message.content[protocol.CONFIG][protocol.SERVER_ROUND]),
        )
        model = self.model(message, context)
        self.evaluated[key] = numpy_state(model.state_dict())
        x, y = self.data(context)
        model.eval()
        with torch.no_grad():
            loss = float(nn.functional.cross_entropy(model(x), y))
        return self._reply(
            message, context, {protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: len(x), protocol.LOSS: loss})}
        )

    def query(self, message: Message, context: Context) -> Message:
        return self._reply(message, context, {})
