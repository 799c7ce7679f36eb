"""The language-model task through the whole pipeline, on a user's language dataset and model (callables):
each table says which task it measures, a language row adds its perplexity and counts tokens, the
comparison and its summary report perplexity, reports and figures name the next-token accuracy, the
barrier command evaluates windows of text, and a language dataset callable's mistakes are clear errors.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.serverapp.strategy import FedAvg
from pngs import is_figure

from fedlayer.analysis.summary import summarise, summary_cells, summary_notes
from fedlayer.checkpoints import save_checkpoint
from fedlayer.cli import main
from fedlayer.compare import CLIENT_COLUMNS, COMPARISON_COLUMNS
from fedlayer.data import load_dataset
from fedlayer.errors import DataError
from fedlayer.models import build_model
from fedlayer.results import PERPLEXITY, TASK, perplexity, read_run, table_task, task_terms
from fedlayer.task_kinds import CLASSIFICATION, LANGUAGE
from strategies import BarrierAnalysis

WINDOW = 8
LANGUAGE_FILE = """\
import numpy as np
import torch
from torch import nn

TEXT = "the cat sat on the mat. " * 160
VOCABULARY = sorted(set(TEXT))
WINDOW = 8


def load():
    ids = np.array([VOCABULARY.index(c) for c in TEXT])
    starts = np.arange(0, len(ids) - WINDOW - 1, WINDOW)
    x = np.stack([ids[s : s + WINDOW] for s in starts])
    y = np.stack([ids[s + 1 : s + WINDOW + 1] for s in starts])  # the next character at each position
    cut = len(x) * 4 // 5
    return {
        "train_x": x[:cut], "train_y": y[:cut], "test_x": x[cut:], "test_y": y[cut:],
        "num_classes": len(VOCABULARY), "groups": np.arange(cut) % 3,
    }


class Bigram(nn.Module):
    def __init__(self, vocab_size, dim):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.hidden = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, vocab_size)

    def forward(self, tokens):
        return self.fc(torch.tanh(self.hidden(self.embed(tokens))))


def model(vocab_size, dim=16):
    return Bigram(vocab_size, dim)
