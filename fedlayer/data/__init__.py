"""Real datasets (offline first) and seeded non-IID partitions of them into clients."""

from fedlayer.data.datasets import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "load_dataset"]
