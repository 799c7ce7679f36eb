"""Interpolation curves: loss and error along every group's path, on both bases, as one table.

Columns of the curves table (one row per group, base, direction and alpha):
  group      readable group name ("conv1", "full", "shallow:3", "window:2@layer1.0.conv1", a selector)
  kind       full, layer, shallow, deep, random, minimal, window, selector, or random-direction
  layers     the group's layer names joined with "|";  n_layers: how many
  base       "a" or "b": the model that keeps every layer outside the group
  bn         the BatchNorm policy, "interpolate" or "recompute"
  layer_unit what one layer is, "module" or "tensor" (`fedlayer.layers.LAYER_UNITS`): the unit of
             the group and layer names
  direction  the random-direction draw (0..N-1) on random-direction rows, -1 on all others
  alpha      position on the line from A (0) to B (1) on BOTH bases: the group's tensors are
             (1 - alpha) A + alpha B, so base a passes through model A at alpha 0 and base b through
             model B at alpha 1 (the full group is one path, shared by both bases). Random-direction
             rows are theta_base + t d with t = alpha (base a) or 1 - alpha (base b). The grid always
             holds 0, 0.5 and 1.
  loss, error                     sample-weighted cross-entropy and error rate (%) at this point
  loss_a, loss_b, error_a, error_b  the two FULL models (same on every row, so `barriers` needs
                                    nothing but this table)

Its `attrs` (kept by Parquet) say which path the engine took: `engine` is "graph" (the fast path:
a torch.fx graph re-runs only what each point changes) or "plain" (a full forward pass per point,
same numbers), and `engine_fallback` says why the plain path was taken ("" on the fast path).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from fedlayer.analysis.directions import random_direction
from fedlayer.analysis.evaluate import (
    EvalInput,
    PlainEvaluator,
    Segment,
    WorkingModel,
    as_eval_data,
    as_inputs,
    full_precision,
)
from fedlayer.analysis.graph import GraphEvaluator, Untraceable
from fedlayer.analysis.groups import Group, resolve_groups
from fedlayer.analysis.interpolate import BASES, alpha_grid
from fedlayer.checkpoints import fit_state
from fedlayer.errors import ConfigError, choices_message
from fedlayer.layers import Layer, model_layers
from fedlayer.training import Metrics

log = logging.getLogger(__name__)

BN_POLICIES = ("interpolate", "recompute")
"""How BatchNorm running statistics are treated along a path (see `interpolation_curves`)."""
CURVE_COLUMNS = [
    "group", "kind", "layers", "n_layers", "base", "bn", "layer_unit", "direction", "alpha",
    "loss", "error", "loss_a", "loss_b", "error_a", "error_b",
]  # fmt: skip
RANDOM_KIND = "random-direction"
BASE_ALPHA = {"a": 0.0, "b": 1.0}  # alpha runs from A to B on both bases: base B sits at alpha 1


def interpolation_curves(
    model: nn.Module,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    data: EvalInput,
    *,
    groups: str | Sequence[str] = "layers",
    layer_unit: str = "module",
    alphas: int | Sequence[float] = 11,
    bases: str | Sequence[str] = BASES,
    bn: str = "interpolate",
    bn_data: torch.Tensor | EvalInput | None = None,
    random_directions: int = 0,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Loss and error along the interpolation path of each group of layers between models A and B.

    Implements the layer-wise (group) interpolation of "Layer-wise Linear Mode Connectivity"
    (Adilova et al., ICLR 2024, arXiv:2307.06966): on base A, theta_A^S(alpha) is model A with the
    layers S set to (1 - alpha) theta_A,S + alpha theta_B,S (base B likewise). S = all layers is the
    full linear interpolation of linear mode connectivity (Frankle et al. 2020, arXiv:1912.05671).
    `barriers` turns the returned table into midpoint and max barriers.

    Parameters
    ----------
    model : nn.Module
        Any module with A's and B's architecture; it is copied, never changed.
    state_a, state_b : Mapping[str, torch.Tensor]
        The two models' state dicts: every key of `model.state_dict()` with its shape, or keys that
        `fedlayer.checkpoints.fit_state` maps to them (a wrapper's prefix, a tied weight stored once).
    data : EvalInput
        The evaluation set: an (inputs, labels) pair of tensors, or a DataLoader yielding
        (inputs, labels, ...) batches; read once.
    groups : str or Sequence[str], default "layers"
        Group specs (see `resolve_groups`): "layers", "full", an ordering, "window:W" or a layer selector.
    layer_unit : str, default "module"
        What one layer is in those groups (`fedlayer.layers.LAYER_UNITS`): a module with all its
        tensors, or one weight tensor with its bias (the paper's ViT layers).
    alphas : int or Sequence[float], default 11
        A count of evenly spaced points or the values in [0, 1]; 0, 0.5 and 1 are always added.
    bases : str or Sequence[str], default ("a", "b")
        Which models keep the layers outside the group.
    bn : str, default "interpolate"
        One of `BN_POLICIES`. "interpolate" moves running statistics with their layer;
        "recompute" resets and re-estimates them on `bn_data` at every point, endpoints included
        (REPAIR, Jordan et al. 2022, arXiv:2211.08403). A model without BatchNorm statistics gives
        the same numbers under both policies and does not need `bn_data`.
    bn_data : torch.Tensor, EvalInput or None, default None
        Training inputs for bn="recompute" (a tensor, a pair or a DataLoader).
    random_directions : int, default 0
        N seeded random-direction curves per layer in a group, each a Gaussian direction scaled to
        that layer's A-B distance (see `random_direction`).
    seed : int, default 0
        Seeds the "random" ordering and the random directions.
    device : str, torch.device or None, default None
        Where to evaluate; None uses the device of `model`'s first tensor.
    batch_size : int, default 256
        Samples per forward pass.

    Returns
    -------
    pandas.DataFrame
        One row per group, base, direction and alpha, with the columns `CURVE_COLUMNS`; `attrs`
        "engine" and "engine_fallback" say which path was taken (see the module doc).

    Raises
    ------
    ConfigError
        If a group spec, layer unit, alpha grid, base, BN policy, count or batch size is bad, or
        bn="recompute" lacks `bn_data` for a model with BatchNorm statistics.
    CheckpointError
        If `state_a` or `state_b` does not fit `model`.
    DataError
        If `data` is not one integer label per input.
    ModelError
        If the model does not return one row of logits per label: (batch, classes), or (batch, T, vocabulary)
        for a language task's (batch, T) labels.
    """
    engine = CurveEngine(model, data, bn=bn, bn_data=bn_data, device=device, batch_size=batch_size)
    return engine.curves(
        state_a, state_b, groups=groups, layer_unit=layer_unit, alphas=alphas, bases=bases,
        random_directions=random_directions, seed=seed,
    )  # fmt: skip


