"""Markdown reports of a run directory or a comparison directory, with freshly drawn figures.

A run report holds the config, which layers were averaged and which stayed personal (per round when
that changes), the partitions, the final metrics, a per-layer barrier summary and the run's figures;
an analysis folder's report (barrier tables alone, written inside a Flower app of one's own) holds the
barrier sections and figures; a comparison report holds the summary over seeds (95 % confidence
intervals and paired t-tests against the reference from two seeds on), the comparison figures and a
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

from fedlayer.analysis.summary import (
    FULL_ROW,
    SIGNIFICANT_MARK,
    averaging_rows,
    barrier_grid,
    choices_summary,
    difference_cells,
    layer_summary,
    pairs_note,
    summarise,
    summary_cells,
    summary_notes,
    summary_title,
)
from fedlayer.atomic import write_bytes
from fedlayer.averaged import averaged_layers, periods
from fedlayer.config import Config
from fedlayer.data.partition import Partitions
from fedlayer.plots.compare import plot_comparison
from fedlayer.plots.runs import draw_run
from fedlayer.protocol import client_order
from fedlayer.results import (
    CLIENTS,
    NUM_PREDICTIONS,
    PERPLEXITY,
    RunRecord,
    TaskTerms,
    comparison_runs,
    describe_run,
    directory_kind,
    read_compare_settings,
    read_comparison,
    read_run,
    table_task,
    task_terms,
)
from strategies.presets import get_preset

FIGURE_CAPTIONS = {
    "accuracy": "Test {accuracy}{and_perplexity} per round",
    "barrier_heatmap": "Layer-wise midpoint loss barrier per round",
    "barrier_curves": "Loss along the interpolation in the last analysed round",
    "choices": "Barrier-aware averaging choices",
    "groups": "Barriers of cumulative layer groups and sliding windows",
    "directions": "Each layer moved towards the other model against random directions of the same norm",
    "barrier_heatmaps": "Layer-wise midpoint loss barrier per strategy",
    "final": "Final-round {accuracy} per strategy",
    "clients": "Personalised {accuracy} of every client in the final round, per strategy",
    "communication": "Test {accuracy} against the megabytes communicated",
}
"""Caption of each figure, by file name: "{accuracy}" is what the task calls its accuracy (`TaskTerms`), and
"{and_perplexity}" names the perplexity a language run's accuracy figure adds."""


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Redraw the figures and write the Markdown report (default <path>/report.md); return its path."""
    path = Path(path)
    kind = directory_kind(path)
    out = Path(out) if out is not None else path / "report.md"
    if kind in ("run", "analysis"):
        run = read_run(path)
        text = run_report(run, draw_run(run), out)
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


def _plain(text: str) -> str:
    """`text` with Markdown's emphasis marker escaped: a '*' (significance, a glob selector) shows as such."""
    return text.replace("*", "\\*")


def _number(value: float, digits: int = 3, scale: float = 1.0) -> str:
    return f"{value * scale:.{digits}f}" if np.isfinite(value) else "–"


def _link(target: Path, out: Path) -> str:
    """`target` relative to the folder of the report, with forward slashes, percent-encoded (a strategy
    named by a selector such as 're:conv' or 'layer1, fc' must not read as a URL scheme or end the link)."""
    return quote(Path(os.path.relpath(target.resolve(), out.parent.resolve())).as_posix(), safe="/-_.~")


def _figures(paths: Sequence[Path], out: Path, terms: TaskTerms) -> list[str]:
    lines = ["## Figures", ""]
    and_perplexity = " and perplexity" if terms.perplexity else ""
    for path in paths:
        caption = FIGURE_CAPTIONS.get(path.stem, path.stem).format(
            accuracy=terms.accuracy, and_perplexity=and_perplexity
        )
        lines += [f"### {caption}", "", f"![{caption}]({_link(path, out)})", ""]
    return lines


