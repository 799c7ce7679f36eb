"""The state a server strategy carries from one round to the next, as arrays and JSON scalars, so that
a resumed run continues it exactly (`fedlayer.resume` saves it in every round's checkpoint).

The protocol: a strategy that keeps state between rounds exposes it with two methods,

    def state(self) -> tuple[Mapping[str, np.ndarray | torch.Tensor], Mapping[str, JSON]]: ...
    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, JSON]) -> None: ...

`state()` returns everything the strategy needs to go on as it would have (arrays by name; scalars
that `json.dumps` accepts: None, bool, int, float, str, lists and str-keyed dicts of them);
`load_state` gets them back in a fresh instance built with the same arguments, before its first round
(arrays as numpy arrays, of the dtypes and shapes given; lists where tuples were given).

Flower's own strategies do not have these methods: `KEPT` lists, for each of them, the attributes it
keeps between rounds, and fedlayer saves those. A strategy that wraps another (its `.strategy`, as
fedlayer's LayerSelective and Flower's differential-privacy wrappers do) saves its own part, then
the wrapped strategy's. A strategy whose state fedlayer cannot save (`unsaved_state`) is named in a
warning when a run starts.
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedXgbBagging,
    FedXgbCyclic,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)
from flwr.serverapp.strategy.fedopt import FedOpt

from fedlayer.errors import RunError
from strategies.barrier_aware import BarrierAware
from strategies.layerwise import LayerSelective

JSON: TypeAlias = None | bool | int | float | str | list["JSON"] | dict[str, "JSON"]
SavedArray: TypeAlias = np.ndarray | torch.Tensor


@runtime_checkable
class StatefulStrategy(Protocol):
    """A strategy that saves and restores its own state between rounds (see the module docstring)."""

    def state(self) -> tuple[Mapping[str, SavedArray], Mapping[str, JSON]]: ...

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, JSON]) -> None: ...


@dataclass(frozen=True)
class Kept:
    """What instances of one strategy class keep between rounds.

    `saved`: attributes fedlayer saves (None, numbers, strings, dicts or lists of numpy arrays,
    ArrayRecords, or objects with `state_dict()` / `load_state_dict()`); `per_round`: attributes
    set afresh in every round before they are used (nothing to save); `unsaved`: state that cannot
    be saved (the run warns).
    """

    saved: tuple[str, ...] = ()
    per_round: tuple[str, ...] = ()
    unsaved: tuple[str, ...] = ()


_MOMENTS = Kept(saved=("m_t", "v_t"), per_round=("current_arrays",))  # `current_arrays`: set in configure_train
# Every strategy of flwr.serverapp.strategy (a test checks this against Flower's code), and fedlayer's
# wrappers, whose own state `fedlayer.resume` saves (SelectiveState, the choices table).
KEPT: dict[type[Strategy], Kept] = {
    FedAvg: Kept(),
    FedProx: Kept(),
    FedMedian: Kept(),
    FedTrimmedAvg: Kept(),
    Krum: Kept(),
    MultiKrum: Kept(),
    Bulyan: Kept(),
    QFedAvg: Kept(per_round=("current_arrays",)),
    FedXgbBagging: Kept(per_round=("current_bst",)),
    FedXgbCyclic: Kept(unsaved=("registered_nodes",)),  # keyed by node ids, which change when a run resumes
    FedOpt: _MOMENTS,
    FedAdam: _MOMENTS,
    FedYogi: _MOMENTS,
    FedAdagrad: _MOMENTS,
    FedAvgM: Kept(saved=("current_arrays", "momentum_vector")),  # current_arrays: the last aggregate
    DifferentialPrivacyServerSideAdaptiveClipping: Kept(saved=("clipping_norm",), per_round=("current_arrays",)),
    DifferentialPrivacyClientSideAdaptiveClipping: Kept(saved=("clipping_norm",)),
    DifferentialPrivacyServerSideFixedClipping: Kept(
        saved=("accountant",), per_round=("current_arrays", "_pending_events")
    ),
    DifferentialPrivacyClientSideFixedClipping: Kept(saved=("accountant",), per_round=("_pending_events",)),
    LayerSelective: Kept(),
    BarrierAware: Kept(),
}
_IN_PLACE = frozenset(
    {"append", "extend", "insert", "update", "add", "setdefault", "pop", "popitem", "clear", "remove", "discard"}
)


@dataclass
class StrategyState:
    """A strategy chain's state: arrays by name, and a JSON tree (per level: its class, its scalars or
    kept attributes, the names of its arrays, and under "strategy" the level it wraps)."""

    arrays: dict[str, SavedArray] = field(default_factory=dict)
    tree: dict[str, Any] = field(default_factory=dict)


def state_of(strategy: Strategy) -> StrategyState:
    """The state `strategy` (and every strategy it wraps) carries into the next round."""
    arrays: dict[str, SavedArray] = {}
    nodes: list[dict[str, Any]] = []
    for prefix, level in _levels(strategy):
        node: dict[str, Any] = {"class": type(level).__qualname__}
        if isinstance(level, StatefulStrategy):
            own_arrays, scalars = level.state()
            node["arrays"] = list(own_arrays)
            node["scalars"] = _checked_json(dict(scalars), level)
            arrays.update({prefix + name: value for name, value in own_arrays.items()})
        else:
            node["kept"] = {name: _encode(getattr(level, name), prefix + name, arrays) for name in _kept(level).saved}
        nodes.append(node)
    for outer, inner in zip(nodes, nodes[1:], strict=False):
        outer["strategy"] = inner
    return StrategyState(arrays, nodes[0])


def restore_state(strategy: Strategy, saved: StrategyState) -> None:
    """Give `strategy` (a fresh instance, same arguments) the state `state_of` returned in an earlier run."""
    node: dict[str, Any] = saved.tree
    for prefix, level in _levels(strategy):
        if node.get("class") != type(level).__qualname__:
            raise RunError(
                f"cannot restore the strategy state: it was saved from {node.get('class')!r}, "
                f"this run's strategy is {type(level).__qualname__!r}"
            )
        if isinstance(level, StatefulStrategy):
            arrays = {name: _numpy(saved.arrays[prefix + name]) for name in node["arrays"]}
            level.load_state(arrays, dict(node["scalars"]))
        else:
            for name, encoded in node["kept"].items():
                _decode(level, name, encoded, prefix + name, saved.arrays)
        node = node.get("strategy", {})


def unsaved_state(strategy: Strategy) -> list[str]:
    """Each strategy in the chain that keeps state fedlayer cannot save, with that state, e.g.
    "MyStrategy (self.history)": a class of the user's without the protocol methods whose own methods
    (other than __init__) set or change attributes, or a Flower strategy with `Kept.unsaved`."""
    found = []
    for _, level in _levels(strategy):
        if isinstance(level, StatefulStrategy):
            continue
        known = _known_base(type(level))
        names = [f"self.{name}" for name in (KEPT[known].unsaved if known else ())]
        for cls in _own_classes(type(level), known):
            attributes = _attributes_set(cls)
            names += [f"{cls.__name__}'s source cannot be read"] if attributes is None else attributes
        if names:
            found.append(f"{type(level).__name__} ({', '.join(dict.fromkeys(names))})")
    return found


def unsaved_note(strategy: Strategy) -> str | None:
    """The warning a run starts with when its strategy keeps state that resuming would lose."""
    unsaved = unsaved_state(strategy)
    if not unsaved:
        return None
    return (
        f"the strategy keeps state between rounds that fedlayer cannot save: {'; '.join(unsaved)}. "
        "If this run is resumed after a crash, that state starts afresh and the resumed rounds may differ "
        "from an uninterrupted run's; a strategy saves its state with the methods state() and "
        "load_state() (docs/strategies.md, 'Exact resume')"
    )


# ---------------------------------------------------------------------- the chain of wrapped strategies


def _levels(strategy: Strategy) -> Iterator[tuple[str, Strategy]]:
    """(array-name prefix, strategy) for `strategy` and each strategy it wraps, outermost first."""
    prefix: str = ""
    level: Strategy | None = strategy
    while level is not None:
        yield prefix, level
        level = None if isinstance(level, StatefulStrategy) else _wrapped(level)
        prefix += "strategy."


def _wrapped(strategy: Strategy) -> Strategy | None:
    inner = getattr(strategy, "strategy", None)
    return inner if isinstance(inner, Strategy) else None


def _known_base(cls: type) -> type[Strategy] | None:
    return next((base for base in cls.__mro__ if base in KEPT), None)


def _kept(strategy: Strategy) -> Kept:
    known = _known_base(type(strategy))
    return KEPT[known] if known is not None else Kept()


def _own_classes(cls: type, known: type | None) -> list[type]:
    """The classes in `cls`'s MRO before the known Flower or fedlayer class it derives from."""
    own = []
    for base in cls.__mro__:
        if base is known or base in (Strategy, object) or base.__module__ in ("abc", "typing"):
            break
        own.append(base)
    return own


