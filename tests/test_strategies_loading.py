"""Loading a user's strategy class by "module:Class" or "file.py:Class", and every way that can fail."""

from __future__ import annotations

import textwrap

import pytest
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedlayer.errors import FedlayerError
from strategies import build_strategy, instantiate_strategy, load_strategy_class

USER_STRATEGY = textwrap.dedent("""
    from flwr.serverapp.strategy import FedAvg, Strategy

    class MyStrategy(FedAvg):
        def __init__(self, scale: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.scale = scale

    class Strict(FedAvg):
        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.scale = scale * 1.0

    class Incomplete(Strategy):
        pass

    class NotAStrategy:
        pass
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    path = tmp_path / "my_strategies.py"
    path.write_text(USER_STRATEGY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def test_module_and_file_paths_load_the_users_class(user_module):
    by_module = load_strategy_class("my_strategies:MyStrategy")
    by_file = load_strategy_class(f"{user_module}:MyStrategy")
    assert by_module.__name__ == by_file.__name__ == "MyStrategy"
    assert issubclass(by_file, FedAvg)
    strategy = build_strategy(
        "fedper", class_path=f"{user_module}:MyStrategy", kwargs={"scale": 2.0}, min_train_nodes=3
    )
    assert (strategy.strategy.scale, strategy.strategy.min_train_nodes) == (2.0, 3)


def test_stock_names_and_flower_paths():
    assert load_strategy_class("FedAdam") is FedAdam
    assert load_strategy_class("flwr.serverapp.strategy:FedAdam") is FedAdam


@pytest.mark.parametrize(
    ("class_path", "message"),
    [
        ("no_such_module_xyz:Thing", "cannot import strategy module 'no_such_module_xyz'"),
        (
            "my_strategies:Missing",
            "unknown class in my_strategies 'Missing'; valid choices: FedAvg, Incomplete, MyStrategy, Strict",
        ),
        ("my_strategies:NotAStrategy", r"not a flwr.serverapp.strategy.Strategy subclass.*MyStrategy"),
        ("my_strategies:Incomplete", "abstract"),
        ("flwr.server.strategy:FedAvg", "not a flwr.serverapp.strategy.Strategy subclass"),
        ("FedNope", r"unknown strategy class 'FedNope'; valid choices: .*FedAvg"),
        ("missing_dir/nothing.py:X", "strategy file not found"),
        ("my_strategies:", "bad strategy class path"),
    ],
)
def test_bad_class_paths(user_module, class_path, message):
    with pytest.raises(FedlayerError, match=message):
        load_strategy_class(class_path)


def test_a_broken_file_is_reported(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import definitely_not_installed_xyz\n")
    with pytest.raises(FedlayerError, match="cannot load strategy file .*definitely_not_installed_xyz"):
        load_strategy_class(f"{path}:X")


def test_bad_kwargs_name_the_accepted_parameters(user_module):
    with pytest.raises(FedlayerError, match=r"unknown keyword argument\(s\) etaa for FedAdam; .*eta, eta_l"):
        build_strategy(class_path="FedAdam", kwargs={"etaa": 1.0})
    with pytest.raises(FedlayerError, match="accepted parameters"):
        # a TypeError inside the constructor
        instantiate_strategy(load_strategy_class("my_strategies:Strict"), {"scale": "lots"})
    with pytest.raises(FedlayerError, match="which the app sets itself"):
        build_strategy(kwargs={"min_train_nodes": 2}, min_train_nodes=3)


def test_app_defaults_go_only_where_accepted(user_module):
    strict = instantiate_strategy(load_strategy_class("my_strategies:Strict"), {"scale": 3.0}, {"min_train_nodes": 5})
    assert (strict.scale, strict.min_train_nodes) == (3.0, 2)  # the class does not take it: FedAvg's default
