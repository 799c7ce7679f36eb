"""`fedlayer compare CONFIG --strategies a,b,c [--seeds 3]`: strategies side by side, everything else equal."""

from __future__ import annotations

from fedlayer.commands.run import add_config_arguments


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare strategies under several seeds",
        description="Run every strategy under every seed (same partitions, same initial model), "
        "write comparison.parquet/.csv, print a summary and draw the plots.",
    )
    add_config_arguments(p)
    p.add_argument(
        "--strategies", required=True, help="comma-separated presets or selectors, e.g. fedavg,fedper,lg-fedavg,fedbn"
    )
    p.add_argument("--seeds", type=int, default=1, help="number of seeds: 0..N-1 added to the config's seed")
    p.set_defaults(func=run)


def run(args) -> int:

    from fedlayer.compare import run_comparison
    from fedlayer.config import load_config
    from fedlayer.console import make_console
    from fedlayer.errors import FedlayerError
    from fedlayer.plots.compare import plot_comparison, print_summary, summary_table

    cfg = load_config(args.config, args.overrides)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not strategies:
        raise FedlayerError(f"--strategies {args.strategies!r} names no strategy; e.g. fedavg,fedper")
    if args.seeds < 1:
        raise FedlayerError(f"--seeds must be at least 1, got {args.seeds}")
    out = args.out or cfg.output.dir
    table = run_comparison(cfg, strategies, [cfg.seed + k for k in range(args.seeds)], out, verbose=args.verbose)
    print_summary(summary_table(table), make_console())
    for path in plot_comparison(out):
        print(f"wrote {path}")
    return 0
