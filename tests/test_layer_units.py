"""Layer units end to end: the barrier engine at both units against a per-point reference built from the
paper's rules, on small models with multi-tensor modules and on the built-in vit, lstm and gpt; a run with
analysis.layer_unit = "tensor"; and its bad input, refused before anything is written."""

import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Context, RecordDict
from inprocess_grid import InProcessGrid
from test_layers import RECURRENT_NET
from torch import nn

from fedlayer.analysis import CurveEngine, random_direction
from fedlayer.averaged import averaged_layers
from fedlayer.checkpoints import load_checkpoint, save_checkpoint
from fedlayer.cli import main
from fedlayer.client_app import make_client_app
from fedlayer.config import load_config
from fedlayer.data import load_dataset
from fedlayer.errors import FedlayerError
from fedlayer.layers import LAYER_UNITS, keys_of, model_layers, select_layers
from fedlayer.models import build_model
from fedlayer.results import read_run
from fedlayer.server_app import FederatedRun
from fedlayer.task_kinds import LANGUAGE, flat_predictions

SAMPLES = 48
ALPHAS = [0.0, 0.3, 0.5, 1.0]
TEXT = (
    "Layer-wise linear mode connectivity: two models trained from one initialisation on different data are "
    "separated by a barrier along the straight line between them, yet averaging any single layer of the two "
    "leaves the loss almost unchanged. "
)
SEQ_LEN = 12


