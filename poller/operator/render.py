"""Aligned plain-text tables for the terminal (scripts read `--json`)."""

from __future__ import annotations


def table(headers: list[str], rows: list[list[str]], indent: str = "") -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: list[str]) -> str:
        return (indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def one_line(text: str | None, limit: int = 80) -> str:
    """A stored text as one bounded table cell."""
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
