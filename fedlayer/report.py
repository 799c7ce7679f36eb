"""Markdown reports of a run directory or a comparison directory, with freshly drawn figures.

A run report holds the config, the partitions, the final metrics, a per-layer barrier summary and
the run's figures; a comparison report holds the summary over seeds, the comparison figures and a
link to each run's own report. Image links are relative to the report file, so the folder can be
moved or published as a whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from fedlayer.atomic import write_bytes
from fedlayer.data.partition import Partitions
from fedlayer.errors import FedlayerError
from fedlayer.plots.compare import (
    COMPARISON,
    plot_comparison,
    read_comparison,
    run_path,
    summary_cells,
    summary_table,
)
from fedlayer.plots.runs import (
    FULL_ROW,
    barrier_grid,
    describe_run,
    pairs_note,
    plot_run,
    read_config,
    read_optional,
)

RUN_MARKER = "metrics.parquet"
FIGURE_CAPTIONS = {
    "accuracy": "Test accuracy per round",
    "barrier_heatmap": "Layer-wise midpoint loss barrier per round",
    "barrier_curves": "Loss along the interpolation in the last analysed round",
    "choices": "Barrier-aware averaging choices",
    "groups": "Barriers of cumulative layer groups and sliding windows",
    "directions": "Each layer moved towards the other model against random directions of the same norm",
    "barrier_heatmaps": "Layer-wise midpoint loss barrier per strategy",
    "final": "Final-round accuracy per strategy",
}


def directory_kind(path: str | Path) -> str:
    """'run' (holds metrics.parquet) or 'comparison' (holds comparison.parquet); anything else is an error."""
    path = Path(path)
    if (path / COMPARISON).is_file():
        return "comparison"
    if (path / RUN_MARKER).is_file():
        return "run"
    what = "a directory" if path.is_dir() else "a path that does not exist" if not path.exists() else "a file"
    raise FedlayerError(
        f"{str(path)!r} is {what}, not a run directory (with {RUN_MARKER}) "
        f"or a comparison directory (with {COMPARISON})"
    )


def run_directories(compare_dir: Path, comparison: pd.DataFrame) -> list[tuple[str, int, Path]]:
    """(strategy, seed, run directory) for each run of the comparison whose directory holds a run."""
    pairs = comparison[["strategy", "seed"]].drop_duplicates().itertuples(index=False)
    found = [(s, int(seed), run_path(compare_dir, s, seed)) for s, seed in pairs]
    return [(s, seed, path) for s, seed, path in found if (path / RUN_MARKER).is_file()]


def plot_directory(path: str | Path) -> list[Path]:
    """Redraw every figure of a run, or of a comparison and each of its runs, from the stored tables."""
    path = Path(path)
    if directory_kind(path) == "run":
        return plot_run(path)
    drawn = plot_comparison(path)
    for _, _, run in run_directories(path, read_comparison(path)):
        drawn += plot_run(run)
    return drawn


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Redraw the figures and write the Markdown report (default <path>/report.md); return its path."""
    path = Path(path)
    kind = directory_kind(path)
    out = Path(out) if out is not None else path / "report.md"
    if kind == "run":
        text = run_report(path, plot_run(path), out)
    else:
        text = comparison_report(path, plot_comparison(path), out)
    return write_bytes(out, text.encode())


