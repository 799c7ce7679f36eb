"""Model specs: torchvision builders, Hugging Face models from a local config, a user's file or module callable;
each builds for the data (grayscale repeated, resized, logits out), is seeded, lists its layers, runs two rounds
of fedper with the per-round analysis, and every bad input is one clear error (exit 2) before anything is
written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from fedlayer.analysis.evaluate import EvalData, WorkingModel
from fedlayer.analysis.graph import GraphEvaluator
from fedlayer.cli import main
from fedlayer.config import config_from_flat, load_config
from fedlayer.errors import FedlayerError
from fedlayer.layers import model_layers, select_layers
from fedlayer.model_fit import FittedModel
from fedlayer.models import build_model
from fedlayer.task import model_for

SMALL = [
    "data.dataset=digits",
    "federation.clients=3",
    "federation.rounds=2",
    "federation.batch_size=32",
    "strategy.name=fedper",
    "analysis.pairs=1",
    "analysis.samples=32",
    "analysis.alphas=3",
]
USER_FILE = """\
from torch import nn


def make_net(input_shape, num_classes, width=32):
    channels, height, width_px = input_shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(channels * height * width_px, width), nn.ReLU(), nn.Linear(width, num_classes)
    )


def takes_anything(**kwargs):
    return make_net(kwargs["input_shape"], kwargs["num_classes"], kwargs.get("width", 8))


def gray_stem(input_shape, num_classes):
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def three_classes(input_shape):
    return make_net(input_shape, 3)


def broken(num_classes):
    raise RuntimeError("out of ideas")


def not_a_model(num_classes):
    return "a string"


def needs_vocab(input_shape, num_classes, vocab_size):
    return make_net(input_shape, num_classes)


class TinyLM(nn.Module):
    def __init__(self, vocab_size, seq_len, width=8):
        super().__init__()
        self.seq_len = seq_len
        self.embed, self.out = nn.Embedding(vocab_size, width), nn.Linear(width, vocab_size)

    def forward(self, tokens):
        return self.out(self.embed(tokens))


def last_position_only(vocab_size):
    return nn.Sequential(nn.Embedding(vocab_size, 4), nn.Flatten(), nn.LazyLinear(vocab_size))
