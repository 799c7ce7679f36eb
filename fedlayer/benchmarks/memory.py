"""`fedlayer bench memory`: the barrier engine with and without fedlayer's malloc settings (fedlayer.memory).

One round of a config's barrier analysis (its model, its number of clients as perturbed copies of
one model, its pairs, groups, alphas, bases and BN policy, on random inputs of its dataset's shape)
runs in a thread, as in the ServerApp, in four fresh processes: glibc's defaults, the settings
applied in the process by `keep_freed_memory()`, the settings inherited through GLIBC_TUNABLES (as
Ray's workers get them), and glibc's defaults again. The mean of the two default runs is the
baseline, so that a load that drifts during the run (a shared machine) weighs on both sides alike.
Each process warms up first (its heap grows to the working set), then counts the minor page faults
and the time of the measured rounds. The settings must not change a number: the curves of all four
processes are compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from fedlayer.benchmarks import add_config_arguments
from fedlayer.memory import is_glibc, keep_freed_memory, malloc_tunables

BEFORE, AFTER = "glibc defaults, before", "glibc defaults, after"
# process label -> (worker mode, GLIBC_TUNABLES in its environment)
PROCESSES = {
    BEFORE: ("defaults", None),
    "keep_freed_memory()": ("keep", None),
    "GLIBC_TUNABLES, inherited": ("defaults", malloc_tunables()),
    AFTER: ("defaults", None),
}
MEASURES = ("faults", "wall", "cpu")
PERTURBATION = 0.05  # client models: the config's initial model plus this much seeded noise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--rounds", type=int, default=2, help="analysis rounds measured per process (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="analysis rounds before measuring (default 1)")


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedlayer.config import load_config
    from fedlayer.console import make_console
    from fedlayer.errors import ConfigError, RunError
    from fedlayer.models import dataset_spec

    if args.rounds < 1 or args.warmup < 0:
        raise ConfigError(f"bench memory needs --rounds >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    if not is_glibc():
        raise RunError("bench memory compares glibc's malloc settings; this system's C library is not glibc")
    cfg = load_config(args.config, args.overrides)
    dataset_spec(cfg.data.dataset)  # a registered dataset: its input shape, without loading it
    a = cfg.analysis
    console = make_console()
    console.print(
        f"[bold]bench memory[/]: {cfg.model.name} on {cfg.data.dataset}-shaped inputs, {a.pairs or 'all'} pair(s) of "
        f"{cfg.federation.clients} clients, groups {','.join(a.groups)}, {a.alphas} alphas, {a.samples} samples, "
        f"{cfg.simulation.torch_threads} torch thread(s); {args.warmup} warm-up + {args.rounds} measured rounds "
        "per process"
    )
    job = json.dumps({"config": args.config, "overrides": args.overrides, "rounds": args.rounds, "warmup": args.warmup})
    measured = {label: _in_fresh_process(mode, tunables, job) for label, (mode, tunables) in PROCESSES.items()}

    baseline = {key: (measured[BEFORE][key] + measured[AFTER][key]) / 2 for key in MEASURES}
    table = Table(title="one analysis round, per process (ratios: the mean of the two default runs / this run)")
    for column in ("process", "page faults", "wall s", "CPU s", "fewer faults", "faster (wall)", "faster (CPU)"):
        table.add_column(column, justify="left" if column == "process" else "right")
    for label, m in measured.items():
        table.add_row(
            label,
            f"{m['faults']:,.0f}",
            f"{m['wall']:.3f}",
            f"{m['cpu']:.3f}",
            *(f"{baseline[key] / m[key]:.2f}x" if m[key] else "-" for key in MEASURES),
        )
    console.print(table)
    identical = len({m["curves"] for m in measured.values()}) == 1
    console.print(f"curves identical in all {len(measured)} processes: {'yes' if identical else 'NO'}")
    return 0 if identical else 1


def _in_fresh_process(mode: str, tunables: str | None, job: str) -> dict:
    """A worker's measurements: a new interpreter, with or without GLIBC_TUNABLES, nothing else changed."""
    from fedlayer.errors import RunError

    env = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run(
        [sys.executable, "-m", __name__, mode, job], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RunError(f"bench memory: the {mode!r} worker failed with exit code {done.returncode}:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def _worker(mode: str, job: dict) -> dict:
    """Measure `job["rounds"]` analysis rounds in a thread, after `job["warmup"]` ones."""
    if mode == "keep":
        keep_freed_memory()  # first, before any thread allocates: see fedlayer.memory
    import resource

    import pandas as pd
    import torch

    from fedlayer.analysis import pairwise_curves
    from fedlayer.config import load_config
    from fedlayer.models import dataset_spec
    from fedlayer.task import model_for

    cfg = load_config(job["config"], job["overrides"])
    a = cfg.analysis
    torch.set_num_threads(cfg.simulation.torch_threads)
    input_shape, num_classes = dataset_spec(cfg.data.dataset)
    model = model_for(cfg, input_shape, num_classes)
    states = {
        str(client): {
            key: value + PERTURBATION * torch.randn_like(value) if value.is_floating_point() else value
            for key, value in model.state_dict().items()
        }
        for client in range(cfg.federation.clients)
    }
    data = (torch.randn(a.samples, *input_shape), torch.randint(0, num_classes, (a.samples,)))

    def analysis_round() -> pd.DataFrame:
        curves, _ = pairwise_curves(
            model, states, data, pairs=a.pairs, seed=cfg.seed, bn=a.bn, bn_data=data[0], groups=a.groups,
            alphas=a.alphas, bases=a.bases, random_directions=a.random_directions,
        )  # fmt: skip
        return curves

    def measure() -> dict:
        for _ in range(job["warmup"]):
            analysis_round()
        start, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(job["rounds"]):
            curves = analysis_round()
        wall, end = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
        cpu = end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime
        return {
            "faults": (end.ru_minflt - start.ru_minflt) / job["rounds"],
            "wall": wall / job["rounds"],
            "cpu": cpu / job["rounds"],
            "curves": hashlib.sha256(pd.util.hash_pandas_object(curves).to_numpy().tobytes()).hexdigest(),
        }

    with ThreadPoolExecutor(1) as thread:  # the ServerApp analyses in a thread, not the main one
        return thread.submit(measure).result()


if __name__ == "__main__":
    print(json.dumps(_worker(sys.argv[1], json.loads(sys.argv[2]))))
