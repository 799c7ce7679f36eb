"""`fedlayer run CONFIG`: one federated simulation, results in a run directory.

`fedlayer run --resume RUN_DIR` continues a stopped run from its last completed round, with the
config saved in RUN_DIR (see `fedlayer.resume` for what resumes exactly).
"""

from __future__ import annotations

from fedlayer.errors import ConfigError


def add_config_arguments(parser, *, required: bool = True) -> None:
    """CONFIG, --set and --out: shared by every command that takes an experiment config."""
    parser.add_argument("config", nargs=None if required else "?", help="experiment config (TOML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set federation.rounds=10 (repeatable)",
    )
    parser.add_argument("--out", default=None, help="output directory (default: the config's output.dir)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in the output directory (default: refuse a folder that holds one)",
    )


def config_from_args(args):
    """The experiment config of a command: CONFIG with its --set overrides and --overwrite."""
    from fedlayer.config import load_config

    overrides = [*args.overrides, *(["output.overwrite=true"] if args.overwrite else [])]
    return load_config(args.config, overrides)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a federated simulation from a config",
        description="Run a federated simulation on Flower's simulation engine (Ray).",
    )
    add_config_arguments(p, required=False)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the run in RUN_DIR from its last completed round (its own config.toml)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from fedlayer.simulation import resume_simulation, run_simulation

    if args.resume is not None:
        given = [
            what
            for what, value in (
                ("CONFIG", args.config),
                ("--set", args.overrides),
                ("--out", args.out),
                ("--overwrite", args.overwrite),
            )
            if value
        ]
        if given:
            raise ConfigError(
                f"--resume continues {args.resume} with the config saved in it; "
                f"{', '.join(given)} cannot be given with --resume"
            )
        resume_simulation(args.resume, verbose=args.verbose)
        return 0
    if args.config is None:
        raise ConfigError("give an experiment CONFIG (TOML), or --resume RUN_DIR to continue a run")
    run_simulation(config_from_args(args), args.out, verbose=args.verbose)
    return 0
