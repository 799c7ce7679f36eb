"""Summaries of stored result tables for figures, reports and the terminal: pandas in, pandas (or text) out.

Barrier tables become layer x round grids and per-layer summaries, a barrier-aware strategy's
choices become per-layer counts, and a comparison table becomes the per-strategy summary over seeds:
the mean with its 95 % Student-t confidence interval, and each strategy's paired difference to a
reference strategy with a paired t-test. A run's metrics and partitions become its per-client rows.
Nothing here draws or reads files, so the terminal, figures and reports show the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from fedlayer.errors import ConfigError
from fedlayer.protocol import AGGREGATE_LABEL, client_order
from fedlayer.results import PERPLEXITY, TASK, TaskTerms, table_task, task_terms
from fedlayer.task_kinds import CLASSIFICATION, LANGUAGE, PREDICTION_UNITS, TASKS

FULL_ROW = "full model"


# -- barrier tables -------------------------------------------------------------------------------------
def layer_order(barriers: pd.DataFrame) -> list[str]:
    """Single layers in the order they first appear in the table: the model's state_dict order."""
    return list(dict.fromkeys(barriers.loc[barriers["kind"] == "layer", "group"]))


def averaging_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows between two client models on the averaging direction of a barrier or curves table: random-direction
    baselines and rows against the aggregate (client_b = AGGREGATE_LABEL) left out."""
    if "direction" in table.columns:
        table = table[table["direction"] == -1]
    if "client_b" in table.columns:
        table = table[table["client_b"].astype(str) != AGGREGATE_LABEL]
    return table


def barrier_grid(barriers: pd.DataFrame, metric: str = "loss_barrier_mid") -> pd.DataFrame:
    """Rows = single layers in model order, then FULL_ROW; columns = rounds; values = mean of `metric`
    over client pairs and bases."""
    rows = averaging_rows(barriers)
    rows = rows[rows["kind"].isin(["layer", "full"])]
    if rows.empty:
        return pd.DataFrame()
    label = rows["group"].where(rows["kind"] == "layer", FULL_ROW)
    grid = rows.assign(row=label).pivot_table(index="row", columns="round", values=metric, aggfunc="mean", dropna=False)
    order = layer_order(rows) + ([FULL_ROW] if (rows["kind"] == "full").any() else [])
    return grid.reindex(index=order)


def seed_mean_grid(grids: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The mean of several runs' `barrier_grid`s: rows in first-seen order, rounds sorted; a layer some
    runs lack is averaged over the runs that have it."""
    order = list(dict.fromkeys(r for g in grids for r in g.index))
    mean = pd.concat(grids).groupby(level=0).mean()
    return mean.reindex(index=order, columns=sorted(mean.columns))


def pairs_note(barriers: pd.DataFrame) -> str:
    """'mean over N client pairs, both bases': what a barrier value in a figure averages."""
    per_round = barriers.drop_duplicates(["round", "client_a", "client_b"]).groupby("round").size()
    low, high = int(per_round.min()), int(per_round.max())
    count = f"{low}" if low == high else f"{low}–{high}"
    bases = sorted(barriers["base"].unique())
    base = "both bases" if len(bases) > 1 else f"base {bases[0]}"
    return f"mean over {count} client pair{'' if high == 1 else 's'}, {base}"


def layer_summary(barriers: pd.DataFrame) -> pd.DataFrame:
    """Per row of `barrier_grid`: the loss barrier in the last analysed round, its mean and max over
    rounds, and the error barrier (pp) in the last round. Empty when no layer or full model was measured."""
    grid = barrier_grid(barriers)
    if grid.empty:
        return pd.DataFrame()
    last = grid.columns[-1]
    return pd.DataFrame(
        {
            "last": grid[last],
            "mean": grid.mean(axis=1),
            "max": grid.max(axis=1),
            "error_last": barrier_grid(barriers, "error_barrier_mid")[last],
        }
    )