class SeqNet(nn.Module):
    """Digits as 8 rows of 8 pixels: a two-layer LSTM over the rows, self-attention with bias_k and bias_v over its
    outputs, a LayerNorm and a head. At unit "tensor" the LSTM is four layers and the attention three."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True)
        self.attn = nn.MultiheadAttention(12, 2, batch_first=True, add_bias_kv=True)
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        h = self.lstm(x.reshape(-1, 8, 8))[0]
        a = self.attn(h, h, h, need_weights=False)[0]
        return self.head(self.norm(a + h).mean(1))


def digits():
    data = load_dataset("digits")
    return data.test_x[:SAMPLES], data.test_y[:SAMPLES]


def windows():
    """Character windows of a real sentence, each labelled with the next character at every position."""
    vocabulary = sorted(set(TEXT))
    ids = torch.tensor([vocabulary.index(char) for char in TEXT])
    starts = range(0, len(ids) - SEQ_LEN - 1, 4)
    x = torch.stack([ids[s : s + SEQ_LEN] for s in starts])
    y = torch.stack([ids[s + 1 : s + SEQ_LEN + 1] for s in starts])
    return x, y, len(vocabulary)


def built_in(name):
    if name == "vit":
        options = {"dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 16, "patch_size": 4}
        return (lambda: build_model("vit", (1, 8, 8), 10, options=options)), digits()
    x, y, vocabulary = windows()
    options = (
        {"hidden_size": 16} if name == "lstm" else {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": SEQ_LEN}
    )
    return (lambda: build_model(name, (SEQ_LEN,), vocabulary, task=LANGUAGE, options=options)), (x, y)


def paper_units(state) -> set[frozenset[str]]:
    """The paper's ViT grouping (eval_interpolation_multiple_layers.py), written out independently: every tensor
    whose name holds "weight" with the tensor named alike with "bias"; every other tensor alone."""
    units, taken = [], set()
    for key in state:
        module, _, name = key.rpartition(".")
        if "weight" in name:
            bias = f"{module}.{name.replace('weight', 'bias')}" if module else name.replace("weight", "bias")
            units.append({key, bias} & set(state))
            taken |= units[-1]
    return {frozenset(unit) for unit in units} | {frozenset({key}) for key in state if key not in taken}


def two_states(make):
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(make().state_dict())
    return states


def reference_metrics(model, state, x, y):
    """A fresh copy, load_state_dict, one full pass: mean cross-entropy and error (%) over all predictions."""
    model = copy.deepcopy(model)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits, labels = flat_predictions(model(x), y)
    loss = float(F.cross_entropy(logits, labels, reduction="none").double().mean())
    return loss, 100.0 - 100.0 * float((logits.argmax(1) == labels).double().mean())


def reference_state(model, state_a, state_b, row):
    """The point a curves row stands for, from the README's definitions, at the row's layer unit."""
    base = state_a if row.base == "a" else state_b
    layers = {layer.name: layer for layer in model_layers(model, row.layer_unit)}
    chosen = [layers[name] for name in row.layers.split("|")]
    if row.kind == "random-direction":
        params = {n for n, _ in model.named_parameters()}
        keys = [k for k in chosen[0].keys if k in params]
        d = random_direction(state_a, state_b, keys, seed=0, layer_index=chosen[0].index, draw=row.direction)
        t = row.alpha if row.base == "a" else 1 - row.alpha
        return base | {k: base[k] + t * d[k] for k in keys}
    return base | {
        k: (1 - row.alpha) * state_a[k] + row.alpha * state_b[k] for k in keys_of(chosen) if base[k].is_floating_point()
    }


def assert_engine_matches_reference(make, data, groups, unit, directions=0):
    x, y = data
    state_a, state_b = two_states(make)
    model = make()
    engine = CurveEngine(model, (x, y), batch_size=16)
    assert engine.evaluator_name == "graph", engine.fallback  # the fast path re-runs what each unit's tensors reach
    curves = engine.curves(
        state_a, state_b, groups=groups, layer_unit=unit, alphas=ALPHAS, random_directions=directions
    )
    assert set(curves["layer_unit"]) == {unit}
    for row in curves.itertuples():
        loss, error = reference_metrics(model, reference_state(model, state_a, state_b, row), x, y)
        assert row.loss == pytest.approx(loss, abs=1e-6), row
        assert row.error == pytest.approx(error, abs=1e-9), row
    return curves


# ---------------------------------------------------------------- small models with multi-tensor modules


def test_tensor_units_are_the_papers_vit_grouping():
    state = SeqNet().state_dict()
    units = model_layers(SeqNet(), "tensor")
    assert {frozenset(layer.keys) for layer in units} == paper_units(state)
    assert [layer.name for layer in units] == [
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1",
        "attn.in_proj_weight", "attn.bias_k", "attn.bias_v", "attn.out_proj", "norm", "head",
    ]  # fmt: skip


@pytest.mark.parametrize("unit", LAYER_UNITS)
def test_the_engine_matches_the_reference_on_lstm_and_attention(unit):
    groups = ["layers", "full", "shallow", "window:2", "lstm", "attn.out_proj"]
    curves = assert_engine_matches_reference(SeqNet, digits(), groups, unit, directions=1)
    singles = curves.loc[curves["kind"] == "layer", "group"].unique().tolist()
    assert singles == [layer.name for layer in model_layers(SeqNet(), unit)]
    assert (curves["kind"] == "random-direction").any()


# ---------------------------------------------------------------- the built-in transformer and language models


@pytest.mark.parametrize("name", ["vit", "lstm", "gpt"])
def test_built_in_models_forward_and_layers_at_both_units(name):
    make, (x, y) = built_in(name)
    model = make()
    assert model(x[:3]).shape == (3, *y.shape[1:], model(x[:1]).shape[-1])
    state = model.state_dict()
    modules, tensors = model_layers(model), model_layers(model, "tensor")
    for layers in (modules, tensors):
        assert sorted(keys_of(layers)) == sorted(state) and len(set(keys_of(layers))) == len(state)
    if name == "lstm":  # each LSTM layer is a module of two tensor units
        assert [layer.name for layer in tensors][1:5] == [
            f"lstm.{i}.weight_{kind}_l0" for i in (0, 1) for kind in ("ih", "hh")
        ]
        assert len(tensors) == len(modules) + 2
    else:  # every module is one weight with its bias: the same layers at both units
        assert [(t.name, t.keys) for t in tensors] == [(m.name, m.keys) for m in modules]
    if name == "gpt":  # the tied embedding and output projection stay one layer
        assert tensors[0].keys == ("transformer.wte.weight", "lm_head.weight")


@pytest.mark.parametrize("unit", LAYER_UNITS)
@pytest.mark.parametrize("name", ["vit", "lstm", "gpt"])
def test_the_engine_matches_the_reference_on_built_in_models(name, unit):
    make, data = built_in(name)
    assert_engine_matches_reference(make, data, ["layers", "full"], unit)


@pytest.mark.parametrize("name", ["cnn", "resnet18", "vit", "lstm", "gpt", "seqnet"])
def test_the_head_is_the_same_tensors_at_both_units(name):
    """FedRep and FedBABU clients train the head's parameters apart: the same ones whatever the unit."""
    make = {"cnn": lambda: build_model("cnn", (1, 8, 8), 10, norm="bn"), "seqnet": SeqNet}.get(name)
    if make is None:
        make = built_in(name)[0] if name != "resnet18" else (lambda: build_model("resnet18", (1, 8, 8), 10, norm="bn"))
    model = make()
    heads = [keys_of(select_layers(model_layers(model, unit), "head")) for unit in LAYER_UNITS]
    assert heads[0] == heads[1] and heads[0]


