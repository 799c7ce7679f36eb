"""Federated Shakespeare end to end: two-round runs of the shipped config (LEAF's natural split, per-round
barrier analysis) with LEAF's character LSTM and with a GPT, cut to a few clients and windows, and the
config with its paper-scale twin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from shipped_configs import SIMULATIONS, layers_of

from fedlayer.checkpoints import load_checkpoint
from fedlayer.cli import main
from fedlayer.compare import comparison_settings
from fedlayer.config import load_config
from fedlayer.results import PERPLEXITY, TASK
from fedlayer.task_kinds import LANGUAGE
from strategies import build_strategy

CONFIG = SIMULATIONS / "shakespeare.toml"
TWIN = SIMULATIONS / "paper_scale" / "shakespeare.toml"
SMALL = [  # two rounds of 4 roles, a few windows each to measure on
    "federation.clients=4",
    "federation.rounds=2",
    "federation.local_epochs=1",
    "data.max_train_samples=2000",
    "data.max_test_samples=32",
    "analysis.every=1",
    "analysis.pairs=2",
    "analysis.samples=8",
    "analysis.alphas=3",
]


def shakespeare_run(tmp_path, *overrides: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """`fedlayer run` of the shipped config, cut down (SMALL) and changed by `overrides`; its metrics, its
    barriers and its report."""
    out = tmp_path / "run"
    settings = [arg for setting in [*SMALL, *overrides] for arg in ("--set", setting)]
    assert main(["run", str(CONFIG), *settings, "--out", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    return (
        pd.read_parquet(out / "metrics.parquet"),
        pd.read_parquet(out / "barriers.parquet"),
        (out / "report.md").read_text(),
    )


def check_language_run(metrics: pd.DataFrame, barriers: pd.DataFrame, report: str) -> None:
    """Every row of a two-round run with per-round analysis measures the language task; the report says so."""
    assert set(metrics[TASK]) == set(barriers[TASK]) == {LANGUAGE}
    assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2]
    assert set(metrics.loc[metrics["split"] == "local-test", "client"]) == {"0", "1", "2", "3"}
    np.testing.assert_allclose(metrics[PERPLEXITY], np.exp(metrics["loss"]), rtol=1e-12)
    glob = metrics[metrics["client"] == "global"].set_index("round")
    assert (glob["num_predictions"] == 32 * 80).all()  # 32 test windows of 80 characters
    assert glob.loc[0, PERPLEXITY] == pytest.approx(80, rel=0.2)  # an initial model guesses among 80 characters
    assert glob.loc[2, "loss"] < glob.loc[0, "loss"]
    assert sorted(barriers["round"].unique()) == [1, 2] and (barriers["kind"] == "full").any()
    assert "| model | next-token accuracy (%) | loss | perplexity | tokens |" in report


def test_two_rounds_of_leafs_character_lstm_with_per_round_analysis(tmp_path, in_process):
    metrics, barriers, report = shakespeare_run(
        tmp_path, "model.name=lstm", "model.options={ hidden_size = 32 }", "strategy.name=fedper"
    )
    check_language_run(metrics, barriers, report)
    assert set(barriers.loc[barriers["kind"] == "layer", "group"]) == {"embedding", "lstm.0", "lstm.1", "fc"}


def test_two_rounds_of_a_gpt_keeping_its_layernorms_personal(tmp_path, in_process):
    options = "model.options={ n_layer = 1, n_head = 2, n_embd = 32, block_size = 80, dropout = 0.0 }"
    metrics, barriers, report = shakespeare_run(tmp_path, options, "strategy.name=all,-norm")
    check_language_run(metrics, barriers, report)
    personal = load_checkpoint(tmp_path / "run" / "checkpoints" / "client-0-personal.safetensors")
    norms = {key.rpartition(".")[0] for key in personal}
    assert norms == {"transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.ln_f"}  # the LayerNorms alone


def test_the_config_compares_its_strategies_on_leafs_split_and_its_twin_scales_it_up():
    cpu, twin = load_config(CONFIG), load_config(TWIN)
    for cfg in (cpu, twin):
        assert (cfg.data.dataset, cfg.data.partition, cfg.model.name) == ("shakespeare", "natural", "gpt")
        assert cfg.analysis.every >= 1 and {"layers", "full"} <= set(cfg.analysis.groups)
        settings = comparison_settings(cfg)
        assert settings.reference == "fedavg"
        assert {"fedavg", "fedper", "lg-fedavg", "all,-norm"} <= set(settings.strategies)
        layers = layers_of(cfg)
        for name in settings.strategies:
            build_strategy(name, layers=layers)
    assert cpu.compare.strategies == twin.compare.strategies and cpu.data.seq_len == twin.data.seq_len
    assert twin.federation.clients > cpu.federation.clients and 0 < twin.simulation.num_gpus < 1
    assert twin.model.options["n_layer"] > cpu.model.options["n_layer"]


@pytest.mark.slow
def test_a_shakespeare_run_on_flowers_simulation_engine(tmp_path, capsys):
    """Ray's workers build the language model and data from the run's config, as the in-process run does."""
    settings = [*SMALL, "model.name=lstm", "model.options={ hidden_size = 32 }", "analysis.every=2"]
    args = [arg for setting in settings for arg in ("--set", setting)]
    assert main(["run", str(CONFIG), *args, "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert set(metrics[TASK]) == {LANGUAGE} and sorted(metrics["round"].unique()) == [0, 1, 2]
    assert "next-token accuracy" in capsys.readouterr().err  # the progress lines
