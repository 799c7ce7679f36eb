"""One typed experiment config: TOML in, validated, overridable from the CLI, written back as TOML.

Every field is declared once below with its type, default and allowed values; loading, `--set`
overrides, Flower's flat run-config and the error messages are all derived from those declarations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedlayer.analysis.curves import BN_POLICIES
from fedlayer.analysis.interpolate import BASES
from fedlayer.data.datasets import DATASETS, MIN_LINES, SEQ_LEN
from fedlayer.data.partition import METHODS as PARTITION_SCHEMES
from fedlayer.data.specs import SPEC_FORMS, is_dataset_spec
from fedlayer.errors import ConfigError
from fedlayer.layers import LAYER_UNITS
from fedlayer.model_specs import SPEC_FORMS as MODEL_SPEC_FORMS
from fedlayer.model_specs import is_model_spec
from fedlayer.models import INIT_MODES, MODEL_NORMS, MODELS, NORMS
from fedlayer.protocol import PERSONAL_MODES
from fedlayer.training import OPTIMIZERS


def _spec(default, *, choices=None, also=None, ge=None, gt=None, le=None, lt=None, help=""):
    """A config field: its default, its allowed values and a one-line description.

    `also` = (description, predicate) admits values outside `choices` that the predicate accepts (specs such
    as 'hf:...' or 'file.py:callable'); the description follows the choices in messages and the reference.
    """
    meta = {"choices": choices, "also": also, "ge": ge, "gt": gt, "le": le, "lt": lt, "help": help}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = _spec(
        "digits",
        choices=DATASETS,
        also=(SPEC_FORMS, is_dataset_spec),
        help="a built-in dataset, or a spec (docs/models-and-data.md)",
    )
    data_dir: str = _spec(
        "", help="folder with the dataset files ('' = FEDLAYER_DATA or default places); given to a dataset callable"
    )
    download: bool = _spec(
        False,
        help="download when missing (needs internet): built-in datasets through torchvision, 'hf:' ids from the "
        "Hugging Face hub (otherwise only its local cache is read)",
    )
    input_column: str = _spec(
        "",
        help="hf: the column holding the inputs, or several numeric columns comma-separated ('' = found: image, "
        "img, pixel_values, else the only other column, else all other columns when numeric)",
    )
    label_column: str = _spec("", help="hf: the column holding the labels ('' = found: label, labels, fine_label)")
    partition_by: str = _spec(
        "", help="hf: the column of natural client ids (a writer, a speaker) for the natural partition ('' = none)"
    )
    partition: str = _spec(
        "dirichlet", choices=PARTITION_SCHEMES, help="non-IID split (natural: one natural group per client)"
    )
    alpha: float = _spec(0.5, gt=0.0, help="Dirichlet concentration (smaller = more skewed)")
    classes_per_client: int = _spec(2, ge=1, help="classes per client for the pathological split")
    shards_per_client: int = _spec(2, ge=1, help="shards per client for the shard split")
    test_fraction: float = _spec(
        0.2,
        ge=0.0,
        lt=1.0,
        help="part of each client's data kept for local test (shakespeare: each role's last lines, which form "
        "the test set)",
    )
    max_train_samples: int = _spec(0, ge=0, help="seeded subsample of the train set (0 = all)")
    max_test_samples: int = _spec(0, ge=0, help="seeded subsample of the global test set (0 = all)")
    resize: int = _spec(
        0,
        ge=0,
        help="resize images to resize x resize as the model reads them (0 = as they are), for models "
        "that need larger inputs",
    )
    seq_len: int = _spec(SEQ_LEN, ge=1, help="language datasets: characters per window (LEAF: 80)")
    stride: int = _spec(
        0,
        ge=0,
        help="language datasets: characters between window starts (0 = seq_len: no overlap; 1 = every position, "
        "as LEAF, about seq_len times the memory)",
    )
    min_lines: int = _spec(
        MIN_LINES, ge=1, help="shakespeare: the fewest spoken lines a role needs to be a client (LEAF: 3)"
    )


@dataclass
class ModelConfig:
    name: str = _spec(
        "cnn",
        choices=tuple(MODELS),
        also=(MODEL_SPEC_FORMS, is_model_spec),
        help="a built-in model, or a spec (docs/models-and-data.md)",
    )
    norm: str = _spec(
        "none",
        choices=NORMS,
        help="normalisation layers of a built-in model (those that offer them: "
        + ", ".join(name for name, norms in MODEL_NORMS.items() if len(norms) > 1)
        + ")",
    )
    options: dict = _spec(
        {},
        help="the model's options: a built-in's or callable's keyword arguments, a torchvision builder's (weights = "
        "'DEFAULT' for pretrained weights), Hugging Face config overrides (pretrained = true for its weights)",
    )


@dataclass
class FederationConfig:
    clients: int = _spec(10, ge=1, help="number of clients (partitions)")
    rounds: int = _spec(
        3,
        ge=0,
        help="federated rounds (0 = none: the initial models only, e.g. the round-0 barriers between checkpoints)",
    )
    fraction: float = _spec(1.0, gt=0.0, le=1.0, help="fraction of clients sampled per round")
    min_clients: int = _spec(1, ge=1, help="fewest usable training replies a round needs (else the run stops)")
    timeout: float = _spec(600.0, gt=0.0, help="seconds a round waits for client replies; later ones count as timeouts")
    fault_probability: float = _spec(
        0.0,
        ge=0.0,
        lt=1.0,
        help="seeded fault injection: chance that a client's training raises in a round (to exercise fault handling)",
    )
    local_epochs: int = _spec(1, ge=1, help="local epochs per round")
    batch_size: int = _spec(32, ge=1, help="local batch size")
    optimizer: str = _spec("sgd", choices=OPTIMIZERS, help="local optimizer")
    lr: float = _spec(0.05, gt=0.0, help="local learning rate")
    lr_per_client: list[float] = _spec(
        [],
        gt=0.0,
        help="one learning rate per client, in partition order ([] = federation.lr for every client): the "
        "paper's ViT pair trains one initialisation with two learning rates",
    )
    init: str = _spec(
        "same",
        choices=INIT_MODES,
        help="where each client's model starts: same (the global model of `seed`), per-client (its own "
        "initialisation, seeded by seed and partition id) or checkpoints (federation.init_checkpoints); a "
        "client's own values last until an average replaces them",
    )
    init_checkpoints: list = _spec(
        [],
        help="init = checkpoints: one per client, in partition order: a safetensors or PyTorch file, a Hugging "
        "Face model folder, or 'hf:ID' / 'hf:ID@REVISION' from the local Hugging Face cache",
    )
    momentum: float = _spec(0.0, ge=0.0, lt=1.0, help="SGD momentum")
    weight_decay: float = _spec(0.0, ge=0.0, help="weight decay")
    proximal_mu: float = _spec(0.0, ge=0.0, help="FedProx proximal term (0 = off)")
    head_epochs: int = _spec(1, ge=0, help="FedRep: head epochs before the body epochs")


@dataclass
class StrategyConfig:
    name: str = _spec(
        "fedavg",
        help="a preset (fedavg, local, fedper, lg-fedavg, fedbn, fedrep, fedbabu, barrier-aware) or a layer selector",
    )
    class_: str = _spec("", help="'module:Class' or 'file.py:Class' of a Flower strategy to wrap ('' = FedAvg)")
    kwargs: dict = _spec({}, help="keyword arguments for that strategy class")
    average: str = _spec("", help="layers to average (selector); '' = the preset's")
    personal: str = _spec("server", choices=PERSONAL_MODES, help="who keeps the personal layers")
    threshold: float = _spec(0.1, ge=0.0, help="barrier-aware: average layers whose barrier is below this")


@dataclass
class AnalysisConfig:
    every: int = _spec(1, ge=0, help="analyse client models every N rounds (0 = off)")
    pairs: int = _spec(0, ge=0, help="client pairs per analysis (0 = all pairs)")
    samples: int = _spec(256, ge=1, help="seeded global test samples (images, text windows) to evaluate barriers on")
    groups: list = _spec(
        ["layers", "full"],
        help="group specs: layers (each single layer), full, an ordering (shallow, deep, random, minimal: cumulative "
        "groups), window:W (every run of W consecutive layers), or a layer selector such as 'layer2', 'head', "
        "'middle:5', 're:conv2$', '-norm' (all but the normalisation layers)",
    )
    layer_unit: str = _spec(
        "module",
        choices=LAYER_UNITS,
        help="what one layer is, in these groups and in strategy.average: a module with all its tensors (the "
        "paper's CNN and language-model layers) or each weight tensor with its bias (the paper's ViT layers)",
    )
    alphas: int = _spec(5, ge=3, help="points on the interpolation grid (odd, so that 0.5 is on it)")
    bases: list = _spec(["a", "b"], choices=BASES, help="which model supplies the untouched layers")
    bn: str = _spec("interpolate", choices=BN_POLICIES, help="BatchNorm policy")
    random_directions: int = _spec(0, ge=0, help="random directions per layer (robustness baseline)")
    vs_aggregate: bool = _spec(
        False, help="also measure each sampled client against the new aggregate (rows with client_b = 'aggregate')"
    )


@dataclass
class SimulationConfig:
    num_cpus: int = _spec(1, ge=1, help="CPU cores reserved per simulated client (how many run at once)")
    torch_threads: int = _spec(
        1, ge=1, help="torch threads per client; results depend on it (summation order), not on num_cpus"
    )
    num_gpus: float = _spec(0.0, ge=0.0, help="GPU fraction per simulated client")
    ray_address: str = _spec(
        "", help="host:port of a running Ray cluster's head ('' = a fresh Ray instance on this machine, always)"
    )
    keep_freed_memory: bool = _spec(
        True,
        help="tune glibc malloc to keep freed memory for reuse in fedlayer's own processes (the CLI, the "
        "ServerApp and ClientApp, the simulation launcher and the Ray workers it starts): no page faults per "
        "activation, same numbers; library calls never change the process",
    )


@dataclass
class OutputConfig:
    dir: str = _spec("runs/latest", help="run directory")
    checkpoints: bool = _spec(True, help="save safetensors checkpoints each round")
    overwrite: bool = _spec(
        False, help="replace an earlier run in output.dir (otherwise a folder holding a run is refused; --overwrite)"
    )


@dataclass
class CompareConfig:
    strategies: list = _spec(
        ["fedavg", "fedper", "lg-fedavg"],
        help="strategies `fedlayer compare` runs side by side (presets or layer selectors; --strategies overrides)",
    )
    seeds: list[int] = _spec(
        [], ge=0, help="seeds every strategy runs under ([] = the config's seed alone; --seeds N overrides)"
    )
    reference: str = _spec(
        "fedavg",
        help="the strategy the others are compared with (paired differences over seeds); one of compare.strategies",
    )
    target_accuracy: float = _spec(
        0.0,
        ge=0.0,
        le=1.0,
        help="mean personalised accuracy (a fraction) whose first round the summary reports per strategy "
        "(0 = 90 % of the best strategy's final one)",
    )


@dataclass
class Config:
    seed: int = _spec(0, ge=0, help="the one seed that drives everything")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict with TOML key names (`class`, not `class_`)."""
        return _to_dict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """Flower's run-config form: dotted keys, scalar values (lists comma-joined, tables as JSON)."""
        flat: dict[str, bool | int | float | str] = {}
        for key, value in _flatten(self):
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, dict):
                value = json.dumps(value, sort_keys=True)
            flat[key] = value
        return flat

    def replace(self, **sections: Any) -> Config:
        """A copy with some fields changed, e.g. `cfg.replace(strategy={"name": "local"})`, validated."""
        data = self.to_dict()
        for section, values in sections.items():
            if isinstance(values, Mapping):
                data.setdefault(section, {}).update({_toml_key(k): v for k, v in values.items()})
            else:
                data[section] = values
        return config_from_dict(data)


