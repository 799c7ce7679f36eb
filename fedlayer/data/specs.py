"""Dataset specs: what `data.dataset` may name besides a built-in dataset, and where each kind is loaded.

- a built-in name (`DATASETS`, `fedlayer.data.datasets`; the language ones in `fedlayer.data.shakespeare`);
- "hf:<dataset id or local path>": a Hugging Face dataset (`fedlayer.data.hf`);
- "path/to/file.py:callable" or "package.module:callable": a user's function (`fedlayer.data.user`).

Importing this module is cheap (the config validates `data.dataset` with `is_dataset_spec`); the loaders
are imported when a spec is loaded.
"""

from __future__ import annotations

from pathlib import Path

from fedlayer.data.datasets import (
    DATASETS,
    LANGUAGE_DATASETS,
    MIN_LINES,
    SEQ_LEN,
    SHAKESPEARE,
    Dataset,
    load_builtin_dataset,
)
from fedlayer.errors import DataError, choices_message

HF_PREFIX = "hf:"
SPEC_FORMS = "a dataset spec: 'hf:<dataset id or local path>', 'path/to/file.py:callable' or 'package.module:callable'"


def is_dataset_spec(text: str) -> bool:
    """Whether `text` has the form of a non-built-in spec (whether it loads is only known by loading it)."""
    if text.startswith(HF_PREFIX):
        return bool(text[len(HF_PREFIX) :].strip())
    module, sep, name = text.rpartition(":")
    return bool(sep and module and name.isidentifier())


def is_file_spec(text: str) -> bool:
    """A callable in a .py file (rather than in an importable module)."""
    module = text.rpartition(":")[0]
    return not text.startswith(HF_PREFIX) and (module.endswith(".py") or "/" in module or "\\" in module)


def absolute_spec(text: str) -> str:
    """`text` with a file path made absolute (a .py file, or an existing local Hugging Face path), so a saved
    config means the same from any working directory; other specs unchanged."""
    if is_file_spec(text):
        module, _, name = text.rpartition(":")
        return f"{Path(module).expanduser().resolve()}:{name}"
    if text.startswith(HF_PREFIX):
        path = Path(text[len(HF_PREFIX) :]).expanduser()
        if path.exists():
            return f"{HF_PREFIX}{path.resolve()}"
    return text


def load_dataset(
    spec: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    *,
    seed: int = 0,
    input_column: str = "",
    label_column: str = "",
    partition_by: str = "",
    seq_len: int = SEQ_LEN,
    stride: int = 0,
    min_lines: int = MIN_LINES,
    test_fraction: float = 0.2,
) -> Dataset:
    """Load a dataset by spec: a built-in name, "hf:..." or a user callable.

    Parameters
    ----------
    spec : str
        A built-in name (`DATASETS`) or a spec (see the module docstring).
    data_dir : str, pathlib.Path or None, default None
        Built-in datasets: where their files are; user callables receive it as `data_dir`.
    download : bool, default False
        Built-in datasets: download with torchvision; Hugging Face ids: fetch from the hub (else the local
        cache only, offline).
    seed : int, default 0
        Passed to a user callable that takes `seed`.
    input_column, label_column, partition_by : str, default ""
        Hugging Face datasets only: the input column(s), the label column ("" = found) and the column of
        natural client ids ("" = none).
    seq_len : int, default SEQ_LEN
        Language datasets only: characters per window.
    stride : int, default 0
        Language datasets only: characters between window starts (0 = `seq_len`).
    min_lines : int, default MIN_LINES
        "shakespeare" only: the fewest lines a role needs to be a client.
    test_fraction : float, default 0.2
        "shakespeare": each role's share of lines held out as its test part (other datasets ignore it: for
        them it is only each client's local share, which the partitions hold out).

    Returns
    -------
    Dataset
        With `groups` (natural client ids per train sample) when the spec gives them.

    Raises
    ------
    DataError
        If the spec is unknown or cannot be loaded (a missing file, module, callable or dataset, a callable
        that raises or returns the wrong structure; built-in datasets as `load_builtin_dataset`), a
        Hugging Face option is given for another kind, or a language option (other than its default) for a
        dataset it does not apply to.
    """
    if spec not in DATASETS and not is_dataset_spec(spec):
        raise DataError(choices_message("dataset", spec, [*DATASETS, SPEC_FORMS]))
    options = {"input_column": input_column, "label_column": label_column, "partition_by": partition_by}
    if not spec.startswith(HF_PREFIX):
        given = [f"data.{key} = {value!r}" for key, value in options.items() if value]
        if given:
            raise DataError(
                f"{', '.join(given)} only applies to Hugging Face datasets ('hf:...'), not to {spec!r}"
                + ("; a dataset callable returns its natural client ids as `groups`" if partition_by else "")
            )
    for key, value, default, names in (
        ("seq_len", seq_len, SEQ_LEN, LANGUAGE_DATASETS),
        ("stride", stride, 0, LANGUAGE_DATASETS),
        ("min_lines", min_lines, MIN_LINES, (SHAKESPEARE,)),
    ):
        if value != default and spec not in names:
            names_text = " and ".join(repr(name) for name in names)
            raise DataError(f"data.{key} = {value!r} only applies to {names_text}, not to {spec!r}")
    if spec in DATASETS:
        return load_builtin_dataset(
            spec,
            data_dir=data_dir,
            download=download,
            seq_len=seq_len,
            stride=stride,
            min_lines=min_lines,
            test_fraction=test_fraction,
        )
    if spec.startswith(HF_PREFIX):
        from fedlayer.data.hf import load_hf_dataset

        return load_hf_dataset(spec[len(HF_PREFIX) :], download=download, **options)
    from fedlayer.data.user import load_user_dataset

    return load_user_dataset(spec, data_dir=data_dir, seed=seed)
