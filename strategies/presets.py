"""Named layer-wise averaging schemes from the literature, and `build_strategy`, which wraps any Flower
strategy class in the scheme's LayerSelective (or BarrierAware) with the scheme's client training mode.

Any layer selector is also a preset name: "last:2" means "average the last two layers".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import FedAvg

from fedlayer.errors import ConfigError, ModelError, choices_message
from fedlayer.protocol import TRAIN_MODES
from strategies.barrier_aware import BarrierAware, Measure
from strategies.layerwise import LayerSelective, LayerSource
from strategies.loading import instantiate_strategy, load_strategy_class


@dataclass(frozen=True)
class Preset:
    """A scheme: which layers are averaged and how clients train.

    Parameters
    ----------
    name : str
        The preset's name (or, for a selector used as a preset, the selector).
    average : str
        The layer selector of the averaged layers.
    train_mode : str, default "standard"
        How clients train (`fedlayer.protocol.TRAIN_MODES`).
    description : str
        One line for people, citing the method.
    barrier_aware : bool, default False
        Whether the averaged layers are chosen each round by their measured barrier.
    needs : str
        What a model must have for the preset to apply ("normalisation layers"), named when it does not.
    """

    name: str
    average: str
    train_mode: str = "standard"
    description: str = ""
    barrier_aware: bool = False
    needs: str = ""

    def __post_init__(self) -> None:
        if self.train_mode not in TRAIN_MODES:
            raise ConfigError(f"preset {self.name!r}: " + choices_message("train mode", self.train_mode, TRAIN_MODES))

    def misfit(
        self, selector: str | Sequence[str], error: ConfigError, model_name: str = ""
    ) -> ConfigError | ModelError:
        """The error for a selector of this preset that does not fit a model: what the preset needs."""
        model = f"model {model_name!r}" if model_name else "the model"
        if selector != self.average:  # the user's own `average` did not fit
            return error
        if self.name not in PRESETS:
            return ConfigError(f"{error}. {self.name!r} is not a preset either; presets: {', '.join(PRESETS)}")
        if self.needs:
            return ModelError(f"preset {self.name!r} needs {self.needs}; {model} has none ({error})")
        return ConfigError(f"preset {self.name!r} averages {selector!r}, which does not fit {model}: {error}")


_HEAD = "a Linear classifier head"
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("fedavg", "all", description="average every layer (McMahan et al., 2017, arXiv:1602.05629)"),
        Preset("local", "none", description="average nothing: every client trains alone (never-averaged clients)"),
        Preset(
            "fedper",
            "body",
            description="average the body; the classifier head stays personal (Arivazhagan et al., 2019, "
            "arXiv:1912.00818)",
            needs=_HEAD,
        ),
        Preset(
            "lg-fedavg",
            "head",
            description="average the head; the body (local representations) stays personal (Liang et al., 2020, "
            "arXiv:2001.01523)",
            needs=_HEAD,
        ),
        Preset(
            "fedbn",
            "all,-norm",
            description="average all but the normalisation layers, which stay personal (Li et al., 2021, "
            "arXiv:2102.07623)",
            needs="normalisation layers",
        ),
        Preset(
            "fedrep",
            "body",
            "fedrep",
            "average the body; clients train the personal head with the body frozen, then the body "
            "(Collins et al., 2021, arXiv:2102.07078)",
            needs=_HEAD,
        ),
        Preset(
            "fedbabu",
            "body",
            "fedbabu",
            "average the body; the head stays frozen at its initialisation during federation (Oh et al., 2022, "
            "arXiv:2106.06042)",
            needs=_HEAD,
        ),
        Preset(
            "barrier-aware",
            "all",
            description="average, each round, only the layers whose measured barrier between clients is below the "
            "threshold",
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
    layer_unit: str = "module",
    model_name: str = "",
    measure: Measure | None = None,
    threshold: float = 0.1,
    client_init: Callable[[int], Mapping[str, Any]] | None = None,
    **flower_kwargs: Any,
) -> LayerSelective:
    """Build the Flower strategy `class_path` (default FedAvg) and wrap it for the preset `name`.

    Parameters
    ----------
    name : str, optional
        A preset (`PRESETS`: fedavg, local, fedper, lg-fedavg, fedbn, fedrep, fedbabu,
        barrier-aware) or a layer selector; default "fedavg".
    class_path : str, optional
        "module:Class", "file.py:Class" or a stock Flower strategy name; default FedAvg.
    kwargs : dict, optional
        The user's constructor arguments for that class; every one must be accepted.
    average : str or sequence of str, optional
        Overrides the preset's selector (e.g. FedRep training with a custom head).
    personal : {"server", "client"}, default "server"
        Who keeps the personal layers.
    layers : model, state dict or list of Layer, optional
        The model: the selector is checked now. Otherwise call `.resolve(model)` before training.
    layer_unit : {"module", "tensor"}, default "module"
        What one layer is for the selector (`fedlayer.layers.LAYER_UNITS`).
    model_name : str
        How error messages name the model ("cnn").
    measure : callable, optional
        The barrier measure of the "barrier-aware" preset (the server app provides it).
    threshold : float, default 0.1
        The "barrier-aware" threshold.
    client_init : callable, optional
        Each client's own initial state by partition id (`LayerSelective`); None: the global arrays.
    **flower_kwargs
        The app's settings (e.g. `fraction_train`, `min_train_nodes`), passed where the class accepts them.

    Returns
    -------
    LayerSelective
        The wrapped strategy; its `preset` and `train_mode` say what the clients must do.

    Raises
    ------
    ConfigError
        A bad class, keyword, selector, layer unit or personal mode, before any training.
    ModelError
        A preset that does not fit the model ("preset 'fedbn' needs normalisation layers; model 'cnn' has none").
    """
    preset = get_preset(name or "fedavg")
    cls = load_strategy_class(class_path) if class_path else FedAvg
    inner = instantiate_strategy(cls, kwargs, flower_kwargs)
    selector = average or preset.average
    if preset.barrier_aware:
        if measure is None:
            raise ConfigError("the barrier-aware preset needs a measure function (the server app provides it)")
        strategy: LayerSelective = BarrierAware(
            inner,
            measure,
            threshold,
            average=selector,
            layer_unit=layer_unit,
            personal=personal,
            preset=preset,
            client_init=client_init,
        )
    else:
        strategy = LayerSelective(
            inner,
            selector,
            layer_unit=layer_unit,
            personal=personal,
            train_mode=preset.train_mode,
            preset=preset,
            client_init=client_init,
        )
    if layers is not None:
        strategy.resolve(layers, model_name=model_name)
    return strategy