def _toml_key(name: str) -> str:
    return name.rstrip("_")


def _to_dict(obj) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[_toml_key(f.name)] = _to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def _flatten(obj, prefix: str = ""):
    """(dotted key, value) of every config key; tables (strategy.kwargs, model.options) are values."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + _toml_key(f.name)
        if dataclasses.is_dataclass(value):
            yield from _flatten(value, f"{key}.")
        else:
            yield key, value


def _field_map(cls) -> dict[str, dataclasses.Field]:
    return {_toml_key(f.name): f for f in dataclasses.fields(cls)}


def _kind(typ) -> type:
    """The plain type of a field's annotation: `list` for `list[int]`."""
    return typing.get_origin(typ) or typ


def _item_type(typ) -> type:
    """The item type of a list field: `list[int]` holds ints, `list[float]` numbers; a bare `list` holds strings."""
    args = typing.get_args(typ)
    return args[0] if args else str


def _describe(f: dataclasses.Field, typ) -> str:
    meta = f.metadata
    if meta.get("choices"):
        also = f", or {meta['also'][0]}" if meta.get("also") else ""
        return "one of " + ", ".join(repr(c) for c in meta["choices"]) + also
    bounds = []
    for name, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(name) is not None:
            bounds.append(f"{sym} {meta[name]}")
    kind = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: {int: "a list of integers", float: "a list of numbers"}.get(_item_type(typ), "a list"),
        dict: "a table",
    }[_kind(typ)]
    return kind + (" " + " and ".join(bounds) if bounds else "")


