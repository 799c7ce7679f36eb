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
import signal
import sys
from pathlib import Path

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


def wants_kept_memory(args: argparse.Namespace) -> bool:
    """`simulation.keep_freed_memory` of the command's config (a run's own config.toml on --resume);
    True for commands without one, and when the config cannot be read (the command will say why)."""
    from fedlayer.config import load_config

    resume = getattr(args, "resume", None)
    path = Path(resume) / "config.toml" if resume else getattr(args, "config", None)
    if path is None:
        return True
    try:
        return load_config(path, [] if resume else getattr(args, "overrides", [])).simulation.keep_freed_memory
    except FedlayerError:
        return True


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM stops a run as Ctrl-C does: the last committed round stays, the command says how to go on."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if wants_kept_memory(args):
        keep_freed_memory()  # before any worker thread allocates: see fedlayer.memory
    signal.signal(signal.SIGTERM, _terminate)
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
