"""`fedlayer partitions`: build a config's client partitions, show them, save them with a plot."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Split a config's dataset into its clients exactly as `fedlayer run` would (same seed, same method),
print each client's size and classes (a natural split: its group; a language dataset: windows and
their next characters), and write partitions.json (indices, class counts, content hash) and
partitions.png (the label distribution) into --out (default: the config's output.dir).
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
    from fedlayer.data.partition import TEST_SET, partitions_from_config
    from fedlayer.plots import save_figure
    from fedlayer.plots.partitions import label_distribution_figure
    from fedlayer.task import dataset_for
    from fedlayer.task_kinds import LANGUAGE

    cfg = load_config(args.config, args.overrides)
    dataset = dataset_for(cfg)
    partitions = partitions_from_config(cfg, dataset)

    from fedlayer.console import make_console

    console = make_console()
    unit = "windows" if dataset.task == LANGUAGE else "samples"
    console.print(_table(partitions, dataset))
    params = ", ".join(f"{k}={v}" for k, v in partitions.params.items())
    trained = sum(len(c.train_indices) for c in partitions.clients)
    tested = sum(len(c.test_indices) for c in partitions.clients)
    if partitions.local_test == TEST_SET:
        used = f"{trained} of {partitions.num_samples} {dataset.name} train {unit} and {tested} test {unit}"
    else:
        used = f"{trained + tested} of {partitions.num_samples} {dataset.name} train {unit}"
    console.print(
        f"{partitions.method} ({params}), seed {partitions.seed}: {partitions.num_clients} clients, "
        f"{used}, hash {partitions.content_hash[:12]}"
    )
    out = Path(args.out or cfg.output.dir)
    json_path = partitions.save(out / "partitions.json")
    png_path = save_figure(label_distribution_figure(partitions, task=dataset.task), out / "partitions.png")
    console.print(f"wrote {json_path} and {png_path}")
    return 0


def _table(partitions, dataset):
    """One row per client: its group (natural split), its train and test sizes and its commonest classes; a
    language dataset's classes are the characters that follow its windows, shown as Python writes them."""
    from rich.table import Table

    from fedlayer.task_kinds import LANGUAGE

    train = partitions.class_counts(split="train")
    test = partitions.class_counts(split="test")
    language = dataset.task == LANGUAGE
    what = "next characters" if language else "classes"
    table = Table(title=f"{partitions.dataset} partitions")
    table.add_column("client", justify="right")
    natural = partitions.method == "natural"
    if natural:
        table.add_column("group")
    for column in ("train", "test", what):
        table.add_column(column, justify="right")
    table.add_column(f"top {TOP_CLASSES} {what} ({'character' if language else 'class'}:count)")
    for part, client in zip(partitions.clients, train.index, strict=True):
        counts = train.loc[client] + test.loc[client]
        top = counts[counts > 0].sort_values(ascending=False, kind="stable").head(TOP_CLASSES)
        names = (repr(dataset.class_names[c]) if language else str(c) for c in top.index)
        group = [str(dataset.groups[part.train_indices[0]]) if len(part.train_indices) else ""] if natural else []
        table.add_row(
            str(client),
            *group,
            str(train.loc[client].sum()),
            str(test.loc[client].sum()),
            str(int((counts > 0).sum())),
            ", ".join(f"{name}:{n}" for name, n in zip(names, top.to_numpy(), strict=True)),
        )
    return table
