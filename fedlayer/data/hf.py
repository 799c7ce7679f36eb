"""A Hugging Face dataset ("hf:<dataset id or local path>") as fedlayer's tensors, offline first.

Read with the `datasets` library from a `save_to_disk` folder, a local Parquet/CSV/JSON file, a local folder
of data files or images (`datasets.load_dataset` infers the builder and the splits), or a hub id from the
local Hugging Face cache; the hub itself is contacted only with `data.download = true`, so an id that is not
cached fails at once, offline, instead of retrying for minutes.

Columns: the inputs are `data.input_column` (one column, or comma-separated numeric columns) or found: the
first of `INPUT_COLUMNS`, else the only other column, else every other column when all are numeric. The
labels are `data.label_column` or the first of `LABEL_COLUMNS`: a ClassLabel keeps its classes, other values
are relabelled 0..K-1 in sorted order (the names kept in `Dataset.class_names`). `data.partition_by` names
the column of natural client ids. Splits: "train" (or the only split) and "test"; without a test split a
fixed stratified `TEST_SHARE` of the train split is held out with seed `SPLIT_SEED`, the same for every run
and `fedlayer barrier` (so no seed ever evaluates on another's training samples). Images become float32
(N, C, H, W) and feature vectors (N, F), standardised per channel (per feature) with the train set's mean
and std.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedlayer.data.datasets import Dataset
from fedlayer.data.user import dataset_from_arrays
from fedlayer.errors import DataError, listed

if TYPE_CHECKING:
    import datasets

INPUT_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label")
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what `save_to_disk` writes into its folder
TEST_SHARE = 0.2
SPLIT_SEED = 0


def load_hf_dataset(
    target: str, *, download: bool = False, input_column: str = "", label_column: str = "", partition_by: str = ""
) -> Dataset:
    """Load "hf:`target`" (a dataset id or a local path) as a `Dataset` (see the module docstring).

    Raises
    ------
    DataError
        If it is neither a local path nor cached (offline), cannot be read, has no usable train split, a
        column is missing or cannot be found (the message lists the columns and the config key to set), or
        its values are not images, numbers or class labels.
    """
    name = f"hf:{target}"
    splits, source = _open(target, download)
    train, test = _train_test(name, splits)
    columns = train.column_names
    label = _column(name, columns, label_column, LABEL_COLUMNS, "label", "data.label_column")
    if partition_by and partition_by not in columns:
        raise DataError(
            f"dataset {name!r} has no column {partition_by!r} (data.partition_by); columns: {', '.join(columns)}"
        )
    inputs = _input_columns(name, train, input_column, exclude={label, partition_by})
    if test is not None:
        missing = [c for c in [*inputs, label] if c not in test.column_names]
        if missing:
            raise DataError(f"dataset {name!r}: its test split lacks column(s) {', '.join(missing)}")
    x = _inputs(name, train, inputs)
    labels, num_classes, class_names = _labels(name, label, train, test)
    groups = np.asarray(train.with_format("numpy")[partition_by][:]) if partition_by else None
    if test is None:
        keep, held = _held_out(labels[0])
        x, test_x = x[keep], x[held]
        labels = (labels[0][keep], labels[0][held])
        groups = None if groups is None else groups[keep]
    else:
        test_x = _inputs(name, test, inputs)
    if test_x.shape[1:] != x.shape[1:]:
        raise DataError(f"dataset {name!r}: train inputs have shape {x.shape[1:]} but test inputs {test_x.shape[1:]}")
    mean, std = _statistics(x)
    return dataset_from_arrays(
        name,
        (x - mean) / std,
        labels[0],
        (test_x - mean) / std,
        labels[1],
        num_classes,
        groups=groups,
        source=source,
        class_names=class_names,
    )


@contextlib.contextmanager
def _hub(online: bool) -> Iterator[None]:
    """The Hugging Face hub reachable only when `online`: `datasets` and `huggingface_hub` read their offline
    flags at call time, so setting them here makes an uncached id fail at once (the environment variables
    HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are read once, at import, and may be too late)."""
    import datasets
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    if not online:
        datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved
        if bars:
            datasets.enable_progress_bars()


def _open(target: str, download: bool) -> tuple[dict[str, datasets.Dataset], str]:
    """The dataset's splits and where they were read from."""
    import datasets

    path = Path(target).expanduser()
    try:
        with _hub(online=download):
            if path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS):
                loaded = datasets.load_from_disk(str(path))
            elif path.is_file():
                if path.suffix.lower() not in FILE_BUILDERS:
                    raise DataError(
                        f"Hugging Face dataset file {str(path)!r} is not one fedlayer reads: give a "
                        f"{', '.join(FILE_BUILDERS)} file, a save_to_disk folder or a folder of data files or images"
                    )
                loaded = datasets.load_dataset(FILE_BUILDERS[path.suffix.lower()], data_files=str(path))
            elif path.is_dir():
                loaded = datasets.load_dataset(str(path))
            elif target.startswith(("/", ".", "~")) or path.suffix.lower() in FILE_BUILDERS:
                raise DataError(f"Hugging Face dataset path {target!r} does not exist (looked for {path.resolve()})")
            else:
                loaded = datasets.load_dataset(target)
    except (ConnectionError, FileNotFoundError) as exc:
        if path.exists():
            raise DataError(f"cannot read Hugging Face dataset {str(path)!r}: {exc}") from exc
        raise DataError(_not_found(target, path, download, exc)) from exc
    except DataError:
        raise
    except Exception as exc:  # the many ways a folder or file can be malformed
        raise DataError(f"cannot load Hugging Face dataset {target!r}: {type(exc).__name__}: {exc}") from exc
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return splits, str(path.resolve()) if path.exists() else f"{target} (Hugging Face cache)"


