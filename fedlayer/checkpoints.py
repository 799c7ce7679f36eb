"""Model checkpoints: fedlayer writes safetensors files (never pickle) atomically, and reads others' too.

`read_state_dict` takes a safetensors file, a PyTorch state dict saved with `torch.save` (read with
`torch.load(weights_only=True)`: tensors and plain containers only, never arbitrary objects), a
Hugging Face model folder, or a model in the local Hugging Face cache ("hf:EleutherAI/pythia-410m@step20000");
`fit_state` maps its keys to a model's and checks that it fits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedlayer.atomic import atomic_target
from fedlayer.data.specs import HF_PREFIX
from fedlayer.errors import CheckpointError, listed, one_line

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
"""Files read with torch.load(weights_only=True); any other file is read as safetensors."""
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
"""The weights of a Hugging Face model folder (save_pretrained), in order of preference; *.index.json lists shards."""
FORMATS = (
    "a .safetensors file, a PyTorch .pt/.pth/.bin state dict, a Hugging Face model folder or 'hf:ID[@REVISION]' "
    "from the local Hugging Face cache"
)
SAVE_HINT = "save a state dict instead: torch.save(model.state_dict(), path)"


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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors by name in a checkpoint of any accepted format, on the CPU, never unpickled.

    Formats: a Hugging Face model folder (its `HF_WEIGHTS`, sharded or not), or "hf:ID" / "hf:ID@REVISION"
    naming one in the local Hugging Face cache (never downloaded); a `TORCH_SUFFIXES`
    file holding a state dict, or a dict holding exactly one state dict among other entries (a
    training script's `{"epoch": 3, "state_dict": ...}`), which is unwrapped; any other file as
    safetensors.

    Parameters
    ----------
    path : str or pathlib.Path
        The checkpoint file or folder.

    Returns
    -------
    dict[str, torch.Tensor]
        The tensors by name, keys as stored (`fit_state` maps them to a model's).

    Raises
    ------
    CheckpointError
        If the path is missing, a folder without weights, a file of pickled objects that
        weights_only refuses, not a state dict, or not a valid file of its format.
    """
    hub = hub_checkpoint(path) if isinstance(path, str) else None
    if hub is not None:
        return _read_folder(_cached_hub_folder(*hub))
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch_file(_existing_file(path))
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        if path.suffix == ".safetensors" or not path.exists():
            raise
        raise CheckpointError(f"{exc}; a checkpoint is {FORMATS}") from exc


def hub_checkpoint(source: str) -> tuple[str, str] | None:
    """(model id, revision or "") of a checkpoint named "hf:ID" or "hf:ID@REVISION"; None for a path."""
    if not source.startswith(HF_PREFIX):
        return None
    repo, _, revision = source[len(HF_PREFIX) :].partition("@")
    return repo, revision


def absolute_checkpoint(source: str) -> str:
    """A checkpoint named by its absolute path ("hf:" names in the cache as they are): the same checkpoint from
    any working directory."""
    return source if hub_checkpoint(source) is not None else str(Path(source).expanduser().resolve())


def fit_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, what: str = "state") -> dict[str, torch.Tensor]:
    """`state` under the model's key names, checked to fit (the one place where checkpoint keys are mapped).

    A checkpoint of the same model class has the model's keys. Otherwise one dotted prefix is added
    to or removed from every key when that, and nothing else, makes the names match: a wrapper's
    attribute (a Lightning module's `model.`, a user's wrapper) or DataParallel's `module.`. Tied
    weights stored once (save_pretrained drops the duplicate) are filled in from their twin: they are
    one tensor, one layer.

    Raises
    ------
    CheckpointError
        As `check_state_fits`, naming the keys as stored, if no such mapping makes `state` fit.
    """
    tensors = model.state_dict(keep_vars=True)
    ties: dict[int, list[str]] = {}
    for key, tensor in tensors.items():
        ties.setdefault(id(tensor), []).append(key)

    def covers(keys: set[str]) -> bool:
        return keys <= tensors.keys() and all(not keys.isdisjoint(twins) for twins in ties.values())

    if not covers(set(state)):
        mapped = [renamed for renamed in _prefix_renamings(state, tensors) if covers(set(renamed))]
        state = mapped[0] if len(mapped) == 1 else state
    filled = dict(state)
    for twins in ties.values():
        source = next((key for key in twins if key in filled), None)
        if source is not None:
            filled.update({key: filled[source] for key in twins if key not in filled})
    check_state_fits(model, filled, what=what)
    return filled


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


