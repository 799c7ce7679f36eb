"""`fedlayer partitions`: build a config's client partitions, show them, save them with a plot."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Split a config's dataset into its clients exactly as `fedlayer run` would (same seed, same method),
print each client's size and classes, and write partitions.json (indices, class counts, content
hash) and partitions.png (the label distribution) into --out (default: the config's output.dir).
"""
TOP_CLASSES = 3


def add_parser(sub) -> None:
    p = sub.add_parser("partitions", help="build, show and save a config's client partitions", description=DESCRIPTION)
    p.add_argument("config", help="experiment config (TOML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable), e.g. --set data.alpha=0.1",
    )
    p.add_argument("--out", metavar="DIR", help="where to write partitions.json and partitions.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedlayer.config import load_config
    from fedlayer.data.partition import partitions_from_config
    from fedlayer.plots import save_figure
    from fedlayer.plots.partitions import label_distribution_figure
    from fedlayer.task import dataset_for

    cfg = load_config(args.config, args.overrides)
    dataset = dataset_for(cfg)
    partitions = partitions_from_config(cfg, dataset)

    from fedlayer.console import make_console

    console = make_console()
    console.print(_table(partitions))
    params = ", ".join(f"{k}={v}" for k, v in partitions.params.items())
    used = sum(len(c.train_indices) + len(c.test_indices) for c in partitions.clients)
    console.print(
        f"{partitions.method} ({params}), seed {partitions.seed}: {partitions.num_clients} clients, "
        f"{used} of {partitions.num_samples} {dataset.name} train samples, "
        f"hash {partitions.content_hash[:12]}"
    )
    out = Path(args.out or cfg.output.dir)
    json_path = partitions.save(out / "partitions.json")
    png_path = save_figure(label_distribution_figure(partitions), out / "partitions.png")
    console.print(f"wrote {json_path} and {png_path}")
    return 0


def _table(partitions):
    from rich.table import Table

    train = partitions.class_counts(split="train")
    test = partitions.class_counts(split="test")
    table = Table(title=f"{partitions.dataset} partitions")
    for column in ("client", "train", "test", "classes"):
        table.add_column(column, justify="right")
    table.add_column(f"top {TOP_CLASSES} classes (class:count)")
    for client in train.index:
        counts = train.loc[client] + test.loc[client]
        top = counts[counts > 0].sort_values(ascending=False, kind="stable").head(TOP_CLASSES)
        table.add_row(
            str(client),
            str(train.loc[client].sum()),
            str(test.loc[client].sum()),
            str(int((counts > 0).sum())),
            ", ".join(f"{c}:{n}" for c, n in top.items()),
        )
    return table