def _not_found(target: str, path: Path, download: bool, exc: Exception) -> str:
    import datasets

    if download:
        return f"cannot download Hugging Face dataset {target!r} from the hub: {exc}"
    return (
        f"Hugging Face dataset {target!r} is neither a local path (no file or folder {path.resolve()}) nor in the "
        f"local Hugging Face cache ({datasets.config.HF_DATASETS_CACHE}); fedlayer does not contact the hub "
        "unless data.download = true. Save it with save_to_disk (or as Parquet files) on a machine with internet "
        "and give hf:<that folder>, or set data.download = true where the hub is reachable"
    )


def _train_test(name: str, splits: dict[str, datasets.Dataset]) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    if "train" in splits:
        train = splits["train"]
    elif len(splits) == 1:
        (train,) = splits.values()
    else:
        raise DataError(
            f"dataset {name!r} has splits {', '.join(splits)} and none named 'train'; "
            "save the training split as 'train' (and the test split as 'test')"
        )
    return train, splits.get("test")


def _column(name: str, columns: list[str], given: str, preferred: tuple[str, ...], what: str, key: str) -> str:
    """The given column, or the first preferred one present."""
    if given:
        if given not in columns:
            raise DataError(f"dataset {name!r} has no column {given!r} ({key}); columns: {', '.join(columns)}")
        return given
    found = next((c for c in preferred if c in columns), None)
    if found is None:
        raise DataError(
            f"dataset {name!r}: no {what} column found (looked for {', '.join(preferred)}); columns: "
            f"{', '.join(columns)}; name it with {key}"
        )
    return found


def _input_columns(name: str, train: datasets.Dataset, given: str, exclude: set[str]) -> list[str]:
    columns = train.column_names
    if given:
        return [_column(name, columns, c.strip(), (), "input", "data.input_column") for c in given.split(",")]
    found = next((c for c in INPUT_COLUMNS if c in columns), None)
    if found is not None:
        return [found]
    rest = [c for c in columns if c not in exclude]
    if len(rest) == 1 or (rest and all(_is_number(train.features[c]) for c in rest)):
        return rest
    raise DataError(
        f"dataset {name!r}: cannot tell which column holds the inputs among {', '.join(rest) or '(none)'} "
        f"(looked for {', '.join(INPUT_COLUMNS)}); name it with data.input_column "
        "(or several numeric columns, comma-separated)"
    )


def _is_number(feature: Any) -> bool:
    import datasets

    return isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint", "float", "bool"))


