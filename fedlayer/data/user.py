"""A user's dataset: a callable named "path/to/file.py:name" or "package.module:name" returns the data.

The callable receives those of `data_dir` (the config's `data.data_dir` as a Path, or None) and `seed`
(the config's seed) that its signature names, and returns a `UserData` or a dict with the same keys:
`num_classes` and either `train_x`, `train_y`, `test_x`, `test_y` (tensors or arrays) or `train`, `test`
(map-style torch Datasets yielding (input, label) pairs, materialised here: the data must fit in memory),
and optionally `groups`, a natural client id per train sample. Everything is checked before any training,
each mistake named with the bad value and what was expected. Inputs are used as given (float32, not
normalised).

Labels of shape (N,) make a classification task. Labels of shape (N, T) make a language-modelling task
(`fedlayer.task_kinds`): each sample is a window of T token ids (inputs (N, T), integers in
0..num_classes-1, kept as int64) and its labels are the next token at each position (text[s+1:s+T+1] for
the window text[s:s+T]); `num_classes` is then the vocabulary size.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlayer.data.datasets import Dataset
from fedlayer.errors import DataError

ARRAYS = ("train_x", "train_y", "test_x", "test_y")
TORCH_DATASETS = ("train", "test")
EXPECTED = (
    "a fedlayer.data.UserData, or a dict with num_classes and either train_x, train_y, test_x, test_y "
    "(tensors or arrays) or train, test (torch Datasets of (input, label) pairs), and optionally groups"
)


@dataclass
class UserData:
    """What a dataset callable returns: the number of classes and the train and test sets, given either as
    `train_x`, `train_y`, `test_x`, `test_y` (tensors or arrays; inputs (N, ...), integer labels (N,) in
    0..num_classes-1) or as `train`, `test` (torch Datasets yielding (input, label) pairs); `groups`
    optionally holds a natural client id per train sample (a writer, a speaker) for the natural partition.

    For a language model, each sample is a window of T token ids and its label the next token at every
    position: inputs (N, T) and labels (N, T), integers in 0..num_classes-1, num_classes the vocabulary size
    (a torch Dataset yields (T,) token and (T,) label tensors)."""

    num_classes: int
    train_x: Any = None
    train_y: Any = None
    test_x: Any = None
    test_y: Any = None
    train: Any = None
    test: Any = None
    groups: Any = None


KEYS = tuple(f.name for f in fields(UserData))


def load_user_dataset(spec: str, data_dir: str | Path | None = None, seed: int = 0) -> Dataset:
    """Call the dataset callable `spec` names and check what it returns.

    Raises
    ------
    ConfigError
        If the file, module or callable cannot be found or loaded.
    DataError
        If the callable raises, or returns something other than the documented structure (`UserData`).
    """
    from strategies.loading import load_callable

    load = load_callable(spec, "dataset")
    offered = {"data_dir": Path(data_dir).expanduser() if data_dir else None, "seed": seed}
    try:
        params = dict(inspect.signature(load).parameters)
    except (TypeError, ValueError):
        params = {}  # a callable Python cannot inspect is called without arguments
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        offered = {k: v for k, v in offered.items() if k in params}
    try:
        result = load(**offered)
    except Exception as exc:
        raise DataError(f"dataset callable {spec} raised {type(exc).__name__}: {exc}") from exc
    given = _fields(spec, result)
    train_x, train_y, test_x, test_y = _splits(spec, given)
    return dataset_from_arrays(
        spec,
        train_x,
        train_y,
        test_x,
        test_y,
        given["num_classes"],
        groups=given.get("groups"),
        source=spec.rpartition(":")[0],
    )


def dataset_from_arrays(
    name: str,
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    num_classes: Any,
    *,
    groups: Any = None,
    source: str = "",
    class_names: tuple[str, ...] = (),
) -> Dataset:
    """A `Dataset` from arrays or tensors, checked: numeric finite inputs with one row per sample and the same
    per-sample shape in train and test, integer labels in 0..num_classes-1, as many labels (and groups) as
    inputs. Labels (N,) make a classification task; labels (N, T) a language task, whose inputs must be the
    (N, T) token ids (integers in 0..num_classes-1, kept as int64) the labels follow.

    Raises
    ------
    DataError
        Naming the dataset, the bad value and what was expected.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise DataError(f"dataset {name!r}: num_classes must be an integer >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    ys = {part: _labels(name, part, y, num_classes) for part, y in (("train_y", train_y), ("test_y", test_y))}
    if ys["train_y"].dim() != ys["test_y"].dim():
        raise DataError(
            f"dataset {name!r}: train_y has shape {tuple(ys['train_y'].shape)} but test_y {tuple(ys['test_y'].shape)}; "
            "give both as (N,) class labels (classification) or both as (N, T) next tokens (a language task)"
        )
    if ys["train_y"].dim() == 2:
        xs = {
            part: _tokens(name, part, x, ys[f"{part[:-2]}_y"], num_classes)
            for part, x in (("train_x", train_x), ("test_x", test_x))
        }
    else:
        xs = {part: _inputs(name, part, x) for part, x in (("train_x", train_x), ("test_x", test_x))}
    for split in ("train", "test"):
        x, y = xs[f"{split}_x"], ys[f"{split}_y"]
        if len(x) != len(y):
            raise DataError(f"dataset {name!r}: {split}_x has {len(x)} rows but {split}_y has {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"dataset {name!r}: the {split} set is empty")
    shapes = {part: tuple(x.shape[1:]) for part, x in xs.items()}
    if shapes["train_x"] != shapes["test_x"]:
        raise DataError(
            f"dataset {name!r}: train_x samples have shape {shapes['train_x']} but test_x samples {shapes['test_x']}"
        )
    return Dataset(
        name=name,
        train_x=xs["train_x"],
        train_y=ys["train_y"],
        test_x=xs["test_x"],
        test_y=ys["test_y"],
        num_classes=num_classes,
        input_shape=shapes["train_x"],
        source=source,
        groups=None if groups is None else _groups(name, groups, len(xs["train_x"])),
        class_names=class_names,
    )


def _fields(spec: str, result: Any) -> dict[str, Any]:
    """The returned structure as a dict of `KEYS`; a mapping's unknown keys are errors (a typo is not ignored)."""
    if isinstance(result, Mapping):
        unknown = sorted(str(k) for k in result if k not in KEYS)
        if unknown:
            raise DataError(
                f"dataset callable {spec} returned unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(KEYS)}"
            )
        given = dict(result)
    elif hasattr(result, "num_classes"):
        given = {key: getattr(result, key, None) for key in KEYS}
    else:
        raise DataError(f"dataset callable {spec} returned {type(result).__name__}; expected {EXPECTED}")
    if given.get("num_classes") is None:
        raise DataError(f"dataset callable {spec} returned no num_classes; expected {EXPECTED}")
    return given


def _splits(spec: str, given: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(train_x, train_y, test_x, test_y) from either form, torch Datasets materialised."""
    arrays = [key for key in ARRAYS if given.get(key) is not None]
    datasets = [key for key in TORCH_DATASETS if given.get(key) is not None]
    if datasets and arrays:
        raise DataError(
            f"dataset callable {spec} returned both {', '.join(datasets)} and {', '.join(arrays)}; give either "
            "train and test (torch Datasets) or train_x, train_y, test_x, test_y"
        )
    if datasets:
        missing = [key for key in TORCH_DATASETS if key not in datasets]
        if missing:
            raise DataError(f"dataset callable {spec} returned no {missing[0]}; expected {EXPECTED}")
        (train_x, train_y), (test_x, test_y) = (_materialise(spec, key, given[key]) for key in TORCH_DATASETS)
        return train_x, train_y, test_x, test_y
    missing = [key for key in ARRAYS if key not in arrays]
    if missing:
        raise DataError(f"dataset callable {spec} returned no {', '.join(missing)}; expected {EXPECTED}")
    return given["train_x"], given["train_y"], given["test_x"], given["test_y"]


def _materialise(spec: str, part: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every (input, label) pair of a map-style torch Dataset, stacked."""
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise DataError(
            f"dataset callable {spec} returned {part} of type {type(data).__name__}; expected a torch Dataset "
            "with __len__ and __getitem__ yielding (input, label) pairs"
        )
    inputs, labels = [], []
    for i in range(len(data)):
        item = data[i]
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise DataError(
                f"dataset callable {spec}: {part}[{i}] is {type(item).__name__}; expected an (input, label) pair"
            )
        inputs.append(_numpy(item[0]))
        labels.append(_numpy(item[1]))
    shapes = sorted({x.shape for x in inputs}, key=str)
    if len(shapes) > 1:
        raise DataError(f"dataset callable {spec}: {part} inputs differ in shape: {', '.join(map(str, shapes[:3]))}")
    if not inputs:
        return np.empty((0, 1), dtype=np.float32), np.empty(0, dtype=np.int64)  # reported as an empty set
    return np.stack(inputs), np.asarray(labels)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _inputs(name: str, part: str, value: Any) -> torch.Tensor:
    array = _checked_array(name, part, value)
    if array.dtype.kind not in "biuf":
        raise DataError(f"dataset {name!r}: {part} must be numeric, got dtype {array.dtype}")
    if array.ndim < 2:
        raise DataError(f"dataset {name!r}: {part} must have one row per sample, shape (N, ...), got {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"dataset {name!r}: {part} holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _tokens(name: str, part: str, value: Any, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A language task's inputs: (N, T) token ids, one per label, in the vocabulary, as int64."""
    array = _checked_array(name, part, value)
    if array.ndim != 2:
        raise DataError(
            f"dataset {name!r}: {part} must hold (N, T) token ids for its (N, T) next-token labels "
            f"(a language task), got shape {array.shape}"
        )
    if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
        array = array.astype(np.int64)  # whole numbers stored as floats
    if array.dtype.kind not in "iu":
        raise DataError(
            f"dataset {name!r}: {part} must be integer token ids (a language task), got dtype {array.dtype}"
        )
    if len(array) == len(labels) and array.shape != tuple(labels.shape):
        labels_part = part.replace("_x", "_y")
        raise DataError(
            f"dataset {name!r}: {part} has shape {array.shape} but {labels_part} {tuple(labels.shape)}; a language "
            "task needs one next-token label per input token (labels = the window shifted by one)"
        )
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        bad = array.min() if array.min() < 0 else array.max()
        raise DataError(
            f"dataset {name!r}: {part} holds token {bad}, outside the vocabulary 0..{num_classes - 1} (num_classes)"
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


def _labels(name: str, part: str, value: Any, num_classes: int) -> torch.Tensor:
    array = _checked_array(name, part, value)
    if array.ndim not in (1, 2) or array.dtype.kind not in "iu":
        raise DataError(
            f"dataset {name!r}: {part} must be integer class labels of shape (N,), or next tokens of shape (N, T) "
            f"for a language task, got dtype {array.dtype} and shape {array.shape}"
        )
    if len(array) and (array.min() < 0 or array.max() >= num_classes):
        bad = array.min() if array.min() < 0 else array.max()
        raise DataError(f"dataset {name!r}: {part} holds label {bad}, outside 0..{num_classes - 1} (num_classes)")
    return torch.from_numpy(array.astype(np.int64))


def _groups(name: str, value: Any, count: int) -> np.ndarray:
    array = _checked_array(name, "groups", value)
    if array.shape != (count,):
        raise DataError(
            f"dataset {name!r}: groups must hold one natural client id per train sample, shape ({count},), "
            f"got {array.shape}"
        )
    try:
        np.unique(array)
    except TypeError as exc:
        raise DataError(f"dataset {name!r}: groups cannot be sorted ({exc}); use integer or string ids") from exc
    return array


def _checked_array(name: str, part: str, value: Any) -> np.ndarray:
    try:
        return _numpy(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(
            f"dataset {name!r}: {part} of type {type(value).__name__} is not an array or tensor: {exc}"
        ) from exc
