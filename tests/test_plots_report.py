"""Figures and reports drawn from stored tables alone: a synthetic run directory (3 rounds, 3 clients,
4 layers), an analysis folder (its barrier tables alone) and a comparison directory (2 strategies x
2 seeds, each with its run directory, and clients.parquet)."""

from __future__ import annotations

import io
import itertools
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from pngs import is_figure
from rich.console import Console

from fedlayer.analysis.summary import (
    FULL_ROW,
    barrier_grid,
    layer_order,
    summarise,
    summary_table,
    worst_clients_mean,
)
from fedlayer.averaged import averaged_layers
from fedlayer.cli import main
from fedlayer.commands.compare import print_summary
from fedlayer.compare import clients_table
from fedlayer.config import load_config
from fedlayer.data.partition import ClientPartition, Partitions
from fedlayer.errors import DataError, FedlayerError
from fedlayer.plots import save_figure
from fedlayer.plots.barriers import barrier_curves_figure, barrier_heatmap_figure, curves_figure, distinct_paths
from fedlayer.plots.compare import accuracy_figure, comparison_setting, plot_comparison, strategy_grids
from fedlayer.plots.directions import directions_figure
from fedlayer.plots.groups import groups_figure
from fedlayer.plots.heatmaps import barrier_panels, heatmap_size
from fedlayer.plots.marks import AVERAGED_COLOR, PERSONAL_TEXT
from fedlayer.plots.runs import plot_run
from fedlayer.report import write_report
from fedlayer.results import describe_run, directory_kind, read_run, write_parquet

LAYERS = ["conv1", "conv2", "fc1", "fc2"]
CLIENTS = ["0", "1", "2"]
ROUNDS = 3
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
RUN_PLOTS = {"accuracy.png", "barrier_heatmap.png", "barrier_curves.png", "groups.png", "directions.png"}
ANALYSIS_PLOTS = RUN_PLOTS - {"accuracy.png"}
COMPARISON_PLOTS = ["accuracy.png", "barrier_heatmaps.png", "final.png", "clients.png"]


def _metrics(rng, shift: float = 0.0) -> pd.DataFrame:
    rows = []
    for r in range(ROUNDS + 1):
        rows.append(
            {
                "round": r,
                "client": "global",
                "split": "test",
                "loss": 2.3 - 0.4 * r,
                "accuracy": min(1.0, 0.1 + 0.2 * r + shift),
                "num_examples": 360,
            }
        )
        for split, c in itertools.product(("train", "local-test"), CLIENTS if r else []):
            rows.append(
                {
                    "round": r,
                    "client": c,
                    "split": split,
                    "loss": 2.0 - 0.3 * r + rng.random() * 0.1,
                    "accuracy": min(1.0, 0.3 + 0.15 * r + shift + rng.random() * 0.1),
                    "num_examples": 100,
                }
            )
    return pd.DataFrame(rows)


def _groups(cumulative: bool) -> list[tuple[str, str, list[str]]]:
    """(group, kind, layers) as the analysis engine names them, in its order."""
    groups = [(name, "layer", [name]) for name in LAYERS] + [("full", "full", LAYERS)]
    if not cumulative:
        return groups
    groups += [(f"shallow:{k}", "shallow", LAYERS[:k]) for k in range(1, 5)]
    groups += [(f"deep:{k}", "deep", LAYERS[::-1][:k]) for k in range(1, 5)]
    groups += [(f"window:2@{LAYERS[i]}", "window", LAYERS[i : i + 2]) for i in range(3)]
    return groups


