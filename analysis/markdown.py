"""Markdown pages from blocks: ("h1".."h3", text), ("p", text), ("list", items), ("table", (header,
rows)) and ("figure", (png, pdf, caption)).

It imports only numpy, so that `emergence`, which writes one such page, never loads the fitting stack
(JAX) that `analysis.report` needs for its own pages.
"""

from __future__ import annotations

import numpy as np

Table = tuple[list[str], list[list[str]]]


def fmt(value) -> str:
    """A number to 4 significant figures; NaN and None as an em dash."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def frame_table(df) -> Table:
    """A DataFrame as header and formatted rows."""
    return [str(c) for c in df.columns], [[fmt(v) for v in row] for row in df.itertuples(index=False)]


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; `|` inside a cell is escaped."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, row)) + " |" for row in rows])


def render(blocks: list[tuple]) -> str:
    """The blocks as one Markdown page, blank lines between them."""
    out = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {payload}")
        elif kind == "p":
            out.append(payload)
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in payload))
        elif kind == "table":
            out.append(table(*payload))
        elif kind == "figure":
            png, pdf, caption = payload
            out.append(f"![{caption}]({png})\n\n*{caption}* ([PDF]({pdf}))")
    return "\n\n".join(out) + "\n"
