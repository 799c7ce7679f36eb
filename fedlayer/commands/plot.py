"""`fedlayer plot DIR`: redraw every figure of a run or a comparison from its stored tables."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Redraw the figures of a run directory (one with metrics.parquet) or of a comparison directory
(one with comparison.parquet, and then of each of its runs too) from the stored tables alone,
into their plots/ folders, and print the paths of the files written.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="redraw the figures of a run or comparison directory", description=DESCRIPTION)
    p.add_argument("dir", metavar="DIR", help="a run directory or a comparison directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedlayer.plots.runs import plot_directory

    for path in plot_directory(args.dir):
        print(path)
    return 0
