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
    from fedlayer.analysis.summary import summary_table
    from fedlayer.compare import run_comparison
    from fedlayer.config import load_config
    from fedlayer.console import make_console
    from fedlayer.errors import ConfigError
    from fedlayer.plots.compare import plot_comparison

    cfg = load_config(args.config, args.overrides)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not strategies:
        raise ConfigError(f"--strategies {args.strategies!r} names no strategy; e.g. fedavg,fedper")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    out = args.out or cfg.output.dir
    table = run_comparison(cfg, strategies, [cfg.seed + k for k in range(args.seeds)], out, verbose=args.verbose)
    print_summary(summary_table(table), make_console())
    for path in plot_comparison(out):
        print(f"wrote {path}")
    return 0


def print_summary(table, console) -> None:
    """The comparison summary as a rich table, the best value of each column in bold."""
    from rich.table import Table

    from fedlayer.analysis.summary import summary_cells

    headers, rows, best = summary_cells(table)
    out = Table(title="Final round, mean ± std over seeds (bold: best)")
    for j, header in enumerate(headers):
        out.add_column(header, justify="left" if j == 0 else "right")
    for i, row in enumerate(rows):
        out.add_row(*(f"[bold]{cell}[/bold]" if (i, j) in best else cell for j, cell in enumerate(row)))
    console.print(out)