# -- barrier-aware averaging choices ----------------------------------------------------------------------
def choices_grids(choices: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Layer x round grids (layers in table order) of whether the layer was averaged (1.0 or 0.0) and of
    the mean barrier measured for the choice."""
    order = list(dict.fromkeys(choices["layer"]))
    table = choices.assign(averaged=choices["averaged"].astype(float))
    averaged = table.pivot_table(index="layer", columns="round", values="averaged", aggfunc="max").reindex(order)
    barrier = table.pivot_table(index="layer", columns="round", values="barrier", aggfunc="mean", dropna=False).reindex(
        index=order, columns=averaged.columns
    )
    return averaged, barrier


def choices_summary(choices: pd.DataFrame) -> pd.DataFrame:
    """Per layer (table order): rounds averaged, rounds decided and the mean measured barrier."""
    return (
        choices.groupby("layer")
        .agg(averaged=("averaged", "sum"), rounds=("round", "nunique"), barrier=("barrier", "mean"))
        .reindex(list(dict.fromkeys(choices["layer"])))
    )


# -- statistics over seeds ------------------------------------------------------------------------------
CONFIDENCE = 0.95
SIGNIFICANCE = 0.05
CONSTANT_TOLERANCE = 1e-9  # differences whose spread is below this share of their size count as constant


def mean_ci(values: Sequence[float] | np.ndarray | pd.Series) -> tuple[float, float]:
    """The mean of the finite `values` and the half-width of its 95 % confidence interval.

    Parameters
    ----------
    values : sequence of float
        One value per seed; NaN values (not measured) are left out.

    Returns
    -------
    tuple of float
        (mean, half-width) with half-width = t(0.975, n − 1) · s / √n (Student t, s the sample standard
        deviation); the half-width is NaN for fewer than two values, the mean NaN for none.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2:
        return float(x.mean()), math.nan
    quantile = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(x) - 1))
    return float(x.mean()), quantile * float(x.std(ddof=1)) / math.sqrt(len(x))


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of d = values − reference over the seeds both have.

    Attributes
    ----------
    n : int
        Seeds with a finite value on both sides.
    difference, ci : float
        Mean of d and the half-width of its 95 % confidence interval (NaN for n < 2).
    t, p : float
        t = mean(d) / (s_d / √n) with n − 1 degrees of freedom, and its two-sided p-value; NaN for n < 2
        or when every d is 0; ±inf and 0 when d is the same non-zero number for every seed (up to
        rounding: a spread below CONSTANT_TOLERANCE of the largest |d|).
    """

    n: int
    difference: float
    ci: float
    t: float
    p: float

    @property
    def significant(self) -> bool:
        """Whether p < 0.05 (never for a NaN p)."""
        return bool(self.p < SIGNIFICANCE)


def paired_t_test(values: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray) -> PairedTest:
    """The paired t-test of `values` against `reference`, seed by seed (position i of both is seed i).

    Parameters
    ----------
    values, reference : sequence of float
        One value per seed, in the same seed order; pairs with a NaN on either side are left out.

    Returns
    -------
    PairedTest
    """
    a, b = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    difference, ci = mean_ci(d)
    n = len(d)
    if n < 2:
        return PairedTest(n, difference, ci, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    if sd <= CONSTANT_TOLERANCE * float(np.abs(d).max()):  # the same difference for every seed, up to rounding
        if difference == 0.0:
            return PairedTest(n, difference, ci, math.nan, math.nan)
        return PairedTest(n, difference, ci, math.copysign(math.inf, difference), 0.0)
    t = difference / (sd / math.sqrt(n))
    return PairedTest(n, difference, ci, t, float(2 * stats.t.sf(abs(t), n - 1)))


# -- per-client results ------------------------------------------------------------------------------------
WORST_FRACTION = 0.1


def worst_clients_mean(accuracies: Sequence[float] | np.ndarray | pd.Series, fraction: float = WORST_FRACTION) -> float:
    """The mean of the lowest ⌈fraction · n⌉ of the finite `accuracies` (at least one): with the default,
    the mean accuracy of the worst 10 % of clients (the lowest decile). NaN when there is none."""
    x = np.sort(np.asarray(accuracies, dtype=float))
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan
    return float(x[: max(1, math.ceil(fraction * len(x) - 1e-9))].mean())


def client_profiles(train_counts: pd.DataFrame) -> pd.DataFrame:
    """Per client (a string id, as in metrics.parquet): its training examples and label distribution.

    Parameters
    ----------
    train_counts : DataFrame
        Clients x classes training sample counts (`Partitions.class_counts(split="train")`).

    Returns
    -------
    DataFrame
        client, train_examples, classes (classes present), majority_class and majority_share (the
        fraction of its training examples in its largest class).
    """
    totals = train_counts.sum(axis=1)
    return pd.DataFrame(
        {
            "client": train_counts.index.astype(str),
            "train_examples": totals.to_numpy(dtype=np.int64),
            "classes": (train_counts > 0).sum(axis=1).to_numpy(dtype=np.int64),
            "majority_class": train_counts.idxmax(axis=1).to_numpy(dtype=np.int64),
            "majority_share": (train_counts.max(axis=1) / totals.where(totals > 0)).to_numpy(dtype=float),
        }
    )


def client_rows(metrics: pd.DataFrame, train_counts: pd.DataFrame | None) -> pd.DataFrame:
    """Per round and client with a result: the personalised model's accuracy and loss on its local test
    split, joined with the client's profile (`client_profiles`; NaN columns without `train_counts`).

    Parameters
    ----------
    metrics : DataFrame
        A run's metrics.parquet; its "local-test" rows with a finite accuracy are used.
    train_counts : DataFrame or None
        The run's clients x classes training counts, None when it has no partitions.json.

    Returns
    -------
    DataFrame
        round, client, task, train_examples, classes, majority_class, majority_share, accuracy, loss,
        perplexity (NaN for classification) and test_examples, sorted by round and client.
    """
    local = metrics[(metrics["split"] == "local-test") & metrics["accuracy"].notna()]
    rows = local[["round", "client", "accuracy", "loss", "num_examples"]].rename(
        columns={"num_examples": "test_examples"}
    )
    rows = rows.assign(
        client=rows["client"].astype(str),
        **{
            TASK: table_task(metrics),
            PERPLEXITY: local[PERPLEXITY].astype(float) if PERPLEXITY in local else math.nan,
        },
    )
    if train_counts is not None:
        rows = rows.merge(client_profiles(train_counts), on="client", how="left")
    else:
        rows = rows.assign(train_examples=math.nan, classes=math.nan, majority_class=math.nan, majority_share=math.nan)
    rows = rows.sort_values(
        ["round", "client"], key=lambda c: c.map(lambda v: tuple(client_order(v))) if c.name == "client" else c
    )
    columns = ["round", "client", TASK, "train_examples", "classes", "majority_class", "majority_share"]
    return rows[[*columns, "accuracy", "loss", PERPLEXITY, "test_examples"]].reset_index(drop=True)


def final_client_rows(clients: pd.DataFrame) -> pd.DataFrame:
    """The rows of each (strategy, seed)'s last round in a clients table (clients.parquet)."""
    last = clients.groupby(["strategy", "seed"])["round"].transform("max")
    return clients[clients["round"] == last]


