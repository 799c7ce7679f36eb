"""Rich consoles that stay readable when output goes to a file or a CI log (no 80-column wrapping)."""

from __future__ import annotations

import sys

from rich.console import Console

LOG_WIDTH = 132


def make_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    """A terminal-width console on a terminal, a wide one (no hard wrapping of tables) elsewhere."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else LOG_WIDTH
    return Console(stderr=stderr, quiet=quiet, width=width)
