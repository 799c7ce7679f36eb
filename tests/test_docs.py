"""The README and the Flower App declaration stay in step with the code."""

import tomllib
from pathlib import Path

from fedlayer.config import config_from_flat, describe_fields
from fedlayer.memory import malloc_tunables

ROOT = Path(__file__).resolve().parents[1]


def _flatten(table, prefix=""):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_readme_documents_every_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key, *_ in describe_fields() if f"`{key}`" not in readme]
    assert not missing, f"README lacks config keys {missing}"


def test_flower_app_run_config_defaults_are_a_valid_config():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    app = pyproject["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedlayer.server_app:app", "clientapp": "fedlayer.client_app:app"}
    flat = dict(_flatten(app["config"]))
    assert set(flat) == {key for key, *_ in describe_fields()}
    config_from_flat(flat)


def test_quick_start_is_two_commands_that_the_makefile_has():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_gives_the_malloc_settings_fedlayer_uses():
    assert f"export GLIBC_TUNABLES={malloc_tunables()}" in (ROOT / "README.md").read_text()
