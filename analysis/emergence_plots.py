"""Emergence figures: the headline metric against scale per task, and discrete beside continuous.

Every figure is a grid with one panel per (task, metric) that has data (no empty panels), sizes labelled
as people say them (70M, 1.4B), and one shared legend below the panels naming every line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator, ScalarFormatter

from analysis.emergence_cli import headline, size_text
from analysis.panels import PT, Grid, save
from analysis.significance import point_noise

NCOLS = 4
BOX = (2.3, 1.6)  # inches of one panel's plotting area; the margins come from its text
MAX_PAIRS = 6  # emerging tasks shown beside their continuous metric
CONTINUOUS = ("logprob_per_token", "token_accuracy", "prob_correct", "logprob_sum", "perplexity", "brier")
MARKERS = "osD^v"
STYLES = ("-", "--", ":", "-.")
X_LABELS = {"params": "Parameters", "flops": "Training compute (FLOPs)"}


def _noise(t: pd.DataFrame) -> pd.Series:
    """Each row's standard error as the fits take it: the table's, else binomial from n (accuracies)."""
    se = pd.Series(np.nan, index=t.index)
    for (metric, *_), rows in t.groupby(["metric", "group", "task", "shots"]):
        n = rows["n"].to_numpy(float) if "n" in rows else np.full(len(rows), np.nan)
        found = point_noise(metric, rows["value"].to_numpy(float), rows["stderr"].to_numpy(float), n)
        if found is not None:
            se[rows.index] = found
    return se


def _points(table: pd.DataFrame, x: str) -> pd.DataFrame:
    """Mean and stderr per (group, task, shots, metric, scale): repeated runs of a size pooled."""
    t = table.assign(group=table.get("group", ""))
    t["_var"] = _noise(t) ** 2
    keys = ["group", "task", "shots", "metric", x]
    out = t.groupby(keys).agg(value=("value", "mean"), _var=("_var", "mean"), k=("value", "size"))
    out["stderr"] = np.sqrt(out.pop("_var") / out.pop("k"))
    return out.reset_index()


def _curve(ax, pts: pd.DataFrame, x: str, colour: str, style: str, marker: str) -> None:
    err = pts["stderr"].where(np.isfinite(pts["stderr"]))
    ax.errorbar(
        pts[x], pts["value"], yerr=err, color=colour, ls=style, marker=marker, ms=3.5, lw=1.2, capsize=2
    )


def _axes_style(ax, x: str, ylabel: str | None, xlabel: bool) -> None:
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    few = high / low < 100  # under two decades: label 1, 2 and 5 times each power of ten
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if few else (1,), numticks=6))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: size_text(v)))
    # Unlabelled ticks at 2 and 5 times each decade; every tick costs a share of the drawing time.
    ax.xaxis.set_minor_locator(NullLocator() if few else LogLocator(subs=(2, 5), numticks=12))
    ax.xaxis.set_minor_formatter(NullFormatter())
    plain = ScalarFormatter(useOffset=False)  # no offset text above the axes to collide with the title
    plain.set_scientific(False)
    ax.yaxis.set_major_formatter(plain)
    ax.tick_params(labelsize=PT["tick"])
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=PT["label"])
    if xlabel:
        ax.set_xlabel(X_LABELS[x], fontsize=PT["label"])
    ax.grid(alpha=0.25, lw=0.5)


def _midpoints(ax, rows, shots: list[int]) -> bool:
    """Each midpoint a dotted line in its shot count's colour, its 95% interval shaded (lighter when
    several overlap, so that every edge stays visible); True when any interval was drawn."""
    found = rows[np.isfinite(rows["midpoint"])]
    spans = found[np.isfinite(found["ci_low"])]
    alpha = 0.12 if len(spans) <= 2 else 0.24 / len(spans)
    for r in found.itertuples():
        ax.axvline(r.midpoint, color=f"C{shots.index(r.shots)}", lw=0.8, ls=":")
    for r in spans.itertuples():
        ax.axvspan(r.ci_low, r.ci_high, color=f"C{shots.index(r.shots)}", alpha=alpha, lw=0)
    return len(spans) > 0


def _entries(shots: list[int], groups: list[str], extra: list) -> list[tuple]:
    """Legend entries: a colour per shot count, a line style per group (when several), then `extra`."""
    entries = [(Line2D([], [], color=f"C{i}", marker="o", ms=4), f"{k}-shot") for i, k in enumerate(shots)]
    if len(groups) > 1:
        entries += [
            (Line2D([], [], color="0.3", ls=STYLES[j % 4], marker=MARKERS[j % 5], ms=4), g or "(none)")
            for j, g in enumerate(groups)
        ]
    return entries + extra


def _ylabels(metrics: list[str], ncols: int) -> list[str | None]:
    """A y label where a panel's metric differs from its left neighbour's (always in the first column)."""
    return [m if p % ncols == 0 or metrics[p - 1] != m else None for p, m in enumerate(metrics)]


def headline_figure(table: pd.DataFrame, mids: pd.DataFrame, x: str, metric=None) -> Figure:
    """One panel per (task, headline metric): a line per shot count (and style per group), error bars,
    a dashed chance line, each midpoint dotted with its 95% interval shaded."""
    head = headline(mids, metric)
    pts = {key: cell for key, cell in _points(table, x).groupby(["task", "metric", "shots", "group"])}
    panels = list(head[["task", "metric"]].drop_duplicates().itertuples(index=False, name=None))
    shots, groups = sorted(head["shots"].unique()), sorted(head["group"].unique())
    grid = Grid(len(panels), NCOLS, BOX)
    ylabels = _ylabels([m for _, m in panels], grid.ncols)
    drew_chance, drew_interval = False, False
    for p, (ax, (task, m), rows) in enumerate(zip(grid.axes, panels, _cells(head, panels), strict=True)):
        for r in rows.itertuples():
            i, j = shots.index(r.shots), groups.index(r.group)
            if (task, m, r.shots, r.group) in pts:
                _curve(ax, pts[(task, m, r.shots, r.group)], x, f"C{i}", STYLES[j % 4], MARKERS[j % 5])
        drew_interval |= _midpoints(ax, rows, shots)
        if np.isfinite(rows["chance"]).any():
            ax.axhline(float(rows["chance"].max()), color="0.4", ls="--", lw=0.9)
            drew_chance = True
        _axes_style(ax, x, ylabels[p], grid.lowest_in_column(p))
    extra = [(Line2D([], [], color="0.4", ls="--"), "chance")] if drew_chance else []
    dotted = Line2D([], [], color="0.3", ls=":", lw=1.0)
    if drew_interval:
        extra.append(((Patch(color="0.5", alpha=0.3, lw=0), dotted), "midpoint, 95% CI"))
    elif np.isfinite(head["midpoint"]).any():
        extra.append((dotted, "midpoint"))
    return grid.layout([f"{t}: {m}" for t, m in panels], _entries(shots, groups, extra))


def _cells(head: pd.DataFrame, panels: list[tuple]) -> list[pd.DataFrame]:
    by = dict(list(head.groupby(["task", "metric"], sort=False)))
    return [by[key] for key in panels]


def discrete_continuous_figure(table: pd.DataFrame, mids: pd.DataFrame, x: str, metric=None) -> Figure | None:
    """Each emerging task's headline metric beside its continuous counterpart (Schaeffer et al. 2023):
    a sharp rise in the discrete metric over a smooth one in the continuous. At most MAX_PAIRS tasks;
    None when no emerging task has a continuous metric."""
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
        return None
    pairs = pairs[:MAX_PAIRS]  # the first tasks by name: the figure stays one page
    shots, groups = sorted(head["shots"].unique()), sorted(head["group"].unique())
    grid = Grid(2 * len(pairs), 2, (BOX[0] + 0.4, BOX[1]))
    titles = []
    for p, (task, m, twin) in enumerate(pairs):
        for c, name in enumerate((m, twin)):
            ax = grid.axes[2 * p + c]
            sel = pts[(pts["task"] == task) & (pts["metric"] == name)]
            for (k, g), cell in sel.groupby(["shots", "group"]):
                if k in shots:
                    j = groups.index(g) if g in groups else 0
                    _curve(ax, cell, x, f"C{shots.index(k)}", STYLES[j % 4], MARKERS[j % 5])
            for r in emerging[(emerging["task"] == task) & (emerging["metric"] == m)].itertuples():
                ax.axvline(r.midpoint, color=f"C{shots.index(r.shots)}", lw=0.8, ls=":")
            _axes_style(ax, x, name, grid.lowest_in_column(2 * p + c))
            titles.append(f"{task}: {name} ({'discrete' if c == 0 else 'continuous'})")
    extra = [(Line2D([], [], color="0.4", ls=":"), "midpoint of the discrete metric")]
    return grid.layout(titles, _entries(shots, groups, extra))


def plot_headline(table: pd.DataFrame, mids: pd.DataFrame, out_dir: Path, x: str, metric=None) -> list[Path]:
    """`emergence.png` and `.pdf`: the headline figure."""
    return save(headline_figure(table, mids, x, metric), out_dir, "emergence")


def plot_discrete_continuous(table: pd.DataFrame, mids: pd.DataFrame, out_dir: Path, x: str, metric=None):
    """`emergence_discrete_continuous.png` and `.pdf`, when some emerging task has a continuous metric."""
    fig = discrete_continuous_figure(table, mids, x, metric)
    return [] if fig is None else save(fig, out_dir, "emergence_discrete_continuous")


def plot_emergence(table: pd.DataFrame, mids: pd.DataFrame, out_dir: Path, x: str, metric=None) -> list[Path]:
    """Every emergence figure the table allows."""
    return plot_headline(table, mids, out_dir, x, metric) + plot_discrete_continuous(
        table, mids, out_dir, x, metric
    )
