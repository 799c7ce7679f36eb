"""Flower strategies (Message API) that average only selected layers; usable in any Flower ServerApp.

    from flwr.serverapp.strategy import FedAdam
    from strategies import LayerSelective
    strategy = LayerSelective(FedAdam(), "body")          # FedPer-style with FedAdam on the body
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=5)

One strategy per module: `LayerSelective` (layerwise.py), `BarrierAware` (barrier_aware.py), the
named presets and `build_strategy` (presets.py); `BarrierAnalysis` (barrier_analysis.py), the
per-round barrier analysis around any strategy; the wrappers fedlayer's own ServerApp also puts
around them, `Observed` (observed.py: replies to callbacks) and `Guarded` (guarded.py: faults and
bad updates); seeded, partition-ordered sampling (`SeededGrid`, sampling.py); the state a strategy
carries between rounds, saved for an exact resume (`StatefulStrategy`, `state_of`, `restore_state`:
state.py). The messages they exchange with clients are `fedlayer.protocol`'s.
"""

from strategies.barrier_analysis import BarrierAnalysis
from strategies.barrier_aware import BarrierAware
from strategies.guarded import Guarded
from strategies.layerwise import LayerSelective, SelectiveState
from strategies.loading import instantiate_strategy, load_strategy_class, stock_strategies
from strategies.observed import Observed
from strategies.presets import PRESETS, Preset, build_strategy, get_preset
from strategies.sampling import SeededGrid, client_label, clients_per_round, partition_of, query_partitions
from strategies.state import StatefulStrategy, StrategyState, restore_state, state_of, unsaved_note
from strategies.wrapper import StrategyWrapper

__all__ = [
    "PRESETS",
    "BarrierAnalysis",
    "BarrierAware",
    "Guarded",
    "LayerSelective",
    "Observed",
    "Preset",
    "SeededGrid",
    "SelectiveState",
    "StatefulStrategy",
    "StrategyState",
    "StrategyWrapper",
    "build_strategy",
    "client_label",
    "clients_per_round",
    "get_preset",
    "instantiate_strategy",
    "load_strategy_class",
    "partition_of",
    "query_partitions",
    "restore_state",
    "state_of",
    "stock_strategies",
    "unsaved_note",
]
