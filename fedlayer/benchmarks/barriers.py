"""`fedlayer bench barriers`: the barrier engine against the paper's naive per-point method.

Both sides sweep every single layer plus the full model, on both bases, over the same alpha grid,
for two differently seeded models on random RGB images (32x32 like CIFAR, or --input-size) with
random labels; a language model (lstm, gpt) reads random windows of --input-size token ids over
Shakespeare's 80-character vocabulary, with a random next token at every position. The naive
side does what the paper's code does for every point: build a model, copy a state dict, overwrite
the group's keys, load_state_dict, full forward pass; and it re-evaluates the two endpoints for
every group.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

CHANNELS = 3
INPUT_SIZE = 32
NUM_CLASSES = 10
TARGET_RATIO = 3.0
TOLERANCE = 1e-5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=64, help="evaluation images or windows (default: 64)")
    parser.add_argument("--alphas", type=int, default=5, help="alpha grid size (default: 5)")
    parser.add_argument(
        "--model",
        default="resnet18",
        help="built-in model (norm=none) or model spec, e.g. torchvision:resnet50 (default: resnet18)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model option (model.options), e.g. --option width_mult=0.5 (repeatable)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=INPUT_SIZE,
        help=f"height and width of the random images, or a language model's window length in tokens (default: "
        f"{INPUT_SIZE}; a model that needs more says how much)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: 256)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides (default: all cores)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, both sides (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and labels (default: 0)")
    from fedlayer.config import declared

    unit, unit_help = declared("analysis.layer_unit")
    parser.add_argument("--layer-unit", default=unit, help=f"{unit_help}, both sides (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    import torch

    from fedlayer.analysis import alpha_grid, interpolation_curves
    from fedlayer.analysis.evaluate import full_precision
    from fedlayer.analysis.groups import resolve_groups
    from fedlayer.config import parse_options
    from fedlayer.data.shakespeare import VOCABULARY
    from fedlayer.errors import FedlayerError
    from fedlayer.layers import model_layers
    from fedlayer.models import MODEL_TASKS, MODELS, build_model
    from fedlayer.task_kinds import CLASSIFICATION, LANGUAGE

    if args.samples < 1 or args.alphas < 2 or args.threads < 1 or args.input_size < 1:
        raise FedlayerError("bench barriers needs --samples >= 1, --alphas >= 2, --threads >= 1 and --input-size >= 1")
    torch.set_num_threads(args.threads)
    options, task = parse_options(args.option), MODEL_TASKS.get(args.model, CLASSIFICATION)
    generator = torch.Generator().manual_seed(args.seed)
    shape: tuple[int, ...]
    if task == LANGUAGE:
        shape, classes = (args.input_size,), len(VOCABULARY)
        inputs = torch.randint(0, classes, (args.samples, *shape), generator=generator)
        labels = torch.randint(0, classes, (args.samples, *shape), generator=generator)
        described = f"windows of {args.input_size} tokens"
    else:
        shape, classes = (CHANNELS, args.input_size, args.input_size), NUM_CLASSES
        inputs = torch.randn((args.samples, *shape), generator=generator)
        labels = torch.randint(0, classes, (args.samples,), generator=generator)
        described = f"{'x'.join(map(str, shape))} images"

    def new_model():
        return build_model(args.model, shape, classes, task=task, options=options)

    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(new_model().state_dict())
    state_a, state_b = states
    model = new_model()
    groups = ["layers", "full"]
    layers = model_layers(model, args.layer_unit)
    alphas = alpha_grid(args.alphas)
    print(
        f"barrier sweep: {args.model}{' (norm=none)' if args.model in MODELS else ''}, {len(layers)} "
        f"layers + full (layer unit {args.layer_unit}), both bases, "
        f"{len(alphas)} alphas, {args.samples} {described}, {args.threads} thread(s), "
        f"{args.device}"
    )

    def engine():
        return interpolation_curves(
            model, state_a, state_b, (inputs, labels), groups=groups, layer_unit=args.layer_unit, alphas=alphas,
            device=args.device, batch_size=args.batch_size,
        )  # fmt: skip

    # The engine runs before and after the naive method and the two times are averaged, so that a
    # load that drifts while the naive side runs (a shared machine) weighs on both sides alike.
    with _Timer("fedlayer engine") as fast_before:
        fast = engine()
    device = torch.device(args.device)

    def make_model():
        return new_model().to(device)

    pairs = [(group.name, group.keys) for group in resolve_groups(layers, groups)]
    with _Timer("naive per point") as naive_time, full_precision():  # the engine's arithmetic (no TF32)
        naive = naive_curves(make_model, state_a, state_b, inputs, labels, pairs, alphas, args.batch_size, device)
    with _Timer("fedlayer engine") as fast_after:
        again = engine()
    if not fast.equals(again):
        raise FedlayerError("the engine gave different numbers in two runs on the same input")
    fast_wall, fast_cpu = (fast_before.wall + fast_after.wall) / 2, (fast_before.cpu + fast_after.cpu) / 2

    merged = fast.merge(naive, on=["group", "base", "alpha"], suffixes=("", "_naive"), validate="one_to_one")
    if len(merged) != len(naive):
        raise FedlayerError(f"the two methods evaluated different points ({len(fast)} vs {len(naive)} rows)")
    loss_diff = float((merged["loss"] - merged["loss_naive"]).abs().max())
    error_diff = float((merged["error"] - merged["error_naive"]).abs().max())
    print(
        f"speed-up:        {naive_time.wall / fast_wall:8.2f}x wall, {naive_time.cpu / fast_cpu:.2f}x CPU time "
        f"(naive / mean engine; target >= {TARGET_RATIO:g}x)"
    )
    print(f"max |loss diff|: {loss_diff:.2e}  (target <= {TOLERANCE:g});  max |error diff|: {error_diff:.2e} pp")
    return 0 if loss_diff <= TOLERANCE else 1


class _Timer:
    """Wall-clock and process CPU time of a block; CPU time is steadier on a machine shared with others."""

    def __init__(self, label: str):
        self.label = label

    def __enter__(self) -> _Timer:
        self.start = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.start[0]
        self.cpu = time.process_time() - self.start[1]
        if exc[0] is None:
            print(f"{self.label + ':':16} {self.wall:8.1f} s wall, {self.cpu:8.1f} s CPU")


def naive_curves(make_model, state_a, state_b, inputs, labels, groups, alphas, batch_size, device):
    """The paper's method: per point a new model, a state-dict copy with the group's keys overwritten,
    load_state_dict and a full pass; the endpoints again for every group."""
    import pandas as pd
    import torch

    def evaluate(state):
        model = make_model()
        model.load_state_dict(state)
        return naive_metrics(model.eval(), inputs, labels, batch_size, device)

    rows = []
    with torch.inference_mode():
        for name, keys in groups:
            for endpoint in (state_a, state_b):  # the endpoints, re-evaluated for every group
                evaluate(endpoint)
            for base, base_state in (("a", state_a), ("b", state_b)):
                for alpha in alphas:
                    point = copy.deepcopy(base_state)
                    for key in keys:
                        if point[key].is_floating_point():
                            point[key] = (1 - alpha) * state_a[key] + alpha * state_b[key]
                    rows.append((name, base, alpha, *evaluate(point)))
    return pd.DataFrame(rows, columns=["group", "base", "alpha", "loss", "error"])


def naive_metrics(model, inputs, labels, batch_size, device) -> tuple[float, float]:
    """Prediction-weighted cross-entropy and error (%) with a full forward pass (a prediction: a sample, or a
    position of a language model's window)."""
    import torch.nn.functional as F

    from fedlayer.task_kinds import flat_predictions

    loss_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(labels), batch_size):
        x, y = inputs[start : start + batch_size].to(device), labels[start : start + batch_size].to(device)
        logits, y = flat_predictions(model(x), y)
        loss_sum += float(F.cross_entropy(logits, y, reduction="none").double().sum())
        correct += int((logits.argmax(dim=1) == y).sum())
        count += len(y)
    return loss_sum / count, 100.0 - 100.0 * correct / count
