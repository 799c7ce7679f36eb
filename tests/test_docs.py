"""The README, docs/, the license and citation files and the Flower App declaration stay in step with the code.

The examples in the docs are run by tests/test_doc_examples.py.
"""

import re
import shlex
import tomllib
from pathlib import Path

import yaml

from fedlayer import __version__
from fedlayer.config import config_from_flat, describe_fields
from fedlayer.config_reference import REGENERATE, render
from fedlayer.memory import malloc_tunables

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
DOC_PAGES = ("configuration", "strategies", "run-directory", "deployment", "reproducing-the-paper", "benchmarks")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _flatten(table, prefix=""):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_configuration_reference_is_generated_from_the_config_declarations():
    committed = (DOCS / "configuration.md").read_text()
    assert committed == render(), f"docs/configuration.md is out of date with fedlayer/config.py; run: {REGENERATE}"


def test_configuration_reference_has_one_row_per_config_key_in_a_table_per_section():
    page = render()
    for key, *_ in describe_fields():
        assert page.count(f"| `{key}` |") == 1, key
    sections = {key.rpartition(".")[0] for key, *_ in describe_fields()} - {""}
    assert all(f"## `[{section}]`" in page for section in sections)


def test_readme_keeps_the_manual_short_and_indexes_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    for page in DOC_PAGES:
        assert (DOCS / f"{page}.md").is_file(), page
        assert f"(docs/{page}.md)" in readme, f"the README's docs index lacks docs/{page}.md"
    for section in ("## Install", "## Quick start", "## Concepts and definitions", "## Commands", "## From Python",
                    "## What is guaranteed", "## Documentation", "## Citing"):  # fmt: skip
        assert section in readme, section
    guarantees = readme.split("## What is guaranteed", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^- \*\*", guarantees, flags=re.M)) == 5


def test_every_link_and_image_in_the_docs_exists():
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path = target.split("#", 1)[0]
            if path:
                assert (page.parent / path).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_every_figure_in_docs_is_shown_somewhere():
    shown = "".join(page.read_text() for page in PAGES)
    for png in DOCS.rglob("*.png"):
        relative = png.relative_to(DOCS).as_posix()
        assert f"docs/{relative})" in shown or f"({relative})" in shown, f"docs/{relative} is not shown in any page"


def test_flower_app_run_config_defaults_are_a_valid_config():
    app = _pyproject()["tool"]["flwr"]["app"]
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


def test_make_demo_runs_the_command_the_readme_shows():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n\t(.+)$", makefile, flags=re.M).group(1)
    command = shlex.split(recipe.replace("$(BIN)/", ""))
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{shlex.join(command)}\n```" in readme


def test_deployment_gives_the_malloc_settings_fedlayer_uses():
    assert f"export GLIBC_TUNABLES={malloc_tunables()}" in (DOCS / "deployment.md").read_text()


def test_license_file_is_the_apache_license_that_pyproject_declares():
    assert _pyproject()["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150  # the full text


def test_citation_file_names_this_version_and_the_paper():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert str(citation["version"]) == _pyproject()["project"]["version"] == __version__
    assert citation["license"] == "Apache-2.0"
    paper = citation["preferred-citation"]
    assert paper["title"] == "Layer-wise Linear Mode Connectivity" and paper["year"] == 2024
    assert [a["family-names"] for a in paper["authors"]] == ["Adilova", "Andriushchenko", "Kamp", "Fischer", "Jaggi"]
    assert "2307.06966" in (ROOT / "README.md").read_text().split("## Citing", 1)[1]
