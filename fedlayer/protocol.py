"""The client protocol: every record name and config key that travels between server and clients.

fedlayer's ServerApp, its strategies and its ClientApp all import these names, so a renamed key
breaks at import rather than silently. A user's own ClientApp can follow the same protocol to
work with fedlayer's strategies (`strategies.LayerSelective` and the presets):

Every message the server sends (train, evaluate) holds
- an ArrayRecord `ARRAYS` ("arrays"): the model to load. With `personal-mode = "server"` it is
  the full model (averaged layers plus this client's personal ones); with `"client"` it is only
  the averaged layers once the client holds its personal layers;
- a ConfigRecord `CONFIG` ("config") with Flower's `SERVER_ROUND` ("server-round") and
  - `PERSONAL_MODE` ("personal-mode"): one of `PERSONAL_MODES`, who keeps the personal layers;
  - `AVERAGE_KEYS` ("average-keys"): the state_dict keys averaged this round, comma-joined;
  - `TRAIN_MODE` ("train-mode", train messages): one of `TRAIN_MODES`, how the client trains;
  - `PROXIMAL_MU` ("proximal-mu", train messages, when FedProx is on): the proximal weight;
  - `RUN_TAG` ("fedlayer-run"): names the run, so runs sharing one simulation keep apart the
    personal layers their clients hold.

Every reply (train, evaluate, query) holds a ConfigRecord `CLIENT` ("client") with
`PARTITION_ID` ("partition-id"): the server samples, sorts and names clients by partition, never
by Flower's random node ids. A train reply also holds an ArrayRecord (the full trained model, or
with `personal-mode = "client"` exactly the keys in `average-keys`) and a MetricRecord
`METRICS` ("metrics") with `NUM_EXAMPLES` ("num-examples", the averaging weight),
`TRAIN_LOSS` and `TRAIN_ACCURACY`; an evaluate reply's MetricRecord holds `NUM_EXAMPLES`,
`LOSS` and `ACCURACY` (a fraction in [0, 1]) of the client's personalised model on its local
test split. A query message is answered with the `CLIENT` record alone.

A client in `personal-mode = "client"` keeps its personal layers in `context.state` under
`PERSONAL_STATE` followed by ":" and the run tag.
"""

from __future__ import annotations

import re

# records of a message's RecordDict
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
CLIENT = "client"

# keys of the server's ConfigRecord
SERVER_ROUND = "server-round"  # set by Flower's strategies
PERSONAL_MODE = "personal-mode"
AVERAGE_KEYS = "average-keys"
TRAIN_MODE = "train-mode"
PROXIMAL_MU = "proximal-mu"
RUN_TAG = "fedlayer-run"

# the client's reply
PARTITION_ID = "partition-id"  # also the key of Flower's node_config in simulation
NUM_EXAMPLES = "num-examples"  # the averaging weight of Flower's strategies (`weighted_by_key`)
TRAIN_LOSS = "train-loss"
TRAIN_ACCURACY = "train-accuracy"
LOSS = "loss"
ACCURACY = "accuracy"

# the client's own state
PERSONAL_STATE = "fedlayer-personal"

# the values of PERSONAL_MODE and TRAIN_MODE
PERSONAL_MODES = ("server", "client")
TRAIN_MODES = ("standard", "fedrep", "fedbabu")


def average_keys_value(keys: list[str]) -> str:
    """The `AVERAGE_KEYS` config value for these state_dict keys."""
    return ",".join(keys)


def parse_average_keys(value: object) -> set[str]:
    """The state_dict keys named by an `AVERAGE_KEYS` config value."""
    return set(str(value or "").split(",")) - {""}


def personal_state_key(run_tag: object) -> str:
    """Where a client keeps its personal layers for one run in `context.state`."""
    return f"{PERSONAL_STATE}:{run_tag or ''}"


AGGREGATE_LABEL = "aggregate"  # names the aggregate where tables name clients (client_b of its analysis rows)


def client_label(partition_id: int | None, node_id: int) -> str:
    """How fedlayer names a client in tables and logs: its partition id, else "node-<node id>"."""
    return str(partition_id) if partition_id is not None else f"node-{node_id}"


def client_order(label: str) -> list[tuple[int, int, str]]:
    """Sort key of client (or model) names in natural order: "2" before "10", digits before "node-<id>"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(label))]
