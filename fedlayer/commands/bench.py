"""`fedlayer bench NAME`: benchmarks that print a ratio against a baseline measured in the same run."""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "barriers": "layer-wise barrier sweep: fedlayer's engine against the naive per-point method",
    "simulation": "federated rounds through Flower's simulation against plain PyTorch",
    "memory": "the barrier engine with fedlayer's malloc settings against glibc's defaults",
    "commit": "committing a round's tables in round 10 against round 1,000 of a long run",
    "wrapper": "the barrier-analysis wrapper on a round it skips against the bare strategy",
}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark", description="Benchmarks (ratios against a baseline).")
    names = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, text in BENCHMARKS.items():
        module = importlib.import_module(f"fedlayer.benchmarks.{name}")
        bp = names.add_parser(name, help=text, description=text)
        module.add_arguments(bp)
        bp.set_defaults(func=module.run)
