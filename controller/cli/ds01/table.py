"""Aligned tables that fit the terminal, like kubectl's, with colour only where asked.

Pure: `layout` turns headers and rows into lines no wider than ``width``.
Columns shrink widest first down to `MIN_COLUMN`, and cut cells end in `…`;
if even that cannot fit, lines are cut at the width. Colour wraps a cell
after its width is decided, so escape codes never count as width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

GAP = "  "
MIN_COLUMN = 4
ELLIPSIS = "…"
Style = Literal["", "red", "yellow", "green", "bold", "dim"]
_CODES = {"red": "31", "yellow": "33", "green": "32", "bold": "1", "dim": "2"}


@dataclass(frozen=True)
class Cell:
    """A table cell with an optional style (applied only when colour is on)."""

    text: str
    style: Style = ""


CellLike = Cell | str


def _cell(value: CellLike) -> Cell:
    return value if isinstance(value, Cell) else Cell(str(value))


def paint(text: str, style: Style, colour: bool) -> str:
    """``text`` in ``style`` when ``colour`` is on."""
    if not colour or not style:
        return text
    return f"\x1b[{_CODES[style]}m{text}\x1b[0m"


def cut(text: str, width: int) -> str:
    """``text`` at most ``width`` characters, ending in `…` when it was cut."""
    if len(text) <= width:
        return text
    if width <= 0:
        return ""
    return text[: width - 1] + ELLIPSIS


def widths(natural: Sequence[int], width: int | None) -> list[int]:
    """Column widths: natural ones, the widest shrunk first until the line fits."""
    out = list(natural)
    if width is None:
        return out
    total = sum(out) + len(GAP) * (len(out) - 1)
    while total > width:
        widest = max(range(len(out)), key=lambda i: out[i])
        if out[widest] <= MIN_COLUMN:
            break
        out[widest] -= 1
        total -= 1
    return out


def layout(
    headers: Sequence[str],
    rows: Sequence[Sequence[CellLike]],
    width: int | None = None,
    *,
    headers_shown: bool = True,
    colour: bool = False,
) -> list[str]:
    """The table's lines; none longer than ``width`` (when given) in visible characters."""
    cells = [[_cell(c) for c in row] for row in rows]
    shown = ([[Cell(h) for h in headers]] if headers_shown else []) + cells
    if not shown:
        return []
    count = len(headers)
    natural = [max((len(r[i].text) for r in shown if i < len(r)), default=0) for i in range(count)]
    sizes = widths(natural, width)
    lines = []
    for row in shown:
        parts = []
        visible = 0
        for i, size in enumerate(sizes):
            text = cut(row[i].text if i < len(row) else "", size)
            last = i == count - 1
            padded = text if last else text.ljust(size)
            if width is not None and visible + len(padded) > width:
                padded = cut(padded, width - visible)
            parts.append(paint(padded, row[i].style if i < len(row) else "", colour))
            visible += len(padded)
            if not last:
                if width is not None and visible + len(GAP) > width:
                    break
                parts.append(GAP)
                visible += len(GAP)
        lines.append("".join(parts).rstrip() if not colour else "".join(parts))
    return lines
