"""Load a Flower strategy class by name ("module:Class", "path/to/file.py:Class" or a stock name) and
build it from keyword arguments, with an error naming the bad value and the valid choices for each
way this can go wrong, before any training starts. The same loader finds a user's other code (a dataset
callable) by "module:name" or "path/to/file.py:name" (`load_callable`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import flwr.serverapp.strategy as flower_strategies
from flwr.serverapp.strategy import Strategy

from fedlayer.errors import ConfigError, choices_message

FORMS = "'module:Class', 'path/to/file.py:Class' or a Flower strategy name"


def stock_strategies() -> dict[str, type[Strategy]]:
    """Flower's own Message-API strategies by class name (FedAvg, FedAdam, FedProx, ...)."""
    found = {name: getattr(flower_strategies, name) for name in flower_strategies.__all__}
    return {
        name: cls
        for name, cls in found.items()
        if inspect.isclass(cls) and issubclass(cls, Strategy) and cls is not Strategy
    }


def load_strategy_class(class_path: str) -> type[Strategy]:
    """The Strategy subclass named by `class_path`: "module:Class", "file.py:Class", or e.g. "FedAdam"."""
    module_name, sep, class_name = class_path.rpartition(":")
    if not sep:
        stock = stock_strategies()
        if class_path in stock:
            return stock[class_path]
        raise ConfigError(choices_message("strategy class", class_path, [*stock, FORMS]))
    if not module_name or not class_name.isidentifier():
        raise ConfigError(f"bad strategy class path {class_path!r}; expected {FORMS}")
    module = load_module(module_name)
    cls = getattr(module, class_name, None)
    candidates = sorted(
        name
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, Strategy) and obj is not Strategy
    )
    if cls is None:
        raise ConfigError(choices_message(f"class in {module_name}", class_name, candidates or ["(none)"]))
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise ConfigError(
            f"{class_path} is not a flwr.serverapp.strategy.Strategy subclass (the Message API; "
            f"legacy flwr.server.strategy classes are not supported); Strategy classes in "
            f"{module_name}: {', '.join(candidates) or '(none)'}"
        )
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ConfigError(f"{class_path} is abstract: it does not implement {missing}")
    return cls


def load_module(name: str, what: str = "strategy") -> ModuleType:
    """Import a module by dotted name, or execute a .py file as a module of its own.

    `what` names the kind of object the user meant to load ("strategy", "dataset") in the errors.
    """
    if name.endswith(".py") or "/" in name or "\\" in name:
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            looked = "" if str(path) == name else f" (looked for {path})"
            raise ConfigError(f"{what} file not found: {name}{looked}")
        module_name = f"fedlayer_user_{what}_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot load {what} file {path}: Python cannot import it as a module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look classes up here
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ConfigError(f"cannot load {what} file {path}: {type(exc).__name__}: {exc}") from exc
        return module
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {what} module {name!r}: {exc} (it must be importable, or give a file path ending in .py)"
        ) from exc


def load_callable(path: str, what: str) -> Callable[..., Any]:
    """The function (or other callable) named by "module:name" or "path/to/file.py:name".

    Raises
    ------
    ConfigError
        If the path is malformed, the module or file cannot be loaded, or the name is missing or not callable
        (the message lists the module's public callables).
    """
    module_name, sep, name = path.rpartition(":")
    if not sep or not module_name or not name.isidentifier():
        raise ConfigError(f"bad {what} path {path!r}; expected 'module:callable' or 'path/to/file.py:callable'")
    module = load_module(module_name, what)
    found = getattr(module, name, None)
    if not callable(found):
        candidates = sorted(n for n, obj in vars(module).items() if callable(obj) and not n.startswith("_"))
        problem = f"{path} is not callable" if found is not None else f"no callable {name!r} in {module_name}"
        raise ConfigError(f"{problem}; callables there: {', '.join(candidates) or '(none)'}")
    return found


def accepted_keywords(function: Callable[..., Any]) -> tuple[list[str], bool]:
    """The keyword arguments a callable (or class) names, and whether it takes **kwargs as well."""
    params = inspect.signature(function).parameters
    named = [
        name
        for name, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def instantiate_strategy(
    cls: type[Strategy], kwargs: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None
) -> Strategy:
    """`cls(**defaults, **kwargs)`; a bad keyword names the parameters the class accepts.

    `kwargs` (the user's) must all be accepted. `defaults` (what an app sets, e.g. sampling sizes) are
    passed only where the class accepts them; a key in both is an error, so no setting is silently lost.
    """
    kwargs, defaults = dict(kwargs or {}), dict(defaults or {})
    accepted, any_keyword = accepted_keywords(cls)
    accepted_text = ", ".join(accepted) or "(none)"
    unknown = [key for key in kwargs if key not in accepted]
    if unknown and not any_keyword:
        raise ConfigError(
            f"unknown keyword argument(s) {', '.join(unknown)} for {cls.__name__}; valid choices: {accepted_text}"
        )
    clash = sorted(set(kwargs) & set(defaults))
    if clash:
        raise ConfigError(f"strategy kwargs set {', '.join(clash)}, which the app sets itself; remove them")
    merged = {k: v for k, v in defaults.items() if any_keyword or k in accepted} | kwargs
    try:
        return cls(**merged)
    except TypeError as exc:
        raise ConfigError(
            f"cannot build {cls.__name__} with {merged}: {exc}; accepted parameters: {accepted_text}"
        ) from exc