# -- run report ---------------------------------------------------------------------------------------------
def run_report(run: RunRecord, figures: Sequence[Path], out: Path) -> str:
    path = run.path.resolve()
    name = f"{path.parent.name}/{path.name}" if path.name.startswith("seed-") else path.name  # a comparison's run
    if run.metrics is None:
        lines = [
            f"# Barrier analysis report: {name}",
            "",
            "This folder holds barrier tables alone (no config.toml, no metrics.parquet), as fedlayer's "
            "analysis wrapper writes them inside a Flower app of your own: the report shows the barriers.",
            "",
        ]
    else:
        lines = [f"# Run report: {name}", ""]
    averaged = averaged_layers(run)
    terms = task_terms(table_task(run.metrics if run.metrics is not None else run.barriers))
    if run.config is not None:
        lines += [describe_run(run.config), ""]
        lines += _averaging_section(run.config, averaged)
    if run.metrics is not None:
        lines += _metrics_section(run.metrics)
    lines += _barrier_section(run.barriers, run.config, averaged)
    if run.choices is not None and not run.choices.empty:
        lines += _choices_section(run.choices)
    lines += _figures(figures, out, terms)
    if run.partitions is not None:
        lines += _partitions_section(Partitions.load(run.partitions), terms)
    if run.config is not None:
        lines += ["## Configuration", "", "```toml", run.config.to_toml().strip(), "```", ""]
    return "\n".join(lines)


def _averaging_section(config: Config, averaged: pd.DataFrame | None) -> list[str]:
    """Which layers the strategy averaged and which stayed personal: one row per run of rounds with the
    same choice (a barrier-aware strategy's choices change from round to round)."""
    s = config.strategy
    keeper = "the server, per client" if s.personal == "server" else "each client"
    selector = f"`{_plain(s.average or get_preset(s.name).average)}`"
    if get_preset(s.name).barrier_aware:
        rule = (
            f"{s.name} chooses every round: a layer of {selector} is averaged when its measured barrier between "
            f"the clients is below {s.threshold} (choices.parquet)"
        )
    else:
        rule = f"{s.name} averages the layers {selector} selects, every round"
    lines = ["## Averaged and personal layers", "", f"{rule}; personal layers are kept by {keeper}.", ""]
    if averaged is None:
        return lines + ["No round has recorded its choice yet.", ""]
    rows = [[p.rounds, ", ".join(p.averaged) or "–", ", ".join(p.personal) or "–"] for p in periods(averaged)]
    return lines + [markdown_table(["rounds", "averaged", "kept personal"], rows, left=3), ""]


def _metrics_section(metrics: pd.DataFrame) -> list[str]:
    """The final round's metrics: the global model, the personalised models' mean, worst and best, and each
    client. A language run's table adds the perplexity and counts tokens (predictions) where a
    classification run's counts examples."""
    terms = task_terms(table_task(metrics))
    counted = NUM_PREDICTIONS if NUM_PREDICTIONS in metrics else "num_examples"
    last = int(metrics["round"].max())
    final = metrics[metrics["round"] == last]
    glob = final[(final["split"] == "test") & (final["client"] == "global")]
    local = final[final["split"] == "local-test"]
    perplexities = local[PERPLEXITY] if PERPLEXITY in local else pd.Series(np.nan, index=local.index)

    def cells(accuracy: str, loss: float, perplexity: float, count: int) -> list[object]:
        return [accuracy, _number(loss), *([_number(perplexity, 2)] if terms.perplexity else []), count]

    rows = []
    if not glob.empty:
        g = glob.iloc[0]
        rows.append(
            [
                "global model, global test set",
                *cells(_number(g["accuracy"], 1, 100), g["loss"], g.get(PERPLEXITY, np.nan), int(g[counted])),
            ]
        )
    if not local.empty:
        acc = local["accuracy"] * 100
        rows.append(
            [
                f"personalised, mean of {len(local)} clients' local test sets",
                *cells(f"{acc.mean():.1f}", local["loss"].mean(), perplexities.mean(), int(local[counted].sum())),
            ]
        )
        blank = [""] * (2 + terms.perplexity)
        rows.append(["personalised, worst / best client", f"{acc.min():.1f} / {acc.max():.1f}", *blank])
    headers = [f"{terms.accuracy} (%)", "loss", *(["perplexity"] if terms.perplexity else []), terms.counted]
    lines = [f"## Final metrics (round {last})", "", markdown_table(["model", *headers], rows), ""]
    if terms.perplexity:
        lines += [
            f"A language model predicts the next token at every position of each test window: {terms.accuracy} "
            "and the loss (cross-entropy, nats per token) are means over those predictions, and perplexity is exp "
            "of that loss; the personalised row is the mean over clients of each.",
            "",
        ]
    if not local.empty:
        ordered = local.sort_values("client", key=lambda c: c.map(client_order))
        per_client = [
            [c, *cells(_number(a, 1, 100), v, p, int(n))]
            for c, a, v, p, n in zip(
                ordered["client"],
                ordered["accuracy"],
                ordered["loss"],
                ordered[PERPLEXITY] if PERPLEXITY in ordered else [np.nan] * len(ordered),
                ordered[counted],
                strict=True,
            )
        ]
        lines += [
            "Per client (personalised model, local test set):",
            "",
            markdown_table(["client", *headers], per_client),
            "",
        ]
    return lines


