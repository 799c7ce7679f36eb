"""Checkpoints from elsewhere: PyTorch state dicts and Hugging Face folders, read without unpickling objects."""

import json
import os
import re

import pandas as pd
import pytest
import torch
from torch import nn

from fedlayer.analysis import interpolation_curves
from fedlayer.checkpoints import fit_state, read_state_dict, save_checkpoint
from fedlayer.cli import main
from fedlayer.errors import CheckpointError
from fedlayer.models import build_model


def _cnn(seed):
    torch.manual_seed(seed)
    return build_model("cnn", (1, 8, 8), 10)


@pytest.fixture(scope="module")
def states():
    return [_cnn(seed).state_dict() for seed in (1, 2)]


def _hf_folder(state, folder, shards=1):
    """What save_pretrained writes: config.json and model.safetensors, or shards and their index."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "test"}))
    if shards == 1:
        save_checkpoint(state, folder / "model.safetensors")
        return folder
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: state[key] for key in keys[i::shards]}
        save_checkpoint(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _hf_bin(state, folder):
    folder.mkdir(parents=True)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def _save(obj, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


WRITERS = {
    "pt": lambda state, folder: _save(state, folder / "m.pt"),
    "pth-nested": lambda state, folder: _save(
        {"epoch": 3, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, folder / "m.pth"
    ),
    "hf-folder": lambda state, folder: _hf_folder(state, folder / "hf"),
    "hf-sharded": lambda state, folder: _hf_folder(state, folder / "hf", shards=2),
    "hf-bin": lambda state, folder: _hf_bin(state, folder / "hf"),
}


def _barrier(a, b, out, model="cnn"):
    return main(["barrier", str(a), str(b), "--model", model, "--dataset", "digits", "--samples", "48",
                 "--groups", "layers,full", "--alphas", "3", "--out", str(out)])  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory, states):
    folder = tmp_path_factory.mktemp("reference")
    paths = [save_checkpoint(state, folder / f"{name}.safetensors") for name, state in zip("ab", states, strict=True)]
    assert _barrier(*paths, folder / "out") == 0
    return pd.read_parquet(folder / "out" / "curves.parquet")


@pytest.mark.parametrize("fmt", WRITERS)
def test_every_format_gives_the_safetensors_curves_through_fedlayer_barrier(tmp_path, states, reference, fmt, capsys):
    paths = [WRITERS[fmt](state, tmp_path / name) for name, state in zip("ab", states, strict=True)]
    assert _barrier(*paths, tmp_path / "out") == 0
    curves = pd.read_parquet(tmp_path / "out" / "curves.parquet")
    pd.testing.assert_frame_equal(curves, reference)
    assert curves.attrs == {"engine": "graph", "engine_fallback": ""}
    assert "engine: fast path (torch.fx graph" in capsys.readouterr().out


class Wrapper(nn.Module):
    """A model built around another one, as a Lightning module is: its keys gain 'model.'."""

    def __init__(self):
        super().__init__()
        self.model = _cnn(0)

    def forward(self, x):
        return self.model(x)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(4, 4, bias=False), nn.Linear(4, 4)
        self.head.weight = self.embed.weight


def test_keys_are_mapped_across_a_wrapper_prefix_either_way(states):
    wrapped = fit_state(Wrapper(), states[0])
    assert list(wrapped) == list(Wrapper().state_dict())
    assert all(torch.equal(wrapped["model." + key], value) for key, value in states[0].items())
    parallel = {"module." + key: value for key, value in states[0].items()}  # nn.DataParallel's keys
    assert fit_state(_cnn(0), parallel).keys() == states[0].keys()


def test_the_engine_maps_keys_as_fedlayer_barrier_does(states):
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    plain = interpolation_curves(_cnn(0), *states, (x, y), groups="full", alphas=3)
    wrapped = interpolation_curves(Wrapper(), *states, (x, y), groups="full", alphas=3)
    assert wrapped["loss"].tolist() == plain["loss"].tolist()


def test_a_tied_weight_stored_once_is_filled_from_its_twin(tmp_path):
    state = {"model.embed.weight": torch.randn(4, 4), "model.head.bias": torch.randn(4)}  # save_pretrained drops one
    folder = _hf_folder(state, tmp_path / "hf")
    fitted = fit_state(Tied(), read_state_dict(folder))
    assert set(fitted) == {"embed.weight", "head.weight", "head.bias"}
    assert fitted["head.weight"] is fitted["embed.weight"]


def test_a_folder_of_another_model_names_the_keys_and_shapes(tmp_path, states, capsys):
    torch.manual_seed(3)
    other = _hf_folder(build_model("mlp", (1, 8, 8), 10).state_dict(), tmp_path / "mlp")
    assert _barrier(WRITERS["pt"](states[0], tmp_path), other, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert re.search(
        r"checkpoint .*mlp \(model 'cnn', norm 'none'\) does not fit the model; missing keys: conv1.weight.*"
        r"unexpected keys: fc3.bias, fc3.weight; shape mismatch: fc1.weight \(200, 64\) \(model: \(512, 256\)\)",
        err,
    ), err


def _write(path, data):
    path.write_bytes(data)
    return path


def _folder(tmp_path, *files):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in files:
        (folder / name).write_text("{}")
    return folder


BAD = {
    "not a state dict": (
        lambda tmp_path, state: _save([state["conv1.weight"]], tmp_path / "list.pt"),
        r"list.pt is not a state dict \(names to tensors\): it holds a list; "
        r"save a state dict instead: torch.save\(model.state_dict\(\), path\)",
    ),
    "a dict without tensors": (
        lambda tmp_path, state: _save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth"),
        r"meta.pth is not a state dict \(names to tensors\): it holds a dict of 'epoch' \(int\), 'lr' \(float\)",
    ),
    "two state dicts": (
        lambda tmp_path, state: _save({"model": state, "ema": state}, tmp_path / "two.pt"),
        r"two.pt holds several state dicts, under 'model', 'ema'; save the one to compare: "
        r"torch.save\(checkpoint\['model'\], path\)",
    ),
    "a pickled model": (
        lambda tmp_path, state: _save(_cnn(0), tmp_path / "model.pt"),
        r"model.pt holds pickled Python objects \(it holds fedlayer.models.\w+\): fedlayer reads PyTorch files "
        r"with torch.load\(weights_only=True\) and never unpickles arbitrary objects; "
        r"save a state dict instead: torch.save\(model.state_dict\(\), path\)",
    ),
    "a missing file": (lambda tmp_path, state: tmp_path / "missing.pt", r"checkpoint \S+missing.pt not found"),
    "a corrupt file": (
        lambda tmp_path, state: _write(tmp_path / "junk.bin", b"junk"),
        r"cannot read checkpoint \S+junk.bin: not a valid PyTorch file",
    ),
    "an unknown format": (
        lambda tmp_path, state: _write(tmp_path / "lightning.ckpt", b"junk"),
        r"lightning.ckpt: not a valid safetensors file .*; a checkpoint is a .safetensors file, "
        r"a PyTorch .pt/.pth/.bin state dict, a Hugging Face model folder or .hf:ID\[@REVISION\]. from the local "
        r"Hugging Face cache",
    ),
    "a folder without weights": (
        lambda tmp_path, state: _folder(tmp_path, "config.json", "tf_model.h5"),
        r"checkpoint folder \S+folder holds no model weights: expected a Hugging Face model folder with "
        r"model.safetensors, model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json; "
        r"it has config.json, tf_model.h5",
    ),
    "an empty folder": (lambda tmp_path, state: _folder(tmp_path), r"holds no model weights: .*; it has nothing"),
    "a bad shard index": (
        lambda tmp_path, state: _folder(tmp_path, "model.safetensors.index.json"),
        r"cannot read \S+model.safetensors.index.json: not a shard index with a weight_map",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_checkpoint_exits_2_with_a_clear_message(tmp_path, states, capsys, case):
    make, message = BAD[case]
    good = WRITERS["pt"](states[1], tmp_path)
    assert _barrier(make(tmp_path, states[0]), good, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("fedlayer: error: ") and re.search(message, err), err
    assert not (tmp_path / "out").exists()


class Payload:
    """What a malicious checkpoint holds: unpickling it would create a folder."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_malicious_pickle_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = _save({"weight": torch.zeros(2), "payload": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(it holds posix.mkdir\)"):
        read_state_dict(path)
    assert not marker.exists()
