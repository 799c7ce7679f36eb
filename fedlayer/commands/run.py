"""`fedlayer run CONFIG`: one federated simulation, results in a run directory."""

from __future__ import annotations


def add_config_arguments(parser) -> None:
    """CONFIG, --set and --out: shared by every command that takes an experiment config."""
    parser.add_argument("config", help="experiment config (TOML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set federation.rounds=10 (repeatable)")
    parser.add_argument("--out", default=None, help="output directory (default: the config's output.dir)")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a federated simulation from a config",
                       description="Run a federated simulation on Flower's simulation engine (Ray).")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from fedlayer.config import load_config
    from fedlayer.simulation import run_simulation

    cfg = load_config(args.config, args.overrides)
    run_simulation(cfg, args.out, verbose=args.verbose)
    return 0
