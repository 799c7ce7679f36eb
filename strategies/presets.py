"""Named layer-wise averaging schemes from the literature, and `build_strategy`, which wraps any Flower
strategy class in the scheme's LayerSelective (or BarrierAware) with the scheme's client training mode.

Any layer selector is also a preset name: "last:2" means "average the last two layers".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import FedAvg

from fedlayer.errors import FedlayerError
from strategies.barrier_aware import BarrierAware, Measure
from strategies.layerwise import TRAIN_MODES, LayerSelective, LayerSource
from strategies.loading import instantiate_strategy, load_strategy_class


@dataclass(frozen=True)
class Preset:
    """A scheme: which layers are averaged (`average`, a selector) and how clients train."""

    name: str
    average: str
    train_mode: str = "standard"
    description: str = ""
    barrier_aware: bool = False

    def __post_init__(self) -> None:
        if self.train_mode not in TRAIN_MODES:
            raise FedlayerError(f"preset {self.name!r}: train mode {self.train_mode!r} is not one of {TRAIN_MODES}")


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("fedavg", "all", description="average every layer (McMahan et al., 2017)"),
        Preset("local", "none", description="average nothing: every client trains alone (never-averaged clients)"),
        Preset(
            "fedper",
            "body",
            description="average the body; the classifier head stays personal (Arivazhagan et al., 2019)",
        ),
        Preset(
            "lg-fedavg",
            "head",
            description="average the head; the body (local representations) stays personal (Liang et al., 2020)",
        ),
        Preset(
            "fedbn",
            "all,-norm",
            description="average all but the normalisation layers, which stay personal (Li et al., 2021)",
        ),
        Preset(
            "fedrep",
            "body",
            "fedrep",
            "average the body; clients train the personal head with the body "
            "frozen, then the body (Collins et al., 2021)",
        ),
        Preset(
            "fedbabu",
            "body",
            "fedbabu",
            "average the body; the head stays frozen at its initialisation during federation (Oh et al., 2022)",
        ),
        Preset(
            "barrier-aware",
            "all",
            description="average, each round, only the layers whose measured barrier "
            "between clients is below the threshold",
            barrier_aware=True,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; any other name is taken as a selector ("average that selector")."""
    if name in PRESETS:
        return PRESETS[name]
    return Preset(name, name, description=f"average the layers selected by {name!r}")


def build_strategy(
    name: str | None = None,
    class_path: str | None = None,
    kwargs: dict[str, Any] | None = None,
    average: str | Sequence[str] | None = None,
    personal: str = "server",
    layers: LayerSource | None = None,
    *,
    measure: Measure | None = None,
    threshold: float = 0.1,
    **flower_kwargs: Any,
) -> LayerSelective:
    """Build the Flower strategy `class_path` (default FedAvg) and wrap it for the preset `name`.

    `kwargs` are the user's constructor arguments (all must be accepted); `flower_kwargs` are the app's
    (e.g. `fraction_train`, `min_train_nodes`), passed where the class accepts them. `average`
    overrides the preset's selector (e.g. FedRep training with a custom head). With `layers` (the
    model) the selector is checked now; otherwise call `.resolve(model)` before training. The result's
    `preset` and `train_mode` attributes say what the clients must do; the "barrier-aware" preset needs
    `measure` (and uses `threshold`). Every bad value raises a FedlayerError before any training.
    """
    preset = get_preset(name or "fedavg")
    cls = load_strategy_class(class_path) if class_path else FedAvg
    inner = instantiate_strategy(cls, kwargs, flower_kwargs)
    selector = average or preset.average
    if preset.barrier_aware:
        if measure is None:
            raise FedlayerError("the barrier-aware preset needs a measure function (the server app provides it)")
        strategy: LayerSelective = BarrierAware(inner, measure, threshold, average=selector, personal=personal)
    else:
        strategy = LayerSelective(inner, selector, personal=personal, train_mode=preset.train_mode)
    if preset.name not in PRESETS and not average:
        strategy.selector_hint = f"{preset.name!r} is not a preset either; presets: {', '.join(PRESETS)}"
    strategy.preset = preset
    if layers is not None:
        strategy.resolve(layers)
    return strategy
