"""Evaluating a model at many points of straight parameter paths with ONE working copy.

A point changes only some tensors of a base model; each point writes them in place and
restores them afterwards, so no model is rebuilt or copied per point. `PlainEvaluator` runs the
full forward pass at every point (and re-estimates BatchNorm statistics for bn="recompute");
`fedlayer.analysis.graph.GraphEvaluator` gives the same numbers while re-running only what
the changed tensors affect.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fedlayer.analysis.pooling import use_strided_max_pools
from fedlayer.errors import DataError
from fedlayer.task_kinds import flat_predictions
from fedlayer.training import Metrics

EvalInput = Sequence[torch.Tensor] | DataLoader
"""Evaluation data: an (inputs, labels) pair of tensors, or a DataLoader yielding (inputs, labels, ...) batches.

Labels are (N,) classes, or (N, T) next tokens for a language task (`fedlayer.task_kinds`)."""


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Plain float32 arithmetic on GPUs: TensorFloat-32 off for convolutions and matrix products.

    PyTorch lets cuDNN run convolutions in TF32 (10-bit mantissas) by default; barriers are small
    differences of losses, and TF32's rounding (about 1e-5 in a loss) would make the engine disagree
    with a full pass at the same point. CPUs are unaffected.
    """
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@dataclass(frozen=True)
class EvalData:
    """The evaluation set, materialised once so every point sees exactly the same samples."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> EvalData:
        return EvalData(self.inputs.to(device), self.labels.to(device))

    def chunks(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.labels), batch_size):
            yield self.inputs[start : start + batch_size], self.labels[start : start + batch_size]


def as_eval_data(data: EvalInput) -> EvalData:
    """The evaluation set held by `data`, checked: one integer label per input (or per position).

    Raises
    ------
    DataError
        If `data` is neither a DataLoader nor a pair of tensors, yields nothing, or its labels do
        not match its inputs one to one ((N,) or (N, T)) or are not integers.
    """
    if isinstance(data, DataLoader):
        batches = [tuple(batch)[:2] for batch in data]
        if not batches:
            raise DataError("the evaluation DataLoader yields no batches")
        inputs, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    elif isinstance(data, Sequence) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, labels = data
    else:
        raise DataError(
            f"evaluation data must be a DataLoader or an (inputs, labels) pair of tensors, got {type(data).__name__}"
        )
    if labels.dim() not in (1, 2) or len(labels) != len(inputs) or len(labels) == 0:
        raise DataError(
            f"evaluation data needs one integer label per input (N,), or one per position (N, T) for a language "
            f"task: {len(inputs)} inputs, labels of shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point():
        raise DataError(f"labels must be class indices (integers), got dtype {labels.dtype}")
    return EvalData(inputs, labels.long())


def as_inputs(data: torch.Tensor | EvalInput) -> torch.Tensor:
    """Inputs for BatchNorm re-estimation: a tensor, an (inputs, labels) pair or a DataLoader.

    Raises
    ------
    DataError
        As `as_eval_data`, for a pair or a DataLoader.
    """
    if isinstance(data, torch.Tensor):
        return data
    return as_eval_data(data).inputs


class Accumulator:
    """Sums per-prediction losses and correct predictions (in float64), never a mean of batch means."""

    def __init__(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.correct = torch.zeros((), dtype=torch.int64)
        self.count = 0
        self.samples = 0

    def add(self, output: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch's predictions; a ModelError if the output has no row of logits per label."""
        self.samples += len(labels)
        logits, labels = flat_predictions(output, labels)
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        losses = F.cross_entropy(logits, labels, reduction="none").double().sum()
        correct = (logits.argmax(dim=1) == labels).sum()
        self.loss_sum = self.loss_sum.to(losses.device) + losses
        self.correct = self.correct.to(correct.device) + correct
        self.count += len(labels)

    def result(self) -> Metrics:
        loss = float(self.loss_sum) / self.count
        return Metrics(loss=loss, correct=int(self.correct), seen=self.count, num_examples=self.samples)