def _barrier_section(barriers: pd.DataFrame | None, config: Config | None, averaged: pd.DataFrame | None) -> list[str]:
    """The per-layer barrier table: each base apart in the last analysed round and at its worst (the two
    bases can differ in sign, which their mean hides), the mean over rounds and bases, and in how many
    analysed rounds the run averaged the layer."""
    lines = ["## Layer-wise barriers", ""]
    grid = barrier_grid(barriers) if barriers is not None else pd.DataFrame()
    if barriers is None or grid.empty:
        every = f" (analysis.every = {config.analysis.every})" if config is not None else ""
        return lines + [f"No single-layer or full-model barriers were measured in this run{every}.", ""]
    last = grid.columns[-1]
    terms = task_terms(table_task(barriers))
    summary = layer_summary(barriers)
    rows = averaging_rows(barriers)
    bases = {base: barrier_grid(part).reindex(index=summary.index) for base, part in rows.groupby("base")}
    worst = pd.concat(bases.values(), axis=1).max(axis=1)
    headers = [
        "layer",
        *(f"loss barrier, round {last}, base {base}" for base in bases),
        "loss barrier, worst over rounds and bases",
        "loss barrier, mean over rounds and bases",
        f"{terms.error} barrier (pp), round {last}, mean of bases",
    ]
    cells = [
        [
            name,
            *(_number(grid_.loc[name, last]) for grid_ in bases.values()),
            _number(worst[name]),
            _number(s["mean"]),
            _number(s["error_last"], 2),
        ]
        for name, s in summary.iterrows()
    ]
    if averaged is not None:
        headers.append(f"averaged in (of {grid.shape[1]} analysed rounds)")
        shown = averaged.reindex(columns=grid.columns)
        for row in cells:
            row.append(str(int(shown.loc[row[0]].sum())) if row[0] in shown.index else "")
    lines += [
        f"Midpoint barrier B_mid = L(θ(½)) − ½(L_A + L_B) of each single layer (and of the full model) "
        f"between client models, {pairs_note(rows)}; analysed rounds {', '.join(map(str, grid.columns))}. "
        "On base a the other layers are model A's, on base b model B's; the base columns show each apart."
        + (
            f" Losses are cross-entropies per token (nats); the {terms.error} is over every position."
            if terms.perplexity
            else ""
        ),
        "",
        markdown_table(headers, cells),
        "",
    ]
    at_last = pd.DataFrame({base: grid_[last] for base, grid_ in bases.items()}).drop(index=FULL_ROW, errors="ignore")
    if FULL_ROW in summary.index and at_last.notna().any().any():
        layer, base = at_last.stack().idxmax()
        lines += [
            f"In round {last} the full-model barrier is {_number(summary.loc[FULL_ROW, 'last'])}; the largest "
            f"single-layer barrier is {_number(at_last.loc[layer, base])} ({layer}, base {base}).",
            "",
        ]
    return lines


