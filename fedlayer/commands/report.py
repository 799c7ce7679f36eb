"""`fedlayer report DIR`: a Markdown report of a run or a comparison, with freshly drawn figures."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Write a Markdown report of a run directory (config, partitions, final metrics, layer-wise barrier
summary, figures) or of a comparison directory (summary over seeds, figures, a report for each
run). The figures are redrawn first; image links are relative to the report.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write a Markdown report of a run or comparison", description=DESCRIPTION)
    p.add_argument("dir", metavar="DIR", help="a run directory or a comparison directory")
    p.add_argument("--out", metavar="FILE", help="where to write the report (default: DIR/report.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedlayer.report import write_report

    print(f"wrote {write_report(args.dir, args.out)}")
    return 0