def _analysis_tables(rng, cumulative: bool, hidden: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Curves and barriers with a hump that grows with the group, in conv2 and with rounds; no rows about
    the `hidden` layers (kept on the clients, as the server's recorder leaves them out)."""
    curves, barriers = [], []
    for r, (a, b), base in itertools.product(range(1, ROUNDS + 1), itertools.combinations(CLIENTS, 2), "ab"):
        loss_a, loss_b = 1.0 + rng.random() * 0.2, 1.1 + rng.random() * 0.2
        groups = _groups(cumulative) + [(name, "random-direction", [name]) for name in LAYERS[:1]]
        for group, kind, layers in [g for g in groups if not set(g[2]) & set(hidden)]:
            hump = 0.6 * r if kind == "full" else 0.05 * r * len(layers) * (1 + ("conv2" in layers)) - 0.02
            c0 = loss_a if base == "a" or kind == "full" else loss_b + 0.1
            c1 = loss_b if base == "b" or kind == "full" else loss_a + 0.1
            ids = {
                "round": r,
                "client_a": a,
                "client_b": b,
                "group": group,
                "kind": kind,
                "layers": "|".join(layers),
                "n_layers": len(layers),
                "base": base,
                "bn": "interpolate",
                "direction": 0 if kind == "random-direction" else -1,
            }
            loss = [(1 - t) * c0 + t * c1 + 4 * t * (1 - t) * hump for t in ALPHAS]
            curves += [
                {
                    **ids,
                    "alpha": t,
                    "loss": v,
                    "error": 30 + 10 * v,
                    "loss_a": loss_a,
                    "loss_b": loss_b,
                    "error_a": 40.0,
                    "error_b": 42.0,
                }
                for t, v in zip(ALPHAS, loss, strict=True)
            ]
            mid = loss[2] - (loss_a + loss_b) / 2
            barriers.append(
                {
                    **ids,
                    "loss_barrier_mid": mid,
                    "loss_barrier_max": hump,
                    "error_barrier_mid": 10 * mid,
                    "error_barrier_max": 10 * hump,
                    "loss_a": loss_a,
                    "loss_b": loss_b,
                    "error_a": 40.0,
                    "error_b": 42.0,
                    "loss_c0": c0,
                    "loss_c1": c1,
                    "error_c0": 40.0,
                    "error_c1": 42.0,
                }
            )
    return pd.DataFrame(curves), pd.DataFrame(barriers)


def _partitions() -> Partitions:
    rng = np.random.default_rng(0)
    order = rng.permutation(300)
    clients = []
    for c, part in enumerate(np.array_split(order, 3)):
        train, test = np.sort(part[:80]), np.sort(part[80:])
        counts = np.bincount(rng.integers(0, 3 + c, size=len(part)), minlength=10)
        clients.append(ClientPartition(c, train, test, counts, np.zeros(10, dtype=np.int64)))
    return Partitions("dirichlet", {"alpha": 0.5, "test_fraction": 0.2}, 0, 10, 300, clients, dataset="digits")


def make_run(
    path,
    *,
    seed: int = 0,
    strategy: str = "fedavg",
    analysis: bool = True,
    shift: float = 0.0,
    choices: bool = False,
    cumulative: bool = True,
    hidden: tuple[str, ...] = (),
):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    overrides = [
        f"seed={seed}",
        f"strategy.name={strategy}",
        "federation.clients=3",
        f"federation.rounds={ROUNDS}",
        "data.partition=dirichlet",
        "data.alpha=0.5",
        f"analysis.every={int(analysis)}",
    ]
    (path / "config.toml").write_text(load_config(None, overrides).to_toml())
    _partitions().save(path / "partitions.json")
    write_parquet(_metrics(rng, shift), path / "metrics.parquet")
    if analysis:
        curves, barriers = _analysis_tables(rng, cumulative, hidden)
        write_parquet(curves, path / "curves.parquet")
        write_parquet(barriers, path / "barriers.parquet")
    if choices:
        barrier = {(r, name): 0.03 * r * (i + 1) for r in range(1, ROUNDS + 1) for i, name in enumerate(LAYERS)}
        table = pd.DataFrame(
            [{"round": r, "layer": name, "barrier": b, "averaged": b < 0.1} for (r, name), b in barrier.items()]
        )
        write_parquet(table, path / "choices.parquet")
    return path


def make_comparison(path):
    rows = []
    """fedavg and fedper (its head fc2 kept on the clients, so never measured) x seeds 0 and 1."""
    for (strategy, shift, hidden), seed in itertools.product((("fedavg", 0.0, ()), ("fedper", 0.05, ("fc2",))), (0, 1)):
        run = make_run(
            path / "runs" / strategy / f"seed-{seed}",
            seed=seed,
            strategy=strategy,
            shift=shift,
            cumulative=False,
            hidden=hidden,
        )
        metrics = pd.read_parquet(run / "metrics.parquet")
        barriers = pd.read_parquet(run / "barriers.parquet")
        for r in range(ROUNDS + 1):
            glob = metrics[(metrics["round"] == r) & (metrics["split"] == "test")].iloc[0]
            local = metrics[(metrics["round"] == r) & (metrics["split"] == "local-test")]["accuracy"]
            here = barriers[barriers["round"] == r]
            rows.append(
                {
                    "strategy": strategy,
                    "seed": seed,
                    "round": r,
                    "global_accuracy": glob["accuracy"],
                    "global_loss": glob["loss"],
                    "personal_accuracy_mean": local.mean(),
                    "personal_accuracy_std": local.std(),
                    "personal_accuracy_worst10": worst_clients_mean(local),
                    "full_barrier_mean": here.loc[here["kind"] == "full", "loss_barrier_mid"].mean(),
                    "layer_barrier_mean": here.loc[here["kind"] == "layer", "loss_barrier_mid"].mean(),
                }
            )
    table = pd.DataFrame(rows)
    write_parquet(table, path / "comparison.parquet")
    table.to_csv(path / "comparison.csv", index=False)
    write_parquet(clients_table(path, ["fedavg", "fedper"], [0, 1]), path / "clients.parquet")
    return path


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "run", choices=True)


@pytest.fixture
def compare_dir(tmp_path):
    return make_comparison(tmp_path / "cmp")


def test_read_run_gives_the_typed_config_and_each_table(run_dir):
    run = read_run(run_dir)
    assert run.config.strategy.name == "fedavg" and run.config.federation.clients == 3
    assert describe_run(run.config) == "fedavg · cnn on digits · dirichlet (α=0.5) · 3 clients · seed 0"
    for name in ("metrics", "barriers", "curves", "choices"):
        pd.testing.assert_frame_equal(getattr(run, name), pd.read_parquet(run_dir / f"{name}.parquet"))
    assert run.partitions == run_dir / "partitions.json"


def _analysis_folder(run_dir, path):
    """What the barrier-analysis wrapper writes inside a Flower app of one's own: the two barrier tables alone."""
    path.mkdir()
    for name in ("curves", "barriers"):
        (path / f"{name}.parquet").write_bytes((run_dir / f"{name}.parquet").read_bytes())
    return path


def test_read_run_of_an_analysis_folder_has_no_config_and_no_metrics(run_dir, tmp_path):
    folder = _analysis_folder(run_dir, tmp_path / "analysis")
    run = read_run(folder)
    assert run.config is None and run.metrics is None and run.partitions is None
    assert describe_run(run.config) == "" and not run.curves.empty
    assert directory_kind(folder) == "analysis"


def test_plot_and_report_of_an_analysis_folder_draw_and_summarise_its_barriers(run_dir, tmp_path, capsys):
    folder = _analysis_folder(run_dir, tmp_path / "analysis")
    assert main(["plot", str(folder)]) == 0
    printed = capsys.readouterr().out.split()
    assert {p.rsplit("/", 1)[1] for p in printed} == ANALYSIS_PLOTS
    assert all(is_figure(folder / "plots" / name) for name in ANALYSIS_PLOTS)
    assert main(["report", str(folder)]) == 0
    text = (folder / "report.md").read_text()
    assert text.startswith("# Barrier analysis report: analysis")
    assert "## Layer-wise barriers" in text and "| conv2 |" in text and f"| {FULL_ROW} |" in text
    assert "## Final metrics" not in text and "```toml" not in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {link.rsplit("/", 1)[1] for link in links} == ANALYSIS_PLOTS
    assert all((folder / link).is_file() for link in links)


def test_analysis_figures_leave_out_rows_against_the_aggregate(run_dir, tmp_path):
    folder = _analysis_folder(run_dir, tmp_path / "analysis")
    barriers = pd.read_parquet(folder / "barriers.parquet")
    against = barriers.assign(client_b="aggregate", loss_barrier_mid=barriers["loss_barrier_mid"] + 100.0)
    write_parquet(pd.concat([barriers, against], ignore_index=True), folder / "barriers.parquet")
    pd.testing.assert_frame_equal(barrier_grid(pd.read_parquet(folder / "barriers.parquet")), barrier_grid(barriers))
    assert "mean over 3 client pairs" in write_report(folder).read_text()


def test_barrier_tables_without_rounds_or_clients_are_refused_with_a_data_error(run_dir, tmp_path, capsys):
    folder = tmp_path / "pair"  # what `fedlayer barrier` writes: two checkpoints, no round or clients
    folder.mkdir()
    for name in ("curves", "barriers"):
        table = pd.read_parquet(run_dir / f"{name}.parquet").drop(columns=["round", "client_a", "client_b"])
        write_parquet(table, folder / f"{name}.parquet")
    with pytest.raises(DataError, match="lacks the columns round, client_a, client_b"):
        plot_run(folder)
    assert main(["report", str(folder)]) == 2
    assert "fedlayer barrier" in capsys.readouterr().err


def test_an_empty_folder_is_not_plotted_as_a_run(tmp_path):
    with pytest.raises(DataError, match="none of metrics.parquet, barriers.parquet, curves.parquet"):
        plot_run(tmp_path)


def test_unreadable_run_directory_or_config_is_a_data_error_naming_it(run_dir, tmp_path):
    with pytest.raises(DataError, match="'.*nowhere' does not exist"):
        read_run(tmp_path / "nowhere")
    (run_dir / "config.toml").write_text("[federation]\nclients = 0\n")
    with pytest.raises(DataError, match=r"config.toml: .*federation.clients"):
        read_run(run_dir)


def test_importing_the_plots_leaves_pyplot_and_the_users_backend_alone():
    code = (
        "import sys, matplotlib, fedlayer.plots.runs, fedlayer.report; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": "svg"})