@dataclass(frozen=True, eq=False)
class Segment:
    """One tensor of the working model on a line through parameter space, for alpha in [0, 1].

    Interpolation: lerp(at0, at1, alpha), exact at both ends (alpha 0 gives A's tensor and alpha 1
    B's, bit for bit). Random direction: rest + t * delta with t = alpha from base A and
    t = 1 - alpha from base B, so that, as for interpolation, base A sits at alpha 0 and base B at
    alpha 1. `rest` is the base model's tensor, written back after the path; `base_end` is the
    alpha at which the path passes through the base model.
    """

    target: torch.Tensor
    rest: torch.Tensor
    base_end: float
    at0: torch.Tensor | None = None
    at1: torch.Tensor | None = None
    delta: torch.Tensor | None = None

    def write(self, alpha: float) -> None:
        if self.delta is None:
            at0, at1 = self._ends()
            torch.lerp(at0, at1, alpha, out=self.target)
        else:
            torch.add(self.rest, self.delta, alpha=abs(alpha - self.base_end), out=self.target)

    def value(self, alpha: float) -> torch.Tensor:
        if self.delta is None:
            at0, at1 = self._ends()
            return torch.lerp(at0, at1, alpha)
        return torch.add(self.rest, self.delta, alpha=abs(alpha - self.base_end))

    def _ends(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The interpolation ends, which a segment without `delta` must have."""
        if self.at0 is None or self.at1 is None:
            raise ValueError("a Segment needs either delta or both at0 and at1")
        return self.at0, self.at1

    def restore(self) -> None:
        self.target.copy_(self.rest)


ParameterPath = Sequence[Segment]
"""The tensors one path moves, each along its own line: a group's interpolation or a random direction."""


class WorkingModel:
    """A private eval-mode copy of the model on the device, whose tensors are rewritten in place.

    In-place activations are switched off: they would overwrite activations that the graph
    evaluator caches, and they never change the numbers. On CPUs, max pools run as the exact and
    faster `StridedMaxPool2d`.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        self.device = device
        self.model = copy.deepcopy(model).to(device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        for module in self.model.modules():
            if isinstance(getattr(module, "inplace", None), bool):
                module.inplace = False  # type: ignore[assignment]  # torch stub: __setattr__ takes Tensor | Module
        use_strided_max_pools(self.model)  # each pool falls back to the stock kernel off the CPU
        self.tensors: dict[str, torch.Tensor] = self.model.state_dict(keep_vars=True)
        self.parameter_names = {name for name, _ in self.model.named_parameters(remove_duplicate=False)}
        self.bn_modules = [
            m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]

    def prepare(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict moved to the working model's device and dtypes (done once per model)."""
        return {key: state[key].to(device=t.device, dtype=t.dtype) for key, t in self.tensors.items()}

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        seen: set[int] = set()
        for key, tensor in self.tensors.items():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                tensor.copy_(state[key])

    def recompute_bn(self, inputs: torch.Tensor, batch_size: int) -> None:
        """Reset BatchNorm running stats and re-estimate them as a cumulative average (momentum=None)."""
        saved = [m.momentum for m in self.bn_modules]
        for module in self.bn_modules:
            module.reset_running_stats()
            module.momentum = None
            module.train()
        try:
            for start in range(0, len(inputs), batch_size):
                self.model(inputs[start : start + batch_size].to(self.device))
        finally:
            for module, momentum in zip(self.bn_modules, saved, strict=True):
                module.momentum = momentum
                module.eval()


class PlainEvaluator:
    """Full forward pass at every point; with `bn_inputs`, BatchNorm stats are re-estimated first."""

    name = "plain"

    def __init__(self, work: WorkingModel, data: EvalData, batch_size: int, bn_inputs: torch.Tensor | None = None):
        self.work, self.data, self.batch_size, self.bn_inputs = work, data, batch_size, bn_inputs

    def evaluate(
        self, base: Mapping[str, torch.Tensor], paths: Sequence[tuple[ParameterPath, Sequence[float]]]
    ) -> tuple[Metrics, list[list[Metrics]]]:
        """Metrics of the base model and of each path at each of its alphas."""
        self.work.load(base)
        base_metrics = self._point()
        results = []
        for segments, alphas in paths:
            row = []
            for alpha in alphas:
                for segment in segments:
                    segment.write(alpha)
                row.append(self._point())
            for segment in segments:
                segment.restore()
            results.append(row)
        return base_metrics, results

    def _point(self) -> Metrics:
        if self.bn_inputs is not None:
            self.work.recompute_bn(self.bn_inputs, self.batch_size)
        accumulator = Accumulator()
        for inputs, labels in self.data.chunks(self.batch_size):
            accumulator.add(self.work.model(inputs), labels)
        return accumulator.result()
