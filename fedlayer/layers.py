"""Layers and groups of layers (the README's "Concepts and definitions"): what gets averaged or interpolated together.

What one layer is, the layer unit (`LAYER_UNITS`), follows the paper's two groupings:
- "module" (the default; the paper's CNN and language-model grouping, its `get_layer_blocks`): a
  module that owns parameters or buffers; all its state_dict entries (weight, bias and, for a norm
  layer, the running statistics) move together.
- "tensor" (the paper's ViT grouping, where each tensor whose name holds `weight` is interpolated
  with its matching bias): within each module, a weight-like tensor together with the bias of the
  same name pattern (`weight` + `bias`, nn.LSTM's `weight_ih_l0` + `bias_ih_l0`,
  nn.MultiheadAttention's `in_proj_weight` + `in_proj_bias`). A BatchNorm's running statistics move
  with its weight and bias (they mean nothing apart from them); a tensor with no partner (an
  embedding table, a bias-free weight, `bias_k`) is a unit of its own. A module whose tensors form
  one unit (a Linear, a Conv, a norm layer) is the same layer at both units, under the same name; a
  module that splits into several units (nn.LSTM, nn.MultiheadAttention with `bias_k`) names each
  unit by its lead tensor's key (`lstm.weight_ih_l0`). So a name means the same tensors at both
  units, and a module's name selects all its units (a name is a prefix at a dot boundary).
At both units, layers are listed in `state_dict()` order (of their first key), and tied weights (one
tensor under two names, e.g. an embedding shared with the output projection) make their units ONE
layer, because interpolating only one of the two names is ill-defined. A tensor registered directly
on the root module (e.g. `cls_token`) is a layer of its own.
"""

from __future__ import annotations

import fnmatch
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedlayer.errors import ConfigError, choices_message, listed

LAYER_UNITS = ("module", "tensor")
"""What one layer is: a module with all its tensors, or one weight tensor with its bias (see the module doc)."""
NAMED_SETS = ("all", "none", "body", "head", "norm")
COUNTED_SETS = ("first", "last", "middle", "random")
ORDERINGS = ("shallow", "deep", "random", "minimal")
MINIMAL_OUTER = 5  # the paper's "minimal" ordering takes 5 layers from each end first

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)
_RUNNING_STATS = frozenset({"running_mean", "running_var", "num_batches_tracked"})
_BIAS_TOKEN = re.compile(r"(?:^|(?<=_))bias(?=_|$)")  # the "bias" in bias, bias_ih_l0, in_proj_bias
_GLOB_CHARS = frozenset("*?[")
_MAX_LISTED_NAMES = 60


@dataclass(frozen=True)
class Layer:
    """One averaging unit: the state_dict keys of one module, or of one weight tensor with its bias (`unit`),
    or of such units tied together. `module_type` and `is_norm` describe the module that holds it."""

    index: int
    name: str
    keys: tuple[str, ...]
    numel: int
    module_type: str
    is_norm: bool
    unit: str = "module"


# ---------------------------------------------------------------- building the layer list


def model_layers(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], unit: str = "module") -> list[Layer]:
    """The layers of a model at a layer unit, in state_dict order.

    Parameters
    ----------
    model_or_state_dict : nn.Module or Mapping[str, torch.Tensor]
        From an `nn.Module`, types come from the modules themselves. From a state dict, keys are
        grouped by module path (the key minus its last dotted component) and the type is guessed
        from the tensors (`running_mean` -> BatchNorm, 1-D weight only -> Norm, 2-D weight ->
        Linear, k-D -> Conv); pass the module when the exact type matters. Tied weights are found
        as tensors sharing memory: always from a module, and from `model.state_dict()` itself, but
        NOT from a copied or loaded state dict (`clone()`, safetensors), where the two names look
        like two independent layers.
    unit : {"module", "tensor"}, default "module"
        What one layer is (`LAYER_UNITS`, see the module doc): a module with all its tensors, or
        one weight tensor with its bias (the paper's ViT grouping).

    Returns
    -------
    list[Layer]
        The layers, each with its `unit`, indexed 0..L-1.

    Raises
    ------
    ConfigError
        If `unit` is not one of `LAYER_UNITS`.
    """
    if unit not in LAYER_UNITS:
        raise ConfigError(choices_message("layer unit", unit, LAYER_UNITS))
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict(keep_vars=True)
        modules = dict(model_or_state_dict.named_modules(remove_duplicate=False))
    else:
        state = dict(model_or_state_dict)
        modules = {}
    parts = _parts(state, unit)
    layers = []
    for index, members in enumerate(_tie_groups(state, parts).values()):
        tied = set(members)
        keys = tuple(k for k in state if parts[k] in tied)
        module = modules.get(_owner(keys[0]))  # the first part's module: keys[0] is its first key
        module_type = type(module).__name__ if module is not None else _guess_type(state, keys)
        is_norm = isinstance(module, _NORM_TYPES) if module is not None else module_type.endswith("Norm")
        layers.append(Layer(index, members[0], keys, _unique_numel(state, keys), module_type, is_norm, unit))
    return layers


def _owner(key: str) -> str:
    """The module path that owns a state_dict key; a root-level tensor owns itself."""
    return key.rsplit(".", 1)[0] if "." in key else key


def _parts(state: Mapping[str, torch.Tensor], unit: str) -> dict[str, str]:
    """Each state_dict key's part before ties are merged: its module (unit "module"), or its tensor unit
    ("tensor"), named by the module when the module is one unit and by the unit's lead key otherwise."""
    owners = {key: _owner(key) for key in state}
    if unit == "module":
        return owners
    by_owner: dict[str, list[str]] = {}
    for key, owner in owners.items():
        by_owner.setdefault(owner, []).append(key)
    parts: dict[str, str] = {}
    for owner, keys in by_owner.items():
        leads = _tensor_leads(keys)
        one_unit = len(set(leads.values())) == 1
        parts.update({key: owner if one_unit else lead for key, lead in leads.items()})
    return parts


def _tensor_leads(keys: Sequence[str]) -> dict[str, str]:
    """The keys of one module -> the lead key of the tensor unit each belongs to.

    A bias joins the weight of the same name pattern (bias -> weight, bias_ih_l0 -> weight_ih_l0,
    in_proj_bias -> in_proj_weight) when the module has it; running statistics join the weight, or,
    without one, each other; every other tensor leads a unit of its own.
    """
    by_name = {key.rsplit(".", 1)[-1]: key for key in keys}
    stats = [key for name, key in by_name.items() if name in _RUNNING_STATS]
    stats_lead = by_name.get("weight", stats[0] if stats else "")
    leads = {}
    for name, key in by_name.items():
        weight = _BIAS_TOKEN.sub("weight", name)
        if name in _RUNNING_STATS:
            leads[key] = stats_lead
        elif weight != name and weight in by_name:
            leads[key] = by_name[weight]
        else:
            leads[key] = key
    return leads


def _tie_groups(state: Mapping[str, torch.Tensor], parts: Mapping[str, str]) -> dict[str, list[str]]:
    """Parts merged through shared tensors (union-find), keyed by the first part in state_dict order."""
    parent: dict[str, str] = {}

    def find(part: str) -> str:
        while parent[part] != part:
            parent[part] = parent[parent[part]]
            part = parent[part]
        return part

    first_part_of_storage: dict[int, str] = {}
    for key, tensor in state.items():
        part = parts[key]
        parent.setdefault(part, part)
        ptr = _shares_memory_id(tensor)
        if ptr is None:
            continue
        if ptr in first_part_of_storage:
            root, other = find(first_part_of_storage[ptr]), find(part)
            if root != other:  # the earlier part stays the representative, so names keep state_dict order
                parent[other] = root
        else:
            first_part_of_storage[ptr] = part
    groups: dict[str, list[str]] = {}
    for part in parent:  # insertion order = state_dict order
        groups.setdefault(find(part), []).append(part)
    return groups


