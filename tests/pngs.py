"""What a test can check of a figure without depending on the plotting library's version."""

from __future__ import annotations

import struct
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of a PNG file from its header, or None when it is not a PNG."""
    head = Path(path).read_bytes()[:24]
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def is_figure(path: str | Path, min_pixels: int = 200) -> bool:
    """A PNG at least `min_pixels` wide and high: a drawn figure, not an empty or broken file."""
    size = png_size(path)
    return size is not None and min(size) >= min_pixels
