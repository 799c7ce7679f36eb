"""`fedlayer bench barriers` (being written)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
