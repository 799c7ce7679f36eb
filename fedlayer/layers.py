"""Layers and groups of layers (the README's "Concepts and definitions"): what gets averaged or interpolated together.

A layer is a module that owns parameters or buffers; all its state_dict entries (weight, bias and,
for a norm layer, the running statistics) move together, as in the paper's `get_layer_blocks`.
Layers are listed in `state_dict()` order. Tied weights (one tensor under two names, e.g. an
embedding shared with the output projection) make their modules ONE layer, because interpolating
only one of the two names is ill-defined.
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
_GLOB_CHARS = frozenset("*?[")
_MAX_LISTED_NAMES = 60


@dataclass(frozen=True)
class Layer:
    """One averaging unit: the state_dict keys of one module (or of modules tied together)."""

    index: int
    name: str
    keys: tuple[str, ...]
    numel: int
    module_type: str
    is_norm: bool


# ---------------------------------------------------------------- building the layer list


def model_layers(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> list[Layer]:
    """The layers of a model, in state_dict order.

    From an `nn.Module`, types come from the modules themselves. From a state dict, keys are grouped
    by module path (the key minus its last dotted component) and the type is guessed from the
    tensors (`running_mean` -> BatchNorm, 1-D weight only -> Norm, 2-D weight -> Linear, k-D -> Conv);
    pass the module when the exact type matters. Tied weights are found as tensors sharing memory:
    always from a module, and from `model.state_dict()` itself, but NOT from a copied or loaded state
    dict (`clone()`, safetensors), where the two names look like two independent layers.
    A tensor registered directly on the root module (e.g. `cls_token`) is a layer of its own.
    """
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict(keep_vars=True)
        modules = dict(model_or_state_dict.named_modules(remove_duplicate=False))
    else:
        state = dict(model_or_state_dict)
        modules = {}
    groups = _tie_groups(state)
    layers = []
    for index, owners in enumerate(groups.values()):
        keys = tuple(k for k in state if _owner(k) in owners)
        first = owners[0]
        module = modules.get(first)
        module_type = type(module).__name__ if module is not None else _guess_type(state, keys)
        is_norm = isinstance(module, _NORM_TYPES) if module is not None else module_type.endswith("Norm")
        layers.append(Layer(index, first, keys, _unique_numel(state, keys), module_type, is_norm))
    return layers


def _owner(key: str) -> str:
    """The module path that owns a state_dict key; a root-level tensor owns itself."""
    return key.rsplit(".", 1)[0] if "." in key else key


def _tie_groups(state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Owners merged through shared tensors (union-find), keyed by the first owner in state_dict order."""
    parent: dict[str, str] = {}

    def find(owner: str) -> str:
        while parent[owner] != owner:
            parent[owner] = parent[parent[owner]]
            owner = parent[owner]
        return owner

    first_owner_of_storage: dict[int, str] = {}
    for key, tensor in state.items():
        owner = _owner(key)
        parent.setdefault(owner, owner)
        ptr = _shares_memory_id(tensor)
        if ptr is None:
            continue
        if ptr in first_owner_of_storage:
            root, other = find(first_owner_of_storage[ptr]), find(owner)
            if root != other:  # the earlier owner stays the representative, so names keep state_dict order
                parent[other] = root
        else:
            first_owner_of_storage[ptr] = owner
    groups: dict[str, list[str]] = {}
    for owner in parent:  # insertion order = state_dict order
        groups.setdefault(find(owner), []).append(owner)
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
    string or a list of terms is the union of its terms, less the exclusions.

    Raises
    ------
    ConfigError
        When a term other than `none` matches no layer, a term is malformed, or exclusions leave
        nothing (say `none` to select nothing).
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
    elif term.startswith("re:"):
        pattern = _compile(term[3:])
        found = [p for p in positions if pattern.search(layers[p].name)]
    elif _GLOB_CHARS & set(term):
        found = [p for p in positions if fnmatch.fnmatchcase(layers[p].name, term)]
    else:
        found = [p for p in positions if layers[p].name == term or layers[p].name.startswith(term + ".")]
    if not found:
        raise ConfigError(
            f"layer selector {term!r} matches no layer{_prefix_hint(layers, term)}; {_names_hint(layers)}"
        )
    return found


def _prefix_hint(layers: Sequence[Layer], term: str) -> str:
    """A suggestion when a plain name is the start of layer names but not a dotted prefix ('fc' vs 'fc1')."""
    if term.startswith("-") or ":" in term or _GLOB_CHARS & set(term):
        return ""
    near = next((layer.name for layer in layers if layer.name.startswith(term)), None)
    if near is None:
        return ""
    return f" (a name is a prefix at a dot boundary, so {term!r} does not match {near!r}; try the glob {term + '*'!r})"


def _head_position(layers: Sequence[Layer]) -> int:
    """The classifier: the last Linear layer in order."""
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
    """A table of layers for people: index, name, type, keys (relative to the name), numel."""
    rows = [
        {
            "index": layer.index,
            "name": layer.name,
            "type": layer.module_type,
            "keys": ", ".join(_short_key(layer.name, key) for key in layer.keys),
            "numel": layer.numel,
        }
        for layer in layers
    ]
    return pd.DataFrame(rows, columns=["index", "name", "type", "keys", "numel"])


def _short_key(name: str, key: str) -> str:
    return key[len(name) + 1 :] if key.startswith(name + ".") else key
