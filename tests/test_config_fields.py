"""Every config key is read by the code that runs: no key may be accepted and then ignored."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

from fedlayer.config import Config

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*ROOT.glob("fedlayer/**/*.py"), *ROOT.glob("strategies/**/*.py")]
DECLARATIONS = ROOT / "fedlayer" / "config.py"


def declared_fields(cls=Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, section attribute, field attribute) of every leaf config field."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += declared_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name.rstrip('_')}", prefix.rstrip("."), f.name))
    return out


def attribute_reads() -> set[tuple[str, str]]:
    """(section, field) of every config field read outside the declarations: `cfg.federation.lr`, or
    `fed.lr` where `fed` was assigned `cfg.federation` in the same module."""
    sections = {section for _, section, _ in declared_fields()}
    reads: set[tuple[str, str]] = set()
    for path in SOURCES:
        if path == DECLARATIONS:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = {"cfg": ""}  # a name bound to a section, e.g. fed -> federation
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                pairs = [(node.targets[0], node.value)]
                if isinstance(node.targets[0], ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs = list(zip(node.targets[0].elts, node.value.elts, strict=False))
                for target, value in pairs:
                    if isinstance(target, ast.Name) and isinstance(value, ast.Attribute) and value.attr in sections:
                        aliases[target.id] = value.attr
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)):
                continue
            owner = node.value
            if isinstance(owner, ast.Attribute) and owner.attr in sections:
                reads.add((owner.attr, node.attr))
            elif isinstance(owner, ast.Name) and aliases.get(owner.id):
                reads.add((aliases[owner.id], node.attr))
            elif isinstance(owner, ast.Name | ast.Attribute) and owner_name(owner) in ("cfg", "config"):
                reads.add(("", node.attr))
    return reads


def owner_name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def test_every_config_field_is_read_somewhere_outside_its_declaration():
    reads = attribute_reads()
    unread = [key for key, section, name in declared_fields() if (section, name) not in reads]
    assert not unread, f"config keys declared but never read by the code that runs: {unread}"


def test_the_check_tells_a_read_key_from_one_nobody_reads():
    reads = attribute_reads()
    assert ("federation", "lr") in reads
    assert ("federation", "no_such_field") not in reads