def test_grid_rows_follow_model_order_with_full_model_last(run_dir):
    barriers = pd.read_parquet(run_dir / "barriers.parquet")
    barriers = barriers.iloc[::-1].reset_index(drop=True)  # rows reversed: order is by first appearance
    assert layer_order(barriers) == LAYERS[::-1]
    grid = barrier_grid(pd.read_parquet(run_dir / "barriers.parquet"))
    assert list(grid.index) == [*LAYERS, FULL_ROW]
    assert list(grid.columns) == [1, 2, 3]
    rows = pd.read_parquet(run_dir / "barriers.parquet")
    expected = rows[(rows["group"] == "conv2") & (rows["round"] == 2) & (rows["direction"] == -1)]
    assert grid.loc["conv2", 2] == pytest.approx(expected["loss_barrier_mid"].mean())


def test_plot_run_writes_every_figure_its_tables_allow(run_dir):
    paths = plot_run(run_dir)
    assert {p.name for p in paths} == RUN_PLOTS | {"choices.png"}
    assert all(p.parent == run_dir / "plots" and is_figure(p) for p in paths)


def test_directions_figure_sets_each_layer_towards_the_other_model_against_random_directions(run_dir):
    curves = pd.read_parquet(run_dir / "curves.parquet")
    fig = directions_figure(curves)
    last = curves[(curves["round"] == ROUNDS) & (curves["base"] == "a")]
    alphas = [a for a in ALPHAS if a > 0]
    panels = [ax for ax in fig.axes if ax.patches]
    assert len(panels) == len(alphas)
    for ax, alpha in zip(panels, alphas, strict=True):
        at = last[last["alpha"] == alpha]
        towards, random = ax.patches[0].get_height(), ax.patches[1].get_height()  # the one layer with both
        assert towards == pytest.approx(at.loc[(at["kind"] == "layer") & (at["group"] == "conv1"), "loss"].mean())
        assert random == pytest.approx(at.loc[at["kind"] == "random-direction", "loss"].mean())
    assert directions_figure(curves[curves["kind"] != "random-direction"]) is None
    only_b = directions_figure(curves[curves["base"] == "b"])  # then B's layers move, against L_B
    assert "model B (L_B)" in [text.get_text() for text in only_b.axes[0].get_legend().get_texts()]