def _attributes_set(cls: type) -> list[str] | None:
    """What `cls`'s own methods other than __init__ assign, delete or change in place on `self`
    (`self.x = ...`, `self.x[k] = ...`, `self.x += ...`, `self.x.append(...)`, `setattr(self, ...)`), as
    "self.x"; None when its source cannot be read. A cheap static check: state changed otherwise (a
    call of another object's method) goes unseen."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return None
    found: dict[str, None] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for method in body:
        if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef) or method.name == "__init__":
            continue
        if not method.args.args:
            continue
        me = method.args.args[0].arg
        for node in ast.walk(method):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign | ast.Delete):
                targets = list(node.targets)
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _IN_PLACE:
                targets = [node.func.value]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
                targets = node.args[:1]
            for target in targets:
                for element in target.elts if isinstance(target, ast.Tuple | ast.List) else [target]:
                    name = _attribute_of(element, me)
                    if name is not None:
                        found[name] = None
    return list(found)


def _attribute_of(expr: ast.expr, me: str) -> str | None:
    """The attribute `expr` changes, as "self.x" (for `self.x`, `self.x[k]`, `self.x.y`), or "setattr(self, ...)"."""
    while isinstance(expr, ast.Subscript | ast.Attribute):
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == me:
            return f"self.{expr.attr}"
        expr = expr.value
    return "setattr(self, ...)" if isinstance(expr, ast.Name) and expr.id == me else None


# ---------------------------------------------------------------------- attribute values as arrays and JSON


def _encode(value: Any, name: str, arrays: dict[str, SavedArray]) -> JSON:
    """A kept attribute's value as JSON; its arrays go to `arrays` as `name.<key>` (or `name.<index>`)."""
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    if isinstance(value, ArrayRecord):
        arrays.update({f"{name}.{key}": array.numpy() for key, array in value.items()})
        return {"ArrayRecord": list(value.keys())}
    if isinstance(value, Mapping) and all(isinstance(v, np.ndarray) for v in value.values()):
        arrays.update({f"{name}.{key}": array for key, array in value.items()})
        return {"dict": list(value.keys())}
    if isinstance(value, list | tuple) and all(isinstance(v, np.ndarray) for v in value):
        arrays.update({f"{name}.{index}": array for index, array in enumerate(value)})
        return {"list": len(value)}
    if callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None)):
        return {"state_dict": value.state_dict()}
    raise RunError(f"cannot save the strategy attribute {name} (a {type(value).__name__})")


def _decode(level: Strategy, attribute: str, encoded: Mapping[str, Any], name: str, arrays: Mapping) -> None:
    kind, content = next(iter(encoded.items()))
    if kind == "value":
        setattr(level, attribute, content)
    elif kind == "ArrayRecord":
        setattr(level, attribute, ArrayRecord({key: Array(_numpy(arrays[f"{name}.{key}"])) for key in content}))
    elif kind == "dict":
        setattr(level, attribute, {key: _numpy(arrays[f"{name}.{key}"]) for key in content})
    elif kind == "list":
        setattr(level, attribute, [_numpy(arrays[f"{name}.{index}"]) for index in range(content)])
    else:  # "state_dict": an object the fresh strategy already holds (a privacy accountant)
        getattr(level, attribute).load_state_dict(content)


def _numpy(array: SavedArray) -> np.ndarray:
    return array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _checked_json(scalars: dict, strategy: Strategy) -> dict:
    try:
        return json.loads(json.dumps(scalars))
    except (TypeError, ValueError) as exc:
        raise RunError(f"{type(strategy).__name__}.state() returned scalars that are not JSON: {exc}") from exc
