"""The configuration reference (docs/configuration.md), rendered from the config declarations.

    python -m fedlayer.config_reference > docs/configuration.md

Every key, its default, its allowed values and its meaning come from `fedlayer.config.describe_fields()`,
so the page cannot drift from the code: a test compares the committed page with this rendering.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterable

from fedlayer.config import describe_fields

REGENERATE = "python -m fedlayer.config_reference > docs/configuration.md"

TITLE = "# Configuration reference"

INTRO = """\
An experiment is one TOML file. Every key below can be left out (it takes its default), is
validated when the file is read (an unknown key, a wrong type or an out-of-range value is an error
that names the key, the bad value and what is allowed, before anything runs), and can be overridden
on the command line:

```bash
fedlayer run simulations/demo.toml --set federation.rounds=10 --set strategy.name=fedper
```

A `--set` value is read as TOML (`--set data.alpha=0.1`, `--set output.checkpoints=false`,
`--set 'analysis.groups=["layers", "full"]'`); a value that is not valid TOML is taken as a string
(`--set strategy.name=fedper`). Lists may also be given as one comma-separated string
(`--set analysis.groups=layers,full,shallow`). Flower's run-config (`flwr run . --run-config ...`,
see [deployment.md](deployment.md)) takes the same keys, flat and dotted.

A run writes the config it used, with every default filled in, to `config.toml` in its run
directory ([run-directory.md](run-directory.md)). Layer selectors, groups and strategies are
described in the [README](../README.md#concepts-and-definitions) and in [strategies.md](strategies.md).
A list is written as a TOML array or as one comma-separated string."""

SECTIONS = {
    "data": "The dataset and how it is split into clients (partitions are saved with a content hash).",
    "model": "The network every client trains.",
    "federation": "Clients, rounds and local training.",
    "strategy": "How the server aggregates: which layers are averaged, by which Flower strategy, and "
    "who keeps the rest ([strategies.md](strategies.md)).",
    "analysis": "The layer-wise barrier analysis between client models, run on the server after a "
    "round's training. Groups are `layers` (each single layer), `full`, the cumulative orderings "
    "`shallow`, `deep`, `random`, `minimal`, sliding windows `window:w` and layer selectors.",
    "simulation": "Resources of each simulated client on Flower's simulation engine (Ray).",
    "output": "Where results go ([run-directory.md](run-directory.md)).",
    "compare": "What `fedlayer compare CONFIG` runs and how its summary is computed: every strategy under "
    "every seed, everything else equal; with two or more seeds each value comes with a 95 % confidence "
    "interval, and each strategy's paired difference to `reference` with a paired t-test "
    "([strategies.md](strategies.md#comparing-strategies)). Ignored by `fedlayer run`.",
}


def toml_value(text: str) -> str:
    """A default as `describe_fields` gives it (Python repr) written as a TOML value."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return _toml(value)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + "}"
    return repr(value)


def allowed_text(text: str, default: str = "") -> str:
    """'one of 'a', 'b'' -> 'one of `"a"`, `"b"`': quoted choices as TOML strings in code; a list
    field (its default is a list) says that its items are checked (strings unless it says otherwise)."""
    text = re.sub(r"'([^']*)'", r'`"\1"`', text)
    if default.startswith("[") and not text.startswith("a list of"):
        text = "a list, each item " + text if text.startswith("one of") else "a list of strings"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sections(rows: Iterable[tuple[str, str, str, str]]) -> dict[str, list[tuple[str, str, str, str]]]:
    grouped: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in rows:
        section = row[0].rpartition(".")[0]
        grouped.setdefault(section, []).append(row)
    return grouped


def render(rows: Iterable[tuple[str, str, str, str]] | None = None) -> str:
    """The Markdown reference: one table per config section (key, default, allowed values, meaning)."""
    grouped = _sections(describe_fields() if rows is None else rows)
    lines = [
        TITLE,
        "",
        f"<!-- Generated from fedlayer/config.py by `{REGENERATE}`; do not edit by hand. -->",
        "",
        INTRO,
    ]
    for section, section_rows in grouped.items():
        lines += ["", f"## `[{section}]`" if section else "## Top level", ""]
        if SECTIONS.get(section):
            lines += [SECTIONS[section], ""]
        lines += ["| key | default | allowed | meaning |", "|---|---|---|---|"]
        for key, default, allowed, meaning in section_rows:
            cells = (f"`{key}`", f"`{toml_value(default)}`", allowed_text(allowed, default), meaning)
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