def test_run_without_barriers_still_plots_accuracy(tmp_path):
    run = make_run(tmp_path / "run", analysis=False)
    assert [p.name for p in plot_run(run)] == ["accuracy.png"]
    assert is_figure(run / "plots" / "accuracy.png")


def test_plot_command_redraws_a_run_from_stored_tables(run_dir, capsys):
    assert main(["plot", str(run_dir)]) == 0
    printed = capsys.readouterr().out.split()
    assert {p.rsplit("/", 1)[1] for p in printed} == RUN_PLOTS | {"choices.png"}
    assert all(is_figure(run_dir / "plots" / name) for name in RUN_PLOTS)


def test_plot_command_on_a_comparison_draws_it_and_its_runs(compare_dir, capsys):
    assert main(["plot", str(compare_dir)]) == 0
    printed = capsys.readouterr().out
    for name in COMPARISON_PLOTS:
        assert is_figure(compare_dir / "plots" / name) and str(compare_dir / "plots" / name) in printed
    assert is_figure(compare_dir / "runs" / "fedper" / "seed-1" / "plots" / "barrier_heatmap.png")


def test_plot_comparison_writes_its_four_figures(compare_dir):
    paths = plot_comparison(compare_dir)
    assert [p.name for p in paths] == COMPARISON_PLOTS
    assert all(is_figure(p) for p in paths)
    (compare_dir / "clients.parquet").unlink()  # a comparison made before clients.parquet: no clients figure
    assert [p.name for p in plot_comparison(compare_dir)] == COMPARISON_PLOTS[:3]