def _prefix_renamings(
    state: Mapping[str, torch.Tensor], model_keys: Mapping[str, object]
) -> Iterator[dict[str, torch.Tensor]]:
    """`state` with a dotted prefix of its first key removed from every key, or one of the model's added."""
    if not state or not model_keys:
        return
    for prefix in _dotted_prefixes(next(iter(state))):
        if all(key.startswith(prefix) for key in state):
            yield {key[len(prefix) :]: value for key, value in state.items()}
    for prefix in _dotted_prefixes(next(iter(model_keys))):
        yield {prefix + key: value for key, value in state.items()}


def _dotted_prefixes(key: str) -> list[str]:
    """'a.b.weight' -> ['a.', 'a.b.']."""
    parts = key.split(".")[:-1]
    return [".".join(parts[: i + 1]) + "." for i in range(len(parts))]


def _cached_hub_folder(repo: str, revision: str) -> Path:
    """The local Hugging Face cache's folder of model `repo` at `revision` (a branch, tag or commit; "" = main)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(repo, revision=revision or None, local_files_only=True))
    except Exception as exc:  # huggingface_hub raises several kinds for "not in the cache"
        name = repo + (f"@{revision}" if revision else "")
        raise CheckpointError(
            f"checkpoint hf:{name}: not in the Hugging Face cache ({HF_HUB_CACHE}): {one_line(exc)}; fedlayer "
            f"does not download models: fetch it once with `hf download {repo}"
            + (f" --revision {revision}" if revision else "")
            + "` on a machine with internet access, or give its folder"
        ) from None


def _read_folder(path: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face model folder: its single weights file, or every shard its index lists."""
    name = next((name for name in HF_WEIGHTS if (path / name).is_file()), None)
    if name is None:
        found = sorted(p.name for p in path.iterdir())
        raise CheckpointError(
            f"checkpoint folder {path} holds no model weights: expected a Hugging Face model folder with "
            f"{', '.join(HF_WEIGHTS)}; it has {listed(found) if found else 'nothing'}"
        )
    if not name.endswith(".index.json"):
        return read_state_dict(path / name)
    try:
        shards = sorted(set(json.loads((path / name).read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {path / name}: not a shard index with a weight_map ({exc})") from exc
    return {key: value for shard in shards for key, value in read_state_dict(path / shard).items()}


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, KeyError, EOFError... for a bad file
        text = str(exc)
        if "Weights only load failed" in text:
            found = re.search(r"GLOBAL (\S+)", text)
            holds = f" (it holds {found.group(1)})" if found else ""
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects{holds}: fedlayer reads PyTorch files with "
                f"torch.load(weights_only=True) and never unpickles arbitrary objects; {SAVE_HINT}"
            ) from exc
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid PyTorch file ({one_line(exc)})") from exc
    if _is_state_dict(loaded):
        return dict(loaded)
    nested = [key for key, value in loaded.items() if _is_state_dict(value)] if isinstance(loaded, Mapping) else []
    if len(nested) == 1:
        return dict(loaded[nested[0]])
    if nested:
        raise CheckpointError(
            f"checkpoint {path} holds several state dicts, under {listed(map(repr, nested))}; "
            f"save the one to compare: torch.save(checkpoint[{nested[0]!r}], path)"
        )
    if isinstance(loaded, Mapping) and loaded:
        holds = "a dict of " + listed(f"{key!r} ({type(value).__name__})" for key, value in loaded.items())
    else:
        holds = f"a {type(loaded).__name__}" + (" (empty)" if isinstance(loaded, Mapping) else "")
    raise CheckpointError(f"checkpoint {path} is not a state dict (names to tensors): it holds {holds}; {SAVE_HINT}")


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )
