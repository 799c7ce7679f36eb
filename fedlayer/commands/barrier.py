"""`fedlayer barrier A B`: layer-wise loss barriers between two checkpoints (safetensors, PyTorch or Hugging Face)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Interpolate between two checkpoints of one model, group by group on both bases, and measure the
loss and error barriers (the README's "Concepts and definitions") on a seeded sample of test samples
(images, or windows of text for a language model, whose losses and errors are per token). Writes
curves.parquet, barriers.parquet, barriers.png (per-layer midpoint loss barriers), curves.png (the loss
along α on each base, one panel per family of groups: single layers, cumulative groups, windows and
selected groups, each against the full model and its chord) and, with --random-directions,
directions.png (each layer towards B against random directions) into --out, and prints the barriers
and which path the engine took (the fast torch.fx graph, or full forward passes and why).
A checkpoint is a safetensors file, a PyTorch .pt/.pth/.bin state dict (read with
torch.load(weights_only=True), never unpickling objects) or a Hugging Face model folder.
"""


def add_parser(sub) -> None:
    from fedlayer.checkpoints import FORMATS
    from fedlayer.config import declared

    p = sub.add_parser("barrier", help="layer-wise loss barriers between two checkpoints", description=DESCRIPTION)
    p.add_argument("checkpoint_a", metavar="A", help=f"model A (alpha = 0): {FORMATS}")
    p.add_argument("checkpoint_b", metavar="B", help=f"model B (alpha = 1): {FORMATS}")
    p.add_argument("--model", required=True, help="model name, e.g. cnn or resnet18")
    norm, norm_help = declared("model.norm")
    p.add_argument("--norm", default=norm, help=f"{norm_help} (default: %(default)s)")
    p.add_argument("--dataset", required=True, help="dataset whose test samples are evaluated, e.g. digits")
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset's files are (default: standard places)")
    # the analysis options mirror the config's [analysis] keys: one declaration, one default
    groups, groups_help = declared("analysis.groups")
    p.add_argument("--groups", default=",".join(groups), help=f"{groups_help}; comma-separated (default: %(default)s)")
    unit, unit_help = declared("analysis.layer_unit")
    p.add_argument("--layer-unit", default=unit, help=f"{unit_help} (default: %(default)s)")
    alphas, alphas_help = declared("analysis.alphas")
    p.add_argument(
        "--alphas",
        default=str(alphas),
        help=f"{alphas_help}, or comma-separated values in [0, 1]; 0, 0.5 and 1 are always included "
        "(default: %(default)s)",
    )
    bn, bn_help = declared("analysis.bn")
    p.add_argument("--bn", default=bn, help=f"{bn_help} (default: %(default)s)")
    samples, samples_help = declared("analysis.samples")
    p.add_argument("--samples", type=int, default=samples, help=f"{samples_help}, 0 = all (default: %(default)s)")
    p.add_argument(
        "--bn-samples", type=int, default=1024, help="seeded train samples for --bn recompute (default: 1024)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the samples, orderings and directions (default: 0)")
    directions, directions_help = declared("analysis.random_directions")
    p.add_argument(
        "--random-directions", type=int, default=directions, help=f"{directions_help} (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: 256)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda:0, ...")
    p.add_argument("--out", metavar="DIR", default="runs/barrier", help="output folder (default: runs/barrier)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from fedlayer.analysis import barriers, interpolation_curves
    from fedlayer.checkpoints import fit_state, read_state_dict
    from fedlayer.data import load_dataset
    from fedlayer.models import build_model
    from fedlayer.plots import save_figure
    from fedlayer.plots.barriers import curves_figure, layer_barrier_figure
    from fedlayer.plots.directions import directions_figure
    from fedlayer.results import TASK, task_terms, write_parquet
    from fedlayer.task import subsample

    alphas = parse_alphas(args.alphas)
    groups = [spec.strip() for spec in args.groups.split(",")]
    stored = [read_state_dict(path) for path in (args.checkpoint_a, args.checkpoint_b)]
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    model = build_model(args.model, dataset.input_shape, dataset.num_classes, task=dataset.task, norm=args.norm)
    states = [
        fit_state(model, state, what=f"checkpoint {path} (model {args.model!r}, norm {args.norm!r})")
        for path, state in zip((args.checkpoint_a, args.checkpoint_b), stored, strict=True)
    ]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    data = subsample(dataset.test_x, dataset.test_y, args.samples, args.seed)
    bn_data = subsample(dataset.train_x, dataset.train_y, args.bn_samples, args.seed + 1)

    from fedlayer.console import make_console

    console = make_console()
    evaluated = f"{len(data[1])} {args.dataset} test images"
    if data[1].dim() == 2:  # a language task: windows of text, a prediction per token
        evaluated = f"{len(data[1])} {args.dataset} test windows ({data[1].numel()} tokens)"
    with console.status(f"interpolating {args.model} on {evaluated} ({device})"):
        curves = interpolation_curves(
            model, states[0], states[1], data, groups=groups, layer_unit=args.layer_unit, alphas=alphas, bn=args.bn,
            bn_data=bn_data if args.bn == "recompute" else None, random_directions=args.random_directions,
            seed=args.seed, device=device, batch_size=args.batch_size,
        )  # fmt: skip
        table = barriers(curves)
    for measured in (curves, table):
        measured.insert(0, TASK, dataset.task)
    out = Path(args.out)
    written = [write_parquet(curves, out / "curves.parquet"), write_parquet(table, out / "barriers.parquet")]
    if (table["kind"] == "layer").any():
        written.append(save_figure(layer_barrier_figure(table), out / "barriers.png"))
    written.append(save_figure(curves_figure(curves), out / "curves.png"))
    directions = directions_figure(curves)
    if directions is not None:
        written.append(save_figure(directions, out / "directions.png"))
    console.print(_rich_table(table, title=f"barriers: {args.checkpoint_a} (A) vs {args.checkpoint_b} (B)"))
    first = table.iloc[0]
    error = task_terms(dataset.task).error
    console.print(
        f"full models: loss A {first.loss_a:.4f}, loss B {first.loss_b:.4f}, {error} A {first.error_a:.2f}%, "
        f"{error} B {first.error_b:.2f}%; bn={args.bn}; layer unit {args.layer_unit}"
    )
    console.print(_engine_line(curves.attrs), markup=False, soft_wrap=True)  # one line, however long
    console.print("wrote " + ", ".join(str(path) for path in written))
    return 0


def parse_alphas(text: str) -> int | list[float]:
    """'11' -> 11 (a count); '0,0.25,1' -> [0.0, 0.25, 1.0]; anything else is a FedlayerError."""
    from fedlayer.analysis import alpha_grid
    from fedlayer.errors import FedlayerError

    items = [item.strip() for item in text.split(",")]
    try:
        alphas: int | list[float] = int(items[0]) if len(items) == 1 else [float(item) for item in items]
    except ValueError as exc:
        raise FedlayerError(
            f"bad --alphas {text!r}: give a count (e.g. 11) or comma-separated numbers in [0, 1]"
        ) from exc
    alpha_grid(alphas)  # validate now, with the grid's own message
    return alphas


def _engine_line(attrs) -> str:
    """The path the barrier engine took, from the curves table's attrs, as one line."""
    if attrs["engine"] == "graph":
        return "engine: fast path (torch.fx graph; each point re-runs only what its changed layers affect)"
    return f"engine: plain path (full forward passes), because {attrs['engine_fallback']}"


def _rich_table(table, title: str):
    from rich.table import Table

    shown = Table(title=title)
    columns = [c for c in ("client_a", "client_b", "group", "kind", "base") if c in table.columns]
    if (table["kind"] == "random-direction").any():
        columns.append("direction")
    for column in columns:
        shown.add_column(column, overflow="fold")
    for column in ("loss mid", "loss max", "error mid (pp)", "error max (pp)"):
        shown.add_column(column, justify="right")
    for row in table.itertuples(index=False):
        ids = [str(getattr(row, c)) for c in columns]
        values = [row.loss_barrier_mid, row.loss_barrier_max, row.error_barrier_mid, row.error_barrier_max]
        shown.add_row(*ids, *(f"{v:.4f}" if i < 2 else f"{v:.2f}" for i, v in enumerate(values)))
    return shown