def test_comparison_figures_name_the_setting_the_strategies_share(compare_dir, tmp_path):
    comparison = pd.read_parquet(compare_dir / "comparison.parquet")
    setting = comparison_setting(compare_dir, comparison)
    assert setting == "cnn on digits · dirichlet (α=0.5) · 3 clients"
    assert setting in accuracy_figure(comparison, setting).texts[0].get_text()
    (tmp_path / "bare").mkdir()  # runs moved away: the figures still draw, without the line
    assert comparison_setting(tmp_path / "bare", comparison) == ""


def test_strategy_grids_average_seeds_and_keep_only_measured_layers(compare_dir):
    comparison = pd.read_parquet(compare_dir / "comparison.parquet")
    grids = strategy_grids(compare_dir, comparison)
    (fedavg, n_avg), (fedper, n_per) = grids["fedavg"], grids["fedper"]
    assert (n_avg, n_per) == (2, 2)
    assert list(fedavg.index) == [*LAYERS, FULL_ROW] and list(fedper.index) == LAYERS[:3]
    seeds = [barrier_grid(pd.read_parquet(compare_dir / f"runs/fedper/seed-{s}/barriers.parquet")) for s in (0, 1)]
    assert fedper.loc["conv2", 3] == pytest.approx((seeds[0].loc["conv2", 3] + seeds[1].loc["conv2", 3]) / 2)


def test_directory_that_is_neither_run_nor_comparison_exits_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("nothing here")
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metrics.parquet" in err and "comparison.parquet" in err and "barriers.parquet" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    with pytest.raises(FedlayerError, match="comparison.parquet"):
        write_report(tmp_path)


def test_comparison_table_without_its_columns_is_an_error(tmp_path):
    write_parquet(pd.DataFrame({"strategy": ["fedavg"], "round": [1]}), tmp_path / "comparison.parquet")
    with pytest.raises(FedlayerError, match="lacks the columns seed, global_accuracy"):
        plot_comparison(tmp_path)


def test_summary_table_has_final_round_mean_and_std_per_strategy(compare_dir):
    comparison = pd.read_parquet(compare_dir / "comparison.parquet")
    table = summary_table(comparison)
    assert list(table["strategy"]) == ["fedavg", "fedper"]
    assert list(table["seeds"]) == [2, 2]
    final = comparison[(comparison["round"] == ROUNDS) & (comparison["strategy"] == "fedper")]
    row = table.set_index("strategy").loc["fedper"]
    assert row["global_accuracy_mean"] == pytest.approx(final["global_accuracy"].mean())
    assert row["global_accuracy_std"] == pytest.approx(final["global_accuracy"].std())
    assert row["personal_accuracy_mean"] == pytest.approx(final["personal_accuracy_mean"].mean())
    assert row["layer_barrier_std"] == pytest.approx(final["layer_barrier_mean"].std())


def test_print_summary_bolds_the_best_strategy(compare_dir):
    console = Console(record=True, width=200, file=io.StringIO(), force_terminal=True)
    print_summary(summarise(pd.read_parquet(compare_dir / "comparison.parquet"), "fedavg"), console)
    styled = console.export_text(styles=True)
    assert "differs from the reference fedavg" in styled and "±" in styled
    assert re.search(r"\x1b\[1m75\.0 ± 0\.0 \*", styled)  # fedper: the best global accuracy, 5 points up each seed
    assert not re.search(r"\x1b\[1m70\.0", styled)
    assert "Paired differences to fedavg" in styled and "95 % confidence interval" in styled


