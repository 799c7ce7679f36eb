"""What a config means for one process: its dataset, partitions and model, built once and cached.

Simulated clients live in long-lived Ray actors that serve many partitions; caching here keeps the
dataset and partitions out of the per-round cost while every call still seeds its own randomness.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedlayer.checkpoints import fit_state, read_state_dict
from fedlayer.config import Config
from fedlayer.data import DATASET_SPECS, Dataset, load_dataset
from fedlayer.data.partition import TEST_SET, Partitions, partitions_from_config
from fedlayer.errors import ConfigError, FedlayerError
from fedlayer.hf_models import hf_checkpoint_state
from fedlayer.layers import Layer, model_layers, select_layers
from fedlayer.memory import keep_freed_memory
from fedlayer.model_fit import fit_input
from fedlayer.models import build_model, client_init_seed
from fedlayer.task_kinds import CLASSIFICATION
from fedlayer.training import TrainSettings


@dataclass(frozen=True)
class ClientData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def configure_process(cfg: Config) -> None:
    """A client process's settings: `simulation.torch_threads` torch threads and, unless
    `simulation.keep_freed_memory` is off, freed memory kept for reuse (see `fedlayer.memory`).

    Only entry points call it (fedlayer's ClientApp handlers, the benchmark's plain workers): the
    process is theirs to tune.
    """
    torch.set_num_threads(cfg.simulation.torch_threads)
    if cfg.simulation.keep_freed_memory:
        keep_freed_memory()


@functools.lru_cache(maxsize=4)
def _dataset(
    spec: str,
    data_dir: str,
    download: bool,
    seed: int,
    columns: tuple[str, str, str],
    windows: tuple[int, int, int, float],
) -> Dataset:
    input_column, label_column, partition_by = columns
    seq_len, stride, min_lines, test_fraction = windows
    return load_dataset(
        spec,
        data_dir=data_dir or None,
        download=download,
        seed=seed,
        input_column=input_column,
        label_column=label_column,
        partition_by=partition_by,
        seq_len=seq_len,
        stride=stride,
        min_lines=min_lines,
        test_fraction=test_fraction,
    )


def dataset_for(cfg: Config) -> Dataset:
    """The config's dataset (a built-in name or a spec), loaded once per process."""
    data = cfg.data
    columns = (data.input_column, data.label_column, data.partition_by)
    windows = (data.seq_len, data.stride, data.min_lines, data.test_fraction)
    return _dataset(data.dataset, data.data_dir, data.download, cfg.seed, columns, windows)


def data_shape(cfg: Config) -> tuple[tuple[int, ...], int, str]:
    """(input_shape, num_classes, task) of the config's dataset, as `model_for` takes them: a registered image
    dataset's without loading it (`DATASET_SPECS`; all classification), any other's from the loaded data."""
    if cfg.data.dataset in DATASET_SPECS:
        return (*DATASET_SPECS[cfg.data.dataset], CLASSIFICATION)
    data = dataset_for(cfg)
    return data.input_shape, data.num_classes, data.task


_PARTITIONS: dict[str, Partitions] = {}


@functools.cache
def _splitting_code() -> bytes:
    """The partitioning module's source, read once per process (keys the disk cache to this code)."""
    from fedlayer.data import partition

    return Path(partition.__file__).read_bytes()


def _partitions_key(cfg: Config, dataset: Dataset) -> str:
    """What the partitions depend on: the data section, the clients, the seed, the splitting code and the
    data split itself, the train labels and natural groups (so a user's edited dataset, same spec, never
    reuses the partitions of its earlier version; inputs do not matter, the partitions are indices)."""
    inputs = json.dumps([cfg.to_dict()["data"], cfg.federation.clients, cfg.seed], sort_keys=True)
    return hashlib.sha256(inputs.encode() + _splitting_code() + _split_data_digest(dataset)).hexdigest()[:20]


@functools.lru_cache(maxsize=4)
def _split_data_digest(dataset: Dataset) -> bytes:
    """sha256 of the train labels and group ids, once per loaded dataset (clients ask for every message)."""
    digest = hashlib.sha256(dataset.train_y.numpy().astype("<i8").tobytes())
    if dataset.groups is not None:
        digest.update(np.unique(dataset.groups, return_inverse=True)[1].astype("<i8").tobytes())
    return digest.digest()


def cache_dir() -> Path:
    """Where computed partitions are kept between processes (`FEDLAYER_CACHE`, else ~/.cache/fedlayer)."""
    return Path(os.environ.get("FEDLAYER_CACHE") or Path.home() / ".cache" / "fedlayer")


def partitions_for(cfg: Config) -> Partitions:
    """The config's partitions: from this process's memory, the disk cache, or computed (and cached).

    Deployed ClientApps start a fresh process per message; the disk cache spares each of them the
    partitioning (a hash check guards against a damaged file). The dataset is loaded first, as the
    key covers its labels (every caller needs the dataset anyway).
    """
    dataset = dataset_for(cfg)
    key = _partitions_key(cfg, dataset)
    if key not in _PARTITIONS:
        path = cache_dir() / "partitions" / f"{key}.json"
        try:
            _PARTITIONS[key] = Partitions.load(path)
        except (FedlayerError, OSError):
            _PARTITIONS[key] = partitions_from_config(cfg, dataset)
            with contextlib.suppress(OSError):
                _PARTITIONS[key].save(path)
    return _PARTITIONS[key]


