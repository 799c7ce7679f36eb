"""Real datasets (offline first) and seeded non-IID partitions of them into clients.

The registries: `DATASETS` (the dataset names `load_dataset` accepts, with their shapes in
`DATASET_SPECS`) and `PARTITION_SCHEMES` (the schemes `make_partitions` accepts).
"""

from fedlayer.data.datasets import DATASET_SPECS, DATASETS, Dataset, load_dataset
from fedlayer.data.partition import METHODS as PARTITION_SCHEMES
from fedlayer.data.partition import ClientPartition, Partitions, make_partitions, partitions_from_config

__all__ = [
    "DATASETS",
    "DATASET_SPECS",
    "PARTITION_SCHEMES",
    "ClientPartition",
    "Dataset",
    "Partitions",
    "load_dataset",
    "make_partitions",
    "partitions_from_config",
]