def test_run_report_has_config_tables_and_existing_images(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.md"
    text = path.read_text()
    assert "```toml" in text and 'name = "fedavg"' in text
    assert _partitions().content_hash in text
    assert "| client |" in text and "| conv2 |" in text and f"| {FULL_ROW} |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {link.rsplit("/", 1)[1] for link in links} == RUN_PLOTS | {"choices.png"}
    assert all((run_dir / link).is_file() for link in links)
    captions = re.findall(r"!\[([^\]]*)\]", text)
    assert all(" " in caption for caption in captions)  # a sentence, not a file's stem


def test_report_elsewhere_links_relative_to_the_report(run_dir, tmp_path):
    out = tmp_path / "docs" / "run.md"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", out.read_text())
    assert links and all(not link.startswith("/") and (out.parent / link).is_file() for link in links)


def test_comparison_report_has_summary_plots_and_run_links(compare_dir):
    text = write_report(compare_dir).read_text()
    assert "| strategy |" in text and "fedper" in text and "±" in text
    assert "## Paired differences to fedavg" in text and "95 % confidence interval" in text
    assert "| fedper | global accuracy (%) | +5.0 pp |" in text
    assert "## Clients" in text
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert {"plots/final.png", "plots/clients.png", "clients.parquet"} <= set(targets)
    assert "runs/fedavg/seed-1/report.md" in targets
    assert all((compare_dir / t).exists() for t in targets)


def test_comparison_report_takes_the_reference_from_the_comparisons_config(compare_dir):
    config = load_config(None, ["compare.strategies=fedavg,fedper", "compare.reference=fedper"])
    (compare_dir / "config.toml").write_text(config.to_toml())
    text = write_report(compare_dir).read_text()
    assert "differs from the reference fedper" in text and "## Paired differences to fedper" in text
    assert "| fedavg | global accuracy (%) | -5.0 pp |" in text


def test_report_of_a_one_seed_comparison_says_no_interval_can_be_given(compare_dir):
    comparison = pd.read_parquet(compare_dir / "comparison.parquet")
    write_parquet(comparison[comparison["seed"] == 0], compare_dir / "comparison.parquet")
    text = write_report(compare_dir).read_text()
    assert "One seed: no confidence interval and no paired test can be given" in text
    assert "±" not in text.split("## Figures")[0] and "Paired differences" not in text


def test_run_report_without_analysis_says_so(tmp_path):
    text = write_report(make_run(tmp_path / "run", analysis=False)).read_text()
    assert "analysis.every" in text and "barrier_heatmap.png" not in text


# -- the variable under study: averaged and personal layers, both bases, legible curves ----------------------
def _texts(fig) -> list[str]:
    return [text.get_text() for ax in fig.axes for text in ax.texts]


def _styled(labels) -> dict[str, tuple[str, str, str]]:
    """Per label text: its colour (hex), weight and style, as the marks set them."""
    return {t.get_text(): (to_hex(t.get_color()), t.get_fontweight(), t.get_fontstyle()) for t in labels}


AVERAGED_STYLE = (to_hex(AVERAGED_COLOR), "bold", "normal")
PERSONAL_STYLE = (to_hex(PERSONAL_TEXT), "normal", "italic")
PLAIN_STYLE = (to_hex("black"), "normal", "normal")


def _hatched(fig) -> int:
    return sum(1 for ax in fig.axes for patch in ax.patches if patch.get_hatch())


def test_heatmap_shows_each_base_in_its_own_panel(run_dir):
    barriers = pd.read_parquet(run_dir / "barriers.parquet")
    at = (barriers["group"] == "conv1") & (barriers["round"] == 2) & (barriers["kind"] == "layer")
    barriers.loc[at & (barriers["base"] == "a"), "loss_barrier_mid"] = -0.49  # opposite signs, as seen in a run
    barriers.loc[at & (barriers["base"] == "b"), "loss_barrier_mid"] = 0.44
    fig = barrier_heatmap_figure(barriers)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["mean over 3 client pairs, base a", "mean over 3 client pairs, base b"]
    assert {"-0.49", "0.44"} <= set(_texts(fig)) and "-0.03" not in _texts(fig)  # not their mean
    assert "per base" in fig.texts[0].get_text()
    only_a = barrier_heatmap_figure(barriers[barriers["base"] == "a"])
    assert [ax.get_title() for ax in only_a.axes if ax.get_title()] == ["mean over 3 client pairs, base a"]


@pytest.mark.parametrize("prefix", ["", "transformer.h.0.attn."])
def test_side_by_side_heatmaps_are_about_equally_wide_whatever_the_length_of_the_layer_names(tmp_path, prefix):
    """The first panel also holds the row names: a transformer's long ones must not squeeze its heatmap."""
    names = [f"{prefix}c_{i}" for i in range(12)] + [FULL_ROW]
    grid = pd.DataFrame(np.linspace(-0.2, 0.2, 13 * 5).reshape(13, 5), index=names, columns=range(1, 6))
    grids = {f"strategy {i}": grid for i in range(6)}
    fig = Figure(figsize=heatmap_size(len(names), 5, len(grids), names), layout="constrained")
    barrier_panels(fig, grids)
    save_figure(fig, tmp_path / "heatmaps.png")  # the layout as drawn into the file
    widths = [ax.get_position().width for ax in fig.axes if ax.get_title()]
    assert len(widths) == 6 and max(widths) / min(widths) < 1.2


def test_a_fixed_selection_is_marked_in_every_layer_wise_figure(tmp_path):
    run = read_run(make_run(tmp_path / "run", strategy="fedper"))  # fedper: the body averaged, fc2 personal
    averaged = averaged_layers(run)
    assert list(averaged.index) == LAYERS and list(averaged.columns) == [1, 2, 3]
    assert averaged.loc["fc2"].eq(False).all() and averaged.drop(index="fc2").all().all()
    expected = {"conv1": AVERAGED_STYLE, "conv2": AVERAGED_STYLE, "fc1": AVERAGED_STYLE, "fc2": PERSONAL_STYLE}

    heatmap = barrier_heatmap_figure(run.barriers, averaged=averaged)
    labels = _styled(heatmap.axes[0].get_yticklabels())
    assert labels == expected and _styled(heatmap.axes[1].get_yticklabels()) == {FULL_ROW: PLAIN_STYLE}
    assert _hatched(heatmap) == 2 * ROUNDS  # fc2 in every round, on both bases' panels
    legend = _styled(heatmap.legends[0].get_texts())
    assert legend == {"averaged": AVERAGED_STYLE, "kept personal (hatched)": PERSONAL_STYLE}

    curves = barrier_curves_figure(run.curves, averaged=averaged)
    entries = _styled(curves.axes[0].get_legend().get_texts())
    assert {name: entries[name] for name in LAYERS} == expected
    assert entries["averaged"] == AVERAGED_STYLE and entries["kept personal"] == PERSONAL_STYLE

    directions = directions_figure(run.curves, averaged=averaged)
    assert _styled(directions.axes[-1].get_xticklabels())["conv1"] == AVERAGED_STYLE  # the layer with directions
    assert "averaged" in [t.get_text() for t in directions.axes[0].get_legend().get_texts()]

    windows = groups_figure(run.barriers, averaged=averaged).axes[1]
    starts = _styled(windows.get_xticklabels())  # a window is averaged when all its layers are
    assert starts == {"conv1": AVERAGED_STYLE, "conv2": AVERAGED_STYLE, "fc1": PLAIN_STYLE}
    assert "partly averaged" in [t.get_text() for t in windows.get_legend().get_texts()]


def test_barrier_aware_marks_follow_its_choice_in_each_round(tmp_path):
    run = read_run(make_run(tmp_path / "run", strategy="barrier-aware", choices=True))
    averaged = averaged_layers(run)  # averaged when 0.03 * round * (layer position + 1) < 0.1
    assert averaged.to_dict("index") == {
        "conv1": {1: True, 2: True, 3: True},
        "conv2": {1: True, 2: False, 3: False},
        "fc1": {1: True, 2: False, 3: False},
        "fc2": {1: False, 2: False, 3: False},
    }
    fig = barrier_heatmap_figure(run.barriers, averaged=averaged)
    labels = _styled(fig.axes[0].get_yticklabels())
    assert [labels[name] for name in LAYERS] == [AVERAGED_STYLE, PLAIN_STYLE, PLAIN_STYLE, PERSONAL_STYLE]
    assert _hatched(fig) == 2 * 7  # the personal cells of the three rounds, per base
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "averaged",
        "partly averaged",
        "kept personal (hatched)",
    ]
    last_round = _styled(barrier_curves_figure(run.curves, averaged=averaged).axes[0].get_legend().get_texts())
    assert [last_round[name] for name in LAYERS] == [AVERAGED_STYLE, *[PERSONAL_STYLE] * 3]
    text = write_report(run.path).read_text()
    assert "a layer of `all` is averaged when its measured barrier between the clients is below 0.1" in text
    assert "| 1 | conv1, conv2, fc1 | fc2 |" in text and "| 2–3 | conv1 | conv2, fc1, fc2 |" in text


