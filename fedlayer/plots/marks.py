"""How layer-wise figures mark the variable under study: which layers the run averaged and which stayed
personal (`fedlayer.averaged`).

One look in every figure: an averaged layer's name in bold green, a personal layer's name in grey
italics, a partly averaged one (in some rounds only, or a group only some of whose layers were averaged)
in plain black; in a layer x round heatmap, each cell of a layer kept personal in that round is hatched.
The legend entries are written in the same styles, so the legend itself shows which is which. A figure
of a folder without averaging carries no marks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.legend import Legend
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Text

from fedlayer.averaged import AVERAGED, MIXED, PERSONAL

AVERAGED_COLOR = "#1b9e77"
PERSONAL_COLOR = "#d9d9d9"  # a personal cell's fill where colour means the choice (the choices figure)
PERSONAL_TEXT = "0.45"
PERSONAL_HATCH = "///"
STYLES = {
    AVERAGED: {"color": AVERAGED_COLOR, "fontweight": "bold"},
    PERSONAL: {"color": PERSONAL_TEXT, "fontstyle": "italic"},
    MIXED: {},
}
_LABELS = {
    AVERAGED: "averaged",
    PERSONAL: "kept personal",
    MIXED: "partly averaged",
}


def mark_texts(texts: Iterable[Text], status_of: Callable[[str], str | None]) -> set[str]:
    """Style each text (tick labels, legend entries) by the status of the layer or group it names;
    return the statuses seen, for `legend_entries`."""
    seen = set()
    for text in texts:
        found = status_of(text.get_text())
        if found is not None:
            text.update(STYLES[found])
            seen.add(found)
    return seen


def hatch_personal(ax: Axes, averaged: np.ndarray) -> bool:
    """Hatch the cells of an imshow grid whose `averaged` value is 0 (the layer stayed personal that round);
    NaN (not known) is left alone. Returns whether any cell was hatched."""
    personal = np.argwhere(averaged == 0)
    for y, x in personal:
        ax.add_patch(
            Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch=PERSONAL_HATCH, edgecolor=PERSONAL_TEXT, linewidth=0)
        )
    return len(personal) > 0


def legend_entries(seen: Iterable[str], *, cells: bool = False) -> list[Artist]:
    """Legend entries saying what the marks in `seen` mean (AVERAGED, MIXED, PERSONAL order), written in
    those styles by `style_legend`. With `cells` (a heatmap), the averaged entry shows a plain cell and the
    personal one a hatched cell; otherwise the styled text alone says it."""
    entries: list[Artist] = []
    for found in (AVERAGED, MIXED, PERSONAL):
        if found in set(seen):
            cell = cells and found != MIXED
            hatch = PERSONAL_HATCH if found == PERSONAL else None
            label = f"{_LABELS[found]}{' (hatched)' if cell and hatch else ''}"
            face, edge = ("white", PERSONAL_TEXT) if cell else ("none", "none")
            entries.append(Patch(facecolor=face, edgecolor=edge, hatch=hatch if cell else None, label=label))
    return entries


def style_legend(legend: Legend) -> None:
    """Write a legend's averaging entries (from `legend_entries`) in the styles they stand for."""
    by_label = {label: found for found, label in _LABELS.items()}
    mark_texts(legend.get_texts(), lambda label: by_label.get(label.removesuffix(" (hatched)")))
