"""The paper's experiments as ready configs (simulations/paper_*.toml and their paper-scale twins).

Each experiment has a CPU config and a paper-scale twin that measures the same thing, and its settings
fit what it is about. Each CPU config gets a smoke run, cut to one round on a few samples of its own
dataset, through the in-process grid (no Ray), and yields the kind of result rows its experiment is
about. The twins need CIFAR and a GPU, so test_simulation_configs.py only resolves them against their model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import Context, RecordDict
from inprocess_grid import InProcessGrid
from shipped_configs import PYTHIA, SIMULATIONS, compare_strategies, layers_of, pythia_stand_in

from fedlayer.client_app import make_client_app
from fedlayer.config import Config, load_config
from fedlayer.data import load_dataset
from fedlayer.errors import FedlayerError
from fedlayer.layers import model_layers
from fedlayer.server_app import FederatedRun
from fedlayer.task import new_model, partitions_for

EXPERIMENTS = ("paper_single_layer", "paper_cumulative", "paper_deep_linear", "paper_robustness", "paper_federated")
TRANSFORMERS = ("paper_vit", "paper_lm")  # the paper's ViT and language-model pairs
PAPER_SCALE_ONLY = ("paper_pythia",)  # two pretrained 410 M-parameter models: no CPU size
CPU = {name: SIMULATIONS / f"{name}.toml" for name in EXPERIMENTS + TRANSFORMERS}
SCALE = {name: SIMULATIONS / "paper_scale" / f"{name}.toml" for name in EXPERIMENTS + TRANSFORMERS}
SMOKE = [  # one round on a few samples of the config's own dataset
    "federation.rounds=1",
    "federation.local_epochs=1",
    "data.max_train_samples=120",
    "data.max_test_samples=64",
    "analysis.every=1",
    "analysis.samples=16",
    "analysis.alphas=3",
]


def require_dataset(cfg: Config) -> None:
    try:
        load_dataset(cfg.data.dataset, data_dir=cfg.data.data_dir or None)
    except FedlayerError as exc:
        pytest.skip(f"{cfg.data.dataset} is not available here: {exc}")


def smoke_run(path: Path, tmp_path: Path, *overrides: str) -> pd.DataFrame:
    """One cut-down run of the config in process; returns its barriers table."""
    cfg = load_config(path, [*SMOKE, *overrides])
    require_dataset(cfg)
    run = FederatedRun.prepare(cfg, tmp_path / path.stem)
    grid = InProcessGrid(make_client_app(cfg), cfg.federation.clients, node_seed=0)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    run.raise_if_failed()
    return pd.read_parquet(run.run_dir.path / "barriers.parquet")


# ------------------------------------------------------------------ every config (CPU and paper scale)


def test_every_experiment_has_a_cpu_config_and_a_paper_scale_twin():
    assert {p.stem for p in SIMULATIONS.glob("paper_*.toml")} == set(EXPERIMENTS + TRANSFORMERS)
    assert {p.stem for p in (SIMULATIONS / "paper_scale").glob("paper_*.toml")} == set(
        EXPERIMENTS + TRANSFORMERS + PAPER_SCALE_ONLY
    )


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_paper_scale_twin_is_the_same_experiment_on_cifar_with_the_papers_resnet(name):
    cpu, twin = load_config(CPU[name]), load_config(SCALE[name])
    assert twin.data.dataset in ("cifar10", "cifar100")
    if cpu.model.name == "deep-linear":
        assert twin.model.name == "deep-linear"
    else:
        assert (twin.model.name, twin.model.norm) == ("resnet18", "none")
    assert 0 < twin.simulation.num_gpus < 1  # a fraction: several clients share one GPU
    assert twin.strategy.name == cpu.strategy.name
    assert set(cpu.analysis.groups) <= set(twin.analysis.groups)
    assert twin.analysis.bases == cpu.analysis.bases
    assert twin.analysis.random_directions >= cpu.analysis.random_directions
    assert (twin.analysis.every > 0) == (cpu.analysis.every > 0)
    assert len(compare_strategies(SCALE[name])) == len(compare_strategies(CPU[name]))


def test_experiment_settings_match_what_each_experiment_measures():
    single = load_config(CPU["paper_single_layer"])
    assert single.strategy.name == "local" and single.federation.clients == 2
    assert single.data.partition != "iid" and single.analysis.every == 1
    assert {"layers", "full"} <= set(single.analysis.groups) and set(single.analysis.bases) == {"a", "b"}
    assert single.analysis.alphas >= 5
    cumulative = load_config(CPU["paper_cumulative"])
    assert {"shallow", "deep", "minimal"} <= set(cumulative.analysis.groups)
    assert any(g.startswith("window:") for g in cumulative.analysis.groups)
    assert len(layers_of(cumulative)) >= 11  # enough layers for a middle
    assert load_config(CPU["paper_deep_linear"]).model.name == "deep-linear"
    assert load_config(CPU["paper_robustness"]).analysis.random_directions >= 3
    federated = load_config(CPU["paper_federated"])
    assert federated.data.partition == "dirichlet"
    assert partitions_for(load_config(CPU["paper_federated"], ["data.partition=pathological"])).method == "pathological"
    commands = compare_strategies(CPU["paper_federated"])
    assert len(commands) == 2  # the Dirichlet split and the pathological one
    for command in commands:
        assert command[0] == "fedavg" and {"fedper", "lg-fedavg"} <= set(command) and len(command) >= 5


# ------------------------------------------------------------------ smoke runs of the CPU configs


def test_single_layer_config_measures_every_layer_and_the_full_model_on_both_bases(tmp_path):
    barriers = smoke_run(CPU["paper_single_layer"], tmp_path)
    layers = layers_of(load_config(CPU["paper_single_layer"]))
    per_layer = barriers[barriers["kind"] == "layer"]
    assert set(per_layer["group"]) == {layer.name for layer in layers}
    assert set(per_layer["base"]) == {"a", "b"}
    assert (barriers["kind"] == "full").any()


def test_cumulative_config_measures_orderings_and_sliding_windows(tmp_path):
    barriers = smoke_run(CPU["paper_cumulative"], tmp_path)
    count = len(layers_of(load_config(CPU["paper_cumulative"])))
    for ordering in ("shallow", "deep", "minimal"):
        assert sorted(barriers.loc[barriers["kind"] == ordering, "n_layers"].unique()) == list(range(1, count + 1))
    assert (barriers["kind"] == "window").any()


def test_deep_linear_config_has_no_single_layer_barrier(tmp_path):
    barriers = smoke_run(CPU["paper_deep_linear"], tmp_path, "analysis.alphas=5")
    per_layer = barriers[barriers["kind"] == "layer"]
    assert not per_layer.empty
    assert (per_layer["loss_barrier_max"] < 1e-5).all()  # convex along every single-layer cut


def test_robustness_config_adds_random_directions_for_every_layer(tmp_path):
    barriers = smoke_run(CPU["paper_robustness"], tmp_path)
    cfg = load_config(CPU["paper_robustness"])
    random = barriers[barriers["kind"] == "random-direction"]
    assert random.groupby("group")["direction"].nunique().min() == cfg.analysis.random_directions
    assert set(random["group"]) == {layer.name for layer in layers_of(cfg)}


@pytest.mark.parametrize("partition", ["dirichlet", "pathological"])
def test_federated_config_runs_under_both_splits(tmp_path, partition):
    # 10 clients need more than SMOKE's 120 images for a Dirichlet split with at least 10 each
    barriers = smoke_run(CPU["paper_federated"], tmp_path, f"data.partition={partition}", "data.max_train_samples=600")
    assert (barriers["kind"] == "full").any()


# ------------------------------------------------------------------ the transformer experiments


def test_transformer_twins_are_the_papers_models():
    vit = load_config(SCALE["paper_vit"])
    assert vit.data.dataset == "cifar10" and vit.model.name == "vit"
    assert {k: vit.model.options[k] for k in ("dim", "depth", "heads", "mlp_dim", "patch_size")} == {
        "dim": 512, "depth": 6, "heads": 16, "mlp_dim": 1024, "patch_size": 4,
    }  # fmt: skip
    lm = load_config(SCALE["paper_lm"])
    assert lm.data.dataset == "shakespeare-corpus" and lm.data.seq_len == 256
    sizes = {k: lm.model.options[k] for k in ("n_layer", "n_head", "n_embd")}
    assert sizes == {"n_layer": 12, "n_head": 12, "n_embd": 768}
    for name in TRANSFORMERS:
        cpu, twin = load_config(CPU[name]), load_config(SCALE[name])
        assert 0 < twin.simulation.num_gpus < 1
        assert (twin.strategy.name, twin.federation.init, twin.analysis.layer_unit) == (
            cpu.strategy.name, cpu.federation.init, cpu.analysis.layer_unit,
        )  # fmt: skip
        assert twin.analysis.alphas == cpu.analysis.alphas and twin.analysis.bases == cpu.analysis.bases


def test_vit_config_is_one_initialisation_two_learning_rates_every_tensor_and_random_directions(tmp_path):
    cfg = load_config(CPU["paper_vit"])
    assert cfg.federation.init == "same" and len(set(cfg.federation.lr_per_client)) == 2
    assert cfg.strategy.name == "local" and cfg.analysis.alphas == 11 and cfg.analysis.random_directions > 0
    barriers = smoke_run(CPU["paper_vit"], tmp_path)
    tensors = model_layers(new_model(cfg), "tensor")
    per_layer = barriers[barriers["kind"] == "layer"]
    assert set(per_layer["group"]) == {layer.name for layer in tensors}
    assert set(per_layer["layer_unit"]) == {"tensor"} and set(per_layer["base"]) == {"a", "b"}
    assert (barriers["kind"] == "full").any() and (barriers["kind"] == "random-direction").any()


def test_lm_config_measures_two_initialisations_from_round_zero_on_the_corpus(tmp_path):
    cfg = load_config(CPU["paper_lm"])
    assert cfg.federation.init == "per-client" and cfg.strategy.name == "local"
    assert cfg.data.dataset == "shakespeare-corpus" and cfg.analysis.every == 1
    barriers = smoke_run(CPU["paper_lm"], tmp_path)
    assert sorted(barriers["round"].unique()) == [0, 1]  # the two initialisations, then after training
    assert set(barriers["task"]) == {"language"}
    start = barriers[barriers["round"] == 0]
    assert {"layer", "full"} <= set(start["kind"])


def test_pythia_config_shape_runs_offline_on_two_tiny_gpt_neox_checkpoints(tmp_path, pythia_pair):
    cfg = load_config(PYTHIA)
    assert (cfg.federation.rounds, cfg.federation.init, cfg.strategy.name) == (0, "checkpoints", "local")
    assert cfg.model.name == "hf:EleutherAI/pythia-410m"
    assert [c.removeprefix("hf:EleutherAI/") for c in cfg.federation.init_checkpoints] == [
        "pythia-410m", "pythia-410m-deduped",
    ]  # fmt: skip
    barriers = smoke_run(PYTHIA, tmp_path, *pythia_stand_in(pythia_pair()), "federation.rounds=0")
    assert set(barriers["round"]) == {0} and set(barriers["task"]) == {"language"}
    assert {"layer", "full"} <= set(barriers["kind"])
    assert (barriers.loc[barriers["kind"] == "full", "loss_barrier_mid"].abs() > 0).all()  # two different models


def test_pythia_text_windows_are_next_token_pairs():
    spec = importlib.util.spec_from_file_location("pythia_text", SIMULATIONS / "paper_scale" / "pythia_text.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x, y = module.token_windows(torch.arange(10), 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(ValueError, match="fewer than one window"):
        module.token_windows(torch.arange(3), 3)