# -- Markdown helpers -----------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1) -> str:
    """A GitHub Markdown table; the first `left` columns left-aligned, the rest right-aligned (numbers)."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    align = [":---" if j < left else "---:" for j in range(len(headers))]
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(cell(v) for v in line) + " |" for line in lines)


def _number(value: float, digits: int = 3, scale: float = 1.0) -> str:
    return f"{value * scale:.{digits}f}" if np.isfinite(value) else "–"


def _link(target: Path, out: Path) -> str:
    """`target` relative to the folder of the report, with forward slashes, percent-encoded (a strategy
    named by a selector such as 're:conv' or 'layer1, fc' must not read as a URL scheme or end the link)."""
    return quote(Path(os.path.relpath(target.resolve(), out.parent.resolve())).as_posix(), safe="/-_.~")


def _figures(paths: Sequence[Path], out: Path) -> list[str]:
    lines = ["## Figures", ""]
    for path in paths:
        caption = FIGURE_CAPTIONS.get(path.stem, path.stem)
        lines += [f"### {caption}", "", f"![{caption}]({_link(path, out)})", ""]
    return lines


# -- run report ---------------------------------------------------------------------------------------------
def run_report(run_dir: Path, figures: Sequence[Path], out: Path) -> str:
    config = read_config(run_dir)
    metrics = read_optional(run_dir / RUN_MARKER)
    barriers = read_optional(run_dir / "barriers.parquet")
    choices = read_optional(run_dir / "choices.parquet")
    path = run_dir.resolve()
    name = f"{path.parent.name}/{path.name}" if path.name.startswith("seed-") else path.name  # a comparison's run
    lines = [f"# Run report: {name}", ""]
    if config:
        lines += [describe_run(config), ""]
    lines += _metrics_section(metrics)
    lines += _barrier_section(barriers, config)
    if choices is not None and not choices.empty:
        lines += _choices_section(choices)
    lines += _figures(figures, out)
    lines += _partitions_section(run_dir / "partitions.json")
    if config:
        lines += ["## Configuration", "", "```toml", (run_dir / "config.toml").read_text().strip(), "```", ""]
    return "\n".join(lines)


def _metrics_section(metrics: pd.DataFrame) -> list[str]:
    last = int(metrics["round"].max())
    final = metrics[metrics["round"] == last]
    glob = final[(final["split"] == "test") & (final["client"] == "global")]
    local = final[final["split"] == "local-test"]
    rows = []
    if not glob.empty:
        g = glob.iloc[0]
        rows.append(
            [
                "global model, global test set",
                _number(g["accuracy"], 1, 100),
                _number(g["loss"]),
                int(g["num_examples"]),
            ]
        )
    if not local.empty:
        acc = local["accuracy"] * 100
        rows.append(
            [
                f"personalised, mean of {len(local)} clients' local test sets",
                f"{acc.mean():.1f}",
                _number(local["loss"].mean()),
                int(local["num_examples"].sum()),
            ]
        )
        rows.append(["personalised, worst / best client", f"{acc.min():.1f} / {acc.max():.1f}", "", ""])
    lines = [
        f"## Final metrics (round {last})",
        "",
        markdown_table(["model", "accuracy (%)", "loss", "examples"], rows),
        "",
    ]
    if not local.empty:
        ordered = local.sort_values("client", key=lambda c: c.map(_client_key))
        per_client = [
            [c, _number(a, 1, 100), _number(v), int(n)]
            for c, a, v, n in zip(
                ordered["client"], ordered["accuracy"], ordered["loss"], ordered["num_examples"], strict=True
            )
        ]
        lines += [
            "Per client (personalised model, local test set):",
            "",
            markdown_table(["client", "accuracy (%)", "loss", "examples"], per_client),
            "",
        ]
    return lines


def _client_key(client: str) -> tuple[int, str]:
    return (int(client), "") if str(client).isdigit() else (1 << 30, str(client))


def _barrier_section(barriers: pd.DataFrame | None, config: dict) -> list[str]:
    lines = ["## Layer-wise barriers", ""]
    grid = barrier_grid(barriers) if barriers is not None else pd.DataFrame()
    if grid.empty:
        every = config.get("analysis", {}).get("every", "?")
        return lines + [
            f"No single-layer or full-model barriers were measured in this run (analysis.every = {every}).",
            "",
        ]
    errors = barrier_grid(barriers, "error_barrier_mid")
    last = grid.columns[-1]
    rows = [
        [
            name,
            _number(grid.loc[name, last]),
            _number(grid.loc[name].mean()),
            _number(grid.loc[name].max()),
            _number(errors.loc[name, last], 2),
        ]
        for name in grid.index
    ]
    lines += [
        f"Midpoint barrier B_mid = L(θ(½)) − ½(L_A + L_B) of each single layer (and of the full model) "
        f"between client models, {pairs_note(barriers)}; "
        f"analysed rounds {', '.join(map(str, grid.columns))}.",
        "",
        markdown_table(
            [
                "layer",
                f"loss barrier, round {last}",
                "loss barrier, mean over rounds",
                "loss barrier, max over rounds",
                f"error barrier (pp), round {last}",
            ],
            rows,
        ),
        "",
    ]
    if FULL_ROW in grid.index:
        layers = grid.drop(index=FULL_ROW)[last]
        if layers.notna().any():
            lines += [
                f"In round {last} the full-model barrier is {_number(grid.loc[FULL_ROW, last])}; the largest "
                f"single-layer barrier is {_number(layers.max())} ({layers.idxmax()}).",
                "",
            ]
    return lines


def _choices_section(choices: pd.DataFrame) -> list[str]:
    order = list(dict.fromkeys(choices["layer"]))
    stats = (
        choices.groupby("layer")
        .agg(averaged=("averaged", "sum"), rounds=("round", "nunique"), barrier=("barrier", "mean"))
        .reindex(order)
    )
    rows = [[name, f"{int(s.averaged)} of {int(s.rounds)}", _number(s.barrier)] for name, s in stats.iterrows()]
    return [
        "## Barrier-aware averaging",
        "",
        markdown_table(["layer", "rounds averaged", "mean measured barrier"], rows),
        "",
    ]


def _partitions_section(path: Path) -> list[str]:
    if not path.exists():
        return []
    parts = Partitions.load(path)
    train, test = parts.class_counts(split="train"), parts.class_counts(split="test")
    rows = [
        [c, int(train.loc[c].sum()), int(test.loc[c].sum()), int(((train.loc[c] + test.loc[c]) > 0).sum())]
        for c in train.index
    ]
    params = ", ".join(f"{k}={v}" for k, v in parts.params.items())
    dataset = f"{parts.dataset}, " if parts.dataset else ""
    return [
        "## Partitions",
        "",
        f"{dataset}{parts.method} ({params}), seed {parts.seed}: {parts.num_clients} clients, "
        f"{parts.num_classes} classes. Content hash `{parts.content_hash}`.",
        "",
        markdown_table(["client", "train", "local test", "classes"], rows),
        "",
    ]


# -- comparison report ------------------------------------------------------------------------------
def comparison_report(compare_dir: Path, figures: Sequence[Path], out: Path) -> str:
    comparison = read_comparison(compare_dir)
    headers, rows, best = summary_cells(summary_table(comparison))
    cells = [[f"**{cell}**" if (i, j) in best else cell for j, cell in enumerate(row)] for i, row in enumerate(rows)]
    lines = [
        f"# Comparison report: {compare_dir.resolve().name}",
        "",
        "## Summary",
        "",
        "Final round, mean ± std over seeds (a run's barriers: its last analysed round). Bold: the best "
        "value of each column (highest accuracy, lowest barrier). Barriers are midpoint loss barriers "
        "between client models.",
        "",
        markdown_table(headers, cells),
        "",
    ]
    lines += _figures(figures, out)
    lines += ["## Runs", ""]
    for strategy, seed, run in run_directories(compare_dir, comparison):
        report = write_report(run)
        lines.append(f"- {strategy}, seed {seed}: [report]({_link(report, out)}), [directory]({_link(run, out)})")
    return "\n".join([*lines, ""])
