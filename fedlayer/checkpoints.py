"""Model checkpoints as safetensors files (never pickle): atomic writes, clear errors on bad files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedlayer.atomic import atomic_target
from fedlayer.errors import CheckpointError, listed


def save_checkpoint(
    state: Mapping[str, torch.Tensor | np.ndarray], path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a state dict as a safetensors file, atomically: a crash never leaves half a checkpoint.

    The file is written to a temporary name and renamed. Tensors are cloned to contiguous CPU
    memory first: safetensors refuses tensors that share memory (tied weights), and each name then
    gets its own copy. Numpy arrays (a server strategy's state) are stored as tensors of their dtype.

    Parameters
    ----------
    state : Mapping[str, torch.Tensor or numpy.ndarray]
        The state dict to store.
    path : str or pathlib.Path
        The checkpoint file; replaced if it exists.
    metadata : Mapping[str, str] or None, default None
        String metadata stored with the tensors (values are converted with str).

    Returns
    -------
    pathlib.Path
        `path`.
    """
    from safetensors.torch import save_file

    tensors = {
        key: torch.tensor(value) if isinstance(value, np.ndarray) else value.detach().to("cpu").contiguous().clone()
        for key, value in state.items()
    }
    meta = {str(key): str(value) for key, value in (metadata or {}).items()}
    with atomic_target(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in a safetensors file, on the CPU (never unpickled).

    Parameters
    ----------
    path : str or pathlib.Path
        A file written by `save_checkpoint` or any safetensors writer.

    Returns
    -------
    dict[str, torch.Tensor]
        The tensors by name, in the file's order.

    Raises
    ------
    CheckpointError
        If the file is missing, a directory, or not a valid safetensors file.
    """
    from safetensors.torch import load_file

    path = _existing_file(path)
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError or ValueError
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid safetensors file ({exc})") from exc


def checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored with a checkpoint (empty if none).

    Raises
    ------
    CheckpointError
        If the file is missing, a directory, or not a valid safetensors file.
    """
    from safetensors import safe_open

    path = _existing_file(path)
    try:
        with safe_open(path, framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid safetensors file ({exc})") from exc


def check_state_fits(
    model: nn.Module | Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], *, what: str = "state"
) -> None:
    """Check that a state dict has exactly the model's keys, with the model's shapes.

    Parameters
    ----------
    model : nn.Module or Mapping[str, torch.Tensor]
        The model, or a state dict standing for it.
    state : Mapping[str, torch.Tensor]
        The state dict to check.
    what : str, default "state"
        How the message names `state` (e.g. a checkpoint's path).

    Raises
    ------
    CheckpointError
        Naming the missing and unexpected keys and the shape mismatches, if any.
    """
    expected = model.state_dict() if isinstance(model, nn.Module) else model
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key} {tuple(state[key].shape)} (model: {tuple(expected[key].shape)})"
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = [
        f"{label}: {listed(names)}"
        for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes))
        if names
    ]
    if problems:
        raise CheckpointError(f"{what} does not fit the model; " + "; ".join(problems))


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        reason = "is a directory" if path.is_dir() else "not found"
        raise CheckpointError(f"checkpoint {path} {reason}")
    return path
