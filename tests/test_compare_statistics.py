"""Statistics over seeds, per-client results, the [compare] config and run folder names, on hand-made tables
whose answers are known: Student-t intervals and paired t-tests are checked against their closed forms
for 2 degrees of freedom (3 seeds), where t's distribution function is F(t) = 1/2 + t / (2 √(t² + 2))."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from shipped_configs import CONFIGS, layers_of, load_shipped

from fedlayer.analysis.summary import (
    client_rows,
    difference_cells,
    mean_ci,
    paired_differences,
    paired_t_test,
    resolve_target,
    summarise,
    summary_cells,
    summary_notes,
    summary_table,
    worst_clients_mean,
)
from fedlayer.compare import comparison_settings
from fedlayer.config import load_config
from fedlayer.errors import ConfigError
from fedlayer.results import MAX_FOLDER_NAME, run_folder_name, run_path
from strategies import build_strategy

T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # F(t) = 0.975 solved for t with 2 degrees of freedom: 4.3027


def p_two_sided_df2(t: float) -> float:
    """Two-sided p-value of t with 2 degrees of freedom: 2 (1 − F(|t|)) = 1 − |t| / √(t² + 2)."""
    return 1 - abs(t) / math.sqrt(t * t + 2)


# Final personalised accuracy per seed: "small" gains 1, 2 and 3 points on fedavg, "large" 20, 21 and 19.
FINAL = {
    "fedavg": [0.50, 0.60, 0.70],
    "small": [0.51, 0.62, 0.73],
    "large": [0.70, 0.81, 0.89],
}


def hand_made(final: dict[str, list[float]] = FINAL, seeds: tuple[int, ...] = (0, 1, 2)) -> pd.DataFrame:
    """A comparison table: rounds 0-2 per (strategy, seed); round 1 at 80 % of the final accuracy, round 2 final."""
    rows = []
    for strategy, values in final.items():
        for seed, value in zip(seeds, values, strict=False):
            for r, accuracy in ((0, math.nan), (1, 0.8 * value), (2, value)):
                rows.append(
                    {"strategy": strategy, "seed": seed, "round": r, "global_accuracy": accuracy / 2,
                     "global_loss": 1.0, "personal_accuracy_mean": accuracy, "personal_accuracy_std": 0.1,
                     "personal_accuracy_worst10": accuracy - 0.2, "full_barrier_mean": math.nan,
                     "layer_barrier_mean": math.nan}
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_mean_ci_is_the_student_t_interval():
    mean, half = mean_ci([0.5, 0.6, 0.7])  # s = 0.1
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(T_975_DF2 * 0.1 / math.sqrt(3))
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([0.5])[0] == 0.5
    assert mean_ci([0.5, math.nan, 0.7]) == pytest.approx((0.6, stats.t.ppf(0.975, 1) * math.sqrt(0.02) / math.sqrt(2)))


def test_paired_t_test_matches_the_formula():
    small = paired_t_test(FINAL["small"], FINAL["fedavg"])  # d = 0.01, 0.02, 0.03: mean 0.02, s_d 0.01
    t = 0.02 / (0.01 / math.sqrt(3))
    assert (small.n, small.difference, small.t) == (3, pytest.approx(0.02), pytest.approx(t))  # 3.46
    assert small.p == pytest.approx(p_two_sided_df2(t))  # 0.074
    assert small.ci == pytest.approx(T_975_DF2 * 0.01 / math.sqrt(3))
    assert not small.significant
    large = paired_t_test(FINAL["large"], FINAL["fedavg"])  # d = 0.20, 0.21, 0.19: t = 20 √3
    assert large.t == pytest.approx(20 * math.sqrt(3)) and large.p == pytest.approx(p_two_sided_df2(20 * math.sqrt(3)))
    assert large.significant and large.p < 0.001
    scipy_result = stats.ttest_rel(FINAL["large"], FINAL["fedavg"])
    assert (large.t, large.p) == (pytest.approx(scipy_result.statistic), pytest.approx(scipy_result.pvalue))


def test_paired_t_test_edge_cases():
    same = paired_t_test([0.5, 0.6], [0.5, 0.6])
    assert same.difference == 0 and math.isnan(same.t) and math.isnan(same.p) and not same.significant
    constant = paired_t_test([0.55, 0.65], [0.5, 0.6])  # 5 points up for each seed (up to rounding)
    assert constant.t == math.inf and constant.p == 0 and constant.significant
    one = paired_t_test([0.7], [0.5])
    assert one.n == 1 and one.difference == pytest.approx(0.2) and math.isnan(one.p)
    missing = paired_t_test([0.7, math.nan, 0.8], [0.5, 0.6, 0.7])
    assert missing.n == 2


def test_summary_gives_mean_and_interval_per_strategy_and_metric():
    table = summary_table(hand_made()).set_index("strategy")
    assert list(table.index) == ["fedavg", "small", "large"]
    row = table.loc["fedavg"]
    assert (row["seeds"], row["round"], row["personal_accuracy_n"]) == (3, 2, 3)
    assert row["personal_accuracy_mean"] == pytest.approx(0.6)
    assert row["personal_accuracy_std"] == pytest.approx(0.1)
    assert row["personal_accuracy_ci"] == pytest.approx(T_975_DF2 * 0.1 / math.sqrt(3))
    assert row["global_accuracy_ci"] == pytest.approx(T_975_DF2 * 0.05 / math.sqrt(3))
    assert row["worst_clients_mean"] == pytest.approx(0.4)
    assert math.isnan(row["full_barrier_mean"]) and row["full_barrier_n"] == 0


def test_paired_differences_to_the_reference_are_marked_when_significant():
    differences = paired_differences(hand_made(), "fedavg").set_index(["strategy", "metric"])
    small, large = differences.loc[("small", "personal_accuracy")], differences.loc[("large", "personal_accuracy")]
    t = 2 * math.sqrt(3)
    assert small["t"] == pytest.approx(t) and small["p"] == pytest.approx(p_two_sided_df2(t))
    assert not small["significant"] and large["significant"]
    assert ("fedavg", "personal_accuracy") not in differences.index
    assert ("small", "full_barrier") not in differences.index  # never measured: nothing to test
    summary = summarise(hand_made(), "fedavg")
    headers, rows, best = summary_cells(summary)
    cells = {row[0]: dict(zip(headers, row, strict=True)) for row in rows}
    assert "seeds" not in headers and "round" not in headers  # the same for every strategy: in the title
    half = 100 * T_975_DF2 * np.std(FINAL["large"], ddof=1) / math.sqrt(3)  # the interval of its own mean: 23.7
    assert cells["large"]["personalised accuracy (%)"] == f"80.0 ± {half:.1f} *"
    assert cells["small"]["personalised accuracy (%)"] == "62.0 ± 27.3"  # no mark: p = 0.074
    assert (2, headers.index("personalised accuracy (%)")) in best
    headers, rows = difference_cells(summary)
    large_row = next(r for r in rows if r[0] == "large" and r[1] == "personalised accuracy (%)")
    assert large_row[2] == "+20.0 pp" and large_row[5] == "< 0.001 *" and large_row[6] == "3"
    small_row = next(r for r in rows if r[0] == "small" and r[1] == "personalised accuracy (%)")
    assert small_row[4] == "3.46" and small_row[5] == "0.074"


def test_one_seed_says_plainly_that_no_interval_can_be_given():
    summary = summarise(hand_made({k: v[:1] for k, v in FINAL.items()}, seeds=(0,)), "fedavg")
    assert "One seed: no confidence interval and no paired test can be given" in " ".join(summary_notes(summary))
    headers, rows, _ = summary_cells(summary)
    assert all("±" not in cell and "*" not in cell for row in rows for cell in row)
    assert summary.differences["p"].isna().all()


def test_a_reference_that_is_not_compared_is_an_error_naming_both():
    with pytest.raises(ConfigError, match=r"compare.reference 'local' is not among .*fedavg, small, large"):
        summarise(hand_made(), "local")


def test_rounds_to_target_default_to_ninety_percent_of_the_best_final_accuracy():
    comparison = hand_made()
    best = np.mean(FINAL["large"])  # 0.80
    assert resolve_target(comparison) == pytest.approx(0.9 * best)  # 0.72
    assert resolve_target(comparison, 0.5) == 0.5
    table = summary_table(comparison).set_index("strategy")
    # round 1 is at 0.8 x final (large: 0.56, 0.648, 0.712, all < 0.72): 0.72 is reached in round 2 by the
    # seeds whose final accuracy reaches it: large's last two, small's last one, none of fedavg's
    assert table.loc["large", "rounds_to_target_mean"] == 2 and table.loc["large", "rounds_to_target_n"] == 2
    assert table.loc["fedavg", "rounds_to_target_n"] == 0 and table.loc["small", "rounds_to_target_n"] == 1
    headers, rows, _ = summary_cells(summarise(comparison, "fedavg"))
    column = headers.index("rounds to 72.0%")
    assert [row[column] for row in rows] == ["not reached", "2.0 (1 of 3 seeds)", "2.0 (2 of 3 seeds)"]
    # 0.45: fedavg's round 1 is at 0.40, 0.48, 0.56 (rounds 2, 1, 1), small's at 0.408, 0.496, 0.584, large's above
    low = summary_table(comparison, target_accuracy=0.45).set_index("strategy")
    assert low["rounds_to_target_mean"].to_dict() == {"fedavg": pytest.approx(4 / 3), "small": pytest.approx(4 / 3),
                                                      "large": 1.0}  # fmt: skip
    assert low.loc["large", "rounds_to_target_ci"] == 0.0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.9, 0.1, 0.5], 0.1),  # 3 clients: the worst one
        (list(np.linspace(0.1, 1.0, 10)), 0.1),  # 10 clients: the worst one
        (list(np.linspace(0.1, 1.1, 11)), 0.15),  # 11 clients: the worst two (0.1, 0.2)
        ([0.3] * 27 + [0.0, 0.1, 0.2], 0.1),  # 30 clients: the worst three
        ([math.nan, 0.4, 0.6], 0.4),  # a failed client has no accuracy
    ],
)
def test_worst_clients_mean_is_the_mean_of_the_lowest_decile(values, expected):
    assert worst_clients_mean(values) == pytest.approx(expected)


def test_client_rows_join_local_test_results_with_the_label_distribution():
    metrics = pd.DataFrame(
        [
            {"round": 1, "client": "global", "split": "test", "loss": 2.0, "accuracy": 0.3, "num_examples": 50},
            {"round": 1, "client": "10", "split": "local-test", "loss": 1.0, "accuracy": 0.8, "num_examples": 5},
            {"round": 1, "client": "2", "split": "local-test", "loss": 1.5, "accuracy": 0.6, "num_examples": 4},
            {"round": 1, "client": "2", "split": "train", "loss": 0.9, "accuracy": 0.7, "num_examples": 16},
            {"round": 1, "client": "3", "split": "local-test", "loss": math.nan, "accuracy": math.nan,
             "num_examples": 0},  # failed: no result
        ]
    )  # fmt: skip
    counts = pd.DataFrame(np.zeros((11, 3), dtype=np.int64))
    counts.loc[2] = [12, 4, 0]  # 16 examples, 2 classes, majority class 0 with 75 %
    counts.loc[10] = [1, 1, 18]
    rows = client_rows(metrics, counts)
    assert list(rows["client"]) == ["2", "10"]  # natural order, only clients with a result
    two = rows.iloc[0]
    assert (two["train_examples"], two["classes"], two["majority_class"]) == (16, 2, 0)
    assert two["majority_share"] == pytest.approx(0.75)
    assert (two["accuracy"], two["loss"], two["test_examples"]) == (0.6, 1.5, 4)
    assert rows.iloc[1]["majority_class"] == 2 and rows.iloc[1]["majority_share"] == pytest.approx(0.9)
    assert client_rows(metrics, None)["majority_share"].isna().all()


# -- the [compare] section ---------------------------------------------------------------------------------
def test_compare_section_reads_lists_of_strategies_and_integer_seeds(tmp_path):
    path = tmp_path / "cmp.toml"
    path.write_text('[compare]\nstrategies = ["fedavg", "first:2"]\nseeds = [3, 4]\ntarget_accuracy = 0.8\n')
    cfg = load_config(path)
    assert cfg.compare.strategies == ["fedavg", "first:2"] and cfg.compare.seeds == [3, 4]
    assert cfg.compare.reference == "fedavg" and cfg.compare.target_accuracy == 0.8
    assert load_config(path, ["compare.seeds=5,6"]).compare.seeds == [5, 6]
    assert load_config(path, ["compare.seeds=[7]"]).compare.seeds == [7]
    assert load_config(None).compare.seeds == []  # the config's seed alone


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("compare.seeds=[-1]", "expected a list of integers >= 0"),
        ("compare.seeds=a,b", "expected a list of integers >= 0"),
        ("compare.strategies=[]", "expected a non-empty list of strings"),
        ("compare.target_accuracy=1.5", "expected a number >= 0.0 and <= 1.0"),
        ("compare.reference=[1]", "expected a string"),
    ],
)
def test_bad_compare_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=f"'{override.split('=')[0]}'.*{message}"):
        load_config(None, [override])


def test_comparison_settings_take_the_config_and_the_flags_over_it():
    cfg = load_config(None, ["seed=4", "compare.strategies=fedavg,fedper", "compare.reference=fedper"])
    settings = comparison_settings(cfg)
    assert settings.strategies == ["fedavg", "fedper"] and settings.seeds == [4] and settings.reference == "fedper"
    assert comparison_settings(cfg, seeds=[1, 2]).seeds == [1, 2]
    assert comparison_settings(load_config(None, ["compare.seeds=0,9"])).seeds == [0, 9]
    flagged = comparison_settings(cfg, ["local", "fedper", "first:2"], reference="local")
    assert flagged.strategies == ["local", "fedper", "first:2"] and flagged.reference == "local"


@pytest.mark.parametrize(
    ("strategies", "seeds", "reference", "message"),
    [
        (["fedper", "local"], None, None, r"compare.reference 'fedavg' is not among .*\(fedper, local\)"),
        (["fedavg", "fedavg"], None, None, "listed twice"),
        (["fedavg"], [1, 1], None, "seeds are listed twice"),
        (["fedavg", "first:2", "first_2"], None, None, "'first:2' and 'first_2' would share the run folder"),
        (["fedavg", "FedAvg"], None, "fedavg", "would share the run folder"),  # case-insensitive file systems
        ([], None, None, "no strategies to compare"),
    ],
)
def test_bad_comparisons_are_config_errors(strategies, seeds, reference, message):
    with pytest.raises(ConfigError, match=message):
        comparison_settings(load_config(None), strategies, seeds, reference)


# -- run folder names -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("strategy", "folder"),
    [
        ("fedavg", "fedavg"),
        ("lg-fedavg", "lg-fedavg"),
        ("first:2", "first_2"),
        ("re:^(conv1|fc2)$", "re_conv1_fc2_"),
        ("layer1, fc", "layer1_fc"),
        ("all,-norm", "all_-norm"),
        ("fc*", "fc_"),
        ("..", "_."),
    ],
)
def test_run_folder_names_are_safe_and_readable(strategy, folder):
    assert run_folder_name(strategy) == folder
    assert run_path("cmp", strategy, 3).as_posix() == f"cmp/runs/{folder}/seed-3"


def test_long_strategy_names_are_cut_and_told_apart_by_a_hash():
    a, b = "re:" + "conv" * 40 + "1", "re:" + "conv" * 40 + "2"
    assert len(run_folder_name(a)) == MAX_FOLDER_NAME and run_folder_name(a) != run_folder_name(b)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_shipped_configs_compare_strategies_resolve_against_its_model(path, example_hf_folder, pythia_pair):
    cfg = load_shipped(path, example_hf_folder, pythia_pair)
    settings = comparison_settings(cfg)
    layers = layers_of(cfg)
    for name in settings.strategies:
        build_strategy(name, layers=layers)