"""
CONFIG = """\
seed = 0
[data]
dataset = "{file}:load"
partition = "natural"
[model]
name = "{file}:model"
[federation]
clients = 3
rounds = 2
batch_size = 16
optimizer = "adam"
lr = 0.01
[strategy]
name = "fedper"
[analysis]
samples = 16
alphas = 3
"""


@pytest.fixture(scope="module")
def language_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("language") / "chars.py"
    path.write_text(LANGUAGE_FILE)
    return path


@pytest.fixture
def config(tmp_path, language_file) -> Path:
    path = tmp_path / "language.toml"
    path.write_text(CONFIG.format(file=language_file))
    return path


@pytest.fixture(scope="module")
def language_run(tmp_path_factory, language_file) -> Path:
    """Two rounds of fedper with per-round analysis on the language callables, in process (run once)."""
    from inprocess_grid import in_process_engine

    import fedlayer.simulation

    folder = tmp_path_factory.mktemp("language-run")
    (folder / "language.toml").write_text(CONFIG.format(file=language_file))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fedlayer.simulation, "simulate", in_process_engine)
        assert main(["run", str(folder / "language.toml"), "--out", str(folder / "run")]) == 0
    return folder / "run"


# -- a run ---------------------------------------------------------------------------------------------------
def test_every_metrics_row_names_the_language_task_its_perplexity_and_its_tokens(language_run):
    metrics = pd.read_parquet(language_run / "metrics.parquet")
    assert set(metrics[TASK]) == {LANGUAGE}
    measured = metrics[metrics["status"] == "ok"]
    np.testing.assert_allclose(measured[PERPLEXITY], np.exp(measured["loss"]), rtol=1e-12)
    assert (metrics["num_predictions"] == WINDOW * metrics["num_examples"]).all()
    first, last = (metrics[(metrics["client"] == "global") & (metrics["round"] == r)].iloc[0] for r in (0, 2))
    assert last["loss"] < first["loss"] and last["accuracy"] > first["accuracy"]  # it learns the text


def test_barrier_tables_of_a_language_run_say_so(language_run):
    for name in ("barriers", "curves"):
        table = pd.read_parquet(language_run / f"{name}.parquet")
        assert list(table.columns[:2]) == ["round", TASK] and set(table[TASK]) == {LANGUAGE}
        assert sorted(table["round"].unique()) == [1, 2]


def test_the_report_and_figures_of_a_language_run_speak_of_tokens_and_perplexity(language_run):
    assert main(["report", str(language_run)]) == 0
    report = (language_run / "report.md").read_text()
    assert "| model | next-token accuracy (%) | loss | perplexity | tokens |" in report
    assert "next-token error barrier (pp)" in report and "accuracy (%) | loss | examples" not in report
    metrics = read_run(language_run).metrics
    final = metrics[(metrics["client"] == "global") & (metrics["round"] == 2)].iloc[0]
    assert f"| {final[PERPLEXITY]:.2f} | {int(final['num_predictions'])} |" in report
    assert "### Test next-token accuracy and perplexity per round" in report
    assert is_figure(language_run / "plots" / "accuracy.png")


# -- a comparison ---------------------------------------------------------------------------------------------
def test_a_language_comparison_reports_perplexity_with_the_next_token_accuracy(tmp_path, config, in_process, capsys):
    out = tmp_path / "cmp"
    args = ["compare", str(config), "--strategies", "fedavg,fedper", "--out", str(out)]
    args += ["--set", "federation.rounds=1", "--set", "analysis.every=0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "next-token" in printed and "perplexity" in printed  # the terminal's summary (headers may wrap)
    table = pd.read_parquet(out / "comparison.parquet")
    assert tuple(table.columns) == COMPARISON_COLUMNS and set(table[TASK]) == {LANGUAGE}
    np.testing.assert_allclose(table["global_perplexity"], np.exp(table["global_loss"]), rtol=1e-12)
    personal = table.loc[table["round"] > 0, "personal_perplexity_mean"]  # round 0: the initial model alone
    assert personal.notna().all() and (personal > 1).all()
    clients = pd.read_parquet(out / "clients.parquet")
    assert tuple(clients.columns) == CLIENT_COLUMNS and set(clients[TASK]) == {LANGUAGE}
    np.testing.assert_allclose(clients[PERPLEXITY], np.exp(clients["loss"]), rtol=1e-12)
    summary = summarise(table, "fedavg")
    headers, rows, _ = summary_cells(summary)
    assert "global perplexity" in headers and "personalised next-token accuracy (%)" in headers
    assert any("Language model" in note for note in summary_notes(summary))
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "personalised perplexity" in report and "Final-round next-token accuracy per strategy" in report


def test_a_classification_comparison_has_no_perplexity_in_its_summary():
    """A comparison written before tables named their task reads as classification, without perplexity."""
    table = pd.DataFrame(
        {
            "strategy": ["fedavg", "fedper"] * 2,
            "seed": 0,
            "round": [1, 1, 2, 2],
            "global_accuracy": [0.5, 0.4, 0.6, 0.5],
            "global_loss": 1.0,
            "personal_accuracy_mean": [0.5, 0.6, 0.6, 0.7],
        }
    )
    summary = summarise(table, "fedavg")
    assert summary.task == CLASSIFICATION
    headers, _, _ = summary_cells(summary)
    assert "global accuracy (%)" in headers and not any("perplexity" in h for h in headers)
    assert "global_perplexity_mean" not in summary.table


def test_perplexity_is_exp_loss_on_language_rows_only():
    assert perplexity(2.0, LANGUAGE) == pytest.approx(math.exp(2.0))
    assert math.isnan(perplexity(2.0, CLASSIFICATION)) and math.isnan(perplexity(math.nan, LANGUAGE))
    assert perplexity(800.0, LANGUAGE) == math.inf
    assert table_task(pd.DataFrame({"round": [0]})) == CLASSIFICATION  # a table from before the column
    assert task_terms(LANGUAGE).error == "next-token error" and task_terms(CLASSIFICATION).counted == "examples"


# -- the barrier analysis and the barrier command --------------------------------------------------------------
def test_barrier_analysis_rows_name_the_task_of_their_data(language_file):
    data = load_dataset(f"{language_file}:load")
    model = build_model(f"{language_file}:model", data.input_shape, data.num_classes, task=data.task)
    pair = (data.test_x[:8], data.test_y[:8])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*pair), batch_size=4)
    for given in (pair, loader):
        assert BarrierAnalysis(FedAvg(), model, given)._task() == LANGUAGE


def test_the_barrier_command_interpolates_two_language_models_on_test_windows(tmp_path, language_file, capsys):
    data = load_dataset(f"{language_file}:load")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(f"{language_file}:model", data.input_shape, data.num_classes, task=data.task)
        paths.append(save_checkpoint(model.state_dict(), tmp_path / f"model-{seed}.safetensors"))
    out = tmp_path / "barrier"
    args = ["barrier", *map(str, paths), "--model", f"{language_file}:model", "--dataset", f"{language_file}:load"]
    assert main([*args, "--samples", "10", "--alphas", "3", "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "next-token error A" in printed
    barriers = pd.read_parquet(out / "barriers.parquet")
    assert set(barriers[TASK]) == {LANGUAGE} and (barriers["kind"] == "layer").sum() == 6  # 3 layers, 2 bases
    assert is_figure(out / "curves.png")


# -- a language dataset callable's mistakes -------------------------------------------------------------------
BAD = {
    "shifted": ("x[:, :-1]", "y", "train_x has shape (40, 7) but train_y (40, 8); a language task needs one"),
    "floats": ("x + 0.5", "y", "train_x must be integer token ids (a language task), got dtype float64"),
    "vocabulary": ("x + 10", "y", "train_x holds token 19, outside the vocabulary 0..9 (num_classes)"),
    "flat_test": ("x", "y", "train_y has shape (40, 8) but test_y (10,); give both as (N,) class labels"),
    "cube": ("x", "y[:, :, None]", "must be integer class labels of shape (N,), or next tokens of shape (N, T)"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_language_dataset_callable_with_mismatched_shapes_is_a_clear_error(tmp_path, case):
    inputs, labels, message = BAD[case]
    test_y = "y[:10, 0]" if case == "flat_test" else labels.replace("y", "y[:10]")
    source = textwrap.dedent(
        f"""\
        import numpy as np
        def load():
            x = np.arange(400).reshape(50, 8) % 10
            y = (x + 1) % 10
            x, y = x[:40], y[:40]
            return {{"train_x": {inputs}, "train_y": {labels}, "test_x": x[:10], "test_y": {test_y},
                    "num_classes": 10}}
        """
    )
    (tmp_path / "bad.py").write_text(source)
    with pytest.raises(DataError) as error:
        load_dataset(f"{tmp_path / 'bad.py'}:load")
    assert message in str(error.value)


def test_a_language_dataset_callable_may_return_torch_datasets_of_windows(tmp_path):
    (tmp_path / "windows.py").write_text(
        textwrap.dedent(
            """\
            import torch
            from torch.utils.data import TensorDataset
            def load():
                x = torch.arange(240).reshape(30, 8) % 6
                train, test = TensorDataset(x[:24], (x[:24] + 1) % 6), TensorDataset(x[24:], (x[24:] + 1) % 6)
                return {"train": train, "test": test, "num_classes": 6}
            """
        )
    )
    data = load_dataset(f"{tmp_path / 'windows.py'}:load")
    assert data.task == LANGUAGE and data.input_shape == (8,) and data.num_classes == 6
    assert data.train_x.dtype == torch.int64 and data.train_y.shape == (24, 8)
