"""What every figure shares: the page style (`screen` or `paper`), figure creation on the Agg canvas,
saving as PNG and PDF, axis labels that follow the mapped columns, and tick formats.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never pyplot, so importing this
module changes no global backend and leaks no open figures.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis import numbers as fmt

DPI = 150
# screen: 6 x 4 inches, read on a monitor; paper: one column of a two-column page (3.4 in) at 8 pt.
STYLES = {
    "screen": {"figure.figsize": (6.0, 4.0), "font.size": 10, "legend.fontsize": 8},
    "paper": {"figure.figsize": (3.4, 2.5), "font.size": 8, "legend.fontsize": 6, "axes.titlesize": 8,
              "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.markersize": 4},
}  # fmt: skip
COMPUTE = "Training compute C (FLOPs)"
PARAMS = "Parameters N"
TOKENS = "Training tokens D"
LOSS_COLUMNS = {"final_val_loss": "Validation loss (nats/token)", "final_loss": "Training loss (nats/token)"}


@contextlib.contextmanager
def style(name: str):
    """Figures drawn inside take the style's sizes and fonts."""
    if name not in STYLES:
        raise ValueError(f"style '{name}': one of {sorted(STYLES)}")
    with matplotlib.rc_context(STYLES[name]):
        yield


def scale() -> float:
    """The current style's width relative to the screen style, for figures wider than one panel."""
    return matplotlib.rcParams["figure.figsize"][0] / STYLES["screen"]["figure.figsize"][0]


def loss_label(runs: pd.DataFrame) -> str:
    """Axis label of the results' loss column: the column it came from, with nats/token only where the
    column is lmscale's own loss."""
    for col in [*LOSS_COLUMNS, *runs.columns]:
        if col != "loss" and col in runs and pd.api.types.is_numeric_dtype(runs[col]):
            if np.allclose(runs[col], runs["loss"], equal_nan=False):
                return LOSS_COLUMNS.get(col, col)
    return "Loss"


def figure(figsize: tuple[float, float] | None = None, **subplots) -> tuple[Figure, np.ndarray]:
    """A figure at `figsize` (screen inches, scaled to the style), default the style's own."""
    size = matplotlib.rcParams["figure.figsize"] if figsize is None else tuple(s * scale() for s in figsize)
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(squeeze=False, **subplots)


def save(fig: Figure, out_dir: Path, name: str, layout: bool = True) -> list[Path]:
    """The figure as PNG and PDF; `layout=False` keeps a layout the caller already fixed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths


def log_norm(values) -> LogNorm:
    """A log colour scale over the values' range; one value alone still gets a scale around it."""
    lo, hi = float(np.min(values)), float(np.max(values))
    return LogNorm(lo, hi if hi > lo else lo * 1.01)


def size_colours(params: pd.Series) -> tuple[LogNorm, str]:
    """Colours by parameter count: viridis, whose lightness rises monotonically, so it reads in grey."""
    return log_norm(params), "viridis"


def size_colorbar(fig: Figure, mappable, ax) -> None:
    """A colour bar of parameter counts, labelled as sizes (200K, 1.5M)."""
    bar = fig.colorbar(mappable, ax=ax, label=PARAMS)
    lo, hi = mappable.norm.vmin, mappable.norm.vmax
    subs = (1.0, 2.0, 5.0) if np.log10(hi / lo) < 2 else (1.0,)  # a few labels a decade, never crowded
    bar.ax.yaxis.set_major_locator(LogLocator(subs=subs))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.size(v)))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())


def plain_loss_ticks(ax, values) -> None:
    """Loss axes are log-scaled but read best as plain numbers (1.5, 2, 3), labelled over the whole data
    range: labelled minor ticks where the range spans less than a decade, never so many they overlap."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values) & (values > 0)]
    decades = np.log10(values.max() / values.min()) if len(values) else 1.0
    subs = (1.0, 2.0, 5.0) if decades > 1.0 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    if decades < 0.7:
        subs = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0)
    plain = FuncFormatter(lambda v, _: fmt.number(v))
    ax.yaxis.set_major_locator(LogLocator(subs=subs))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(NullFormatter())


def latex_number(x: float) -> str:
    """x for mathtext, three significant figures: 5.29\\times10^{5}."""
    text = fmt.number(x)
    if "×10" not in text:
        return text
    mantissa, exponent = text.split("×10")
    power = exponent.translate(str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-"))
    return rf"{mantissa}\times10^{{{power}}}"
