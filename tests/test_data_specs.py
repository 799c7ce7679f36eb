"""Dataset specs: a user's dataset callable, a local Hugging Face dataset and the natural partition, end to end
and on every command, and every bad input as one clear error (exit 2) before anything is written."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fedlayer.simulation
import fedlayer.task
from fedlayer.checkpoints import save_checkpoint
from fedlayer.cli import main
from fedlayer.config import load_config
from fedlayer.data import Partitions, load_dataset, make_partitions
from fedlayer.data.partition import METHODS, partitions_from_config
from fedlayer.errors import DataError, FedlayerError
from fedlayer.models import build_model
from fedlayer.task import dataset_for, partitions_for

WRITERS = ("ann", "bob", "cid")
SMALL = """\
seed = 0
[model]
name = "mlp"
[federation]
clients = 3
rounds = 2
batch_size = 32
lr = 0.1
[analysis]
samples = 32
alphas = 3
"""
USER_FILE = """\
import numpy as np
from sklearn.datasets import load_digits


def load(data_dir=None, seed=0):
    bunch = load_digits()
    x = (bunch.images / 16.0).reshape(-1, 1, 8, 8)[:600]
    y = bunch.target[:600]
    return {
        "train_x": x[:500], "train_y": y[:500], "test_x": x[500:], "test_y": y[500:],
        "num_classes": 10, "groups": np.array(["ann", "bob", "cid"])[np.arange(500) % 3],
    }
"""


@pytest.fixture
def user_file(tmp_path) -> Path:
    path = tmp_path / "work" / "mydata.py"
    path.parent.mkdir()
    path.write_text(USER_FILE)
    return path


@pytest.fixture
def hf_folder(tmp_path) -> Path:
    """A save_to_disk folder: 8x8 grayscale PIL images, a ClassLabel and a writer column, a train split only."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    n = 90
    labels = np.arange(n) % 3
    pixels = rng.integers(0, 60, (n, 8, 8)) + (labels * 80)[:, None, None]  # classes differ in brightness
    table = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(p.astype(np.uint8)) for p in pixels],
            "label": labels.tolist(),
            "writer": [WRITERS[i % 3] for i in range(n)],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=["dark", "mid", "bright"]),
                "writer": datasets.Value("string"),
            }
        ),
    )
    path = tmp_path / "hf-writers"
    datasets.disable_progress_bars()
    datasets.DatasetDict({"train": table}).save_to_disk(str(path))
    return path


def write_config(tmp_path: Path, data: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(SMALL + "[data]\n" + data)
    return path


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# -- each spec kind end to end --------------------------------------------------------------------------------


def test_a_user_file_dataset_runs_two_rounds_of_fedper_with_analysis(tmp_path, user_file, in_process, monkeypatch):
    monkeypatch.chdir(user_file.parent)  # the spec is relative to the working directory
    config = write_config(tmp_path, 'dataset = "mydata.py:load"\npartition = "iid"\n[strategy]\nname = "fedper"\n')
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 0
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2]
    barriers = pd.read_parquet(out / "barriers.parquet")
    assert sorted(barriers["round"].unique()) == [1, 2]
    saved = load_config(out / "config.toml")
    assert saved.data.dataset == f"{user_file.resolve()}:load"  # absolute: resumable from anywhere
    parts = Partitions.load(out / "partitions.json")
    assert parts.num_samples == 500 and parts.dataset == saved.data.dataset


def test_a_local_hf_folder_runs_two_rounds_with_the_natural_partition(tmp_path, hf_folder, in_process):
    config = write_config(
        tmp_path,
        f'dataset = "hf:{hf_folder}"\npartition = "natural"\npartition_by = "writer"\n[strategy]\nname = "fedper"\n',
    )
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 0
    assert sorted(pd.read_parquet(out / "barriers.parquet")["round"].unique()) == [1, 2]
    data = load_dataset(f"hf:{hf_folder}", partition_by="writer")
    parts = Partitions.load(out / "partitions.json")
    owners = [set(data.groups[np.concatenate([c.train_indices, c.test_indices])]) for c in parts.clients]
    assert owners == [{"ann"}, {"bob"}, {"cid"}]  # one writer per client, in sorted order
    assert sum(len(c.train_indices) + len(c.test_indices) for c in parts.clients) == parts.num_samples == 72


