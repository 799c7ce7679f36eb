"""The errors a user sees: a message that says what was wrong, the bad value and what is allowed.

Every error fedlayer raises on purpose is a `FedlayerError`, so the CLI can print its message
without a traceback and exit with status 2. Callers that need to tell causes apart catch a
subclass:

- `ConfigError`: a bad config value, override, command-line option, strategy or layer selector;
- `DataError`: a dataset that is unknown, missing offline or malformed, or a bad partition;
- `ModelError`: an unknown model, or a model that does not fit the data or the strategy;
- `CheckpointError`: a checkpoint that cannot be read or does not fit the model;
- `RunError`: a run that cannot go on (too few usable client replies, a run directory that
  cannot be resumed, a client protocol violation).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_LISTED = 5  # names listed in full before "... (N more)"


class FedlayerError(Exception):
    """Base class of every user-facing error; the CLI prints its message and exits with 2."""


class ConfigError(FedlayerError):
    """A config key, override, CLI option, strategy or layer selector has a bad value."""


class DataError(FedlayerError):
    """A dataset or partition cannot be loaded or built as asked."""


class ModelError(FedlayerError):
    """A model cannot be built, or does not fit the data or the averaging scheme."""


class CheckpointError(FedlayerError):
    """A checkpoint cannot be read, or its keys and shapes do not fit the model."""


class RunError(FedlayerError):
    """A federated run cannot go on or cannot be resumed."""


def choices_message(what: str, value: object, choices: Iterable[object]) -> str:
    """Format 'unknown <what> <value>; valid choices: a, b, c' consistently everywhere."""
    listed = ", ".join(str(c) for c in choices)
    return f"unknown {what} {value!r}; valid choices: {listed}"


def listed(names: Iterable[object], limit: int = MAX_LISTED) -> str:
    """'a, b, c, ... (N more)': the first `limit` names of a possibly long list, in the order given."""
    texts = [str(name) for name in names]
    more = f", ... ({len(texts) - limit} more)" if len(texts) > limit else ""
    return ", ".join(texts[:limit]) + more


def one_line(exc: BaseException) -> str:
    """'TypeName: first sentence' of an exception: third-party messages run to paragraphs, a reason fits on a line."""
    text = str(exc).strip().split("\n", 1)[0].split(". ", 1)[0].rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