# -- comparison tables --------------------------------------------------------------------------------------
LAST, AT_TARGET, PER_ROUND = "last", "at target", "per round"


@dataclass(frozen=True)
class Metric:
    """A summary column: where it comes from, how it is shown, and which direction is best.

    `unit` is what a difference of two values is in (percentage points for accuracies; "" for a plain
    number). `at` is the value of a run it takes from `column`: LAST, its last measured value; AT_TARGET,
    its value in the first round whose mean personalised accuracy reaches the target accuracy (NaN when none
    does); PER_ROUND, its last measured value divided by that round. "{target}" in `label` stands for the
    target, "{accuracy}" for what the task calls its accuracy (`fedlayer.results.TaskTerms`). `tasks` are
    the task kinds it is reported for.
    """

    name: str
    column: str
    label: str
    higher_is_better: bool
    scale: float
    digits: int
    unit: str
    at: str = LAST
    tasks: tuple[str, ...] = TASKS

    def title(self, terms: TaskTerms, target: str = "target") -> str:
        """The label, for the task named by `terms` and the target shown as `target`."""
        return self.label.format(target=target, accuracy=terms.accuracy)


CUMULATIVE_BYTES = "cumulative_bytes"  # comparison.parquet: bytes_down + bytes_up of every round so far
MB = 1e-6  # bytes -> megabytes (10^6 bytes)
TARGET_COLUMN = "personal_accuracy_mean"  # the accuracy the target is set on
ROUNDS_TO_TARGET = "rounds_to_target"
NOT_REACHED = "not reached"
TARGET_SHARE = 0.9  # compare.target_accuracy = 0: this share of the best strategy's final accuracy
LANGUAGE_ONLY = (LANGUAGE,)  # `Metric.tasks` of perplexity
SUMMARY_METRICS = (
    Metric("global_accuracy", "global_accuracy", "global {accuracy} (%)", True, 100.0, 1, "pp"),
    Metric("personal_accuracy", "personal_accuracy_mean", "personalised {accuracy} (%)", True, 100.0, 1, "pp"),
    Metric("client_std", "personal_accuracy_std", "std over clients (pp)", False, 100.0, 1, "pp"),
    Metric("worst_clients", "personal_accuracy_worst10", "worst 10 % of clients (%)", True, 100.0, 1, "pp"),
    Metric("global_perplexity", "global_perplexity", "global perplexity", False, 1.0, 2, "", tasks=LANGUAGE_ONLY),
    Metric(
        "personal_perplexity",
        "personal_perplexity_mean",
        "personalised perplexity",
        False,
        1.0,
        2,
        "",
        LAST,
        LANGUAGE_ONLY,
    ),
    Metric(ROUNDS_TO_TARGET, "round", "rounds to {target}", False, 1.0, 1, "rounds", AT_TARGET),
    Metric("mb_to_target", CUMULATIVE_BYTES, "MB to {target}", False, MB, 3, "MB", AT_TARGET),
    Metric("mb_per_round", CUMULATIVE_BYTES, "MB per round", False, MB, 3, "MB", PER_ROUND),
    Metric("full_barrier", "full_barrier_mean", "full-model barrier", False, 1.0, 3, "nats"),
    Metric("layer_barrier", "layer_barrier_mean", "mean layer barrier", False, 1.0, 3, "nats"),
)


