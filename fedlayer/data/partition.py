"""Seeded non-IID partitions of a train set into clients, each split into local train and test parts.

The splitting itself is flwr-datasets' partitioners; this module feeds them the label column, maps what
they return back to indices of the global train set, and saves the result with a content hash so a run
can prove which samples each client had. The partitioners run on an in-memory `datasets.Dataset`
(`Dataset.from_dict`), so nothing here reads from or reports to the network. The natural split groups
samples by their natural client id as flwr-datasets' `NaturalIdPartitioner` does (a test checks they
agree), directly: that partitioner prints a progress bar, and fedlayer also allows fewer clients than ids.

A client's local test part is held out from its own train samples or, in a natural split of a dataset
whose groups have their own test samples (LEAF's Shakespeare: the last lines of each role), is its
group's samples of the global test set.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedlayer.atomic import write_bytes
from fedlayer.errors import DataError, choices_message
from fedlayer.task_kinds import LANGUAGE

if TYPE_CHECKING:  # the config imports this registry, so the type is only named here
    from fedlayer.config import Config
    from fedlayer.data.datasets import Dataset

METHODS = ("iid", "dirichlet", "pathological", "shard", "natural")
"""The partition schemes (see `make_partitions`), exported as `fedlayer.data.PARTITION_SCHEMES`."""
LANGUAGE_METHODS = ("iid", "natural")
"""The schemes that split a language dataset: the others deal out classes, which windows of text do not have."""
TRAIN_SET, TEST_SET = "train", "test"
LOCAL_TEST_SETS = (TRAIN_SET, TEST_SET)
"""The global set the clients' local test indices index (`Partitions.local_test`)."""
FORMAT = "fedlayer-partitions/1"
MIN_DIRICHLET_SIZE = 10
"""Fewest samples a Dirichlet client may get (flwr-datasets' default), capped for tiny data sets."""


@dataclass(frozen=True, eq=False)
class ClientPartition:
    """One client's samples: train indices into the global train set, test indices into the global set
    `Partitions.local_test` names, and its class counts per part."""

    client: int
    train_indices: np.ndarray
    test_indices: np.ndarray
    train_counts: np.ndarray
    test_counts: np.ndarray


