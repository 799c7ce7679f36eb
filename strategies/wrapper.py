"""StrategyWrapper: a Flower strategy that wraps another one and changes only what it overrides."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedlayer.errors import ConfigError
from strategies.sampling import SeededGrid


class StrategyWrapper(Strategy):
    """Delegates every step to `self.strategy`; subclasses override the steps they change.

    The inherited `Strategy.start()` drives the rounds and calls the overridden methods. A wrapper
    exposes only its own attributes: keep a reference to the strategy whose state you need (for
    example the `LayerSelective` inside `Guarded(Observed(...))`). A `strategies.sampling.SeededGrid`
    passed to `configure_*` is told the round and phase first, so its node sample is the round's.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The wrapped strategy (Message API).

    Raises
    ------
    ConfigError
        When `strategy` is not a Message API strategy (for example a legacy `flwr.server.strategy` one).
    """

    def __init__(self, strategy: Strategy) -> None:
        if not isinstance(strategy, Strategy):
            raise ConfigError(
                f"{type(self).__name__} wraps a flwr.serverapp.strategy.Strategy (Message API), "
                f"got {type(strategy).__name__}"
            )
        self.strategy = strategy

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        _enter_round(grid, server_round, "train")
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        _enter_round(grid, server_round, "evaluate")
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log(INFO, "\t├──> %s around %s", type(self).__name__, type(self.strategy).__name__)
        self.strategy.summary()


def _enter_round(grid: Grid, server_round: int, phase: str) -> None:
    if isinstance(grid, SeededGrid):
        grid.set_round(server_round, phase)