@dataclass(frozen=True)
class _Curve:
    """One path to evaluate on one base and how to label its rows."""

    group: str
    kind: str
    layers: str
    n_layers: int
    direction: int
    segments: tuple[Segment, ...]
    alphas: tuple[float, ...]  # the alphas that need an evaluation (not the base model itself)


class CurveEngine:
    """Interpolation curves for many model pairs from one working copy of the model and one evaluation set.

    The engine behind `interpolation_curves`, `pairwise_curves` and the per-round analysis (same
    definitions, arXiv:2307.06966). The model is copied once; each point rewrites only the tensors
    its path moves, in place. When the model traces with torch.fx and bn="interpolate", only the part
    of the network downstream of the moved tensors is re-run (`evaluator_name` "graph"), with the
    same numbers as full passes. Any other model (data-dependent control flow, code torch.fx cannot
    trace, a graph that does not reproduce the model's output) runs full passes ("plain"), and
    `fallback` says why.

    Parameters
    ----------
    model : nn.Module
        The architecture of every pair to come; copied, never changed.
    data : EvalInput
        The evaluation set: an (inputs, labels) pair of tensors or a DataLoader; read and moved once.
    bn : str, default "interpolate"
        One of `BN_POLICIES` (see `interpolation_curves`).
    bn_data : torch.Tensor, EvalInput or None, default None
        Training inputs for bn="recompute".
    device : str, torch.device or None, default None
        Where to evaluate; None uses the device of `model`'s first tensor.
    batch_size : int, default 256
        Samples per forward pass.

    Raises
    ------
    ConfigError
        If `bn` or `batch_size` is bad, or bn="recompute" lacks `bn_data` for a model with BatchNorm statistics.
    DataError
        If `data` or `bn_data` is not one integer label per input.
    ModelError
        If the model does not return one row of logits per label: (batch, classes), or (batch, T, vocabulary)
        for a language task's (batch, T) labels.
    """

    def __init__(
        self,
        model: nn.Module,
        data: EvalInput,
        *,
        bn: str = "interpolate",
        bn_data: torch.Tensor | EvalInput | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 256,
    ):
        if bn not in BN_POLICIES:
            raise ConfigError(choices_message("BatchNorm policy", bn, BN_POLICIES))
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.bn: str = bn
        self.work: WorkingModel = WorkingModel(model, _device(model, device))
        self._layers: dict[str, list[Layer]] = {}  # by layer unit, built when first asked for
        data = as_eval_data(data).to(self.work.device)  # moved once, not per point
        self.evaluator: GraphEvaluator | PlainEvaluator
        self.fallback: str = ""  # why the plain path is used; empty on the fast path
        if bn == "recompute" and self.work.bn_modules:
            if bn_data is None:
                raise ConfigError("bn='recompute' needs bn_data (training inputs) to re-estimate BatchNorm stats")
            self.evaluator = PlainEvaluator(self.work, data, batch_size, as_inputs(bn_data).to(self.work.device))
            self.fallback = "bn='recompute' re-estimates BatchNorm statistics at every point"
        else:
            try:
                with torch.inference_mode(), full_precision():
                    self.evaluator = GraphEvaluator(self.work, data, batch_size)
            except Untraceable as exc:
                self.fallback = f"the fast path cannot run {type(model).__name__}: {exc}"
                log.info("barrier engine: using full forward passes (%s)", self.fallback)
                self.evaluator = PlainEvaluator(self.work, data, batch_size)

    def curves(
        self,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
        *,
        groups: str | Sequence[str] = "layers",
        layer_unit: str = "module",
        alphas: int | Sequence[float] = 11,
        bases: str | Sequence[str] = BASES,
        random_directions: int = 0,
        seed: int = 0,
    ) -> pd.DataFrame:
        """The curves table for one pair of models, as `interpolation_curves` returns it.

        Parameters
        ----------
        state_a, state_b : Mapping[str, torch.Tensor]
            The two models' state dicts.
        groups, layer_unit, alphas, bases, random_directions, seed
            As for `interpolation_curves`.

        Returns
        -------
        pandas.DataFrame
            One row per group, base, direction and alpha, with the columns `CURVE_COLUMNS` and
            the engine's path in `attrs`.

        Raises
        ------
        ConfigError
            If a group spec, layer unit, alpha grid, base or count is bad.
        CheckpointError
            If `state_a` or `state_b` does not fit the model.
        """
        bases = _checked_bases(bases)
        grid = alpha_grid(alphas)
        check_non_negative("random_directions", random_directions)
        check_non_negative("seed", seed)
        layers = self.layers(layer_unit)
        resolved = resolve_groups(layers, groups, seed=seed)
        states = {
            base: self.work.prepare(fit_state(self.work.model, state, what=f"state_{base}"))
            for base, state in (("a", state_a), ("b", state_b))
        }
        directions = self._directions(states, layers, resolved, random_directions, seed)

        endpoints: dict[str, Metrics] = {}
        evaluated: dict[str, list[tuple[_Curve, dict[float, Metrics]]]] = {}
        with torch.inference_mode(), full_precision():
            for base in BASES:  # both: the endpoints L_A and L_B are always needed
                first = base == bases[0]
                curves = self._curves(base, states, resolved, directions, grid, first) if base in bases else []
                endpoints[base], results = self.evaluator.evaluate(
                    states[base], [(c.segments, c.alphas) for c in curves]
                )
                evaluated[base] = [
                    (c, dict(zip(c.alphas, metrics, strict=True))) for c, metrics in zip(curves, results, strict=True)
                ]
        # The full path is the same from either base: evaluated once, its values serve both.
        full = {a: m for base in bases for c, values in evaluated[base] if c.kind == "full" for a, m in values.items()}
        full.update({0.0: endpoints["a"], 1.0: endpoints["b"]})
        rows: list[tuple[object, ...]] = []
        for base in bases:
            for curve, values in evaluated[base]:
                known = full if curve.kind == "full" else {**values, BASE_ALPHA[base]: endpoints[base]}
                rows.extend(
                    (curve.group, curve.kind, curve.layers, curve.n_layers, base, self.bn, layer_unit, curve.direction,
                     alpha, known[alpha].loss, known[alpha].error, endpoints["a"].loss, endpoints["b"].loss,
                     endpoints["a"].error, endpoints["b"].error)
                    for alpha in grid
                )  # fmt: skip
        table = pd.DataFrame(rows, columns=CURVE_COLUMNS)
        table.attrs.update(engine=self.evaluator_name, engine_fallback=self.fallback)
        return table

    def _curves(self, base, states, groups, directions, grid, first_base: bool) -> list[_Curve]:
        """The paths from one base; the full path is evaluated only from the first base asked for."""
        rest, end = states[base], BASE_ALPHA[base]
        curves = []
        for group in groups:
            if group.kind == "full":
                alphas = tuple(a for a in grid if 0.0 < a < 1.0) if first_base else ()
            else:
                alphas = tuple(a for a in grid if a != end)
            segments = tuple(
                Segment(t, rest[k], end, at0=states["a"][k], at1=states["b"][k]) for k, t in self._targets(group.keys)
            )
            curves.append(_Curve(group.name, group.kind, group.layer_names, len(group.layers), -1, segments, alphas))
        for layer, draw, delta in directions:
            segments = tuple(Segment(t, rest[k], end, delta=delta[k]) for k, t in self._targets(delta))
            alphas = tuple(a for a in grid if a != end)
            curves.append(_Curve(layer.name, RANDOM_KIND, layer.name, 1, draw, segments, alphas))
        return curves

    def _targets(self, keys) -> list[tuple[str, torch.Tensor]]:
        """(key, live tensor) for the floating-point tensors of `keys`, each tied tensor once."""
        seen: set[int] = set()
        targets = []
        for key in keys:
            tensor = self.work.tensors[key]
            if tensor.is_floating_point() and id(tensor) not in seen:
                seen.add(id(tensor))
                targets.append((key, tensor))
        return targets

    def layers(self, unit: str = "module") -> list[Layer]:
        """The model's layers at a layer unit (`fedlayer.layers.model_layers`), built once per unit."""
        if unit not in self._layers:
            self._layers[unit] = model_layers(self.work.model, unit)
        return self._layers[unit]

    def _directions(self, states, layers: list[Layer], groups: list[Group], count: int, seed: int):
        """(layer, draw, direction) for every layer of `layers` in the groups that has parameters."""
        if count == 0:
            return []
        wanted = {layer.name for group in groups for layer in group.layers}
        directions = []
        for layer in layers:
            keys = [k for k, _ in self._targets(k for k in layer.keys if k in self.work.parameter_names)]
            if layer.name in wanted and keys:
                for draw in range(count):
                    delta = random_direction(
                        states["a"], states["b"], keys, seed=seed, layer_index=layer.index, draw=draw
                    )
                    directions.append((layer, draw, delta))
        return directions

    @property
    def evaluator_name(self) -> str:
        """ "graph" (the fast path) or "plain" (full passes: untraceable model or bn='recompute')."""
        return self.evaluator.name


def check_non_negative(what: str, value: object) -> None:
    """A ConfigError unless `value` is a non-negative integer (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"{what} must be a non-negative integer, got {value!r}")


def _device(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    first = next(iter(model.state_dict().values()), None)
    return first.device if first is not None else torch.device("cpu")


def _checked_bases(bases: str | Sequence[str]) -> tuple[str, ...]:
    bases = (bases,) if isinstance(bases, str) else tuple(bases)
    unknown = [b for b in bases if b not in BASES]
    if unknown or not bases or len(set(bases)) != len(bases):
        raise ConfigError(f"bad bases {bases!r}: give 'a', 'b' or both, each once")
    return tuple(b for b in BASES if b in bases)