def _inputs(name: str, table: datasets.Dataset, columns: list[str]) -> np.ndarray:
    """float32 (N, C, H, W) images or (N, F) feature vectors."""
    import datasets

    if len(columns) > 1:
        bad = [c for c in columns if not _is_number(table.features[c])]
        if bad:
            raise DataError(
                f"dataset {name!r}: input columns {', '.join(bad)} are not numeric; several input columns must "
                "each hold one number per sample (tabular features)"
            )
        values = table.with_format("numpy")
        return np.stack([np.asarray(values[c][:], dtype=np.float32) for c in columns], axis=1)
    (column,) = columns
    if isinstance(table.features[column], datasets.Image):
        return _images(name, column, table[column][:])
    array = np.asarray(table.with_format("numpy")[column][:])
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise DataError(
            f"dataset {name!r}: input column {column!r} ({table.features[column]}) does not hold images or "
            "equally shaped numbers; name another with data.input_column"
        )
    array = array.astype(np.float32)
    if array.ndim in (1, 3):
        return array[:, None]  # one feature per sample, or (N, H, W) images of one channel
    if array.ndim == 4 and array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
        return array.transpose(0, 3, 1, 2)  # channels last -> (N, C, H, W)
    return array


def _images(name: str, column: str, images: list) -> np.ndarray:
    """PIL images as (N, C, H, W): one channel when every image has one band, else RGB."""
    gray = all(len(image.getbands()) == 1 for image in images)
    arrays = [np.asarray(image if gray else image.convert("RGB"), dtype=np.float32) for image in images]
    sizes = sorted({a.shape[:2] for a in arrays})
    if len(sizes) > 1:
        raise DataError(
            f"dataset {name!r}: images in column {column!r} differ in size ({listed(f'{h}x{w}' for h, w in sizes)}); "
            "give images of one size"
        )
    stacked = np.stack(arrays) if arrays else np.empty((0, 1, 1), dtype=np.float32)
    return stacked[:, None] if gray else stacked.transpose(0, 3, 1, 2)


def _labels(
    name: str, column: str, train: datasets.Dataset, test: datasets.Dataset | None
) -> tuple[tuple[np.ndarray, np.ndarray], int, tuple[str, ...]]:
    """((train labels, test labels), num_classes, class names): a ClassLabel's own, else sorted values as
    0..K-1 (the test labels empty when there is no test split)."""
    import datasets

    feature = train.features[column]
    tables = [t for t in (train, test) if t is not None]
    values = [np.asarray(t.with_format("numpy")[column][:]) for t in tables]
    if isinstance(feature, datasets.ClassLabel):
        codes, names = values, tuple(feature.names)
    elif isinstance(feature, datasets.Value):
        classes = np.unique(np.concatenate(values))
        codes, names = [np.searchsorted(classes, v) for v in values], tuple(str(c) for c in classes)
    else:
        raise DataError(
            f"dataset {name!r}: label column {column!r} holds {feature}; expected one class label per sample "
            "(a ClassLabel, integers or strings); name another with data.label_column"
        )
    codes = [c.astype(np.int64) for c in codes]
    return (codes[0], codes[1] if len(codes) > 1 else codes[0][:0]), len(names), names


def _held_out(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices: a fixed TEST_SHARE test split, stratified when every class allows it."""
    from sklearn.model_selection import train_test_split

    if len(labels) < 2:
        raise DataError(f"a train split of {len(labels)} sample(s) cannot give a test split; add a 'test' split")
    indices = np.arange(len(labels))
    n_test = max(1, round(len(labels) * TEST_SHARE))
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    stratify = labels if counts.min() >= 2 and len(counts) <= min(n_test, len(labels) - n_test) else None
    kept, held = train_test_split(indices, test_size=n_test, random_state=SPLIT_SEED, stratify=stratify)
    return np.sort(kept), np.sort(held)


def _statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (images) or per-feature mean and std of the train inputs, broadcastable; std 0 becomes 1."""
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std = x.std(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    return mean, np.where(std > 0, std, 1.0).astype(np.float32)
