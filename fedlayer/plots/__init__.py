"""Plots (PNG, Agg backend): one module per family of figures; `save_figure` writes them atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from fedlayer.atomic import atomic_target

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: str | Path, *, dpi: int = 120) -> Path:
    """Write `fig` as a PNG via a temporary file and rename, so a crash never leaves half a picture."""
    try:
        with atomic_target(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return Path(path)


def titles(fig, what: str, context: str) -> None:
    """A title line saying what is shown, then lines saying what it averages and which run it is."""
    fig.suptitle("\n".join(line for line in (what, context.strip()) if line), fontsize="medium")