def _unique_numel(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> int:
    """Elements in the layer's tensors, counting a tied tensor once."""
    seen: set[int] = set()
    total = 0
    for key in keys:
        tensor, ptr = state[key], _shares_memory_id(state[key])
        if ptr is None or ptr not in seen:
            total += tensor.numel()
        if ptr is not None:
            seen.add(ptr)
    return total


def _shares_memory_id(tensor: torch.Tensor) -> int | None:
    """The storage address that identifies a tied tensor; None where memory cannot tell (empty, meta)."""
    return None if tensor.numel() == 0 or tensor.is_meta else tensor.data_ptr()


def _guess_type(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> str:
    """Best-effort module type for a layer known only from its state_dict entries."""
    suffixes = {key.rsplit(".", 1)[-1]: key for key in keys}
    if "running_mean" in suffixes:
        return "BatchNorm"
    weight = state[suffixes["weight"]] if "weight" in suffixes else None
    if weight is None:
        return "Tensor"
    if weight.dim() == 1:
        return "Norm"
    if weight.dim() == 2:
        return "Linear"
    return f"Conv{weight.dim() - 2}d"


# ---------------------------------------------------------------- selectors


def select_layers(layers: Sequence[Layer], selector: str | Sequence[str], *, seed: int = 0) -> list[Layer]:
    """The layers a selector picks, in the order of `layers`.

    Grammar of one term: a named set `all`, `none` (the explicit empty set), `body` (all but the
    head), `head` (the last Linear layer: the classifier), `norm` (normalisation layers);
    `first:k`, `last:k`, `middle:k` (k layers centred in the order), `random:k` (k layers drawn with
    `seed`); `re:<regex>` (re.search on the layer name); a glob with * ? [ ] (fnmatch on the name);
    otherwise a layer name or a name prefix at a dot boundary ("layer1" matches "layer1.0.conv1",
    not "layer10"; "fc*" matches "fc1"). A term `-<term>` excludes what <term> picks: "all,-norm"
    is every layer but the normalisation layers, and exclusions alone start from `all`. Terms are
    separated by commas (commas inside (), [] or {} stay part of the term, so "re:a{1,3}" works); a
    string or a list of terms is the union of its terms, less the exclusions. The grammar is the same
    at both layer units: at unit "tensor" a module's name picks all its tensor units.

    Raises
    ------
    ConfigError
        When a term other than `none` matches no layer (naming, when it does, the module or tensor
        unit of the other layer unit it matches), a term is malformed, or exclusions leave nothing
        (say `none` to select nothing).
    """
    terms = split_terms(selector)
    if not terms:
        raise ConfigError(f"empty layer selector {selector!r}; {_names_hint(layers)}")
    excluded = [term[1:].strip() for term in terms if term.startswith("-")]
    included = [term for term in terms if not term.startswith("-")] or ["all"]
    picked: set[int] = set()
    for term in included:
        picked.update(_select_term(layers, term, seed))
    dropped: set[int] = set()
    for term in excluded:
        dropped.update(_select_term(layers, term, seed))
    if excluded and not picked - dropped:
        raise ConfigError(
            f"layer selector {selector!r} leaves no layer (use 'none' to select nothing); {_names_hint(layers)}"
        )
    return [layer for position, layer in enumerate(layers) if position in picked - dropped]


def keys_of(layers: Sequence[Layer]) -> list[str]:
    """All state_dict keys of the given layers, in their order."""
    return [key for layer in layers for key in layer.keys]


def split_terms(selector: str | Sequence[str]) -> list[str]:
    """Split at commas outside brackets; a list's items are split the same way."""
    items = [selector] if isinstance(selector, str) else list(selector)
    terms: list[str] = []
    for item in items:
        depth, start = 0, 0
        for i, char in enumerate(item):
            if char in "([{":
                depth += 1
            elif char in ")]}":
                depth = max(depth - 1, 0)
            elif char == "," and depth == 0:
                terms.append(item[start:i])
                start = i + 1
        terms.append(item[start:])
    return [term.strip() for term in terms if term.strip()]


def _select_term(layers: Sequence[Layer], term: str, seed: int) -> list[int]:
    """Positions (in `layers`) picked by one selector term; raises if it picks none."""
    positions = range(len(layers))
    if term == "none":
        return []
    if term == "all":
        found = list(positions)
    elif term in ("head", "body"):
        head = _head_position(layers)
        found = [head] if term == "head" else [p for p in positions if p != head]
    elif term == "norm":
        found = [p for p in positions if layers[p].is_norm]
    elif term.partition(":")[0] in COUNTED_SETS and ":" in term:
        kind, _, count = term.partition(":")
        found = _counted(layers, kind, count, seed=seed)
    else:
        found = _matching([layer.name for layer in layers], term)
    if not found:
        hints = _prefix_hint(layers, term) + ("" if term in NAMED_SETS else _unit_hint(layers, term))
        raise ConfigError(f"layer selector {term!r} matches no layer{hints}; {_names_hint(layers)}")
    return found


def _matching(names: Sequence[str], term: str) -> list[int]:
    """Positions of the names a name term picks: `re:<regex>`, a glob, or a name or dotted prefix."""
    if term.startswith("re:"):
        pattern = _compile(term[3:])
        return [p for p, name in enumerate(names) if pattern.search(name)]
    if _GLOB_CHARS & set(term):
        return [p for p, name in enumerate(names) if fnmatch.fnmatchcase(name, term)]
    return [p for p, name in enumerate(names) if name == term or name.startswith(term + ".")]


def _unit_hint(layers: Sequence[Layer], term: str) -> str:
    """Why a name term picks nothing when it names what is a layer only at the other layer unit: a module
    that unit "tensor" splits (its tensor units are listed), or a tensor unit at unit "module"."""
    names = {layer.name for layer in layers}
    layer_of = {key: layer.name for layer in layers for key in layer.keys}
    keys_of_module: dict[str, list[str]] = {}
    for key in layer_of:
        keys_of_module.setdefault(_owner(key), []).append(key)
    if layers and layers[0].unit == "tensor":
        modules = [module for module in keys_of_module if module not in names]
        found = [modules[p] for p in _matching(modules, term)]
        if not found:
            return ""
        holding = dict.fromkeys(layer_of[key] for module in found for key in keys_of_module[module])
        return (
            f" (it names the module {listed(found, 5)}, which is no layer at layer_unit = 'tensor': "
            f"its tensor units are {listed(holding, 10)})"
        )
    split: dict[str, str] = {}  # lead key of a unit of a module that unit "tensor" splits -> its layer here
    for keys in keys_of_module.values():
        leads = dict.fromkeys(_tensor_leads(keys).values())
        if len(leads) > 1:
            split.update({lead: layer_of[lead] for lead in leads})
    units = list(split)
    found = [units[p] for p in _matching(units, term)]
    if not found:
        return ""
    return (
        f" (it names the tensor unit {listed(found, 5)} of the layer {listed(dict.fromkeys(map(split.get, found)), 5)}"
        ": at layer_unit = 'module' a layer is a whole module; set layer_unit = 'tensor' to select single weight "
        "tensors with their biases)"
    )


def _prefix_hint(layers: Sequence[Layer], term: str) -> str:
    """A suggestion when a plain name is the start of layer names but not a dotted prefix ('fc' vs 'fc1')."""
    if term.startswith("-") or ":" in term or _GLOB_CHARS & set(term):
        return ""
    near = next((layer.name for layer in layers if layer.name.startswith(term)), None)
    if near is None:
        return ""
    return f" (a name is a prefix at a dot boundary, so {term!r} does not match {near!r}; try the glob {term + '*'!r})"


def _head_position(layers: Sequence[Layer]) -> int:
    """The classifier: the last Linear layer in order; in a language model whose output projection is tied
    to its token embedding (GPT-2's lm_head and wte: an Embedding layer whose keys span two modules), that
    tied layer, which holds the output projection but sits first in state_dict order."""
    for position, layer in enumerate(layers):
        if layer.module_type == "Embedding" and len({_owner(key) for key in layer.keys}) > 1:
            return position
    for position in reversed(range(len(layers))):
        if layers[position].module_type.endswith("Linear"):  # also Linear subclasses such as out_proj
            return position
    raise ConfigError(f"no Linear layer to serve as 'head'; {_names_hint(layers)}")


def _counted(layers: Sequence[Layer], kind: str, count: str, *, seed: int) -> list[int]:
    """Positions for first:k, last:k, middle:k and random:k."""
    total = len(layers)
    try:
        k = int(count)
    except ValueError:
        k = 0
    if not 1 <= k <= total:
        raise ConfigError(f"bad layer count in {kind}:{count}: k must be an integer from 1 to {total}")
    if kind == "first":
        return list(range(k))
    if kind == "last":
        return list(range(total - k, total))
    if kind == "middle":
        start = (total - k) // 2
        return list(range(start, start + k))
    return sorted(np.random.default_rng(seed).choice(total, size=k, replace=False).tolist())


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"bad regular expression in layer selector 're:{pattern}': {exc}") from exc


def _names_hint(layers: Sequence[Layer]) -> str:
    shown = listed((layer.name for layer in layers), _MAX_LISTED_NAMES)
    sets = ", ".join(NAMED_SETS + tuple(f"{kind}:k" for kind in COUNTED_SETS))
    return f"layers: {shown} (named sets: {sets}; also re:<regex>, globs such as fc*, and -<term> to exclude)"


# ---------------------------------------------------------------- orderings and groups


def order_layers(layers: Sequence[Layer], ordering: str, *, seed: int = 0) -> list[Layer]:
    """The layers in a cumulative ordering (the paper's group experiment).

    `shallow` is input to output, `deep` output to input, `random` a permutation from
    numpy `default_rng(seed)`. `minimal` is the paper's `keys[:5] + keys[-5:] + keys[5:-5]`:
    the outer layers first, the middle ones last. It takes n = min(5, (L - 1) // 2) layers from
    each end, so no layer repeats and at least one is left for the middle: exactly the paper's
    order for L >= 11 (ResNet18's 21 layers); conv1, fc2, conv2, fc1 for the 4-layer CNN; for
    L <= 2 it equals `shallow`.
    """
    layers = list(layers)
    if ordering == "shallow":
        return layers
    if ordering == "deep":
        return layers[::-1]
    if ordering == "random":
        return [layers[i] for i in np.random.default_rng(seed).permutation(len(layers))]
    if ordering == "minimal":
        n = min(MINIMAL_OUTER, (len(layers) - 1) // 2)
        return layers[:n] + layers[len(layers) - n :] + layers[n : len(layers) - n]
    raise ConfigError(choices_message("layer ordering", ordering, ORDERINGS))


def cumulative_groups(layers: Sequence[Layer], ordering: str, *, seed: int = 0) -> list[list[Layer]]:
    """Group k (k = 1..L) is the first k layers of the ordering, in ordering order (the last one is new)."""
    ordered = order_layers(layers, ordering, seed=seed)
    return [ordered[:k] for k in range(1, len(ordered) + 1)]


def sliding_windows(layers: Sequence[Layer], width: int) -> list[list[Layer]]:
    """All runs of `width` consecutive layers, stride 1: a fixed group size, unlike cumulative groups."""
    total = len(layers)
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or not 1 <= width <= total:
        raise ConfigError(f"bad window width {width!r}: must be an integer from 1 to {total} (layer count)")
    return [list(layers[start : start + width]) for start in range(total - width + 1)]


def describe_layers(layers: Sequence[Layer]) -> pd.DataFrame:
    """A table of layers for people: index, name, type, keys (relative to the name, or for a tensor unit named
    by its lead key, such as "lstm.weight_ih_l0", to its module: "weight_ih_l0, bias_ih_l0"), numel."""
    rows = [
        {
            "index": layer.index,
            "name": layer.name,
            "type": layer.module_type,
            "keys": ", ".join(_short_key(layer, key) for key in layer.keys),
            "numel": layer.numel,
        }
        for layer in layers
    ]
    return pd.DataFrame(rows, columns=["index", "name", "type", "keys", "numel"])


def _short_key(layer: Layer, key: str) -> str:
    base = _owner(layer.name) if layer.name in layer.keys else layer.name
    return key[len(base) + 1 :] if key.startswith(base + ".") else key
