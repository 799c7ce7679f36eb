"""Seeded non-IID partitions of a train set into clients, each split into local train and test parts.

The splitting itself is flwr-datasets' partitioners; this module feeds them the label column, maps what
they return back to indices of the global train set, and saves the result with a content hash so a run
can prove which samples each client had. The partitioners run on an in-memory `datasets.Dataset`
(`Dataset.from_dict`), so nothing here reads from or reports to the network. The natural split groups
samples by their natural client id as flwr-datasets' `NaturalIdPartitioner` does (a test checks they
agree), directly: that partitioner prints a progress bar, and fedlayer also allows fewer clients than ids.
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

if TYPE_CHECKING:  # the config imports this registry, so the type is only named here
    from fedlayer.config import Config
    from fedlayer.data.datasets import Dataset

METHODS = ("iid", "dirichlet", "pathological", "shard", "natural")
"""The partition schemes (see `make_partitions`), exported as `fedlayer.data.PARTITION_SCHEMES`."""
FORMAT = "fedlayer-partitions/1"
MIN_DIRICHLET_SIZE = 10
"""Fewest samples a Dirichlet client may get (flwr-datasets' default), capped for tiny data sets."""


@dataclass(frozen=True, eq=False)
class ClientPartition:
    """One client's samples: indices into the global train set, and its class counts per part."""

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
    content_hash : str
        sha256 over every client's id, part sizes and indices (computed, not passed).
    """

    method: str
    params: dict[str, Any]
    seed: int
    num_classes: int
    num_samples: int
    clients: list[ClientPartition]
    dataset: str = ""
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "content_hash", _content_hash(self.clients))

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def class_counts(self, labels: np.ndarray | None = None, *, split: str = "all") -> pd.DataFrame:
        """Clients x classes sample counts for `split` ("train", "test", "all").

        From `labels` (the global train labels) when given, else from the counts recorded at creation.

        Raises
        ------
        DataError
            If `split` is unknown.
        """
        splits = ("train", "test", "all")
        if split not in splits:
            raise DataError(choices_message("split", split, splits))
        rows = [self._counts(c, labels, split) for c in self.clients]
        frame = pd.DataFrame(np.array(rows, dtype=np.int64).reshape(len(rows), self.num_classes))
        frame.index.name, frame.columns.name = "client", "class"
        return frame

    def _counts(self, client: ClientPartition, labels: np.ndarray | None, split: str) -> np.ndarray:
        if labels is None:
            train, test = client.train_counts, client.test_counts
        else:
            train, test = (
                _bincount(np.asarray(labels)[i], self.num_classes) for i in (client.train_indices, client.test_indices)
            )
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
    local train and test parts.

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

    Returns
    -------
    Partitions
        Indices into `labels` per client. Pathological, shard and natural splits may leave out samples
        (classes no client drew; the remainder after equal-size shards; groups no client drew).

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
    if method == "natural":
        assert used_groups is not None  # _validate demands them
        rows_per_client = _natural(used_groups, num_clients, seed)
    else:
        rows_per_client = _assign(labels[used], num_clients, method, params, seed)
    parts = [used[rows] for rows in rows_per_client]
    clients = []
    for client, indices in enumerate(parts):
        train, test = _local_split(indices, labels, test_fraction, seed, client)
        clients.append(
            ClientPartition(
                client,
                train,
                test,
                _bincount(labels[train], num_classes),
                _bincount(labels[test], num_classes),
            )
        )
    return Partitions(method, params, seed, num_classes, len(labels), clients)


def partitions_from_config(cfg: Config, dataset: Dataset) -> Partitions:
    """The partitions of a dataset's train set that an experiment config describes.

    Runs `make_partitions` with `cfg.data.partition` and its parameters, `cfg.federation.clients`
    and `cfg.seed`.

    Parameters
    ----------
    cfg : Config
        The experiment config; `data.max_train_samples` > 0 first draws a seeded subsample of that
        size (indices still refer to the full train set).
    dataset : Dataset
        The loaded dataset (`fedlayer.data.load_dataset`); its train labels (and, for the natural
        split, its `groups`) are split.

    Returns
    -------
    Partitions
        With `dataset` set to the dataset's name, and max_train_samples among the params when it applies.

    Raises
    ------
    DataError
        As `make_partitions`; a natural split of a dataset without natural client ids names how to give them.
    """
    labels = dataset.train_y.numpy()
    data = cfg.data
    if data.partition == "natural" and dataset.groups is None:
        raise DataError(
            f"data.partition = 'natural' needs a natural client id per sample, and dataset {dataset.name!r} has "
            "none: name the column holding them with data.partition_by (hf: datasets), or return them as "
            "`groups` from a dataset callable"
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
    )
    params = {**parts.params, "max_train_samples": data.max_train_samples} if subset is not None else parts.params
    return replace(parts, params=params, dataset=dataset.name)


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


def _natural(groups: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Each client's row positions: the samples of one group, groups in sorted order (NaturalIdPartitioner's
    partition ids); a seeded choice of `num_clients` of them when there are more groups than clients."""
    _, codes = np.unique(groups, return_inverse=True)
    count = int(codes.max()) + 1
    chosen = np.arange(count)
    if num_clients < count:
        chosen = np.sort(np.random.default_rng(seed).choice(count, size=num_clients, replace=False))
    return [np.flatnonzero(codes == group) for group in chosen]


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


def _content_hash(clients: list[ClientPartition]) -> str:
    """sha256 over each client's id, part sizes and indices (little-endian int64)."""
    digest = hashlib.sha256()
    for c in clients:
        digest.update(np.array([c.client, len(c.train_indices), len(c.test_indices)], dtype="<i8").tobytes())
        digest.update(np.asarray(c.train_indices, dtype="<i8").tobytes())
        digest.update(np.asarray(c.test_indices, dtype="<i8").tobytes())
    return digest.hexdigest()