def _choices_section(choices: pd.DataFrame) -> list[str]:
    stats = choices_summary(choices)
    rows = [[name, f"{int(s.averaged)} of {int(s.rounds)}", _number(s.barrier)] for name, s in stats.iterrows()]
    return [
        "## Barrier-aware averaging",
        "",
        markdown_table(["layer", "rounds averaged", "mean measured barrier"], rows),
        "",
    ]


def _partitions_section(parts: Partitions, terms: TaskTerms) -> list[str]:
    """Each client's train and local test samples and the classes among them; a language run's samples are
    windows, counted under the token that follows each (the partitions' label of a window)."""
    train, test = parts.class_counts(split="train"), parts.class_counts(split="test")
    rows = [
        [c, int(train.loc[c].sum()), int(test.loc[c].sum()), int(((train.loc[c] + test.loc[c]) > 0).sum())]
        for c in train.index
    ]
    params = ", ".join(f"{k}={v}" for k, v in parts.params.items())
    dataset = f"{parts.dataset}, " if parts.dataset else ""
    headers, labels = ["train", "local test", "classes"], f"{parts.num_classes} classes"
    if terms.perplexity:
        headers = ["train windows", "local test windows", "next tokens"]
        labels = f"windows of text over {parts.num_classes} tokens, each counted under the token that follows it"
    return [
        "## Partitions",
        "",
        f"{dataset}{parts.method} ({params}), seed {parts.seed}: {parts.num_clients} clients, {labels}. "
        f"Content hash `{parts.content_hash}`.",
        "",
        markdown_table(["client", *headers], rows),
        "",
    ]


# -- comparison report ------------------------------------------------------------------------------
def comparison_report(compare_dir: Path, figures: Sequence[Path], out: Path) -> str:
    comparison = read_comparison(compare_dir)
    settings = read_compare_settings(compare_dir, comparison)
    summary = summarise(comparison, settings.reference, settings.target_accuracy)
    headers, rows, best = summary_cells(summary)
    cells = [
        [f"**{_plain(cell)}**" if (i, j) in best else _plain(cell) for j, cell in enumerate(row)]
        for i, row in enumerate(rows)
    ]
    lines = [
        f"# Comparison report: {compare_dir.resolve().name}",
        "",
        "## Summary",
        "",
        f"{_plain(summary_title(summary))}.",
        "",
        markdown_table(headers, cells),
        "",
        *(line for note in summary_notes(summary) for line in (_plain(note), "")),
    ]
    headers, rows = difference_cells(summary)
    if rows and summary.seeds > 1:
        lines += [
            f"## Paired differences to {summary.reference}",
            "",
            f"Final round, strategy − {summary.reference} seed by seed: the mean difference, its 95 % confidence "
            "interval and the paired t-test (t with n − 1 degrees of freedom, two-sided p; "
            f"{_plain(SIGNIFICANT_MARK)}: p < 0.05).",
            "",
            markdown_table(headers, [[_plain(cell) for cell in row] for row in rows], left=2),
            "",
        ]
    if (compare_dir / CLIENTS).is_file():
        terms = summary.terms
        measures = f"{terms.accuracy} and loss"
        labels = "its label distribution (classes present, majority class and its share)"
        if terms.perplexity:
            measures = f"{terms.accuracy}, loss and perplexity"
            labels = "the tokens that follow its windows (tokens present, the most frequent and its share)"
        lines += [
            "## Clients",
            "",
            f"[{CLIENTS}]({_link(compare_dir / CLIENTS, out)}) has one row per strategy, seed, round and client: "
            f"the client's personalised {measures} on its local test split, its training examples and {labels}.",
            "",
        ]
    lines += _figures(figures, out, summary.terms)
    lines += ["## Runs", ""]
    for strategy, seed, run in comparison_runs(compare_dir, comparison):
        report = write_report(run)
        lines.append(f"- {strategy}, seed {seed}: [report]({_link(report, out)}), [directory]({_link(run, out)})")
    return "\n".join([*lines, ""])
