"""The built-in lstm, gpt and vit: their forward pass is the published architecture's, their layers read as
the architecture (gpt's tied wte and lm_head one layer), evaluation has no dropout, and every mismatch
between model and data is one clear error before any training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedlayer.cli import main
from fedlayer.config import load_config
from fedlayer.errors import FedlayerError
from fedlayer.layers import model_layers, select_layers
from fedlayer.models import build_model
from fedlayer.task import model_for

VOCAB, SEQ_LEN = 20, 12
TINY = {
    "lstm": {"hidden_size": 16},
    "gpt": {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16},
    "vit": {"dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 32},
}
DATA = {  # input_shape, classes (a vocabulary for the language models), task
    "lstm": ((SEQ_LEN,), VOCAB, "language"),
    "gpt": ((SEQ_LEN,), VOCAB, "language"),
    "vit": ((3, 16, 16), 10, "classification"),
}


def tiny(name: str, seed: int = 0, **options) -> nn.Module:
    shape, classes, task = DATA[name]
    torch.manual_seed(seed)
    return build_model(name, shape, classes, task=task, options=TINY[name] | options)


def inputs(name: str, count: int = 3) -> torch.Tensor:
    shape, classes, task = DATA[name]
    generator = torch.Generator().manual_seed(0)
    if task == "language":
        return torch.randint(0, classes, (count, *shape), generator=generator)
    return torch.randn((count, *shape), generator=generator)


def layer_names(model: nn.Module) -> list[str]:
    return [layer.name for layer in model_layers(model)]


# -- forward, backward, seeding ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_each_model_gives_its_task_s_logits_and_trains(name):
    model = tiny(name)
    x = inputs(name)
    logits = model(x)
    shape, classes, task = DATA[name]
    assert logits.shape == ((3, SEQ_LEN, VOCAB) if task == "language" else (3, classes))
    labels = torch.randint(0, logits.shape[-1], logits.shape[:-1])
    F.cross_entropy(logits.flatten(0, -2), labels.flatten()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list(TINY))
def test_each_model_is_deterministic_given_the_seed(name):
    first, again, other = (tiny(name, seed).state_dict() for seed in (1, 1, 2))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first)


@pytest.mark.parametrize("name", ["lstm", "gpt"])
def test_evaluation_has_no_dropout(name):
    options = {"dropout": 0.5} if name == "gpt" else {}
    model = tiny(name, **options)
    x = inputs(name)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    if name == "gpt":
        model.train()
        with torch.no_grad():
            assert not torch.equal(model(x), model(x))


# -- the published architectures ------------------------------------------------------------------------------


def test_lstm_is_leaf_s_model_with_each_lstm_layer_its_own_module():
    model = build_model("lstm", (80,), 80, task="language")
    assert layer_names(model) == ["embedding", "lstm.0", "lstm.1", "fc"]
    assert (model.embedding.embedding_dim, model.lstm[0].hidden_size, model.lstm[1].hidden_size) == (8, 256, 256)
    stacked = nn.LSTM(8, 256, num_layers=2, batch_first=True)  # LEAF's two cells as one module: the same function
    with torch.no_grad():
        for layer, lstm in enumerate(model.lstm):
            for name, tensor in lstm.named_parameters():
                getattr(stacked, name.replace("_l0", f"_l{layer}")).copy_(tensor)
        x = torch.randint(0, 80, (2, 80))
        expected = model.fc(stacked(model.embedding(x))[0])
        assert torch.allclose(model(x), expected, atol=1e-6)


def nanogpt_forward(model, tokens):
    """nanoGPT's GPT.forward, written out: split q, k, v, view the heads, masked softmax attention."""
    t = tokens.shape[1]
    x = model.transformer.wte(tokens) + model.transformer.wpe(torch.arange(t))
    for block in model.transformer.h:
        h = block.ln_1(x)
        q, k, v = block.attn.c_attn(h).split(h.shape[-1], dim=2)
        n, c, heads = h.shape[0], h.shape[-1], block.attn.n_head
        q, k, v = (z.view(n, t, heads, c // heads).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(c // heads)
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, t, c)
        x = x + block.attn.c_proj(y)
        x = x + block.mlp.c_proj(F.gelu(block.mlp.c_fc(block.ln_2(x))))
    return model.transformer.ln_f(x) @ model.transformer.wte.weight.T  # the tied output projection


def test_gpt_is_nanogpt_with_lm_head_tied_to_wte():
    model = tiny("gpt", bias=True).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    x = inputs("gpt")
    with torch.no_grad():
        assert torch.allclose(model(x), nanogpt_forward(model, x), atol=1e-5)
        changed = x.clone()
        changed[:, 7] = (changed[:, 7] + 1) % VOCAB  # causal: positions before 7 do not see token 7
        assert torch.equal(model(changed)[:, :7], model(x)[:, :7])
        assert not torch.allclose(model(changed)[:, 7:], model(x)[:, 7:])


def test_gpt_defaults_and_paper_scale():
    model = build_model("gpt", (80,), 80, task="language")
    assert (len(model.transformer.h), model.transformer.wpe.num_embeddings, model.transformer.wte.embedding_dim) == (
        4,
        128,
        128,
    )
    assert model.lm_head.bias is None and model.transformer.ln_f.bias is None  # bias false, as the paper's E5
    paper = {"n_head": 12, "n_embd": 768, "block_size": 256, "dropout": 0.2}  # and n_layer 12: one block here
    model = build_model("gpt", (256,), 65, task="language", options=paper | {"n_layer": 1})
    block, embeddings = 12 * 768**2 + 2 * 768, (65 + 256) * 768
    assert sum(p.numel() for p in model.parameters()) == block + embeddings + 768  # lm_head counted once


def simple_vit_forward(model, images, patch):
    """vit-pytorch's SimpleViT.forward, written out: rearranged patches, chunked q, k, v, explicit softmax."""
    n, c, height, width = images.shape
    rows, columns = height // patch, width // patch
    x = images.reshape(n, c, rows, patch, columns, patch).permute(0, 2, 4, 3, 5, 1).reshape(n, rows * columns, -1)
    x = model.embedding_norm(model.patch_embedding(model.patch_norm(x))) + model.position_embedding
    for block in model.blocks:
        attn = block.attn
        q, k, v = attn.to_qkv(attn.norm(x)).chunk(3, dim=-1)
        q, k, v = (z.reshape(n, rows * columns, attn.heads, -1).transpose(1, 2) for z in (q, k, v))
        dots = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        x = attn.to_out((dots.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, rows * columns, -1)) + x
        x = block.mlp.fc2(F.gelu(block.mlp.fc1(block.mlp.norm(x)))) + x
    return model.head(model.norm(x).mean(dim=1))


def test_vit_is_simple_vit_with_a_fixed_position_embedding():
    model = tiny("vit").eval()
    x = inputs("vit")
    with torch.no_grad():
        assert torch.allclose(model(x), simple_vit_forward(model, x, 4), atol=1e-5)
    assert "position_embedding" not in model.state_dict()  # a constant: never averaged or saved
    assert model.position_embedding.shape == (16, 16)  # (4 x 4 patches, dim)
    paper = {"dim": 512, "depth": 1, "heads": 16, "dim_head": 64, "mlp_dim": 1024}  # and depth 6: one block here
    attn = build_model("vit", (3, 32, 32), 10, options=paper).blocks[0].attn
    assert (attn.to_qkv.in_features, attn.to_qkv.out_features, attn.to_out.out_features) == (512, 3 * 16 * 64, 512)


# -- layers ----------------------------------------------------------------------------------------------------


def test_gpt_layers_read_as_the_architecture_and_its_head_is_the_tied_embedding():
    model = tiny("gpt")
    layers = model_layers(model)
    block = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]
    expected = ["transformer.wte", "transformer.wpe"]
    expected += [f"transformer.h.{i}.{part}" for i in range(2) for part in block] + ["transformer.ln_f"]
    assert layer_names(model) == expected
    assert layers[0].keys == ("transformer.wte.weight", "lm_head.weight")  # one tensor, one layer
    assert [layer.name for layer in select_layers(layers, "head")] == ["transformer.wte"]
    assert len(select_layers(layers, "body")) == len(layers) - 1
    assert [layer.name for layer in select_layers(layers, "norm")] == [n for n in expected if "ln_" in n]