def _coerce_list(path: str, f: dataclasses.Field, typ, value) -> list:
    """A list field's value: a TOML array or one comma-separated string of its items (strings, or numbers
    for `list[int]` and `list[float]`, where an integer counts as a float); empty only where the field's
    default is."""
    item = _item_type(typ)
    numeric = item in (int, float)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
        if numeric:
            value = [_number(v, item) for v in value]
    if item is float and isinstance(value, list):
        value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    fits = isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)
    if not fits or (not value and _default(f)):
        expected = _describe(f, typ) if numeric else "a list of strings"
        if _default(f):
            expected = expected.replace("a list", "a non-empty list", 1)
        raise ConfigError(
            f"config key {path!r}: invalid value {value!r}; expected {expected} (or a comma-separated string)"
        )
    return value


def _number(text: str, kind: type) -> int | float | str:
    """`text` as an integer (or a float, for `kind` float), or unchanged when it is not one (the caller
    reports it)."""
    try:
        return kind(text)
    except ValueError:
        return text


def _coerce(path: str, f: dataclasses.Field, typ, value):
    """Check one value against its field (`typ`: its annotation); return it in the field's type or raise a
    clear error."""
    allowed = _describe(f, typ)
    bad = ConfigError(f"config key {path!r}: invalid value {value!r}; expected {allowed}")
    hint, typ = typ, _kind(typ)
    if typ is bool:
        if not isinstance(value, bool):
            raise bad
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise bad
    elif typ is str:
        if not isinstance(value, str):
            raise bad
    elif typ is list:
        value = _coerce_list(path, f, hint, value)
    elif typ is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise bad from None
        if not isinstance(value, dict):
            raise bad
    meta = f.metadata
    items = value if typ is list else [value]
    accepts = meta["also"][1] if meta.get("also") else lambda _: False
    if meta.get("choices") is not None and any(v not in meta["choices"] and not accepts(v) for v in items):
        raise bad
    if (_item_type(hint) if typ is list else typ) in (int, float):
        limits = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}
        if any(meta[name] is not None and not test(v, meta[name]) for v in items for name, test in limits.items()):
            raise bad
    return value


