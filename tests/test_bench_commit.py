"""`fedlayer bench commit` runs end to end and prints what docs/benchmarks.md quotes (never timed here)."""

from fedlayer.cli import main

TINY = ["--set", "data.dataset=digits", "--set", "model.name=mlp", "--set", "federation.clients=3"]


def test_bench_commit_prints_the_commit_at_round_10_and_at_the_last_round_with_memory(capsys):
    assert main(["bench", "commit", "--rounds", "20", *TINY]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "7 metrics rows" in printed  # 3 clients' train and local-test rows, and the global model's
    assert "round 10: commit" in printed and "round 20: commit" in printed and "RSS" in printed
    assert "commit at round 20 / at round 10:" in printed and "(target <= 1.20x)" in printed
    assert "rewriting every table whole would take" in printed and "compaction at the end:" in printed


def test_bench_commit_needs_twice_the_early_window(capsys):
    assert main(["bench", "commit", "--rounds", "19"]) == 2
    assert "bench commit needs --rounds >= 20, got 19" in capsys.readouterr().err