def test_figures_of_a_folder_without_averaging_carry_no_marks(run_dir, tmp_path):
    run = read_run(_analysis_folder(run_dir, tmp_path / "analysis"))
    assert averaged_layers(run) is None
    fig = barrier_heatmap_figure(run.barriers, averaged=None)
    assert _hatched(fig) == 0 and not fig.legends
    assert set(_styled(fig.axes[0].get_yticklabels()).values()) == {PLAIN_STYLE}


def test_run_report_names_the_averaged_and_personal_layers_and_each_base(tmp_path):
    text = write_report(make_run(tmp_path / "run", strategy="fedper")).read_text()
    section = text.split("## Averaged and personal layers")[1].split("##")[0]
    assert "fedper averages the layers `body` selects, every round" in section
    assert "| rounds | averaged | kept personal |" in section and "| 1–3 | conv1, conv2, fc1 | fc2 |" in section
    assert f"loss barrier, round {ROUNDS}, base a | loss barrier, round {ROUNDS}, base b" in text
    assert re.search(r"\| fc2 \|( [-0-9.]+ \|){5} 0 \|", text)  # averaged in none of the 3 analysed rounds
    assert re.search(rf"\| conv1 \|( [-0-9.]+ \|){{5}} {ROUNDS} \|", text)


def _one_pair(run_dir) -> pd.DataFrame:
    """Curves of one round and client pair, as `fedlayer barrier` writes them for two checkpoints."""
    curves = pd.read_parquet(run_dir / "curves.parquet")
    one = curves[(curves["round"] == ROUNDS) & (curves["client_a"] == "0") & (curves["client_b"] == "1")]
    return one.drop(columns=["round", "client_a", "client_b"])


