"""`fedlayer barrier` and the safetensors checkpoints it reads: success and every error path."""

import re

import pandas as pd
import pytest
import torch
from pngs import is_figure

from fedlayer.checkpoints import checkpoint_metadata, load_checkpoint, save_checkpoint
from fedlayer.cli import main
from fedlayer.errors import FedlayerError
from fedlayer.models import build_model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(build_model("cnn", (1, 8, 8), 10).state_dict(), folder / f"m{seed}.safetensors"))
    torch.manual_seed(3)
    paths.append(save_checkpoint(build_model("mlp", (1, 8, 8), 10).state_dict(), folder / "mlp.safetensors"))
    return paths


def test_checkpoints_round_trip_with_metadata_and_tied_weights(tmp_path):
    shared = torch.randn(3, 4)
    state = {"embed.weight": shared, "head.weight": shared, "step": torch.tensor(7)}
    path = save_checkpoint(state, tmp_path / "sub" / "tied.safetensors", metadata={"round": 3})
    loaded = load_checkpoint(path)
    assert set(loaded) == set(state) and torch.equal(loaded["head.weight"], shared)
    assert checkpoint_metadata(path) == {"round": "3"}
    assert [p.name for p in path.parent.iterdir()] == ["tied.safetensors"]  # no temporary file left


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", "truncated"])
def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path, checkpoints, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(checkpoints[0].read_bytes()[:100] if content == "truncated" else content)
    with pytest.raises(FedlayerError, match="not a valid safetensors file"):
        load_checkpoint(path)


def _run(tmp_path, a, b, *extra):
    return main(["barrier", str(a), str(b), "--model", "cnn", "--dataset", "digits", "--samples", "48",
                 "--out", str(tmp_path / "out"), *extra])  # fmt: skip


def test_a_successful_run_writes_tables_and_figures(tmp_path, checkpoints, capsys):
    code = _run(tmp_path, checkpoints[0], checkpoints[1], "--groups", "layers,full,deep,window:2",
                "--alphas", "0,0.25,1", "--random-directions", "1")  # fmt: skip
    assert code == 0
    out = tmp_path / "out"
    curves, table = pd.read_parquet(out / "curves.parquet"), pd.read_parquet(out / "barriers.parquet")
    assert sorted(curves["alpha"].unique()) == [0.0, 0.25, 0.5, 1.0]
    assert set(table["kind"]) == {"layer", "full", "deep", "window", "random-direction"}
    for figure in ("barriers.png", "curves.png", "directions.png"):
        assert is_figure(out / figure)
    printed = capsys.readouterr().out
    assert "loss mid" in printed and "conv1" in printed and "curves.parquet" in printed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(a="missing.safetensors"), "missing.safetensors not found"),
        (dict(a="corrupt"), "not a valid safetensors file"),
        (
            dict(b="mlp"),
            r"does not fit the model; missing keys: conv1.weight.*unexpected keys: fc3.bias, fc3.weight; "
            r"shape mismatch: fc1.weight \(200, 64\) \(model: \(512, 256\)\)",
        ),
        (dict(extra=["--norm", "bn"]), "missing keys: norm1.weight"),
        (dict(extra=["--model", "mamba"]), "unknown model 'mamba'; valid choices: mlp, cnn"),
        (dict(extra=["--dataset", "imagenet"]), "unknown dataset 'imagenet'"),
        (dict(extra=["--groups", "layers,nosuch"]), "'nosuch' matches no layer; layers: conv1, conv2"),
        (dict(extra=["--groups", "window:0"]), "bad window width"),
        (dict(extra=["--alphas", "1"]), "at least 2"),
        (dict(extra=["--alphas", "0,2"]), r"in \[0, 1\]"),
        (dict(extra=["--alphas", "ten"]), "bad --alphas 'ten'"),
        (dict(extra=["--bn", "never"]), "BatchNorm policy 'never'"),
    ],
)
def test_error_paths_exit_2_with_a_clear_message(tmp_path, checkpoints, capsys, change, message):
    a, b = checkpoints[0], checkpoints[1]
    if change.get("a") == "corrupt":
        a = tmp_path / "corrupt.safetensors"
        a.write_bytes(b"\x00" * 64)
    elif "a" in change:
        a = tmp_path / change["a"]
    if change.get("b") == "mlp":
        b = checkpoints[2]
    extra = change.get("extra", [])
    if "--model" in extra or "--dataset" in extra:  # these flags replace the defaults of _run
        args = ["barrier", str(a), str(b), "--model", "cnn", "--dataset", "digits", "--out", str(tmp_path / "o")]
        args[args.index(extra[0]) + 1] = extra[1]
        code = main(args)
    else:
        code = _run(tmp_path, a, b, *extra)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("fedlayer: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "curves.parquet").exists()
