"""Local training and evaluation in plain PyTorch: what a client does, with no Flower in sight.

The ClientApp and the plain-PyTorch baseline of `fedlayer bench simulation` both call these
functions, so the benchmark compares the framework overhead and nothing else. `Metrics` is also
what the barrier engine (`fedlayer.analysis`) measures at every point, so both report one type.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fedlayer.errors import ConfigError, choices_message
from fedlayer.protocol import TRAIN_MODES
from fedlayer.task_kinds import flat_predictions, perplexity

OPTIMIZERS = ("sgd", "adam")


def default_device() -> torch.device:
    """The GPU this process may use (a simulated client is given one by Ray's num_gpus), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class TrainSettings:
    """How a client trains locally; `mode` is one of `fedlayer.protocol.TRAIN_MODES`, `optimizer` of `OPTIMIZERS`."""

    epochs: int = 1
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    mode: str = "standard"
    head_epochs: int = 1


@dataclass(frozen=True)
class Metrics:
    """A model's mean loss and accuracy over `seen` predictions, shared by training and the barrier engine.

    A prediction is a sample's class in classification and a position's next token in language
    modelling (`fedlayer.task_kinds`). Accuracy and error are derived from the counts, so the error rate
    is exactly 100 - 100 * correct / seen, never a rounded 100 * (1 - accuracy).

    Attributes
    ----------
    loss : float
        Mean cross-entropy over the `seen` predictions (weighted by prediction, never a mean of batch means).
    correct : int
        Predictions whose arg-max is the label.
    seen : int
        Predictions the means run over: every epoch's in training, one per sample (classification) or
        per position (language) in evaluation.
    num_examples : int
        Distinct samples: the weight of this client in federated averaging.
    """

    loss: float
    correct: int
    seen: int
    num_examples: int

    @property
    def accuracy(self) -> float:
        """Fraction of correct predictions, in [0, 1]."""
        return self.correct / self.seen

    @property
    def perplexity(self) -> float:
        """exp(loss): a language model's perplexity per token (inf where the loss overflows it)."""
        return perplexity(self.loss)

    @property
    def error(self) -> float:
        """Error rate in percentage points (100 - accuracy in %), the unit of the error barriers."""
        return 100.0 - 100.0 * self.correct / self.seen


def seed_everything(*parts: int) -> torch.Generator:
    """Seed torch from a tuple such as (seed, partition, round) and return a matching generator."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**63 - 1)
    torch.manual_seed(value)
    generator = torch.Generator()
    generator.manual_seed(value)
    return generator


def _make_optimizer(params, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


def _run_epochs(
    model,
    x,
    y,
    settings,
    epochs,
    trainable: Collection[str] | None,
    generator,
    device,
    anchor: Mapping[str, torch.Tensor] | None,
) -> tuple[float, int, int]:
    """SGD epochs over (x, y) updating only the parameters named in `trainable` (None = all)."""
    named = [(n, p) for n, p in model.named_parameters() if trainable is None or n in trainable]
    if not named or epochs == 0:
        return 0.0, 0, 0
    for name, p in model.named_parameters():
        p.requires_grad_(trainable is None or name in trainable)
    optimizer = _make_optimizer([p for _, p in named], settings)
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            logits, targets = flat_predictions(model(xb), yb)
            loss = loss_fn(logits, targets)
            objective = loss
            if anchor is not None and settings.proximal_mu > 0:
                prox = sum(((p - anchor[n]) ** 2).sum() for n, p in named)
                objective = loss + 0.5 * settings.proximal_mu * prox
            objective.backward()
            optimizer.step()
            total_loss += loss.item() * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
    for p in model.parameters():
        p.requires_grad_(True)
    return total_loss, correct, seen


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    *,
    head_params: Collection[str] = (),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Metrics:
    """Train `model` in place on (x, y) as `settings.mode` says; return the mean training metrics.

    Modes: "standard" trains every parameter (FedAvg, McMahan et al. 2017, arXiv:1602.05629);
    "fedrep" trains the head with the body frozen, then the body (Collins et al. 2021,
    arXiv:2102.07078); "fedbabu" keeps the head frozen throughout federation (Oh et al. 2022,
    arXiv:2106.06042). `settings.proximal_mu` > 0 adds FedProx's proximal term (Li et al. 2020,
    arXiv:1812.06127).

    Parameters
    ----------
    model : nn.Module
        The model to train, already on `device`; changed in place.
    x, y : torch.Tensor
        The local training inputs and integer labels: (N,) classes, or (N, T) next tokens.
    settings : TrainSettings
        Epochs, batch size, optimizer and training mode.
    head_params : Collection[str], default ()
        Names of the classifier-head parameters, needed by "fedrep" and "fedbabu".
    generator : torch.Generator or None, default None
        Drives the batch order (see `seed_everything`); None uses torch's global generator.
    device : torch.device or str, default "cpu"
        Where each batch is moved.

    Returns
    -------
    Metrics
        Mean loss and accuracy over every prediction made while training; `num_examples` is len(x).

    Raises
    ------
    ConfigError
        If `settings.mode` or `settings.optimizer` is unknown.
    """
    if settings.mode not in TRAIN_MODES:
        raise ConfigError(choices_message("training mode", settings.mode, TRAIN_MODES))
    if settings.optimizer not in OPTIMIZERS:
        raise ConfigError(choices_message("optimizer", settings.optimizer, OPTIMIZERS))
    anchor = None
    if settings.proximal_mu > 0:
        anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    all_params = {n for n, _ in model.named_parameters()}
    body = all_params - set(head_params)
    phases: list[tuple[set[str] | None, int]]
    if settings.mode == "fedrep":
        phases = [(set(head_params), settings.head_epochs), (body, settings.epochs)]
    elif settings.mode == "fedbabu":
        phases = [(body, settings.epochs)]
    else:
        phases = [(None, settings.epochs)]
    total_loss, correct, seen = 0.0, 0, 0
    for trainable, epochs in phases:
        loss, ok, n = _run_epochs(model, x, y, settings, epochs, trainable, generator, device, anchor)
        total_loss, correct, seen = total_loss + loss, correct + ok, seen + n
    seen = max(seen, 1)
    return Metrics(loss=total_loss / seen, correct=correct, seen=seen, num_examples=len(x))


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512, device: torch.device | str = "cpu"
) -> Metrics:
    """Mean cross-entropy and accuracy of `model` on (x, y) over every prediction, in eval mode.

    Parameters
    ----------
    model : nn.Module
        The model to evaluate, already on `device`.
    x, y : torch.Tensor
        Inputs and integer labels: (N,) classes, or (N, T) next tokens of a language task.
    batch_size : int, default 512
        Samples per forward pass.
    device : torch.device or str, default "cpu"
        Where each batch is moved.

    Returns
    -------
    Metrics
        Loss and accuracy over the predictions of the len(x) samples (both 0 for an empty set).
    """
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        yb = y[start : start + batch_size].to(device, non_blocking=True)
        logits, targets = flat_predictions(model(xb), yb)
        total_loss += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        correct += int((logits.argmax(1) == targets).sum())
        seen += len(targets)
    seen = max(seen, 1)
    return Metrics(loss=total_loss / seen, correct=correct, seen=seen, num_examples=len(x))
