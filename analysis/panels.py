"""A grid of panels laid out once, from the measured size of its text, with one legend below.

A layout engine (constrained or tight) draws the figure to measure it at every save, which was most of
what `emergence` spent on figures. Here the margins come from the widest tick label and the longest
title, measured with the renderer's font metrics before anything is drawn, so nothing overlaps at any
panel count and each save draws once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

DPI = 150  # PNG resolution: sharp on screen and in a printed report, quick to rasterise
PT = {"title": 9, "label": 8, "tick": 7, "legend": 8}  # font sizes in points
INCH = 72.0  # points per inch
GAP = 0.06  # inches between neighbouring pieces of text
TICK = 7.0 / INCH  # tick length and label pad (3.5 pt each)


class Grid:
    """`n` panels in rows of `ncols`, each plotting box `box` inches; `layout` sizes and places them."""

    def __init__(self, n: int, ncols: int, box: tuple[float, float]):
        self.n, self.ncols, self.box = n, min(ncols, n), box
        self.nrows = -(-n // self.ncols)
        self.fig = Figure(dpi=DPI)
        self.renderer = FigureCanvasAgg(self.fig).get_renderer()
        self.axes = [self.fig.add_axes((0.0, 0.0, 1.0, 1.0), label=str(p)) for p in range(n)]

    def width(self, text: str, size: float) -> float:
        """Width of `text` in inches at `size` points."""
        w, _, _ = self.renderer.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
        return w / self.renderer.dpi

    def lowest_in_column(self, p: int) -> bool:
        """No panel below panel p: its x axis gets a label."""
        return p + self.ncols >= self.n

    def layout(self, titles: list[str], entries: list[tuple]) -> Figure:
        """Title each panel to fit its width, size the figure, place the panels and the legend of
        (handle, label) entries (a tuple of handles draws them over each other)."""
        left = max(self._ytick_width(ax) for ax in self.axes) + TICK + GAP
        if any(ax.get_ylabel() for ax in self.axes):
            left += (PT["label"] * 1.2) / INCH + GAP
        right = max(self._last_xtick_half(ax) for ax in self.axes) + GAP
        over = 2 * min(left, right) - GAP  # a title may reach over the margins, not beyond
        # Panels widen (up to twice) until every title fits at 7 points or on two lines at 8.
        need = max(min(self.width(t, PT["title"] - 2), self._two_lines(t)) for t in titles) - over
        box_w = min(max(self.box[0], need), 2 * self.box[0])
        fitted = [self._fit(t, box_w + over) for t in titles]
        lines = max(text.count("\n") + 1 for text, _ in fitted)
        top = 6.0 / INCH + lines * PT["title"] * 1.25 / INCH + GAP
        bottom = TICK + PT["tick"] * 1.25 / INCH + GAP + PT["label"] * 1.25 / INCH + GAP
        cell_w, cell_h = left + box_w + right, top + self.box[1] + bottom
        width = self.ncols * cell_w
        handles, labels = zip(*entries, strict=True)
        ncol, rows = self._legend_shape(labels, width)
        band = rows * PT["legend"] * 1.5 / INCH + 0.2 + GAP
        height = self.nrows * cell_h + band
        self.fig.set_size_inches(width, height)
        for p, (ax, (text, size)) in enumerate(zip(self.axes, fitted, strict=True)):
            row, col = divmod(p, self.ncols)
            x0, y0 = col * cell_w + left, height - row * cell_h - top - self.box[1]
            ax.set_position((x0 / width, y0 / height, box_w / width, self.box[1] / height))
            ax.set_title(text, fontsize=size)
        self.fig.legend(
            handles=handles, labels=labels, loc="lower center", bbox_to_anchor=(0.5, GAP / height), ncol=ncol,
            fontsize=PT["legend"],
        )  # fmt: skip
        return self.fig

    def _ytick_width(self, ax) -> float:
        lo, hi = sorted(ax.get_ylim())
        eps = 1e-9 * (hi - lo)
        locs = [v for v in ax.yaxis.get_major_locator().tick_values(lo, hi) if lo - eps <= v <= hi + eps]
        labels = ax.yaxis.get_major_formatter().format_ticks(locs)
        return max((self.width(s, PT["tick"]) for s in labels), default=0.0)

    def _last_xtick_half(self, ax) -> float:
        """How far the label of the rightmost tick reaches past the axes."""
        lo, hi = ax.get_xlim()
        locs = [v for v in ax.xaxis.get_major_locator().tick_values(lo, hi) if lo <= v <= hi * (1 + 1e-9)]
        if not locs:
            return 0.0
        label = ax.xaxis.get_major_formatter().format_ticks(locs)[-1]
        reach = self.width(label, PT["tick"]) / 2
        frac = (np.log10(hi) - np.log10(locs[-1])) / (np.log10(hi) - np.log10(lo))  # log x
        return max(reach - frac * self.box[0], 0.0)

    def _two_lines(self, text: str) -> float:
        """Width of `text` at 8 points broken after its colon."""
        head, sep, tail = text.partition(": ")
        return max(self.width(part, PT["title"] - 1) for part in (head + sep.strip(), tail))

    def _fit(self, text: str, room: float) -> tuple[str, float]:
        """The title at the largest size from 9 to 7 points that fits, else on two lines, else cut."""
        for size in (PT["title"], PT["title"] - 1, PT["title"] - 2):
            if self.width(text, size) <= room:
                return text, size
        size = PT["title"] - 1
        head, sep, tail = text.partition(": ")
        parts = [head + sep.strip(), tail] if sep else [text]
        for i, part in enumerate(parts):
            while self.width(part, size) > room and len(part) > 2:
                part = part[:-2] + "…"
            parts[i] = part
        return "\n".join(parts), size

    def _legend_shape(self, labels: list[str], width: float) -> tuple[int, int]:
        """Columns and rows of the legend: as few rows as fit `width`, then as few columns as fill them
        (matplotlib splits the entries into columns in order, as np.array_split does)."""
        handle = (2.0 + 0.8) * PT["legend"] / INCH  # handle length and the pad before its text
        spacing = 2.0 * PT["legend"] / INCH
        widths = np.array([self.width(s, PT["legend"]) for s in labels])

        def fits(ncol: int) -> bool:
            columns = [c.max() + handle for c in np.array_split(widths, ncol)]
            return sum(columns) + spacing * (ncol - 1) + 0.3 <= width

        most = next((c for c in range(len(labels), 1, -1) if fits(c)), 1)
        rows = -(-len(labels) // most)
        return next(c for c in range(-(-len(labels) // rows), most + 1) if fits(c) or c == most), rows


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """`name`.png and `name`.pdf in `out_dir`."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = [Path(out_dir) / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path)
    return paths
