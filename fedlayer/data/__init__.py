"""Real datasets (offline first), datasets named by a spec, and seeded non-IID partitions of them into clients.

The registries: `DATASETS` (the built-in dataset names: the image datasets, with their shapes in
`DATASET_SPECS`, and Shakespeare's plays as language datasets, `fedlayer.data.shakespeare`), the specs
`load_dataset` also accepts ("hf:<id or path>", "file.py:callable", "module:callable"; see
`fedlayer.data.specs`) and `PARTITION_SCHEMES` (the schemes `make_partitions` accepts).
"""

from fedlayer.data.datasets import DATASET_SPECS, DATASETS, Dataset
from fedlayer.data.partition import METHODS as PARTITION_SCHEMES
from fedlayer.data.partition import ClientPartition, Partitions, make_partitions, partitions_from_config
from fedlayer.data.specs import load_dataset
from fedlayer.data.user import UserData

__all__ = [
    "DATASETS",
    "DATASET_SPECS",
    "PARTITION_SCHEMES",
    "ClientPartition",
    "Dataset",
    "Partitions",
    "UserData",
    "load_dataset",
    "make_partitions",
    "partitions_from_config",
]