def summary_metrics(task: str) -> tuple[Metric, ...]:
    """The SUMMARY_METRICS reported for a comparison of `task` (`fedlayer.task_kinds.TASKS`): perplexity for
    language models only."""
    return tuple(metric for metric in SUMMARY_METRICS if task in metric.tasks)


def strategies(comparison: pd.DataFrame) -> list[str]:
    """Strategies in the order the comparison ran them."""
    return list(dict.fromkeys(comparison["strategy"]))


def check_reference(reference: str, names: Sequence[str]) -> None:
    """The reference strategy must be one of the compared ones.

    Raises
    ------
    ConfigError
        Naming the reference and the strategies.
    """
    if reference not in names:
        raise ConfigError(
            f"compare.reference {reference!r} is not among the compared strategies ({', '.join(names)}); "
            "set compare.reference (or --reference) to one of them, or add it to the strategies"
        )


def _run_value(run: pd.DataFrame, metric: Metric, target: float) -> float:
    """`metric`'s value of one run (its rows sorted by round), as `Metric.at` says."""
    if metric.column not in run:
        return math.nan
    if metric.at == AT_TARGET:
        reached = run[run[TARGET_COLUMN] >= target] if np.isfinite(target) else run.iloc[:0]
        return float(reached[metric.column].iloc[0]) if len(reached) else math.nan
    measured = run[run[metric.column].notna()]
    if measured.empty:
        return math.nan
    last = measured.iloc[-1]
    if metric.at == PER_ROUND:
        return float(last[metric.column]) / last["round"] if last["round"] > 0 else math.nan
    return float(last[metric.column])


def run_values(comparison: pd.DataFrame, target: float = math.nan) -> pd.DataFrame:
    """One row per (strategy, seed): its final round and each value of `summary_metrics` of the comparison's
    task (`Metric.at`).

    A run's value is mostly its last measured one (the final round, or for barriers analysed every N rounds
    the last analysed round); its rounds and MB to target are the round, and the cumulative MB, of the first
    round whose mean personalised accuracy is at least `target` (NaN when it never is); its MB per round is
    its cumulative MB over its rounds.
    """
    finals = []
    reported = summary_metrics(table_task(comparison))
    for (strategy, seed), run in comparison.sort_values("round", kind="stable").groupby(["strategy", "seed"]):
        record = {"strategy": strategy, "seed": int(seed), "round": int(run["round"].max())}
        record |= {metric.name: _run_value(run, metric, target) for metric in reported}
        finals.append(record)
    return pd.DataFrame(finals)