# ---------------------------------------------------------------- a run at unit "tensor"

RECURRENT_UNITS = ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc"]
RUN = [
    "data.dataset=digits",
    "data.max_train_samples=300",
    "federation.clients=3",
    "federation.rounds=1",
    "federation.batch_size=32",
    "analysis.samples=32",
    "analysis.alphas=3",
]


@pytest.fixture
def recurrent(tmp_path):
    path = tmp_path / "recurrent.py"
    path.write_text(RECURRENT_NET)
    return f"model.name={path}:make_net"


def test_a_run_at_unit_tensor_averages_and_analyses_tensor_units(tmp_path, recurrent):
    cfg = load_config(None, [*RUN, recurrent, "analysis.layer_unit=tensor", "strategy.average=lstm.weight_ih_l0,fc"])
    run = FederatedRun.prepare(cfg, tmp_path / "run")
    run.main(
        InProcessGrid(make_client_app(cfg), 3, node_seed=0),
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
    )
    path = run.run_dir.path
    personal = load_checkpoint(path / "checkpoints/client-0-personal.safetensors")
    assert set(personal) == {"lstm.weight_hh_l0", "lstm.bias_hh_l0"}  # the recurrent unit stays personal
    barriers = pd.read_parquet(path / "barriers.parquet")
    assert set(barriers["layer_unit"]) == {"tensor"}
    assert list(barriers.loc[barriers["kind"] == "layer", "group"].unique()) == RECURRENT_UNITS
    averaged = averaged_layers(read_run(path))
    assert averaged is not None and averaged[1].to_dict() == {
        "lstm.weight_ih_l0": True, "lstm.weight_hh_l0": False, "fc": True,
    }  # fmt: skip


def test_barrier_cli_measures_tensor_units(tmp_path, recurrent, capsys):
    spec = recurrent.partition("=")[2]
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(build_model(spec, (1, 8, 8), 10).state_dict(), tmp_path / f"m{seed}.safetensors"))
    out = tmp_path / "out"
    args = ["barrier", *map(str, paths), "--model", spec, "--dataset", "digits", "--samples", "32", "--alphas", "3"]
    assert main([*args, "--groups", "layers,full", "--layer-unit", "tensor", "--out", str(out)]) == 0
    curves = pd.read_parquet(out / "curves.parquet")
    assert set(curves["layer_unit"]) == {"tensor"}
    assert list(curves.loc[curves["kind"] == "layer", "group"].unique()) == RECURRENT_UNITS
    assert "layer unit tensor" in capsys.readouterr().out
    assert main([*args, "--groups", "re:^lstm$", "--layer-unit", "tensor", "--out", str(out)]) == 2
    assert "it names the module lstm, which is no layer at layer_unit = 'tensor'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["analysis.layer_unit=tensor", "strategy.average=re:^lstm$"],
            "'re:^lstm$' matches no layer (it names the module lstm, which is no layer at layer_unit = 'tensor': "
            "its tensor units are lstm.weight_ih_l0, lstm.weight_hh_l0)",
        ),
        (
            ["analysis.layer_unit=tensor", "analysis.groups=layers,re:^lstm$"],
            "it names the module lstm, which is no layer at layer_unit = 'tensor'",
        ),
        (
            ["strategy.average=lstm.weight_ih_l0"],
            "'lstm.weight_ih_l0' matches no layer (it names the tensor unit lstm.weight_ih_l0 of the layer lstm: at "
            "layer_unit = 'module' a layer is a whole module; set layer_unit = 'tensor'",
        ),
        (["analysis.layer_unit=tensors"], "'analysis.layer_unit': invalid value 'tensors'; expected one of"),
    ],
)
def test_a_selector_of_the_other_unit_is_refused_before_anything_is_written(tmp_path, recurrent, overrides, message):
    with pytest.raises(FedlayerError) as info:
        FederatedRun.prepare(load_config(None, [*RUN, recurrent, *overrides]), tmp_path / "run")
    assert message in str(info.value)
    assert not (tmp_path / "run").exists()