def test_compare_runs_every_strategy_on_a_user_file_dataset(tmp_path, user_file, in_process, capsys):
    config = write_config(tmp_path, f'dataset = "{user_file}:load"\npartition = "natural"\n')
    args = ["compare", str(config), "--strategies", "fedavg,fedper", "--set", "federation.rounds=1"]
    code, output = run_cli([*args, "--out", str(tmp_path / "cmp")], capsys)
    assert code == 0, output
    table = pd.read_parquet(tmp_path / "cmp" / "comparison.parquet")
    assert set(table["strategy"]) == {"fedavg", "fedper"} and set(table["round"]) == {0, 1}


@pytest.mark.slow
def test_a_user_file_dataset_on_the_ray_simulation_engine(tmp_path, user_file, monkeypatch, capsys):
    """Ray's workers load the user's file by the absolute path the run's config names."""
    monkeypatch.chdir(user_file.parent)
    config = write_config(tmp_path, 'dataset = "mydata.py:load"\npartition = "natural"\n[strategy]\nname = "fedper"\n')
    code, output = run_cli(["run", str(config), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, output
    assert sorted(pd.read_parquet(tmp_path / "out" / "barriers.parquet")["round"].unique()) == [1, 2]


def test_a_hf_image_folder_is_read_with_found_columns_a_fixed_test_split_and_standardised(hf_folder):
    data = load_dataset(f"hf:{hf_folder}")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 3
    assert data.class_names == ("dark", "mid", "bright") and data.groups is None
    assert (len(data.train_y), len(data.test_y)) == (72, 18)  # a 20 % test split of the only split
    assert torch.bincount(data.test_y).tolist() == [6, 6, 6]  # stratified
    assert abs(float(data.train_x.mean())) < 1e-4 and abs(float(data.train_x.std()) - 1) < 1e-2
    again = load_dataset(f"hf:{hf_folder}", partition_by="writer")
    assert torch.equal(data.test_x, again.test_x)  # the same split every time


def test_hf_parquet_and_csv_files_give_tabular_features_and_relabelled_classes(tmp_path):
    import datasets

    rng = np.random.default_rng(1)
    species = np.array(["setosa", "virginica"])[np.arange(40) % 2]
    frame = {"length": rng.random(40).tolist(), "width": rng.random(40).tolist(), "species": species.tolist()}
    table = datasets.Dataset.from_dict(frame)
    table.to_parquet(str(tmp_path / "plants.parquet"))
    table.to_csv(str(tmp_path / "plants.csv"), index=False)
    for name in ("plants.parquet", "plants.csv"):
        data = load_dataset(f"hf:{tmp_path / name}", label_column="species")
        assert data.input_shape == (2,) and data.num_classes == 2 and data.class_names == ("setosa", "virginica")
        assert len(data.train_y) + len(data.test_y) == 40


def test_hf_train_and_test_splits_are_kept(tmp_path):
    import datasets

    def split(n):
        return datasets.Dataset.from_dict({"pixels": np.ones((n, 3, 4, 4)).tolist(), "label": [0, 1] * (n // 2)})

    datasets.disable_progress_bars()
    datasets.DatasetDict({"train": split(10), "test": split(4)}).save_to_disk(str(tmp_path / "two"))
    data = load_dataset(f"hf:{tmp_path / 'two'}")
    assert (len(data.train_y), len(data.test_y), data.input_shape) == (10, 4, (3, 4, 4))


def test_a_callable_may_return_torch_datasets_in_a_UserData(tmp_path):
    (tmp_path / "tds.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import TensorDataset
            from fedlayer.data import UserData

            def load(seed):
                g = torch.Generator().manual_seed(seed)
                def part(n):
                    return TensorDataset(torch.rand(n, 5, generator=g), torch.arange(n) % 4)
                return UserData(num_classes=4, train=part(40), test=part(12))
            """
        )
    )
    data = load_dataset(f"{tmp_path / 'tds.py'}:load", seed=3)
    assert (data.train_x.shape, data.test_x.shape, data.num_classes) == ((40, 5), (12, 5), 4)
    assert data.train_y.dtype == torch.int64 and data.groups is None


def test_a_module_spec_is_imported_from_the_path(tmp_path, monkeypatch, user_file):
    (user_file.parent / "userpkg").mkdir()
    (user_file.parent / "userpkg" / "__init__.py").write_text("")
    (user_file.parent / "userpkg" / "digitsdata.py").write_text(USER_FILE)
    monkeypatch.syspath_prepend(str(user_file.parent))
    assert len(load_dataset("userpkg.digitsdata:load").train_y) == 500


# -- partitions ------------------------------------------------------------------------------------------------


def test_the_natural_split_equals_flwr_datasets_natural_id_partitioner():
    import datasets
    from flwr_datasets.partitioner import NaturalIdPartitioner

    rng = np.random.default_rng(0)
    groups = rng.choice(["u7", "u10", "a", "zz", "m"], size=200)
    labels = rng.integers(0, 4, 200)
    ours = make_partitions(labels, 5, "natural", seed=0, test_fraction=0.0, groups=groups)
    theirs = NaturalIdPartitioner(partition_by="group")
    theirs.dataset = datasets.Dataset.from_dict({"group": groups.tolist(), "row": list(range(200))})
    expected = [sorted(theirs.load_partition(i)["row"]) for i in range(theirs.num_partitions)]
    assert [c.train_indices.tolist() for c in ours.clients] == expected


def test_a_natural_split_with_fewer_clients_than_groups_takes_a_seeded_choice_of_whole_groups():
    groups = np.repeat(np.arange(6), 10)
    labels = np.arange(60) % 3
    first, again, other = (
        make_partitions(labels, 3, "natural", seed=s, test_fraction=0.0, groups=groups) for s in (0, 0, 1)
    )
    chosen = [sorted(set(groups[c.train_indices])) for c in first.clients]
    assert all(len(g) == 1 for g in chosen) and chosen == sorted(chosen)  # one group each, in sorted order
    assert first.content_hash == again.content_hash and first.params["groups"] == 6
    assert [set(groups[c.train_indices]) for c in other.clients] != [set(g) for g in chosen]


@pytest.mark.parametrize("method", METHODS)
def test_every_scheme_works_on_a_user_dataset(tmp_path, user_file, method):
    cfg = load_config(None, [f"data.dataset={user_file}:load", f"data.partition={method}", "federation.clients=3"])
    parts = partitions_from_config(cfg, dataset_for(cfg))
    assert parts.num_clients == 3 and all(len(c.train_indices) for c in parts.clients)


def test_an_edited_dataset_file_does_not_reuse_its_cached_partitions(tmp_path, user_file, monkeypatch):
    monkeypatch.setenv("FEDLAYER_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, [f"data.dataset={user_file}:load", "data.partition=shard", "federation.clients=3"])
    before = partitions_for(cfg)
    user_file.write_text(USER_FILE.replace("y = bunch.target[:600]", "y = bunch.target[:600][::-1].copy()"))
    fedlayer.task._dataset.cache_clear()  # a new process would load the file afresh
    after = partitions_for(cfg)
    assert before.content_hash != after.content_hash
    assert len(list((tmp_path / "cache" / "partitions").glob("*.json"))) == 2


def test_the_partitions_command_splits_a_user_dataset(tmp_path, user_file, capsys):
    config = write_config(tmp_path, f'dataset = "{user_file}:load"\npartition = "natural"\n')
    code, output = run_cli(["partitions", str(config), "--out", str(tmp_path / "parts")], capsys)
    assert code == 0, output
    assert (tmp_path / "parts" / "partitions.json").exists() and "natural" in output
    assert Partitions.load(tmp_path / "parts" / "partitions.json").params["groups"] == 3


def test_the_barrier_command_evaluates_on_a_hf_dataset(tmp_path, hf_folder, capsys):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(build_model("mlp", (1, 8, 8), 3).state_dict(), tmp_path / f"m{seed}.safetensors"))
    args = ["barrier", *map(str, paths), "--model", "mlp", "--dataset", f"hf:{hf_folder}", "--alphas", "3"]
    code, output = run_cli([*args, "--groups", "full", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, output
    assert (tmp_path / "b" / "barriers.parquet").exists()


# -- bad input: one clear error, exit 2, nothing written --------------------------------------------------------

BAD_FILES = {
    "raises.py": "def load():\n    raise ValueError('no data here')\n",
    "wrong_type.py": "def load():\n    return [1, 2, 3]\n",
    "mismatched.py": (
        "import numpy as np\n"
        "def load():\n"
        "    return {'train_x': np.zeros((10, 4)), 'train_y': np.zeros(9, int), 'test_x': np.zeros((3, 4)),\n"
        "            'test_y': np.zeros(3, int), 'num_classes': 2}\n"
    ),
    "bad_labels.py": (
        "import numpy as np\n"
        "def load():\n"
        "    return {'train_x': np.zeros((4, 4)), 'train_y': np.array([0, 1, 12, 1]), 'test_x': np.zeros((2, 4)),\n"
        "            'test_y': np.array([0, 1]), 'num_classes': 10}\n"
    ),
    "typo.py": "def load():\n    return {'num_classes': 2, 'train_x': [[0.0]], 'train_y': [0], 'test_x': [[0.0]],"
    " 'test_y': [0], 'group': [1]}\n",
    "shapes.py": (
        "import numpy as np\n"
        "def load():\n"
        "    return {'train_x': np.zeros((4, 4)), 'train_y': np.zeros(4, int), 'test_x': np.zeros((2, 5)),\n"
        "            'test_y': np.zeros(2, int), 'num_classes': 2}\n"
    ),
}


@pytest.mark.parametrize(
    ("dataset", "settings", "message"),
    [
        ("nope/missing.py:load", [], "dataset file not found: /"),
        ("no_such_pkg_xyz.data:load", [], "cannot import dataset module 'no_such_pkg_xyz.data'"),
        ("{dir}/raises.py:lode", [], "no callable 'lode' in"),
        ("{dir}/raises.py:load", [], "raised ValueError: no data here"),
        ("{dir}/wrong_type.py:load", [], "returned list; expected a fedlayer.data.UserData"),
        ("{dir}/mismatched.py:load", [], "train_x has 10 rows but train_y has 9 labels"),
        ("{dir}/bad_labels.py:load", [], "train_y holds label 12, outside 0..9"),
        ("{dir}/typo.py:load", [], "unknown key(s) group; valid keys: num_classes"),
        ("{dir}/shapes.py:load", [], "train_x samples have shape (4,) but test_x samples (5,)"),
        ("hf:someorg/not-cached-xyz", [], "'someorg/not-cached-xyz' is neither a local path"),
        ("hf:./no/such/folder", [], "does not exist"),
        ("digits", ["data.partition=natural"], "dataset 'digits' has none: name the column holding them with"),
        ("{user}", ["data.partition=natural", "federation.clients=4"], "4 clients but the data has only 3 natural"),
        ("hf:{hf}", ["data.label_column=nope"], "no column 'nope' (data.label_column); columns: image, label, writer"),
        ("hf:{hf}", ["data.partition=natural"], "has none: name the column holding them with data.partition_by"),
        ("digits", ["data.partition_by=writer"], "data.partition_by = 'writer' only applies to Hugging Face datasets"),
        ("imagenet", [], "expected one of 'digits'"),
    ],
)  # fmt: skip
def test_bad_data_specs_fail_before_anything_is_written(
    tmp_path, capsys, user_file, hf_folder, in_process, dataset, settings, message
):
    for name, text in BAD_FILES.items():
        (tmp_path / name).write_text(text)
    config = write_config(tmp_path, "")
    dataset = dataset.format(dir=tmp_path, user=f"{user_file}:load", hf=hf_folder)
    overrides = [arg for setting in [f"data.dataset={dataset}", *settings] for arg in ("--set", setting)]
    out = tmp_path / "out"
    code, output = run_cli(["run", str(config), *overrides, "--out", str(out)], capsys)
    assert code == 2, output
    assert "Traceback" not in output and output.count("fedlayer: error:") == 1, output
    assert message in " ".join(output.split()), output
    assert not out.exists()


def test_an_uncached_hub_id_fails_without_touching_the_network(monkeypatch):
    """Whatever HF_HUB_OFFLINE said when `datasets` was imported, an uncached id never waits for the hub."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was contacted")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(DataError, match="neither a local path .* nor in the local Hugging Face cache"):
        load_dataset("hf:someorg/uncached-xyz")
    assert datasets.config.HF_HUB_OFFLINE is False  # the flag is restored


def test_a_bad_spec_form_is_a_config_error_listing_the_forms():
    with pytest.raises(FedlayerError, match=r"expected one of 'digits'.*'hf:<dataset id or local path>'"):
        load_config(None, ["data.dataset=file.py:"])