def test_checkpoint_curves_draw_each_family_apart_once_with_the_full_models_chord(run_dir):
    curves = _one_pair(run_dir)
    assert set(distinct_paths(curves)["group"]) == set(curves["group"]) - {"shallow:4", "deep:4"}  # = full
    fig = curves_figure(curves)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(",")[0] for ax in panels] == [
        "single layers", "cumulative groups", "windows and selected groups"
    ] * 2  # fmt: skip
    chord = "full model's chord (1−α)·c(0) + α·c(1)"
    for ax in panels:
        labels = [line.get_label() for line in ax.get_lines()]
        assert len(labels) == len(set(labels)) and FULL_ROW in labels and chord in labels
        assert not {"shallow:4", "deep:4"} & set(labels)
    single, cumulative, windows = panels[:3]
    line = {line.get_label(): line for ax in panels[:3] for line in ax.get_lines()}
    assert {line[name].get_linestyle() for name in LAYERS} == {"-"}
    assert {line[f"window:2@{name}"].get_linestyle() for name in LAYERS[:3]} == {"--"}
    assert line[chord].get_linestyle() == "--" and line[chord].get_color() == "black"
    base_a = curves[curves["base"] == "a"]
    assert list(line[chord].get_ydata()) == pytest.approx([base_a["loss_a"].mean(), base_a["loss_b"].mean()])
    assert "random directions (mean)" in [x.get_label() for x in single.get_lines()]
    assert {x.get_label() for x in cumulative.get_lines()} >= {"shallow:1", "deep:3"}
    assert len({to_hex(line[name].get_color()) for name in LAYERS}) == len(LAYERS)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 3 and "conv1" in [t.get_text() for t in legends[0].get_texts()]
