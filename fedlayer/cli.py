"""`fedlayer` command line: one subcommand per module in `fedlayer.commands`.

Each command module exposes `add_parser(subparsers)`, which registers its arguments and sets
`func` to a callable taking the parsed namespace. Heavy imports (torch, flwr) happen inside
those callables so `fedlayer --help` stays fast. The global flags (--verbose, --debug) work
before and after the subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fedlayer.errors import FedlayerError
from fedlayer.memory import keep_freed_memory

COMMANDS = ("run", "compare", "partitions", "layers", "barrier", "plot", "report", "bench", "certs")


def global_flags(default) -> argparse.ArgumentParser:
    """The flags every (sub)command takes, as a parent parser."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--verbose", action="store_true", default=default, help="show Flower and Ray logs")
    flags.add_argument("--debug", action="store_true", default=default, help="show tracebacks on errors")
    return flags


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser (nested ones too): it takes the global flags as well.

    Their default is SUPPRESS, so a subcommand that does not see a flag leaves the value parsed
    before it alone (argparse copies every default of a subparser over the main namespace).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(parents=[*kwargs.pop("parents", []), global_flags(argparse.SUPPRESS)], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedlayer",
        description="Federated learning with layer-wise averaging and layer-wise loss barriers.",
        parents=[global_flags(False)],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)
    for name in COMMANDS:
        importlib.import_module(f"fedlayer.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # first, before any thread allocates: see fedlayer.memory
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except FedlayerError as exc:
        if args.debug:
            raise
        print(f"fedlayer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedlayer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
