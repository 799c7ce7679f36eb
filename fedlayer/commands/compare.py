"""`fedlayer compare CONFIG [--strategies a,b,c] [--seeds N] [--reference NAME]`: strategies side by side,
everything else equal; what to compare comes from the config's `[compare]` section, the flags override it."""

from __future__ import annotations

from fedlayer.commands.run import add_config_arguments


def add_parser(sub) -> None:
    from fedlayer.config import declared

    p = sub.add_parser(
        "compare",
        help="compare strategies under several seeds",
        description="Run every strategy under every seed (same partitions, same initial model), "
        "write comparison.parquet/.csv and clients.parquet, print a summary over seeds (with 95 % "
        "confidence intervals and paired t-tests against the reference from two seeds on) and draw the "
        "plots. The strategies, seeds and reference come from the config's [compare] section; these "
        "flags override it.",
    )
    add_config_arguments(p)
    p.add_argument(
        "--strategies",
        default=None,
        help="comma-separated presets or selectors, e.g. fedavg,fedper,lg-fedavg,fedbn; a selector that holds a "
        "comma (all,-norm) goes in compare.strategies "
        f"(default: compare.strategies, {','.join(declared('compare.strategies')[0])} unless the config says)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="number of seeds: the config's seed plus 0..N-1 (default: compare.seeds, else the config's seed)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="the strategy the others are compared with (default: compare.reference, "
        f"{declared('compare.reference')[0]} unless the config says)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from fedlayer.analysis.summary import summarise
    from fedlayer.commands.run import config_from_args
    from fedlayer.compare import comparison_settings, run_comparison
    from fedlayer.console import make_console
    from fedlayer.errors import ConfigError
    from fedlayer.plots.compare import plot_comparison

    cfg = config_from_args(args)
    strategies = None
    if args.strategies is not None:
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
        if not strategies:
            raise ConfigError(f"--strategies {args.strategies!r} names no strategy; e.g. fedavg,fedper")
    seeds = None
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
        seeds = [cfg.seed + k for k in range(args.seeds)]
    settings = comparison_settings(cfg, strategies, seeds, args.reference)
    out = args.out or cfg.output.dir
    table = run_comparison(
        cfg, settings.strategies, settings.seeds, out, reference=settings.reference, verbose=args.verbose
    )
    print_summary(summarise(table, settings.reference, settings.target_accuracy), make_console())
    for path in plot_comparison(out):
        print(f"wrote {path}")
    return 0


def print_summary(summary, console) -> None:
    """The comparison summary as rich tables: each value over seeds (the best of each column in bold), the
    paired differences to the reference when there are two or more seeds, and what the numbers are."""
    from rich.table import Table

    from fedlayer.analysis.summary import difference_cells, summary_cells, summary_notes, summary_title

    headers, rows, best = summary_cells(summary)
    out = Table(title=summary_title(summary))
    for j, header in enumerate(headers):
        out.add_column(header, justify="left" if j == 0 else "right")
    for i, row in enumerate(rows):
        out.add_row(*(f"[bold]{cell}[/bold]" if (i, j) in best else cell for j, cell in enumerate(row)))
    console.print(out)
    headers, rows = difference_cells(summary)
    if rows and summary.seeds > 1:
        differences = Table(title=f"Paired differences to {summary.reference} over seeds (final round)")
        for j, header in enumerate(headers):
            differences.add_column(header, justify="left" if j < 2 else "right")
        for row in rows:
            differences.add_row(*row)
        console.print(differences)
    for note in summary_notes(summary):
        console.print(note, markup=False, highlight=False)