def test_vit_layers_read_as_the_architecture():
    names = layer_names(tiny("vit"))
    block = ["attn.norm", "attn.to_qkv", "attn.to_out", "mlp.norm", "mlp.fc1", "mlp.fc2"]
    expected = ["patch_norm", "patch_embedding", "embedding_norm"]
    assert names == expected + [f"blocks.{i}.{part}" for i in range(2) for part in block] + ["norm", "head"]
    assert [layer.name for layer in select_layers(model_layers(tiny("vit")), "head")] == ["head"]


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--model", "gpt"], ["transformer.wte", "weight, lm_head.weight", "transformer.h.3.attn.c_attn", "ln_f"]),
        (["--model", "lstm"], ["a vocabulary of 80 tokens", "lstm.0", "lstm.1", "Embedding"]),
        (["--model", "vit", "--dataset", "digits"], ["blocks.3.attn.to_qkv", "blocks.3.mlp.fc2", "patch_embedding"]),
    ],
)
def test_fedlayer_layers_shows_each_model(argv, shown, capsys):
    assert main(["layers", *argv]) == 0
    out = capsys.readouterr().out
    assert all(text in out for text in shown), out


# -- bad input: one clear error, before any training --------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: build_model("gpt", (200,), 80, task="language"),
            "seq_len 200 tokens are longer than model 'gpt''s block_size 128 (the positions it has embeddings for): "
            "set model.options.block_size to at least 200",
        ),
        (
            lambda: build_model("gpt", (80,), 80, task="language", options={"vocab_size": 65}),
            "model.options.vocab_size is 65, but the data's vocabulary has 80 tokens",
        ),
        (
            lambda: build_model("gpt", (1, 8, 8), 10),
            "model 'gpt' is a language model (token ids (N, T) in, next-token logits (N, T, vocabulary) out), but the "
            "data is a classification task; built-in models for it: mlp, cnn, resnet18, vgg11, deep-linear, vit",
        ),
        (
            lambda: build_model("vit", (80,), 80, task="language"),
            "model 'vit' is a classification model ((channels, height, width) images in, one row of class logits per "
            "image out), but the data is a language task; built-in models for it: lstm, gpt",
        ),
        (
            lambda: build_model("torchvision:resnet18", (80,), 80, task="language"),
            "torchvision:resnet18 is an image classifier, but the data is a language task",
        ),
        (
            lambda: build_model("vit", (1, 28, 28), 10, options={"patch_size": 8}),
            "patch_size 8 does not divide the data's 28x28 images",
        ),
        (lambda: build_model("vit", (1, 8, 8), 10, options={"dim": 6}), "dim a multiple of 4, at least 8"),
        (
            lambda: build_model("gpt", (80,), 80, task="language", options={"n_embd": 30}),
            "n_embd divisible by n_head, got n_embd=30, n_head=4",
        ),
        (
            lambda: build_model("gpt", (80,), 80, task="language", options={"n_layers": 2}),
            "unknown option(s) n_layers for model 'gpt'; valid choices: n_layer, n_head, n_embd, block_size, "
            "dropout, bias",
        ),
        (
            lambda: build_model("lstm", (80,), 80, task="language", options={"hidden_size": 0}),
            "model 'lstm' option hidden_size must be an integer >= 1, got 0",
        ),
        (lambda: build_model("lstm", (1, 8, 8), 80, task="language"), "input_shape must be (seq_len,)"),
        (lambda: build_model("gpt", (80,), 80, task="text"), "unknown task 'text'; valid choices: classification"),
    ],
    ids=[
        "seq-len",
        "vocabulary",
        "language-model-on-images",
        "classifier-on-text",
        "torchvision-on-text",
        "patch",
        "dim",
        "heads",
        "option",
        "size",
        "shape",
        "task",
    ],
)
def test_mismatches_between_model_and_data_are_clear_errors(call, message):
    with pytest.raises(FedlayerError) as error:
        call()
    assert message in str(error.value)