"""
VIT = {  # a tiny ViT: 2 layers of width 16 on 4x4 patches; channels and image size come from the data
    "model_type": "vit",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "image_size": 224,
    "patch_size": 4,
    "num_channels": 3,
}
DIGITS = ((1, 8, 8), 10)


@pytest.fixture
def user_file(tmp_path) -> Path:
    path = tmp_path / "work" / "mynets.py"
    path.parent.mkdir()
    path.write_text(USER_FILE)
    return path


@pytest.fixture
def vit_dir(tmp_path) -> Path:
    folder = tmp_path / "tiny-vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(VIT))
    return folder


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def seeded(spec, shape=DIGITS[0], classes=DIGITS[1], seed=0, **options):
    torch.manual_seed(seed)
    return build_model(spec, shape, classes, options=options)


# -- each kind builds, fits, is seeded, lists its layers -----------------------------------------------------


@pytest.fixture
def specs(user_file, vit_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))  # `mynets` importable as a module too
    return {
        "torchvision": ("torchvision:resnet18", {}),
        "hf": (f"hf:{vit_dir}", {"num_hidden_layers": 1}),
        "file": (f"{user_file}:make_net", {"width": 16}),
        "module": ("mynets:make_net", {}),
    }


@pytest.mark.parametrize("kind", ["torchvision", "hf", "file", "module"])
def test_each_kind_builds_for_the_data_is_seeded_and_lists_its_layers(specs, kind):
    spec, options = specs[kind]
    model, again, other = seeded(spec, **options), seeded(spec, **options), seeded(spec, seed=1, **options)
    state, same, different = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert any(not torch.equal(state[k], different[k]) for k in state if state[k].is_floating_point())
    layers = model_layers(model)
    assert layers and sum(len(layer.keys) for layer in layers) == len(state)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_options_reach_the_builder(specs):
    assert seeded(*specs["file"][:1], width=16)[1].out_features == 16
    hf = seeded(specs["hf"][0], num_hidden_layers=1)
    assert hf.config.num_hidden_layers == 1 and hf.config.num_channels == 1 and hf.config.image_size == 8


def test_a_torchvision_model_keeps_torchvision_s_state_dict_keys_and_sees_grayscale_as_rgb():
    import torchvision

    model = seeded("torchvision:resnet18")
    assert list(model.state_dict()) == list(torchvision.models.resnet18(num_classes=10).state_dict())
    assert isinstance(model, torchvision.models.ResNet) and type(model).__name__ == "ResNet"
    assert model.fedlayer_fit.channels == 3
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    plain = torchvision.models.ResNet.forward(model, x.expand(-1, 3, -1, -1))
    assert torch.equal(model(x), plain)


def test_an_adapted_model_is_still_traced_for_the_fast_barrier_engine():
    cfg = load_config(None, ["data.dataset=digits", "model.name=torchvision:resnet18", "data.resize=16"])
    model = model_for(cfg, *DIGITS)
    assert model.fedlayer_fit.channels == 3 and model.fedlayer_fit.size == 16
    data = EvalData(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    GraphEvaluator(WorkingModel(model, torch.device("cpu")), data, batch_size=4)  # raises Untraceable if not


def test_resize_builds_for_the_resized_images_and_resizes_what_the_model_is_given(user_file):
    cfg = load_config(None, [f"model.name={user_file}:make_net", "data.resize=12"])
    model = model_for(cfg, *DIGITS)
    assert model[1].in_features == 144 and model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(
        FedlayerError, match=r"'data.resize': 12 resizes images, but the data's inputs have shape \(64,\)"
    ):
        model_for(cfg, (64,), 10)


def test_torchvision_pretrained_weights_come_from_the_torch_hub_cache_with_a_new_head(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = torchvision.models.resnet18().state_dict()  # stands in for the ImageNet file: 1,000 classes
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(cached, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = seeded("torchvision:resnet18", (3, 32, 32), weights="DEFAULT")
    assert torch.equal(model.conv1.weight, cached["conv1.weight"])
    assert model.fc.out_features == 10 and model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_hf_pretrained_weights_load_from_a_local_directory(vit_dir):
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(vit_dir, num_channels=1, image_size=8, num_labels=4)
    AutoModelForImageClassification.from_config(config).save_pretrained(vit_dir)
    saved = AutoModelForImageClassification.from_pretrained(vit_dir).state_dict()
    model = seeded(f"hf:{vit_dir}", pretrained=True)  # 10 classes: a new classifier
    state = model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved if not k.startswith("classifier"))
    assert state["classifier.weight"].shape == (10, 16)


def test_hf_sequence_classification_takes_token_ids_stored_as_numbers(tmp_path):
    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    bert = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    (folder / "config.json").write_text(json.dumps({**bert, "intermediate_size": 32, "vocab_size": 50}))
    model = seeded(f"hf:{folder}", (12,), 4)
    assert model(torch.randint(0, 50, (3, 12)).float()).shape == (3, 4)


# -- language tasks: windows of token ids in, next-token logits at every position out ------------------------


def language_model(spec, seed=0, **options):
    torch.manual_seed(seed)
    return build_model(spec, (12,), 20, task="language", options=options)


def test_a_callable_language_model_is_given_the_vocabulary_and_the_window_length(user_file):
    model = language_model(f"{user_file}:TinyLM", width=4)
    assert model.seq_len == 12 and model.embed.num_embeddings == 20
    assert model(torch.randint(0, 20, (3, 12))).shape == (3, 12, 20)


def test_a_classification_callable_may_still_take_vocab_size_as_an_option(user_file):
    model = seeded(f"{user_file}:needs_vocab", vocab_size=50)  # e.g. a classifier of token sequences
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def gpt2_folder(tmp_path, **config) -> Path:
    folder = tmp_path / "tiny-gpt2"
    folder.mkdir(exist_ok=True)
    gpt2 = {"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2}  # GPT-2's vocabulary: 50,257 tokens
    (folder / "config.json").write_text(json.dumps(gpt2 | config))
    return folder


def test_a_hugging_face_causal_language_model_is_built_for_the_data_s_vocabulary(tmp_path):
    spec = f"hf:{gpt2_folder(tmp_path)}"
    model, again = language_model(spec), language_model(spec)
    assert model.config.vocab_size == 20 and model(torch.randint(0, 20, (3, 12)).float()).shape == (3, 12, 20)
    assert all(torch.equal(value, again.state_dict()[key]) for key, value in model.state_dict().items())
    layers = model_layers(model)
    assert layers[0].name == "transformer.wte" and "lm_head.weight" in layers[0].keys  # tied: one layer
    assert [layer.name for layer in select_layers(layers, "head")] == ["transformer.wte"]
    neox = tmp_path / "tiny-neox"
    neox.mkdir()
    config = {"model_type": "gpt_neox", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    (neox / "config.json").write_text(json.dumps(config | {"intermediate_size": 32}))
    untied = model_layers(language_model(f"hf:{neox}"))
    assert [layer.name for layer in select_layers(untied, "head")] == ["lm_head"]


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("hf:{gpt2}", {"n_positions": 8}, "seq_len 12 tokens are longer than hf:{gpt2}'s 8 positions (its config's "
         "n_positions): set model.options.n_positions to at least 12"),
        ("hf:{gpt2}", {"vocab_size": 50257}, "model.options.vocab_size is 50257, but the data's vocabulary has 20"),
        ("hf:{pretrained}", {"pretrained": True}, "has a vocabulary of 50257 tokens (its config's vocab_size), the "
         "data's has 20"),
        ("hf:{vit}", {}, "which has no causal language model in transformers (the data is windows of token ids"),
        ("{file}:last_position_only", {}, "must give (2, 12, 20): one logit per token of the vocabulary at every "
         "position"),
        ("{file}:TinyLM", {"seq_len": 12}, "set seq_len, which the data sets"),
    ],
    ids=["positions", "vocabulary-option", "pretrained-vocabulary", "no-causal-head", "output", "set-by-data"],
)  # fmt: skip
def test_language_model_specs_that_do_not_fit_the_data_are_clear_errors(
    spec, options, message, tmp_path, user_file, vit_dir
):
    gpt2 = gpt2_folder(tmp_path)
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    (pretrained / "config.json").write_text((gpt2 / "config.json").read_text())
    paths = {"gpt2": gpt2, "pretrained": pretrained, "vit": vit_dir, "file": user_file}
    with pytest.raises(FedlayerError) as error:
        language_model(spec.format(**paths), **options)
    assert message.format(**paths) in str(error.value)


# -- bad input: a clear error before any training, nothing written --------------------------------------------


BAD_RUNS = {
    "file-missing": (["model.name=missing_dir/nets.py:make_net"], "model file not found: {cwd}/missing_dir/nets.py"),
    "module-missing": (["model.name=no_such_module_xyz:make_net"], "cannot import model module 'no_such_module_xyz'"),
    "callable-missing": (["model.name={file}:make_nett"], "no callable 'make_nett' in"),
    "callable-raises": (["model.name={file}:broken"], "raised RuntimeError: out of ideas"),
    "not-a-module": (["model.name={file}:not_a_model"], "returned a str, not a torch.nn.Module"),
    "needs-vocab": (["model.name={file}:needs_vocab"], "missing a required argument: 'vocab_size'"),
    "option-unknown": (
        ["model.name={file}:make_net", "model.options.depth=3"],
        "unknown model option(s) depth for {file}:make_net; valid choices: width",
    ),
    "option-set-by-data": (["model.name={file}:make_net", "model.options.num_classes=3"], "which the data sets"),
    "wrong-classes": (
        ["model.name={file}:three_classes"],
        "gives outputs of shape (2, 3) for 2 inputs; the data has 10",
    ),
    "channels": (
        ["data.dataset=cifar10", "data.data_dir={folder}", "data.partition=iid", "model.name={file}:gray_stem"],
        "takes 1-channel images (its first convolution), the data has 3 channels",
    ),
    "torchvision-builder": (["model.name=torchvision:resnet5"], "builder 'resnet5'; close matches: resnet50,"),
    "torchvision-option": (["model.name=torchvision:resnet18", "model.options.depth=3"], "valid choices: weights"),
    "torchvision-weights": (
        ["model.name=torchvision:resnet18", "model.options.weights=IMAGENET9K"],
        "unknown weights for torchvision:resnet18 'IMAGENET9K'; valid choices: IMAGENET1K_V1, DEFAULT",
    ),
    "torchvision-offline": (
        ["model.name=torchvision:resnet18", "model.options.weights=DEFAULT"],
        "are not in the torch hub cache",
    ),
    "too-small": (["model.name=torchvision:alexnet"], "it takes 64x64 images: resize them with data.resize = 64"),
    "hf-offline": (["model.name=hf:someone/no-such-model"], "fedlayer does not download models"),
    "hf-option": (["model.name=hf:{vit}", "model.options.num_layers=1"], "valid choices: pretrained, "),
    "hf-no-weights": (
        ["model.name=hf:{vit}", "model.options.pretrained=true"],
        "no weights (model.safetensors or pytorch_model.bin) in that directory",
    ),
    "hf-language": (["model.name=hf:{gpt2}"], "a causal language model needs a language dataset"),
    "norm": (["model.name=torchvision:resnet18", "model.norm=bn"], "applies to the built-in models only"),
    "malformed": (["model.name=resnet50"], "or a model spec: 'torchvision:<builder>'"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_model_input_is_one_clear_error_before_anything_is_written(
    case, tmp_path, user_file, vit_dir, capsys, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    gpt2 = tmp_path / "tiny-gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2}))
    cifar = tmp_path / "cifar"  # a CIFAR-10 folder in torchvision's format: 3-channel images
    write_cifar10(cifar)
    overrides, fragment = BAD_RUNS[case]
    paths = {"file": user_file, "vit": vit_dir, "gpt2": gpt2, "folder": cifar, "cwd": Path.cwd()}
    argv = [item for text in overrides for item in ("--set", text.format(**paths))]
    out, config = tmp_path / "out", tmp_path / "exp.toml"
    config.write_text('[data]\ndataset = "digits"\n')
    code, output = run_cli(["run", str(config), *argv, "--out", str(out)], capsys)
    assert code == 2, output
    assert "Traceback" not in output and output.count("fedlayer: error:") == 1, output
    assert fragment.format(**paths) in output
    assert not out.exists()


def write_cifar10(folder: Path) -> None:
    import pickle

    import numpy as np

    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    images = np.zeros((20, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(pickle.dumps({"data": images, "labels": list(range(10)) * 2}))


def test_compare_refuses_a_bad_model_before_anything_is_written(tmp_path, capsys):
    out, config = tmp_path / "out", tmp_path / "exp.toml"
    config.write_text('[data]\ndataset = "digits"\n[model]\nname = "torchvision:resnet5"\n')
    code, output = run_cli(["compare", str(config), "--strategies", "fedavg,fedper", "--out", str(out)], capsys)
    assert code == 2 and "unknown torchvision classification builder 'resnet5'" in output
    assert not out.exists()


# -- config, flat run-config, commands ----------------------------------------------------------------------


def test_model_options_round_trip_through_flower_s_flat_run_config(vit_dir):
    cfg = load_config(None, [f"model.name=hf:{vit_dir}", "model.options={num_hidden_layers=1, qkv_bias=false}"])
    flat = cfg.to_flat()
    assert json.loads(flat["model.options"]) == {"num_hidden_layers": 1, "qkv_bias": False}
    assert not [key for key in flat if key.startswith("model.options.")]
    assert config_from_flat(flat) == cfg


@pytest.mark.parametrize("kind", ["torchvision", "hf", "file", "module"])
def test_layers_lists_the_layers_of_every_spec_kind(specs, kind, capsys):
    spec, options = specs[kind]
    argv = ["layers", "--model", spec, "--dataset", "digits", "--select", "head"]
    argv += [f"--option={key}={value}" for key, value in options.items()]
    code, output = run_cli(argv, capsys)
    assert code == 0, output
    head = {"torchvision": "fc", "hf": "classifier", "file": "3", "module": "3"}[kind]
    assert f"│ {head} " in output and "picks 1 of" in output


def test_bench_barriers_takes_a_spec_its_options_and_an_input_size(user_file, capsys):
    argv = ["bench", "barriers", "--model", f"{user_file}:make_net", "--option", "width=8", "--input-size", "6"]
    code, output = run_cli([*argv, "--samples", "8", "--alphas", "2", "--threads", "1"], capsys)
    assert code == 0, output
    assert "2 layers + full" in output and "8 3x6x6 images" in output and "speed-up" in output


# -- each kind end to end: two rounds of fedper with the per-round analysis ---------------------------------


def run_two_rounds(tmp_path, *overrides: str) -> Path:
    out, config = tmp_path / "out", tmp_path / "exp.toml"
    config.write_text("")
    argv = [item for text in [*SMALL, *overrides] for item in ("--set", text)]
    assert main(["run", str(config), *argv, "--out", str(out)]) == 0
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2]
    barriers = pd.read_parquet(out / "barriers.parquet")
    assert sorted(barriers["round"].unique()) == [1, 2]
    return out


def test_a_torchvision_model_runs_on_upsampled_grayscale_digits(tmp_path, in_process):
    out = run_two_rounds(
        tmp_path,
        "model.name=torchvision:mobilenet_v3_small",
        "data.resize=32",
        "data.max_train_samples=300",
        "analysis.groups=full,head,first:2",
    )
    saved = load_config(out / "config.toml")
    assert saved.model.name == "torchvision:mobilenet_v3_small" and saved.data.resize == 32


def test_a_hugging_face_model_from_a_local_config_runs(tmp_path, vit_dir, in_process):
    out = run_two_rounds(tmp_path, f"model.name=hf:{vit_dir}", "model.options={num_hidden_layers=1}")
    assert load_config(out / "config.toml").model.options == {"num_hidden_layers": 1}


def test_a_user_file_model_runs_and_is_saved_by_its_absolute_path(tmp_path, user_file, in_process, monkeypatch):
    monkeypatch.chdir(user_file.parent)  # the spec is relative to the working directory
    out = run_two_rounds(tmp_path, "model.name=mynets.py:make_net", "model.options.width=16")
    assert load_config(out / "config.toml").model.name == f"{user_file.resolve()}:make_net"


@pytest.mark.slow
def test_a_user_file_model_runs_on_flower_s_simulation_engine(tmp_path, user_file, monkeypatch):
    monkeypatch.chdir(user_file.parent)  # Ray's workers load the file by the absolute path the run saved
    run_two_rounds(tmp_path, "model.name=mynets.py:make_net", "model.options.width=16")


def test_fitted_models_are_still_the_model_s_own_class():
    model = seeded("torchvision:resnet18")
    assert isinstance(model, FittedModel) and isinstance(model, nn.Module)
