"""Group specs -> named groups of layers: single layers, the full model, cumulative orderings,
sliding windows and layer selectors (the README's "Concepts and definitions")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedlayer.errors import ConfigError
from fedlayer.layers import ORDERINGS, Layer, cumulative_groups, keys_of, select_layers, sliding_windows

GROUP_SPECS = ("layers", "full", *ORDERINGS, "window:W", "<layer selector>")
"""The forms a group spec takes, for messages and help (not a closed list: any layer selector is one)."""


@dataclass(frozen=True)
class Group:
    """Layers interpolated together; `name` is readable and unique within its `kind`."""

    name: str
    kind: str  # full, layer, shallow, deep, random, minimal, window or selector
    layers: tuple[Layer, ...]

    @property
    def keys(self) -> list[str]:
        return keys_of(self.layers)

    @property
    def layer_names(self) -> str:
        """The layer names joined with '|' (a plain string column stores and groups well)."""
        return "|".join(layer.name for layer in self.layers)


def resolve_groups(layers: Sequence[Layer], spec: str | Sequence[str], *, seed: int = 0) -> list[Group]:
    """The groups of layers that group specs name, in the given order, without duplicates.

    The groups of "Layer-wise Linear Mode Connectivity" (Adilova et al., ICLR 2024,
    arXiv:2307.06966): single layers, the full model, the cumulative groups of an ordering (the
    paper's shallow, deep, random and minimal experiment), plus sliding windows of consecutive layers.

    Parameters
    ----------
    layers : Sequence[Layer]
        The model's layers, in state_dict order (`fedlayer.layers.model_layers`).
    spec : str or Sequence[str]
        One spec or a list of them. A spec is "layers" (each single layer), "full" (all layers), an
        ordering name (its cumulative groups k = 1..L, named "<ordering>:<k>"), "window:W" (every
        run of W consecutive layers, named "window:W@<first layer>"), or any layer selector of
        `fedlayer.layers.select_layers` (one group named by the selector; a comma in a selector
        string means union, as there).
    seed : int, default 0
        Seeds the "random" ordering and seeded selectors.

    Returns
    -------
    list[Group]
        Each group once (by kind and name), in the order the specs produce them.

    Raises
    ------
    ConfigError
        If no spec is given, a spec is empty or malformed, or a selector matches no layer.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ConfigError(f"no group spec given; valid choices: {', '.join(GROUP_SPECS)}")
    groups: dict[tuple[str, str], Group] = {}
    for item in specs:
        for group in _resolve_one(list(layers), str(item).strip(), seed):
            groups.setdefault((group.kind, group.name), group)
    return list(groups.values())


def _resolve_one(layers: list[Layer], spec: str, seed: int) -> list[Group]:
    if not spec:
        raise ConfigError(f"empty group spec; valid choices: {', '.join(GROUP_SPECS)}")
    if spec == "layers":
        return [Group(layer.name, "layer", (layer,)) for layer in layers]
    if spec == "full":
        return [Group("full", "full", tuple(layers))]
    if spec in ORDERINGS:
        return [
            Group(f"{spec}:{k}", spec, tuple(group))
            for k, group in enumerate(cumulative_groups(layers, spec, seed=seed), start=1)
        ]
    if spec.startswith("window:"):
        width = spec.partition(":")[2]
        if not width.strip().isdigit():
            raise ConfigError(f"bad group spec {spec!r}: window:W needs an integer width W")
        windows = sliding_windows(layers, int(width))
        return [Group(f"window:{int(width)}@{w[0].name}", "window", tuple(w)) for w in windows]
    return [Group(spec, "selector", tuple(select_layers(layers, spec, seed=seed)))]