def client_data(cfg: Config, partition_id: int) -> ClientData:
    """The local train and test split of one client (its local test part from the global train set, or, where
    the partitions say so, from the global test set: `Partitions.local_test`)."""
    data = dataset_for(cfg)
    partitions = partitions_for(cfg)
    part = partitions.clients[partition_id]
    train = torch.as_tensor(part.train_indices, dtype=torch.long)
    test = torch.as_tensor(part.test_indices, dtype=torch.long)
    test_x, test_y = (data.test_x, data.test_y) if partitions.local_test == TEST_SET else (data.train_x, data.train_y)
    return ClientData(data.train_x[train], data.train_y[train], test_x[test], test_y[test])


def global_test_set(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The global test set, subsampled (seeded) when `data.max_test_samples` asks for it."""
    data = dataset_for(cfg)
    return subsample(data.test_x, data.test_y, cfg.data.max_test_samples, cfg.seed)


def subsample(x: torch.Tensor, y: torch.Tensor, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded subset of `count` rows (all rows when count is 0 or larger than the set)."""
    if count <= 0 or count >= len(x):
        return x, y
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=generator)[:count].sort().values
    return x[idx], y[idx]


def new_model(cfg: Config, *, seed: int | None = None) -> torch.nn.Module:
    """The config's model for its dataset, initialised from `seed` (default: the config's seed, the global
    model every client starts from unless `federation.init` says otherwise)."""
    data = dataset_for(cfg)
    return model_for(cfg, data.input_shape, data.num_classes, data.task, seed=seed)


def client_initial_state(cfg: Config, partition: int, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Where client `partition` starts under `federation.init` = "per-client" (its own seeded initialisation)
    or "checkpoints" (its checkpoint, fitted to `model`, a model of the run's architecture left unchanged).

    Raises
    ------
    ConfigError
        With `federation.init` = "same": every client starts from the global model then.
    CheckpointError
        A checkpoint that is missing or does not fit the model.
    """
    fed = cfg.federation
    if fed.init == "per-client":
        return new_model(cfg, seed=client_init_seed(cfg.seed, partition)).state_dict()
    if fed.init == "checkpoints":
        source = fed.init_checkpoints[partition]
        state = hf_checkpoint_state(model, source)
        state = read_state_dict(source) if state is None else state
        return fit_state(model, state, what=f"federation.init_checkpoints[{partition}] ({source})")
    raise ConfigError(f"federation.init = {fed.init!r}: every client starts from the global model")


def model_for(
    cfg: Config,
    input_shape: tuple[int, ...],
    num_classes: int,
    task: str = CLASSIFICATION,
    *,
    seed: int | None = None,
) -> torch.nn.Module:
    """The config's model for data of this shape and task (`fedlayer.task_kinds.TASKS`; a language task's
    num_classes is its vocabulary size): the one place a config becomes a model (`new_model`, and the
    benchmarks and plots that know the shape without loading the data, `model_for(cfg, *data_shape(cfg))`).

    Seeded from `seed` (default: the config's seed); with `data.resize` the model is built for resize x resize
    images and resizes what it is given.
    """
    size = cfg.data.resize
    if size:
        if len(input_shape) != 3:
            raise ConfigError(
                f"config key 'data.resize': {size} resizes images, but the data's inputs have shape "
                f"{tuple(input_shape)}"
            )
        input_shape = (input_shape[0], size, size)
    torch.manual_seed(cfg.seed if seed is None else seed)
    model = build_model(
        cfg.model.name, input_shape, num_classes, task=task, norm=cfg.model.norm, options=cfg.model.options
    )
    return fit_input(model, size=size) if size else model


def train_settings(
    cfg: Config, partition: int, *, proximal_mu: float | None = None, mode: str = "standard"
) -> TrainSettings:
    """How client `partition` trains locally, from `cfg.federation` (its own learning rate when
    `lr_per_client` gives one; the server may send its own `proximal_mu` and `mode`)."""
    fed = cfg.federation
    return TrainSettings(
        epochs=fed.local_epochs,
        batch_size=fed.batch_size,
        optimizer=fed.optimizer,
        lr=fed.lr_per_client[partition] if fed.lr_per_client else fed.lr,
        momentum=fed.momentum,
        weight_decay=fed.weight_decay,
        proximal_mu=fed.proximal_mu if proximal_mu is None else proximal_mu,
        mode=mode,
        head_epochs=fed.head_epochs,
    )


def head_parameter_names(model: torch.nn.Module) -> list[str]:
    """Parameter names of the classifier head (FedRep / FedBABU train it separately)."""
    params = {n for n, _ in model.named_parameters()}
    head: list[Layer] = select_layers(model_layers(model), "head")
    return [k for layer in head for k in layer.keys if k in params]
