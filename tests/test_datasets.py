"""Dataset registry: real digits and Fashion-MNIST, torchvision-format folders written here, offline errors."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fedlayer.data import DATASETS, load_dataset
from fedlayer.data import datasets as registry
from fedlayer.errors import FedlayerError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_user_data(monkeypatch, tmp_path):
    """Keep the user's FEDLAYER_DATA and download cache out of these tests."""
    monkeypatch.delenv("FEDLAYER_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _assert_normalised(x: torch.Tensor, tol: float) -> None:
    per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
    assert per_channel.mean(dim=1).abs().max() < tol
    assert (per_channel.std(dim=1) - 1).abs().max() < tol


def test_digits_loads_with_fixed_stratified_split():
    data = load_dataset("digits")
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.num_classes == 10 and data.input_shape == (1, 8, 8)
    assert set(data.test_y.tolist()) == set(range(10))
    assert data.test_y.bincount().min() >= 35  # stratified: every class ~36 times
    _assert_normalised(data.train_x, tol=0.02)
    assert load_dataset("digits") is data  # cached per process


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_loads_from_the_debian_package():
    data = load_dataset("fashion-mnist")
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert data.train_y.dtype == torch.int64 and data.train_y.bincount().tolist() == [6000] * 10
    assert data.source == str(FASHION_DIR.resolve())
    _assert_normalised(data.train_x, tol=0.01)


# --- tiny files in torchvision's formats -------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for i, (stem, array) in enumerate(arrays.items()):
        # mix plain and gzipped files: torchvision keeps either
        _write_idx(folder / (f"{stem}.gz" if gz or i % 2 else stem), array)
    return arrays


def _write_cifar(folder: Path, files: list[str], label_key: str, n: int, num_classes: int) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for name in files:
        entry = {
            "data": rng.integers(0, 256, (n, 3 * 32 * 32)).astype(np.uint8),
            label_key: (np.arange(n) % num_classes).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)


def test_mnist_reads_torchvision_raw_folder(tmp_path):
    arrays = _write_mnist(tmp_path / "MNIST" / "raw")
    data = load_dataset("mnist", data_dir=tmp_path)
    assert data.train_x.shape == (12, 1, 28, 28) and data.test_x.shape == (5, 1, 28, 28)
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    pixel = arrays["train-images-idx3-ubyte"][3, 4, 5]
    assert data.train_x[3, 0, 4, 5].item() == pytest.approx((pixel / 255 - 0.1307) / 0.3081, abs=1e-5)


def test_fashion_mnist_found_via_env_in_torchvision_layout(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    monkeypatch.setenv("FEDLAYER_DATA", str(tmp_path))
    data = load_dataset("fashion-mnist")
    assert data.train_x.shape == (12, 1, 28, 28)
    assert data.source == str((tmp_path / "FashionMNIST" / "raw").resolve())


def test_explicit_data_dir_comes_before_env(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "given" / "mnist", n_train=7)
    _write_mnist(tmp_path / "env" / "mnist", n_train=9)
    monkeypatch.setenv("FEDLAYER_DATA", str(tmp_path / "env"))
    assert len(load_dataset("mnist", data_dir=tmp_path / "given").train_y) == 7
    assert len(load_dataset("mnist").train_y) == 9


def test_cifar10_reads_python_batches(tmp_path):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    _write_cifar(tmp_path / "cifar-10-batches-py", files, "labels", n=4, num_classes=10)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0]
    green = first[1024 + 32 * 2 + 7]  # rows are R, G, B planes of 32x32
    assert data.train_x[0, 1, 2, 7].item() == pytest.approx((green / 255 - 0.4822) / 0.2435, abs=1e-5)


def test_cifar100_uses_fine_labels(tmp_path):
    _write_cifar(tmp_path / "cifar-100-python", ["train", "test"], "fine_labels", n=150, num_classes=100)
    data = load_dataset("cifar100", data_dir=tmp_path)
    assert data.num_classes == 100 and data.train_x.shape == (150, 3, 32, 32)
    assert data.train_y.max().item() == 99


def test_cifar_batch_with_foreign_objects_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    _write_cifar(folder, ["test"], "fine_labels", n=3, num_classes=100)
    with open(folder / "train", "wb") as f:
        pickle.dump({"data": Path("x"), "fine_labels": [0]}, f, protocol=2)
    with pytest.raises(FedlayerError, match="refusing to load pathlib"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_truncated_idx_file_is_an_error(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    _write_mnist(folder)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FedlayerError, match="truncated"):
        load_dataset("mnist", data_dir=tmp_path)


def test_missing_offline_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "system",)})
    with pytest.raises(FedlayerError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    message = str(err.value)
    assert str(tmp_path / "mine" / "FashionMNIST" / "raw") in message
    assert str(tmp_path / "system") in message
    for hint in ("apt-get install dataset-fashion-mnist", "data.data_dir", "FEDLAYER_DATA", "data.download"):
        assert hint in message


def test_unknown_dataset_lists_choices():
    with pytest.raises(FedlayerError) as err:
        load_dataset("imagenet")
    assert "'imagenet'" in str(err.value)
    assert all(name in str(err.value) for name in DATASETS)


def test_language_datasets_are_built_in_with_their_shape_set_by_options():
    assert set(registry.DATASETS) - set(registry.DATASET_SPECS) == set(registry.LANGUAGE_DATASETS)
    data = registry.load_builtin_dataset("shakespeare-corpus", seq_len=40, stride=20)
    assert data.input_shape == (40,) and data.train_x.shape[1] == 40 and data.train_y.dim() == 2
    assert torch.equal(data.train_x[1, :20], data.train_x[0, 20:])  # windows every 20 characters