def _build(cls, data: Mapping[str, Any], prefix: str):
    hints = typing.get_type_hints(cls)
    fields = _field_map(cls)
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {prefix.rstrip('.')!r} must be a table, got {data!r}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys"
            f"{' in [' + prefix.rstrip('.') + ']' if prefix else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for key, f in fields.items():
        typ = hints[f.name]
        if key not in data:
            continue
        if dataclasses.is_dataclass(typ):
            kwargs[f.name] = _build(typ, data[key], f"{prefix}{key}.")
        else:
            kwargs[f.name] = _coerce(prefix + key, f, typ, data[key])
    return cls(**kwargs)


def _check_consistency(cfg: Config) -> None:
    """Rules that involve more than one field."""
    if cfg.federation.min_clients > cfg.federation.clients:
        raise ConfigError(
            f"config key 'federation.min_clients': {cfg.federation.min_clients} is more than "
            f"federation.clients = {cfg.federation.clients}"
        )
    from strategies.sampling import clients_per_round

    sampled = clients_per_round(cfg.federation.clients, cfg.federation.fraction)
    if cfg.federation.min_clients > sampled:
        raise ConfigError(
            f"config key 'federation.min_clients': {cfg.federation.min_clients} is more than the {sampled} "
            f"clients sampled per round (federation.clients * federation.fraction); every round would fail"
        )
    _check_per_client(cfg.federation)
    if cfg.analysis.alphas % 2 == 0:
        raise ConfigError(
            f"config key 'analysis.alphas': invalid value {cfg.analysis.alphas}; expected an odd number "
            "so that alpha = 0.5 (the midpoint barrier) is on the grid"
        )
    norms = MODEL_NORMS.get(cfg.model.name, ("none",))
    if cfg.model.name not in MODELS and cfg.model.norm not in norms:
        raise ConfigError(
            f"config key 'model.norm': {cfg.model.norm!r} applies to the built-in models only; model "
            f"{cfg.model.name!r} brings its own normalisation layers (set them with model.options, if it has any)"
        )
    if cfg.model.norm not in norms:
        raise ConfigError(
            f"config key 'model.norm': invalid value {cfg.model.norm!r} for model {cfg.model.name!r}; "
            f"expected one of {', '.join(repr(n) for n in norms)}"
        )


