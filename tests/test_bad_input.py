"""Bad input, tried on purpose: every mistake gives one clear message, exit code 2, no traceback,
and leaves no run directory behind."""

import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlayer.checkpoints import save_checkpoint
from fedlayer.cli import main
from fedlayer.models import build_model

DIGITS = ["--set", "data.dataset=digits", "--set", "model.name=mlp", "--set", "federation.clients=3"]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_clean_failure(code, output, *fragments):
    assert code == 2, output
    assert "Traceback" not in output
    assert output.count("fedlayer: error:") == 1, output
    for fragment in fragments:
        assert fragment in output, output


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[data]\ndataset = "digits"\n[model]\nname = "mlp"\n[federation]\nclients = 3\n')
    return path


@FAST
@given(text=st.text(alphabet=string.printable, max_size=80))
def test_malformed_toml_is_a_clear_error(tmp_path, capsys, text):
    path = tmp_path / "bad.toml"
    path.write_text("[data\n" + text)
    out = tmp_path / "out"
    code, output = run_cli(["run", str(path), "--out", str(out)], capsys)
    assert_clean_failure(code, output, "is not valid TOML")
    assert not out.exists()


@FAST
@given(
    key=st.sampled_from(
        [
            "federation.rounds",
            "federation.clients",
            "federation.batch_size",
            "federation.local_epochs",
            "analysis.samples",
            "analysis.alphas",
        ]
    ),
    value=st.integers(max_value=0),
)
def test_zero_or_negative_counts(tmp_path, capsys, key, value):
    if key == "federation.rounds":
        value -= 1  # 0 rounds is a run of the initial models alone
    out = tmp_path / "out"
    path = tmp_path / "exp.toml"
    path.write_text("")
    code, output = run_cli(["run", str(path), "--out", str(out), "--set", f"{key}={value}"], capsys)
    assert_clean_failure(code, output, f"'{key}': invalid value {value}")
    assert not out.exists()


@FAST
@given(
    key=st.sampled_from(
        [
            "federation.lr",
            "data.alpha",
            "federation.fraction",
            "seed",
            "model.name",
            "output.checkpoints",
            "analysis.groups",
        ]
    ),
    value=st.sampled_from(['"text"', "true", "[1, 2]", "{a = 1}", "-1.5"]),
)
def test_wrong_types(tmp_path, capsys, key, value):
    path = tmp_path / "exp.toml"
    path.write_text("")
    code, output = run_cli(["partitions", str(path), "--out", str(tmp_path / "o"), "--set", f"{key}={value}"], capsys)
    if code == 0:  # a value that is valid for that key (a string is a valid list of groups)
        return
    assert_clean_failure(code, output, f"'{key}'")


@FAST
@given(key=st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12))
def test_unknown_keys_list_the_valid_ones(tmp_path, capsys, key):
    path = tmp_path / "exp.toml"
    path.write_text(f"[federation]\n{key} = 1\n")
    code, output = run_cli(["partitions", str(path), "--out", str(tmp_path / "o")], capsys)
    if key in {
        "clients",
        "rounds",
        "fraction",
        "min_clients",
        "local_epochs",
        "batch_size",
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "proximal_mu",
        "head_epochs",
        "timeout",
        "fault_probability",
    }:
        return
    assert_clean_failure(code, output, f"unknown config key 'federation.{key}'", "valid keys in [federation]")


def test_dirichlet_alpha_zero(config, capsys, tmp_path):
    code, output = run_cli(["run", str(config), "--set", "data.alpha=0", "--out", str(tmp_path / "o")], capsys)
    assert_clean_failure(code, output, "'data.alpha': invalid value 0")


def test_more_clients_than_samples(config, capsys, tmp_path):
    out = tmp_path / "o"
    code, output = run_cli(["run", str(config), "--set", "federation.clients=5000", "--out", str(out)], capsys)
    assert_clean_failure(code, output, "5000")
    assert not out.exists()


def test_selector_matching_nothing(config, capsys, tmp_path):
    out = tmp_path / "o"
    code, output = run_cli(["run", str(config), "--set", "strategy.average=conv7", "--out", str(out)], capsys)
    assert_clean_failure(code, output, "conv7", "fc1")
    assert not out.exists()


def test_dataset_missing_offline(config, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("FEDLAYER_DATA", raising=False)
    out = tmp_path / "o"
    code, output = run_cli(
        [
            "run",
            str(config),
            "--set",
            "data.dataset=cifar10",
            "--set",
            f"data.data_dir={tmp_path / 'nothing'}",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert_clean_failure(code, output, "cifar10")
    assert not out.exists()


@pytest.fixture
def checkpoints(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    torch.manual_seed(0)
    save_checkpoint(build_model("mlp", (1, 8, 8), 10).state_dict(), a)
    save_checkpoint(build_model("mlp", (1, 8, 8), 10).state_dict(), b)
    return a, b


def test_checkpoint_of_another_model(checkpoints, capsys, tmp_path):
    a, b = checkpoints
    code, output = run_cli(
        ["barrier", str(a), str(b), "--model", "cnn", "--dataset", "digits", "--out", str(tmp_path / "o")], capsys
    )
    assert_clean_failure(code, output, "conv1")


@FAST
@given(cut=st.integers(min_value=0, max_value=400))
def test_truncated_or_corrupt_safetensors(checkpoints, capsys, tmp_path, cut):
    a, b = checkpoints
    bad = tmp_path / "bad.safetensors"
    data = a.read_bytes()
    bad.write_bytes(data[:cut] if cut < 200 else data[:cut] + b"\x00garbage")
    code, output = run_cli(
        ["barrier", str(bad), str(b), "--model", "mlp", "--dataset", "digits", "--out", str(tmp_path / "o")], capsys
    )
    assert_clean_failure(code, output, "bad.safetensors")


def test_debug_shows_the_traceback(config):
    with pytest.raises(Exception, match="federation.rounds"):
        main(["--debug", "run", str(config), "--set", "federation.rounds=-1"])
