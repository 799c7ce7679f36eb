"""`fedlayer partitions` end to end on digits: table, partitions.json and the label-distribution plot."""

from __future__ import annotations

from pathlib import Path

from fedlayer.cli import main
from fedlayer.data.partition import Partitions

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "digits.toml"
    path.write_text(
        f"""seed = 0

[data]
dataset = "digits"
partition = "dirichlet"
alpha = 0.5

[federation]
clients = 5

[output]
dir = "{tmp_path / "run"}"
"""
    )
    return path


def test_partitions_command_writes_json_and_plot_to_output_dir(tmp_path, capsys):
    assert main(["partitions", str(_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    parts = Partitions.load(tmp_path / "run" / "partitions.json")
    assert (parts.method, parts.params["alpha"], parts.num_clients, parts.dataset) == ("dirichlet", 0.5, 5, "digits")
    assert (tmp_path / "run" / "partitions.png").read_bytes()[:8] == PNG_MAGIC
    assert parts.content_hash[:12] in out and "partitions.json" in out and "partitions.png" in out
    for c in parts.clients:  # one table row per client with its train size
        assert f"{len(c.train_indices)}" in out


def test_overrides_and_out_dir(tmp_path):
    out_dir = tmp_path / "elsewhere"
    args = [
        "partitions",
        str(_config(tmp_path)),
        "--set",
        "data.partition=pathological",
        "--set",
        "data.classes_per_client=3",
        "--out",
        str(out_dir),
    ]
    assert main(args) == 0
    parts = Partitions.load(out_dir / "partitions.json")
    assert parts.method == "pathological" and parts.params["classes_per_client"] == 3
    assert ((parts.class_counts().to_numpy() > 0).sum(axis=1) <= 3).all()
    assert not (tmp_path / "run").exists()


def test_impossible_split_is_an_error_and_writes_nothing(tmp_path, capsys):
    assert main(["partitions", str(_config(tmp_path)), "--set", "federation.clients=5000"]) == 2
    assert "5000 clients but only 1437 samples" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_figure_names_what_a_language_partition_counts():
    import numpy as np

    from fedlayer.data.partition import make_partitions
    from fedlayer.plots.partitions import label_distribution_figure
    from fedlayer.task_kinds import LANGUAGE

    partitions = make_partitions(np.arange(60) % 6, 3, "iid", seed=0)
    image_axes = label_distribution_figure(partitions).axes[0]
    text_axes = label_distribution_figure(partitions, task=LANGUAGE).axes[0]
    assert (image_axes.get_xlabel(), image_axes.get_legend().get_title().get_text()) == ("samples", "class")
    assert (text_axes.get_xlabel(), text_axes.get_legend().get_title().get_text()) == ("windows", "next token")
