"""The package's public API: every exported name resolves, and errors form one family."""

from __future__ import annotations

import pytest

import fedlayer
import strategies
from fedlayer import errors


@pytest.mark.parametrize("name", fedlayer.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(fedlayer, name) is not None


@pytest.mark.parametrize("name", strategies.__all__)
def test_every_strategies_export_resolves(name):
    assert getattr(strategies, name) is not None


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        fedlayer.no_such_thing  # noqa: B018


KINDS = [errors.ConfigError, errors.DataError, errors.ModelError, errors.CheckpointError, errors.RunError]


@pytest.mark.parametrize("cls", KINDS)
def test_each_error_kind_is_one_fedlayer_error_the_cli_reports_without_a_traceback(cls, monkeypatch, capsys):
    import argparse

    from fedlayer import cli

    assert issubclass(cls, errors.FedlayerError)
    assert not any(issubclass(cls, other) for other in KINDS if other is not cls)

    def failing(args):
        raise cls("what was wrong, the bad value, the valid choices")

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=failing, verbose=False, debug=False)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 2
    assert capsys.readouterr().err.strip() == "fedlayer: error: what was wrong, the bad value, the valid choices"


def test_strategies_export_no_wire_constants():
    assert not [name for name in strategies.__all__ if name.isupper() and name != "PRESETS"]