def _reported(finals: pd.DataFrame) -> list[Metric]:
    """The SUMMARY_METRICS `run_values` gave values of."""
    return [metric for metric in SUMMARY_METRICS if metric.name in finals.columns]


def resolve_target(comparison: pd.DataFrame, target_accuracy: float = 0.0) -> float:
    """The accuracy whose first round the summary reports: `target_accuracy` (compare.target_accuracy)
    when positive, else TARGET_SHARE (90 %) of the best strategy's final mean personalised accuracy
    (mean over seeds); NaN when no personalised accuracy was measured."""
    if target_accuracy > 0:
        return float(target_accuracy)
    best = run_values(comparison).groupby("strategy")["personal_accuracy"].mean().max()
    return float(TARGET_SHARE * best) if np.isfinite(best) else math.nan


def summary_table(comparison: pd.DataFrame, target_accuracy: float = 0.0) -> pd.DataFrame:
    """Per strategy (in run order): seeds, final round, and for each value of `summary_metrics` (of the
    comparison's task) over seeds its mean, std (ddof 1), 95 % confidence half-width `_ci` (NaN with one
    seed) and count `_n` of seeds with a value (for rounds to target: the seeds that reached it).

    Parameters
    ----------
    comparison : DataFrame
        comparison.parquet.
    target_accuracy : float, default 0.0
        compare.target_accuracy (see `resolve_target`).
    """
    return _summary(run_values(comparison, resolve_target(comparison, target_accuracy)), strategies(comparison))


