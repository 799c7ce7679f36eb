"""Observed: hand every round's client replies to callbacks, for ANY strategy, without changing it.

The server app uses it for per-round barrier analysis and per-client metrics. It goes outermost,
`Observed(LayerSelective(FedAvg(), ...))`, so it sees the replies exactly as clients sent them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedlayer.errors import RunError
from strategies.sampling import split_replies
from strategies.wrapper import StrategyWrapper

OnTrain = Callable[[int, list[Message], ArrayRecord], None]
OnEvaluate = Callable[[int, list[Message]], None]


class Observed(StrategyWrapper):
    """Calls `on_train(server_round, replies, global_arrays)` before the train aggregation and
    `on_evaluate(server_round, replies)` before the evaluate aggregation.

    `replies` are the valid replies sorted by partition id (errored ones are left out);
    `global_arrays` is the global model this round's training started from. The wrapped strategy
    then aggregates the same replies in that order, errored ones last.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The observed strategy; it aggregates as it would unobserved.
    on_train : callable, optional
        `on_train(server_round, replies, global_arrays)`, before each train aggregation.
    on_evaluate : callable, optional
        `on_evaluate(server_round, replies)`, before each evaluate aggregation.
    """

    def __init__(
        self, strategy: Strategy, on_train: OnTrain | None = None, on_evaluate: OnEvaluate | None = None
    ) -> None:
        super().__init__(strategy)
        self.on_train = on_train
        self.on_evaluate = on_evaluate
        self.global_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, errors = split_replies(replies)
        if self.on_train is not None:
            if self.global_arrays is None:
                raise RunError("aggregate_train was called before configure_train")
            self.on_train(server_round, valid, self.global_arrays)
        return super().aggregate_train(server_round, valid + errors)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid, errors = split_replies(replies)
        if self.on_evaluate is not None:
            self.on_evaluate(server_round, valid)
        return super().aggregate_evaluate(server_round, valid + errors)