def test_a_config_s_model_is_checked_against_its_data_s_task_and_windows():
    cfg = load_config(None, ["model.name=gpt", "model.options={block_size=64}"])
    with pytest.raises(FedlayerError, match="longer than model 'gpt''s block_size 64"):
        model_for(cfg, (80,), 80, "language")
    assert model_for(cfg, (64,), 80, "language")(torch.zeros(1, 64, dtype=torch.long)).shape == (1, 64, 80)
    with pytest.raises(FedlayerError, match="model 'gpt' is a language model"):
        model_for(cfg, (1, 8, 8), 10)


@pytest.mark.parametrize(
    ("model", "options", "shown"),
    [
        ("gpt", ["n_layer=1", "n_head=2", "n_embd=16"], "9 layers + full (layer unit module), both bases, 3 alphas, "
         "8 windows of 8 tokens"),
        ("vit", ["depth=1", "dim=16", "heads=2", "dim_head=8", "mlp_dim=32"], "11 layers + full (layer unit module), "
         "both bases, 3 alphas, 8 3x8x8 images"),
    ],
)  # fmt: skip
def test_bench_barriers_runs_the_transformers(model, options, shown, capsys):
    argv = ["bench", "barriers", "--model", model, *(f"--option={option}" for option in options)]
    assert main([*argv, "--input-size", "8", "--samples", "8", "--alphas", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert shown in out and "speed-up:" in out and "max |loss diff|" in out