def _summary(finals: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    records = []
    for name in names:
        runs = finals[finals["strategy"] == name]
        record: dict[str, object] = {"strategy": name, "seeds": runs["seed"].nunique(), "round": runs["round"].max()}
        for metric in _reported(finals):
            values = runs[metric.name]
            record[f"{metric.name}_mean"], record[f"{metric.name}_ci"] = mean_ci(values)
            record[f"{metric.name}_std"] = float(values.std()) if values.notna().sum() > 1 else math.nan
            record[f"{metric.name}_n"] = int(values.notna().sum())
        records.append(record)
    return pd.DataFrame(records)


def paired_differences(comparison: pd.DataFrame, reference: str, target_accuracy: float = 0.0) -> pd.DataFrame:
    """Each other strategy against `reference`, seed by seed, for every value of `summary_metrics`.

    Parameters
    ----------
    comparison : DataFrame
        comparison.parquet.
    reference : str
        The strategy compared with (compare.reference); a ConfigError when it is not in the table.
    target_accuracy : float, default 0.0
        compare.target_accuracy (see `resolve_target`).

    Returns
    -------
    DataFrame
        One row per (strategy, metric) with a value on both sides for at least one seed: n, difference
        (mean of strategy − reference, in the stored unit), ci (its 95 % half-width), t, p, significant.
    """
    finals = run_values(comparison, resolve_target(comparison, target_accuracy))
    return _differences(finals, strategies(comparison), reference)


def _differences(finals: pd.DataFrame, names: list[str], reference: str) -> pd.DataFrame:
    check_reference(reference, names)
    base = finals[finals["strategy"] == reference].set_index("seed")
    rows = []
    for name in names:
        if name == reference:
            continue
        runs = finals[finals["strategy"] == name].set_index("seed")
        seeds = runs.index.intersection(base.index)
        for metric in _reported(finals):
            test = paired_t_test(runs.loc[seeds, metric.name], base.loc[seeds, metric.name])
            if test.n:
                rows.append(
                    {"strategy": name, "metric": metric.name, "n": test.n, "difference": test.difference,
                     "ci": test.ci, "t": test.t, "p": test.p, "significant": test.significant}
                )  # fmt: skip
    columns = ["strategy", "metric", "n", "difference", "ci", "t", "p", "significant"]
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class ComparisonSummary:
    """Everything the terminal and the report say about a comparison.

    Attributes
    ----------
    table : DataFrame
        `summary_table`: per strategy, each value's mean, std, confidence half-width and count over seeds.
    differences : DataFrame
        `paired_differences` against `reference`.
    reference : str
        The strategy the others are compared with.
    target : float
        The resolved target accuracy for rounds to target (NaN when there is none).
    target_accuracy : float
        compare.target_accuracy as given (0 = TARGET_SHARE of the best strategy's final accuracy).
    task : str
        The task the comparison measures (`fedlayer.task_kinds.TASKS`): which values are reported
        (`summary_metrics`) and how they are named (`terms`).
    """

    table: pd.DataFrame
    differences: pd.DataFrame
    reference: str
    target: float
    target_accuracy: float
    task: str = CLASSIFICATION

    @property
    def terms(self) -> TaskTerms:
        return task_terms(self.task)

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """The values reported, in column order."""
        return summary_metrics(self.task)

    @property
    def seeds(self) -> int:
        """The most seeds any strategy ran."""
        return int(self.table["seeds"].max())


def summarise(comparison: pd.DataFrame, reference: str, target_accuracy: float = 0.0) -> ComparisonSummary:
    """The summary over seeds and the paired differences to `reference` of a comparison table.

    Parameters
    ----------
    comparison : DataFrame
        comparison.parquet.
    reference : str
        compare.reference: one of the table's strategies (else a ConfigError naming both).
    target_accuracy : float, default 0.0
        compare.target_accuracy.
    """
    names = strategies(comparison)
    check_reference(reference, names)
    target = resolve_target(comparison, target_accuracy)
    finals = run_values(comparison, target)
    return ComparisonSummary(
        _summary(finals, names),
        _differences(finals, names, reference),
        reference,
        target,
        target_accuracy,
        table_task(comparison),
    )


# -- text shared by the terminal and Markdown ----------------------------------------------------------------
SIGNIFICANT_MARK = "*"


def _uniform(table: pd.DataFrame, column: str) -> int | None:
    """The one value of `column` when every strategy has the same, else None."""
    values = set(table[column])
    return int(values.pop()) if len(values) == 1 else None


def summary_title(summary: ComparisonSummary) -> str:
    """What the summary table shows: the round and seeds (when every strategy has the same), the interval and
    the marks."""
    last, seeds = _uniform(summary.table, "round"), _uniform(summary.table, "seeds")
    when = f"Round {last}" if last is not None else "Final round"
    if summary.seeds < 2:
        return f"{when}, one seed (bold: best)"
    return (
        f"{when}, mean ± 95 % confidence interval over {f'{seeds} ' if seeds is not None else ''}seeds (bold: best; "
        f"{SIGNIFICANT_MARK}: differs from the reference {summary.reference}, paired t-test, p < {SIGNIFICANCE})"
    )


def summary_cells(summary: ComparisonSummary) -> tuple[list[str], list[list[str]], set[tuple[int, int]]]:
    """Headers, text cells ('mean ± ci', a SIGNIFICANT_MARK where the paired difference to the reference is
    significant) and the (row, column) cells holding each column's best mean (highest accuracy, lowest
    spread, rounds and barrier; ties all count): the one formatting shared by the terminal and Markdown.

    The seeds and round columns are there only when strategies differ in them (else `summary_title` says).
    """
    table = summary.table
    target = f"{summary.target * 100:.1f}%" if np.isfinite(summary.target) else "target"  # one word: no wrap
    labels = [m.title(summary.terms, target) for m in summary.metrics]
    fixed = ["strategy", *(column for column in ("seeds", "round") if _uniform(table, column) is None)]
    headers = [*fixed, *labels]
    marked = summary.differences[summary.differences["significant"]]
    significant = set(zip(marked["strategy"], marked["metric"], strict=True))
    rows = [[str(record[column]) for column in fixed] for record in table.to_dict("records")]
    best = set()
    for j, metric in enumerate(summary.metrics, start=len(fixed)):
        means = table[f"{metric.name}_mean"]
        for row, record in zip(rows, table.to_dict("records"), strict=True):
            cell = _value_cell(metric, record)
            if (record["strategy"], metric.name) in significant:
                cell += f" {SIGNIFICANT_MARK}"
            row.append(cell)
        if means.notna().any():
            top = means.max() if metric.higher_is_better else means.min()
            best |= {(i, j) for i, mean in enumerate(means) if np.isclose(mean, top)}
    return headers, rows, best


def _value_cell(metric: Metric, record: dict) -> str:
    """'mean ± ci'; for a value at the target, NOT_REACHED when no seed reached it and the seeds that did
    when only some did ('–' where the value itself was not measured, as for bytes in an older comparison)."""
    mean, ci, n = (record[f"{metric.name}_{stat}"] for stat in ("mean", "ci", "n"))
    seeds, reached = record["seeds"], record[f"{ROUNDS_TO_TARGET}_n"]
    if metric.at == AT_TARGET and n == reached < seeds:
        return NOT_REACHED if n == 0 else f"{mean * metric.scale:.{metric.digits}f} ({n} of {seeds} seeds)"
    return mean_std(mean, ci, metric.scale, metric.digits)


def difference_cells(summary: ComparisonSummary) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells of the paired differences to the reference: strategy, value, mean difference
    (in percentage points for accuracies), its 95 % confidence interval, t, p (marked when p < 0.05) and
    the seeds paired."""
    metrics = {m.name: m for m in SUMMARY_METRICS}
    headers = ["strategy", "value", f"difference to {summary.reference}", "95 % CI", "t", "p", "seeds"]
    rows = []
    for row in summary.differences.itertuples(index=False):
        metric = metrics[row.metric]
        low, high = row.difference - row.ci, row.difference + row.ci
        rows.append(
            [
                str(row.strategy),
                metric.title(summary.terms),
                f"{_signed(row.difference, metric)} {metric.unit}".rstrip(),
                f"[{_signed(low, metric)}, {_signed(high, metric)}]" if np.isfinite(row.ci) else "–",
                f"{row.t:.2f}" if not math.isnan(row.t) else "–",  # ±inf: the same difference every seed
                _p_value(row.p) + (f" {SIGNIFICANT_MARK}" if row.significant else ""),
                str(row.n),
            ]
        )
    return headers, rows


def _p_value(p: float) -> str:
    if not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _signed(value: float, metric: Metric) -> str:
    return f"{value * metric.scale:+.{metric.digits}f}" if np.isfinite(value) else "–"


def summary_notes(summary: ComparisonSummary) -> list[str]:
    """Sentences that say what the summary's numbers are (the same under the terminal table and in reports)."""
    notes = []
    if summary.seeds < 2:
        notes.append(
            "One seed: no confidence interval and no paired test can be given. Run two or more seeds "
            "(compare.seeds in the config, or --seeds N) for them."
        )
    else:
        notes.append(
            "± is the half-width of the 95 % confidence interval of the mean over seeds (Student t, n − 1 "
            f"degrees of freedom). {SIGNIFICANT_MARK}: the paired difference to {summary.reference} over seeds "
            f"is significant at 5 % (paired t-test; the differences are listed below)."
        )
    accuracy = summary.terms.accuracy
    notes.append(
        f"Personalised {accuracy}: each client's model on its own local test split, mean over clients; std over "
        f"clients and worst 10 % of clients (the mean {accuracy} of the lowest-scoring tenth, at least one "
        "client) say how evenly it is shared."
    )
    if summary.terms.perplexity:
        notes.append(
            f"Language model: {accuracy} is the share of the test windows' positions whose next token the model "
            "ranks first; perplexity is exp of the mean cross-entropy per token (personalised: the mean of the "
            "clients' perplexities)."
        )
    if np.isfinite(summary.target):
        why = (
            "compare.target_accuracy"
            if summary.target_accuracy > 0
            else f"{TARGET_SHARE * 100:.0f} % of the best strategy's final mean personalised {accuracy}"
        )
        notes.append(
            f"Rounds and MB to {summary.target * 100:.1f} % ({why}): the first round whose mean personalised "
            f"{accuracy} reaches it, and the communication until then; {NOT_REACHED}: no seed's run reached it."
        )
    notes.append(
        "MB: model-array megabytes (10^6 bytes) of the averaged layers sent to and received from the sampled "
        "clients, summed over them (comparison.parquet's bytes_down + bytes_up); MB per round is a run's total "
        "over its rounds. Personal layers that travel only because the server keeps them (personal = "
        '"server") are not counted (they are bytes_personal_down and bytes_personal_up).'
    )
    per = f" per {PREDICTION_UNITS[summary.task]}" if summary.terms.perplexity else ""
    notes.append(f"Barriers: midpoint loss barriers between client models (nats{per}), in a run's last analysed round.")
    return notes


def mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
    """'mean ± spread' scaled and rounded; the mean alone when the spread is NaN, '–' without a mean."""
    if not np.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return f"{text} ± {std * scale:.{digits}f}" if np.isfinite(std) else text
