"""Plain-text tables that line up in a terminal with Chinese text: widths are counted in display
columns (a CJK character takes two), not in `len()` characters."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

__all__ = ["display_width", "render_table"]


def display_width(text: str) -> int:
    """Columns `text` takes in a terminal: wide and full-width characters count two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, right: bool) -> str:
    gap = " " * max(0, width - display_width(text))
    return gap + text if right else text + gap


def render_table(header: Sequence[str], rows: Sequence[Sequence[object]], *,
                 left: int = 1, gap: int = 2) -> str:
    """Columns sized to their widest cell; the first `left` columns are left-aligned, the rest
    (numbers) right-aligned."""
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(header))]
    sep = " " * gap
    return "\n".join(
        sep.join(_pad(cell, widths[i], i >= left) for i, cell in enumerate(row)).rstrip()
        for row in cells)
