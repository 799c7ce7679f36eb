"""`fedlayer layers`: list a model's layers, try a selector, see the cumulative orderings."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Show the layers of a model (the units that are averaged or interpolated together), built for a
dataset's input shape and class count: --dataset is required, because the layers' sizes depend on
them; the built-in language models (lstm, gpt) default to shakespeare's windows (80 characters
over its 80-character vocabulary), without loading it. The model is a built-in name or a spec
(torchvision:resnet50, hf:<id or directory>,
path/to/file.py:make_net, package.module:make_net) with its model.options as --option KEY=VALUE.
With --select, show which layers a selector picks (e.g. 'body', 'head', 'layer2,layer3',
'first:3', 'middle:5', 're:conv2$', '*.downsample.*'). With --layer-unit tensor, a layer is one
weight tensor with its bias (an nn.LSTM's weight_ih_l0 with bias_ih_l0) instead of a whole module.
"""


def add_parser(sub) -> None:
    # No choices= here: a bad name is a FedlayerError that lists the valid choices.
    from fedlayer.config import declared

    p = sub.add_parser("layers", help="list a model's layers and try layer selectors", description=DESCRIPTION)
    p.add_argument("--model", required=True, help="model name or spec, e.g. cnn, resnet18, torchvision:resnet50")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model option (model.options), e.g. --option weights=DEFAULT (repeatable)",
    )
    p.add_argument("--norm", default="none", help="normalisation layers of a built-in model: none, bn or gn")
    p.add_argument(
        "--dataset",
        help="dataset whose input shape and class count the model is built for, e.g. digits, fashion-mnist, "
        "cifar10, shakespeare (required, except for lstm and gpt)",
    )
    p.add_argument(
        "--resize",
        type=int,
        default=0,
        metavar="SIZE",
        help="build for SIZE x SIZE images, as data.resize (default: 0, off)",
    )
    p.add_argument("--select", metavar="SELECTOR", help="show only the layers this selector picks")
    unit, unit_help = declared("analysis.layer_unit")
    p.add_argument("--layer-unit", default=unit, help=f"{unit_help} (default: %(default)s)")
    p.add_argument("--orderings", action="store_true", help="also print the cumulative orderings")
    p.add_argument("--seed", type=int, default=0, help="seed of the random ordering and random:k (default: 0)")
    p.set_defaults(func=run, usage_error=p.error)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedlayer.config import config_from_dict, parse_options
    from fedlayer.data.shakespeare import VOCABULARY
    from fedlayer.layers import ORDERINGS, describe_layers, model_layers, order_layers, select_layers
    from fedlayer.models import MODEL_TASKS
    from fedlayer.task import data_shape, model_for
    from fedlayer.task_kinds import LANGUAGE

    language_model = MODEL_TASKS.get(args.model) == LANGUAGE
    if args.dataset is None and not language_model:
        defaults = ", ".join(name for name, task in MODEL_TASKS.items() if task == LANGUAGE)
        args.usage_error(
            f"the following arguments are required: --dataset (only the built-in language models have a default, "
            f"shakespeare's windows: {defaults})"
        )
    model_section = {"name": args.model, "norm": args.norm, "options": parse_options(args.option)}
    data_section = {"resize": args.resize} | ({"dataset": args.dataset} if args.dataset else {})
    cfg = config_from_dict({"seed": args.seed, "data": data_section, "model": model_section})
    input_shape: tuple[int, ...]
    if args.dataset is None:  # shakespeare's defaults, known without parsing the plays
        dataset, task = "shakespeare's windows", LANGUAGE
        input_shape, num_classes = (cfg.data.seq_len,), len(VOCABULARY)
    else:
        dataset, (input_shape, num_classes, task) = args.dataset, data_shape(cfg)
    model = model_for(cfg, input_shape, num_classes, task)
    layers = model_layers(model, args.layer_unit)
    shown = select_layers(layers, args.select, seed=args.seed) if args.select else layers

    resized = f" resized to {args.resize}x{args.resize}" if args.resize else ""
    labels = f"a vocabulary of {num_classes} tokens" if task == LANGUAGE else f"{num_classes} classes"
    table = Table(title=f"{args.model} (norm={args.norm}) on {dataset}: input {input_shape}{resized}, {labels}")
    for column in ("index", "name", "type", "keys"):
        table.add_column(
            column, justify="right" if column == "index" else "left", no_wrap=column == "name", overflow="fold"
        )
    table.add_column("numel", justify="right")
    for row in describe_layers(shown).itertuples(index=False):
        table.add_row(str(row.index), row.name, row.type, row.keys, f"{row.numel:,}")

    from fedlayer.console import make_console

    console = make_console()
    console.print(table)
    parameters = sum(p.numel() for p in model.parameters())
    if args.select:
        console.print(f"selector {args.select!r} picks {len(shown)} of {len(layers)} layers")
    console.print(
        f"total: {len(layers)} layers (layer unit {args.layer_unit}), {parameters:,} parameters, "
        f"{sum(layer.numel for layer in layers):,} values with buffers"
    )
    if args.orderings:
        for ordering in ORDERINGS:
            indices = " ".join(str(layer.index) for layer in order_layers(layers, ordering, seed=args.seed))
            console.print(f"{ordering:>8}: {indices}", highlight=False)
    return 0
