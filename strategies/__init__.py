"""Flower strategies (Message API) that average only selected layers; usable in any Flower ServerApp.

    from flwr.serverapp.strategy import FedAdam
    from strategies import LayerSelective
    strategy = LayerSelective(FedAdam(), "body")          # FedPer-style with FedAdam on the body
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=5)

See `strategies.layerwise` for the client protocol (config keys "personal-mode", "average-keys",
"train-mode"; reply ConfigRecord "client" with "partition-id").
"""

from strategies.barrier_aware import BarrierAware
from strategies.guarded import Guarded
from strategies.layerwise import (
    AVERAGE_KEYS_KEY,
    PERSONAL_MODE_KEY,
    PERSONAL_MODES,
    TRAIN_MODE_KEY,
    TRAIN_MODES,
    LayerSelective,
    SelectiveState,
    select_average,
)
from strategies.loading import instantiate_strategy, load_strategy_class, stock_strategies
from strategies.observed import Observed
from strategies.presets import PRESETS, Preset, build_strategy, get_preset
from strategies.sampling import (
    CLIENT_RECORD,
    PARTITION_KEY,
    SeededGrid,
    client_label,
    clients_per_round,
    partition_of,
    query_partitions,
    split_replies,
)
from strategies.wrapper import StrategyWrapper

__all__ = [
    "AVERAGE_KEYS_KEY",
    "CLIENT_RECORD",
    "PARTITION_KEY",
    "PERSONAL_MODES",
    "PERSONAL_MODE_KEY",
    "PRESETS",
    "TRAIN_MODES",
    "TRAIN_MODE_KEY",
    "BarrierAware",
    "Guarded",
    "LayerSelective",
    "Observed",
    "Preset",
    "SeededGrid",
    "SelectiveState",
    "StrategyWrapper",
    "build_strategy",
    "client_label",
    "clients_per_round",
    "get_preset",
    "instantiate_strategy",
    "load_strategy_class",
    "partition_of",
    "query_partitions",
    "select_average",
    "split_replies",
    "stock_strategies",
]