@dataclass(frozen=True, eq=False)
class Partitions:
    """All clients' partitions and how they were made; `content_hash` fingerprints the indices.

    Attributes
    ----------
    method : str
        The partition scheme, one of `METHODS`.
    params : dict[str, Any]
        The scheme's parameters (test_fraction and alpha, classes_per_client, shards_per_client or, for
        the natural split, groups: how many natural groups the data has).
    seed : int
        The seed every draw came from.
    num_classes, num_samples : int
        Classes in the label space and samples in the global train set.
    clients : list[ClientPartition]
        One entry per client, in client order.
    dataset : str, default ""
        The dataset's registry name, when known.
    local_test : str, default "train"
        The global set the clients' test indices index (`LOCAL_TEST_SETS`): "train", samples held out from
        the client's own; "test", its natural group's test samples.
    content_hash : str
        sha256 over every client's id, part sizes and indices, and the set the test indices index (computed,
        not passed).
    """

    method: str
    params: dict[str, Any]
    seed: int
    num_classes: int
    num_samples: int
    clients: list[ClientPartition]
    dataset: str = ""
    local_test: str = TRAIN_SET
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "content_hash", _content_hash(self.clients, self.local_test))

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def class_counts(
        self, labels: np.ndarray | None = None, *, split: str = "all", test_labels: np.ndarray | None = None
    ) -> pd.DataFrame:
        """Clients x classes sample counts for `split` ("train", "test", "all").

        From `labels` (the global train labels; a language dataset's (N, T) labels count each window's last
        one) when given, else from the counts recorded at creation. When the local test indices index the
        global test set (`local_test`), counting from labels also needs that set's, `test_labels`.

        Raises
        ------
        DataError
            If `split` is unknown, or `labels` are given without the `test_labels` the test indices need.
        """
        splits = ("train", "test", "all")
        if split not in splits:
            raise DataError(choices_message("split", split, splits))
        if labels is not None:
            labels = partition_labels(labels)
            if self.local_test == TEST_SET:
                if test_labels is None:
                    raise DataError("these partitions test clients on the global test set: give its test_labels too")
                test_labels = partition_labels(test_labels)
            else:
                test_labels = labels
        rows = [self._counts(c, labels, test_labels, split) for c in self.clients]
        frame = pd.DataFrame(np.array(rows, dtype=np.int64).reshape(len(rows), self.num_classes))
        frame.index.name, frame.columns.name = "client", "class"
        return frame

    def _counts(
        self, client: ClientPartition, labels: np.ndarray | None, test_labels: np.ndarray | None, split: str
    ) -> np.ndarray:
        if labels is None or test_labels is None:
            train, test = client.train_counts, client.test_counts
        else:
            train = _bincount(labels[client.train_indices], self.num_classes)
            test = _bincount(test_labels[client.test_indices], self.num_classes)
        return {"train": train, "test": test, "all": train + test}[split]

    def to_json(self) -> str:
        payload = {
            "format": FORMAT,
            "dataset": self.dataset,
            "method": self.method,
            "params": self.params,
            "seed": self.seed,
            "num_clients": self.num_clients,
            "num_classes": self.num_classes,
            "num_samples": self.num_samples,
            "local_test": self.local_test,
            "content_hash": self.content_hash,
            "clients": [
                {
                    "client": c.client,
                    "train_indices": c.train_indices.tolist(),
                    "test_indices": c.test_indices.tolist(),
                    "train_class_counts": c.train_counts.tolist(),
                    "test_class_counts": c.test_counts.tolist(),
                }
                for c in self.clients
            ],
        }
        return json.dumps(payload, separators=(",", ":"))

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename): a crash never leaves half a file."""
        return write_bytes(path, self.to_json().encode())

    @classmethod
    def load(cls, path: str | Path) -> Partitions:
        """Read a file written by `save`.

        Raises
        ------
        DataError
            If the file is unreadable or malformed, or its indices no longer match its content hash.
        """
        try:
            payload = json.loads(Path(path).read_text())
            if payload.get("format") != FORMAT:
                raise ValueError(f"format is {payload.get('format')!r}, expected {FORMAT!r}")
            local_test = payload.get("local_test", TRAIN_SET)  # files written before it was recorded: "train"
            if local_test not in LOCAL_TEST_SETS:
                raise ValueError(choices_message("local_test", local_test, LOCAL_TEST_SETS))
            clients = [
                ClientPartition(
                    client=int(c["client"]),
                    train_indices=np.asarray(c["train_indices"], dtype=np.int64),
                    test_indices=np.asarray(c["test_indices"], dtype=np.int64),
                    train_counts=np.asarray(c["train_class_counts"], dtype=np.int64),
                    test_counts=np.asarray(c["test_class_counts"], dtype=np.int64),
                )
                for c in payload["clients"]
            ]
            loaded = cls(
                method=payload["method"],
                params=payload["params"],
                seed=int(payload["seed"]),
                num_classes=int(payload["num_classes"]),
                num_samples=int(payload["num_samples"]),
                clients=clients,
                dataset=payload.get("dataset", ""),
                local_test=local_test,
            )
            recorded = payload["content_hash"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"cannot read partitions file {path}: {exc}") from exc
        if loaded.content_hash != recorded:
            raise DataError(
                f"partitions file {path} was modified: its indices hash to {loaded.content_hash[:12]}, "
                f"not the recorded {recorded[:12]}; recreate it with `fedlayer partitions`"
            )
        return loaded


def make_partitions(
    labels: np.ndarray,
    num_clients: int,
    method: str,
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    shards_per_client: int = 2,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    subset: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    test_groups: np.ndarray | None = None,
) -> Partitions:
    """Split the samples of `labels` among clients with a seeded partition scheme (flwr-datasets' partitioners).

    The schemes (`METHODS`), each after a seeded shuffle:

    - "iid": equal-size random parts;
    - "dirichlet": each class spread over the clients by proportions drawn from Dir(alpha) (Hsu et
      al. 2019, arXiv:1909.06335); smaller alpha is more skewed;
    - "pathological": each client holds exactly `classes_per_client` classes, each class's samples
      split evenly among its clients (Li et al. 2022, arXiv:2102.02079, after the pathological
      non-IID split of McMahan et al. 2017, arXiv:1602.05629);
    - "shard": samples sorted by label, cut into equal shards, `shards_per_client` shards per client
      (McMahan et al. 2017, arXiv:1602.05629);
    - "natural": each client holds the samples of one natural group (`groups`: a writer, a speaker), as
      flwr-datasets' NaturalIdPartitioner: client i gets the i-th group id in sorted order. With fewer
      clients than groups, a seeded choice of `num_clients` groups is used (still in sorted order) and the
      other groups' samples are left out; more clients than groups is an error.

    Each client's samples are then split, seeded and stratified where every class allows it, into
    local train and test parts; except in a natural split given `test_groups`, where each client trains
    on all its group's samples and tests on its group's samples of the global test set (LEAF's split).

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels of the global train set.
    num_clients : int
        Clients to split among, from 1 to the number of samples used.
    method : str
        One of `METHODS`.
    seed : int
        Seeds every draw: the same arguments give the same partitions.
    alpha : float, default 0.5
        Dirichlet concentration (dirichlet only), positive.
    classes_per_client : int, default 2
        Classes per client (pathological only), from 1 to `num_classes`.
    shards_per_client : int, default 2
        Shards per client (shard only), at least 1.
    test_fraction : float, default 0.2
        Fraction of each client's samples held out as its local test part, in [0, 1).
    num_classes : int or None, default None
        Classes in the label space; None means max(labels) + 1.
    subset : np.ndarray or None, default None
        Indices of `labels` to split; None uses them all.
    groups : np.ndarray or None, default None
        A natural client id per sample of `labels` (natural only; any sortable values).
    test_labels, test_groups : np.ndarray or None, default None
        Natural only: the class label and natural client id of each sample of the global test set, which
        then gives each client its local test part (test ids that no train sample has are left out).

    Returns
    -------
    Partitions
        Indices into `labels` per client (with `test_groups`, test indices into `test_labels`).
        Pathological, shard and natural splits may leave out samples (classes no client drew; the
        remainder after equal-size shards; groups no client drew).

    Raises
    ------
    DataError
        If the scheme is unknown, a parameter is out of range, or the split cannot be made (a
        Dirichlet draw that leaves a client too few samples in 10 tries; a natural split without groups,
        or with more clients than groups).
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    used = np.arange(len(labels)) if subset is None else np.asarray(subset, dtype=np.int64)
    used_groups = None if groups is None else np.asarray(groups)[used]
    params = _validate(
        labels[used],
        num_clients,
        method,
        alpha,
        classes_per_client,
        shards_per_client,
        test_fraction,
        num_classes,
        used_groups,
    )
    group_tests = None
    if method == "natural":
        assert used_groups is not None  # _validate demands them
        rows_per_client, chosen = _natural(used_groups, num_clients, seed)
        if test_groups is not None:
            if test_labels is None or len(test_labels) != len(test_groups):
                raise DataError("test_groups need test_labels, one per test sample")
            test_labels = np.asarray(test_labels, dtype=np.int64)
            group_tests = _members(np.asarray(test_groups), chosen)
    else:
        rows_per_client = _assign(labels[used], num_clients, method, params, seed)
    parts = [used[rows] for rows in rows_per_client]
    clients = []
    for client, indices in enumerate(parts):
        if group_tests is None:
            train, test = _local_split(indices, labels, test_fraction, seed, client)
            test_counts = _bincount(labels[test], num_classes)
        else:
            assert test_labels is not None  # checked with test_groups
            train, test = indices, group_tests[client]
            test_counts = _bincount(test_labels[test], num_classes)
        clients.append(ClientPartition(client, train, test, _bincount(labels[train], num_classes), test_counts))
    local_test = TRAIN_SET if group_tests is None else TEST_SET
    return Partitions(method, params, seed, num_classes, len(labels), clients, local_test=local_test)


def partitions_from_config(cfg: Config, dataset: Dataset) -> Partitions:
    """The partitions of a dataset's train set that an experiment config describes.

    Runs `make_partitions` with `cfg.data.partition` and its parameters, `cfg.federation.clients`
    and `cfg.seed`. A language dataset is split by its windows' last labels (the next character, the
    label LEAF gives a window), with "iid" or "natural" only; a natural split of a dataset with
    `test_groups` tests each client on its group's test samples.

    Parameters
    ----------
    cfg : Config
        The experiment config; `data.max_train_samples` > 0 first draws a seeded subsample of that
        size (indices still refer to the full train set).
    dataset : Dataset
        The loaded dataset (`fedlayer.data.load_dataset`); its train labels (and, for the natural
        split, its `groups` and `test_groups`) are split.

    Returns
    -------
    Partitions
        With `dataset` set to the dataset's name, and max_train_samples among the params when it applies.

    Raises
    ------
    DataError
        As `make_partitions`; a natural split of a dataset without natural client ids names how to give them;
        a scheme that splits by class on a language dataset names the schemes that apply.
    """
    labels = partition_labels(dataset.train_y.numpy())
    data = cfg.data
    language = dataset.task == LANGUAGE
    if language and data.partition not in LANGUAGE_METHODS:
        raise DataError(
            f"data.partition = {data.partition!r} deals out classes, and dataset {dataset.name!r} is windows of "
            f"text (a language task); valid choices for it: {', '.join(LANGUAGE_METHODS)}"
        )
    if data.partition == "natural" and dataset.groups is None:
        how = (
            "split it with data.partition = 'iid'"
            if language
            else "name the column holding them with data.partition_by (hf: datasets), or return them as "
            "`groups` from a dataset callable"
        )
        raise DataError(
            f"data.partition = 'natural' needs a natural client id per sample, and dataset {dataset.name!r} has "
            f"none: {how}"
        )
    subset = None
    if 0 < data.max_train_samples < len(labels):
        rng = np.random.default_rng([cfg.seed, len(labels), data.max_train_samples])
        subset = np.sort(rng.choice(len(labels), size=data.max_train_samples, replace=False))
    parts = make_partitions(
        labels,
        cfg.federation.clients,
        data.partition,
        seed=cfg.seed,
        alpha=data.alpha,
        classes_per_client=data.classes_per_client,
        shards_per_client=data.shards_per_client,
        test_fraction=data.test_fraction,
        num_classes=dataset.num_classes,
        subset=subset,
        groups=dataset.groups,
        test_labels=partition_labels(dataset.test_y.numpy()),
        test_groups=dataset.test_groups,
    )
    params = {**parts.params, "max_train_samples": data.max_train_samples} if subset is not None else parts.params
    return replace(parts, params=params, dataset=dataset.name)


def partition_labels(labels: np.ndarray) -> np.ndarray:
    """The labels a split keys on, one per sample: class labels as they are, and for a language task's (N, T)
    labels each window's last one, the character that follows it (LEAF's label for a window)."""
    labels = np.asarray(labels)
    return labels[:, -1] if labels.ndim == 2 else labels


def _validate(
    labels: np.ndarray,
    num_clients: int,
    method: str,
    alpha: float,
    classes_per_client: int,
    shards_per_client: int,
    test_fraction: float,
    num_classes: int,
    groups: np.ndarray | None,
) -> dict[str, Any]:
    """Check the arguments up front and return the parameters that describe this split."""
    if method not in METHODS:
        raise DataError(choices_message("partition method", method, METHODS))
    if num_clients < 1:
        raise DataError(f"number of clients must be at least 1, got {num_clients}")
    params: dict[str, Any] = {"test_fraction": test_fraction}
    if method == "natural":
        if groups is None:
            raise DataError("the natural partition needs a natural client id per sample (groups); none were given")
        params["groups"] = count = len(np.unique(groups))
        if num_clients > count:
            raise DataError(
                f"natural partition: {num_clients} clients but the data has only {count} natural groups "
                f"(one client per group); use at most {count} clients"
            )
    if num_clients > len(labels):
        raise DataError(f"{num_clients} clients but only {len(labels)} samples; use at most {len(labels)}")
    if not 0 <= test_fraction < 1:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if method == "dirichlet":
        if not (math.isfinite(alpha) and alpha > 0):
            raise DataError(f"dirichlet alpha must be a positive number, got {alpha}")
        params["alpha"] = alpha
    elif method == "pathological":
        if not 1 <= classes_per_client <= num_classes:
            raise DataError(f"classes_per_client must be in 1..{num_classes}, got {classes_per_client}")
        params["classes_per_client"] = classes_per_client
    elif method == "shard":
        if shards_per_client < 1:
            raise DataError(f"shards_per_client must be at least 1, got {shards_per_client}")
        shards = num_clients * shards_per_client
        if shards > len(labels):
            raise DataError(
                f"too few samples per shard: {num_clients} clients x {shards_per_client} shards = {shards} "
                f"shards of {len(labels)} samples; use at most {len(labels) // num_clients} shards per client"
            )
        params["shards_per_client"] = shards_per_client
    return params


def _assign(labels: np.ndarray, num_clients: int, method: str, params: dict, seed: int) -> list[np.ndarray]:
    """Run the flwr-datasets partitioner on the label column; return each client's row positions.

    The table is built in memory, so neither the Hugging Face hub nor Flower's telemetry (sent only
    by `FederatedDataset`) is involved: the process environment is left alone.
    """
    import datasets
    from flwr_datasets import partitioner as fp

    # A seeded shuffle first (as FederatedDataset does; IidPartitioner cuts contiguous blocks). "row" carries
    # each sample's position back: ShardPartitioner sorts the table, so returned order is not ours.
    order = np.random.default_rng(seed).permutation(len(labels))
    table = datasets.Dataset.from_dict({"label": labels[order], "row": order})
    if method == "iid":
        part = fp.IidPartitioner(num_clients)
    elif method == "dirichlet":
        min_size = min(MIN_DIRICHLET_SIZE, len(labels) // num_clients)
        part = fp.DirichletPartitioner(
            num_clients, "label", alpha=params["alpha"], min_partition_size=min_size, seed=seed
        )
    elif method == "pathological":
        part = fp.PathologicalPartitioner(
            num_clients,
            "label",
            params["classes_per_client"],
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    else:
        part = fp.ShardPartitioner(
            num_clients, "label", num_shards_per_partition=params["shards_per_client"], seed=seed
        )
    part.dataset = table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # retry notices and a hint naming a flag that does not exist
            return [np.asarray(part.load_partition(i).with_format("numpy")["row"][:]) for i in range(num_clients)]
    except ValueError as exc:
        if method == "dirichlet":
            raise DataError(
                f"dirichlet split with alpha={params['alpha']} could not give each of {num_clients} clients "
                f"at least {min_size} samples in 10 tries; use a larger alpha or fewer clients"
            ) from exc
        raise DataError(f"{method} split of {len(labels)} samples into {num_clients} clients: {exc}") from exc


def _natural(groups: np.ndarray, num_clients: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Each client's row positions, the samples of one group, and the groups: in sorted order
    (NaturalIdPartitioner's partition ids); a seeded choice of `num_clients` of them when there are more
    groups than clients."""
    ids = np.unique(groups)
    chosen = np.arange(len(ids))
    if num_clients < len(ids):
        chosen = np.sort(np.random.default_rng(seed).choice(len(ids), size=num_clients, replace=False))
    return _members(groups, ids[chosen]), ids[chosen]


def _members(groups: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """The positions (ascending) of each of `ids` (sorted, unique) in `groups`: one sort, not a scan per id."""
    slot = np.searchsorted(ids, groups).clip(0, len(ids) - 1)
    member = ids[slot] == groups
    order = np.flatnonzero(member)[np.argsort(slot[member], kind="stable")]
    return np.split(order, np.cumsum(np.bincount(slot[member], minlength=len(ids)))[:-1])


def _local_split(
    indices: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int, client: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split of one client's samples, stratified when every class allows it.

    The train part is never empty; both parts are sorted so the saved file is canonical.
    """
    n_test = min(round(len(indices) * test_fraction), len(indices) - 1)
    if n_test == 0:
        return np.sort(indices), np.empty(0, dtype=np.int64)
    from sklearn.model_selection import train_test_split

    state = int(np.random.SeedSequence([seed, client]).generate_state(1)[0])
    y = labels[indices]
    counts = np.bincount(y)
    counts = counts[counts > 0]
    stratify = y if counts.min() >= 2 and len(counts) <= min(n_test, len(indices) - n_test) else None
    train, test = train_test_split(indices, test_size=n_test, random_state=state, stratify=stratify)
    return np.sort(train), np.sort(test)


def _bincount(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def _content_hash(clients: list[ClientPartition], local_test: str) -> str:
    """sha256 over the set the test indices index when it is the test set (so splits that hold out train
    samples hash as they always did), then each client's id, part sizes and indices (little-endian int64)."""
    digest = hashlib.sha256()
    if local_test == TEST_SET:
        digest.update(TEST_SET.encode())
    for c in clients:
        digest.update(np.array([c.client, len(c.train_indices), len(c.test_indices)], dtype="<i8").tobytes())
        digest.update(np.asarray(c.train_indices, dtype="<i8").tobytes())
        digest.update(np.asarray(c.test_indices, dtype="<i8").tobytes())
    return digest.hexdigest()