def _check_per_client(fed: FederationConfig) -> None:
    """The per-client lists hold one entry per client, and the checkpoints go with init = "checkpoints"."""
    for key in ("lr_per_client", "init_checkpoints"):
        values = getattr(fed, key)
        if values and len(values) != fed.clients:
            raise ConfigError(
                f"config key 'federation.{key}': {len(values)} values for federation.clients = {fed.clients}; "
                "give one per client, in partition order"
            )
    if (fed.init == "checkpoints") != bool(fed.init_checkpoints):
        raise ConfigError(
            "config key 'federation.init_checkpoints': "
            + (
                "init = 'checkpoints' needs one checkpoint per client"
                if fed.init == "checkpoints"
                else f"checkpoints are read with init = 'checkpoints' only (init is {fed.init!r})"
            )
        )


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a nested mapping (as read from TOML) into a Config."""
    cfg = _build(Config, data, "")
    _check_consistency(cfg)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value); the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"invalid override {text!r}; expected section.key=value, e.g. federation.rounds=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def parse_options(texts: Sequence[str]) -> dict[str, Any]:
    """`--option KEY=VALUE` items of a command as a `model.options` table (values read as by `parse_override`)."""
    options = {}
    for text in texts:
        if not text.partition("=")[0].strip() or "=" not in text:
            raise ConfigError(f"invalid --option {text!r}; expected KEY=VALUE, e.g. --option weights=DEFAULT")
        path, value = parse_override(text)
        options[".".join(path)] = value
    return options


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"invalid override {text!r}: {part!r} is not a config section")
        node[path[-1]] = value
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory, not a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a TOML config (or the defaults when `path` is None), apply `--set` overrides, validate."""
    data = read_toml(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides))


def config_from_flat(flat: Mapping[str, Any]) -> Config:
    """Inverse of `Config.to_flat()` (Flower's run-config)."""
    return config_from_dict(apply_overrides({}, [f"{k}={json.dumps(v)}" for k, v in flat.items()]))


def config_hash(cfg: Config) -> str:
    """A short content hash of the resolved config (the output folder is not part of the experiment)."""
    data = cfg.to_dict()
    data.pop("output", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory's product for lists and tables)."""
    if callable(f.default_factory):
        return f.default_factory()
    return f.default


def declared(key: str) -> tuple[Any, str]:
    """(default, help) of a config key such as "analysis.alphas", for a command-line option that mirrors it.

    The help ends with the allowed values when the key has a choice list ("...: one of 'a', 'b'").
    """
    cls: Any = Config
    *sections, name = key.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    f = _field_map(cls)[name]
    default = _default(f)
    help_text = f.metadata.get("help", "")
    if f.metadata.get("choices"):
        typ = typing.get_type_hints(cls)[f.name]
        help_text += ": " + _describe(f, typ)
    return default, help_text


def describe_fields() -> list[tuple[str, str, str, str]]:
    """(key, default, allowed, help) for every config key: docs/configuration.md (`fedlayer.config_reference`)."""
    rows = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for key, f in _field_map(cls).items():
            typ = hints[f.name]
            if dataclasses.is_dataclass(typ):
                walk(typ, f"{prefix}{key}.")
                continue
            default = _default(f)
            rows.append((prefix + key, repr(default), _describe(f, typ), f.metadata.get("help", "")))

    walk(Config, "")
    return rows
