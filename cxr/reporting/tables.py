"""The table writer of every report: plain text for the terminal, Markdown for the files.

A table is a header and rows of cells, each cell a string already written (number_text,
interval_text). The columns named in `left` are left-aligned (names, free text), the others
right-aligned (numbers). evaluation_report.py, score_report.py and ablation_report.py build
the cells; only this module lays them out.
"""

from __future__ import annotations

from typing import Sequence


def number_text(value: float | None, digits: int = 4, signed: bool = False) -> str:
    """'0.8123' ('+0.0123' when signed); 'n/a' for None."""
    if value is None:
        return "n/a"
    return f"{value:{'+' if signed else ''}.{digits}f}"


def interval_text(low: float | None, high: float | None, signed: bool = False) -> str:
    """'[0.801, 0.845]'; 'n/a' when there is no interval."""
    if low is None:
        return "n/a"
    sign = "+" if signed else ""
    return f"[{low:{sign}.3f}, {high:{sign}.3f}]"


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,),
               rules: Sequence[int] = (), rule_extra: int = 0) -> str:
    """Columns padded to their widest cell, two spaces apart, lines without trailing spaces.

    A rule of dashes as long as the header line (and `rule_extra` characters more) goes under
    the header and before each row index in `rules` (len(rows): after the last row).
    """
    lines = [list(header), *map(list, rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(f"{cell:<{width}}" if i in left else f"{cell:>{width}}"
                      for i, (cell, width) in enumerate(zip(line, widths))).rstrip()
            for line in lines]
    rule = "-" * (len(text[0]) + rule_extra)
    out = [text[0], rule]
    for index, line in enumerate(text[1:]):
        if index in rules:
            out.append(rule)
        out.append(line)
    if len(rows) in rules:
        out.append(rule)
    return "\n".join(out)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   left: Sequence[int] = (0,)) -> str:
    """A Markdown (GitHub) table; a row shorter than the header leaves its last cells blank."""
    align = [":---" if i in left else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(line) + " |" + " |" * (len(header) - len(line))
                     for line in [list(header), align, *map(list, rows)])
