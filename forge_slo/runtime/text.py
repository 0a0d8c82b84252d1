"""Plain-text tables for the terminal, one implementation for every runner's summary."""

from __future__ import annotations

from collections.abc import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, max_width: Sequence[int] | None = None,
          indent: str = "") -> list[str]:
    """Lines of a left-aligned table, columns two spaces apart; ``max_width`` cuts long cells per column."""
    cells = [list(header), *(list(row) for row in rows)]
    if max_width is not None:
        cells = [[c[:w] for c, w in zip(row, max_width, strict=True)] for row in cells]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
