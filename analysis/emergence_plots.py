"""Emergence figures: the headline metric against scale per task, and discrete beside continuous.

Every figure is a grid with one panel per (task, metric) that has data (no empty panels), sizes labelled
as people say them (70M, 1.4B), and one shared legend below the panels naming every line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.emergence_cli import headline, size_text

DPI = 150
NCOLS = 4
MAX_PAIRS = 6  # emerging tasks shown beside their continuous metric
CONTINUOUS = ("logprob_per_token", "token_accuracy", "prob_correct", "logprob_sum", "perplexity", "brier")
MARKERS = "osD^v"
STYLES = ("-", "--", ":", "-.")
X_LABELS = {"params": "Parameters", "flops": "Training compute (FLOPs)"}


def _grid(n: int, ncols: int = NCOLS, panel=(3.0, 2.4)) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.7), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, list(axes[:n])


def _points(table: pd.DataFrame, x: str) -> pd.DataFrame:
    """Mean and stderr per (group, task, shots, metric, scale): repeated runs of a size pooled."""
    t = table.assign(_var=table["stderr"] ** 2, group=table.get("group", ""))
    keys = ["group", "task", "shots", "metric", x]
    out = t.groupby(keys).agg(value=("value", "mean"), _var=("_var", "mean"), k=("value", "size"))
    out["stderr"] = np.sqrt(out.pop("_var") / out.pop("k"))
    return out.reset_index()


def _curve(ax, pts: pd.DataFrame, x: str, colour: str, style: str, marker: str) -> None:
    err = pts["stderr"].where(np.isfinite(pts["stderr"]))
    ax.errorbar(
        pts[x], pts["value"], yerr=err, color=colour, ls=style, marker=marker, ms=3.5, lw=1.2, capsize=2
    )


def _axes_style(ax, x: str, title: str, ylabel: str | None, xlabel: bool) -> None:
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    few = high / low < 100  # under two decades: label 1, 2 and 5 times each power of ten
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if few else (1,), numticks=6))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: size_text(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    if xlabel:
        ax.set_xlabel(X_LABELS[x], fontsize=8)
    ax.grid(alpha=0.25, lw=0.5)


def _legend(fig: Figure, shots: list[int], groups: list[str], extra: list) -> None:
    handles = [
        Line2D([], [], color=f"C{i}", marker="o", ms=4, label=f"{k}-shot") for i, k in enumerate(shots)
    ]
    if len(groups) > 1:
        handles += [
            Line2D([], [], color="0.3", ls=STYLES[j % 4], marker=MARKERS[j % 5], ms=4, label=g or "(none)")
            for j, g in enumerate(groups)
        ]
    fig.legend(
        handles=handles + extra, loc="outside lower center", ncol=min(len(handles + extra), 8), fontsize=8
    )


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = [Path(out_dir) / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path)
    return paths


def plot_headline(table: pd.DataFrame, mids: pd.DataFrame, out_dir: Path, x: str, metric=None) -> list[Path]:
    """One panel per (task, headline metric): a line per shot count (and style per group), error bars,
    a dashed chance line, each midpoint with its 95% interval shaded."""
    head = headline(mids, metric)
    pts = _points(table, x)
    panels = list(head[["task", "metric"]].drop_duplicates().itertuples(index=False))
    shots, groups = sorted(head["shots"].unique()), sorted(head["group"].unique())
    fig, axes = _grid(len(panels))
    ncols, drew_chance = min(NCOLS, len(panels)), False
    for p, (ax, (task, m)) in enumerate(zip(axes, panels, strict=True)):
        for _, r in head[(head["task"] == task) & (head["metric"] == m)].iterrows():
            i, j = shots.index(r["shots"]), groups.index(r["group"])
            sel = pts[(pts["task"] == task) & (pts["metric"] == m)]
            sel = sel[(sel["shots"] == r["shots"]) & (sel["group"] == r["group"])]
            _curve(ax, sel, x, f"C{i}", STYLES[j % 4], MARKERS[j % 5])
            if np.isfinite(r["midpoint"]):
                ax.axvline(r["midpoint"], color=f"C{i}", lw=0.8, ls=":")
                if np.isfinite(r["ci_low"]):
                    ax.axvspan(r["ci_low"], r["ci_high"], color=f"C{i}", alpha=0.12, lw=0)
        chance = head[(head["task"] == task) & (head["metric"] == m)]["chance"]
        if np.isfinite(chance).any():
            ax.axhline(float(chance.max()), color="0.4", ls="--", lw=0.9)
            drew_chance = True
        last_row = p >= len(panels) - ncols
        _axes_style(ax, x, f"{task}: {m}", m if p % ncols == 0 else None, last_row)
    extra = [Line2D([], [], color="0.4", ls="--", label="chance")] if drew_chance else []
    extra.append(Patch(color="0.5", alpha=0.3, label="midpoint, 95% CI"))
    _legend(fig, shots, groups, extra)
    return _save(fig, out_dir, "emergence")


def plot_discrete_continuous(table: pd.DataFrame, mids: pd.DataFrame, out_dir: Path, x: str, metric=None):
    """Each emerging task's headline metric beside its continuous counterpart (Schaeffer et al. 2023):
    a sharp rise in the discrete metric over a smooth one in the continuous. At most MAX_PAIRS tasks."""
    head = headline(mids, metric)
    emerging = head[np.isfinite(head["midpoint"])]
    pts = _points(table, x)
    pairs = []
    for task, m in emerging[["task", "metric"]].drop_duplicates().itertuples(index=False):
        have = set(pts[pts["task"] == task]["metric"])
        twin = next((c for c in CONTINUOUS if c in have and c != m), None)
        if twin:
            pairs.append((task, m, twin))
    if not pairs:
        return []
    pairs = pairs[:MAX_PAIRS]  # the first tasks by name: the figure stays one page
    shots, groups = sorted(head["shots"].unique()), sorted(head["group"].unique())
    fig, axes = _grid(2 * len(pairs), ncols=2, panel=(3.4, 2.4))
    for p, (task, m, twin) in enumerate(pairs):
        for c, name in enumerate((m, twin)):
            ax = axes[2 * p + c]
            sel = pts[(pts["task"] == task) & (pts["metric"] == name)]
            for (k, g), cell in sel.groupby(["shots", "group"]):
                if k in shots:
                    j = groups.index(g) if g in groups else 0
                    _curve(ax, cell, x, f"C{shots.index(k)}", STYLES[j % 4], MARKERS[j % 5])
            for _, r in emerging[(emerging["task"] == task) & (emerging["metric"] == m)].iterrows():
                ax.axvline(r["midpoint"], color=f"C{shots.index(r['shots'])}", lw=0.8, ls=":")
            kind = "discrete" if c == 0 else "continuous"
            _axes_style(ax, x, f"{task}: {name} ({kind})", name, p == len(pairs) - 1)
    extra = [Line2D([], [], color="0.4", ls=":", label="midpoint of the discrete metric")]
    _legend(fig, shots, groups, extra)
    return _save(fig, out_dir, "emergence_discrete_continuous")


def plot_emergence(table: pd.DataFrame, mids: pd.DataFrame, out_dir: Path, x: str, metric=None) -> list[Path]:
    """Every emergence figure the table allows."""
    return plot_headline(table, mids, out_dir, x, metric) + plot_discrete_continuous(
        table, mids, out_dir, x, metric
    )
