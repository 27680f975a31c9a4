"""Figures of a sweep, each saved as PNG and PDF: loss against compute, IsoFLOP profiles, compute-optimal
allocation, L(N, D) contours, learning curves and emergence, drawn from the fits of a `Sweep`, in the
style of `analysis.plot_style` (screen or paper).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps as plt_colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap
from matplotlib.ticker import MaxNLocator

from analysis.emergence_plots import plot_headline
from analysis.fit import compute_optimal, frontier
from analysis.holdout import Holdout, prediction_band
from analysis.isoflop import brief_reason, isoflop_groups
from analysis.laws import LAW_NAMES, Fit
from analysis.load import AnalysisError, six_nd, tokens_from_compute
from analysis.plot_style import (
    COMPUTE,
    PARAMS,
    TOKENS,
    figure,
    latex_number,
    log_norm,
    loss_label,
    plain_loss_ticks,
    save,
    size_colorbar,
    size_colours,
    style,
)
from analysis.sweep import Sweep, analyse
from analysis.tuned import Tuned

log = logging.getLogger(__name__)

METRIC_UNITS = {
    "exact_match": "fraction correct",
    "token_accuracy": "fraction of tokens",
    "edit_distance": "edits",
    "logprob_sum": "nats",
    "logprob_per_token": "nats/token",
}
APPROACH_STYLES = {"approach1": ("-", "o"), "approach2": ("--", "s"), "chinchilla": (":", "^")}  # grey-safe
VISIBLE_BAND = 0.01  # a band narrower than 1% of the axis (in log units) is not drawn or named


def law_text(fit: Fit) -> str:
    r"""The frontier law as mathtext: L(C) = 1.38 + 5.29\times10^{5}\,C^{-0.541}."""
    p = fit.params
    offset = f"{latex_number(p['E'])} + " if "E" in p else ""
    return rf"$L(C) = {offset}{latex_number(p['A'])}\,C^{{-{latex_number(p['alpha'])}}}$"


def plot_loss_vs_compute(
    runs: pd.DataFrame, fit: Fit | None, out_dir: Path, held: Holdout | None = None, name="loss_vs_compute"
) -> list[Path]:
    """Every run's loss against compute, the best run per budget, its power law one decade beyond with
    its band where visible, and the held-out budgets' runs marked."""
    fig, ((ax,),) = figure()
    norm, cmap = size_colours(runs["params"])
    ax.scatter(runs["flops"], runs["loss"], c=runs["params"], norm=norm, cmap=cmap, s=22, zorder=3)
    edge = frontier(runs)
    ring = {"facecolors": "none", "edgecolors": "black", "s": 70, "zorder": 4}
    ax.scatter(edge["flops"], edge["loss"], label="best run per budget", **ring)
    if held is not None and held.held_runs:
        out = runs["flops"] > held.below
        ax.scatter(runs.loc[out, "flops"], runs.loc[out, "loss"], marker="s", facecolors="none",
                   edgecolors="black", s=110, lw=1.0, zorder=4, label="held out, then predicted")  # fmt: skip
    if fit is not None:
        c_max = float(runs["flops"].max())
        c_grid = np.logspace(np.log10(runs["flops"].min()), np.log10(c_max) + 1.0, 200)
        pred = fit.predict(c_grid)
        ax.plot(c_grid, pred, color="black", lw=1.5, label=law_text(fit))
        band = prediction_band(fit, x=c_grid)
        span = np.log(np.nanmax(runs["loss"]) / np.nanmin(pred))
        if band is not None and np.nanmax(np.log(band[1] / band[0])) > VISIBLE_BAND * span:
            ax.fill_between(c_grid, *band, color="grey", alpha=0.3, lw=0, label="95% bootstrap band")
        ax.axvline(c_max, color="grey", ls=":", lw=1)
        ax.text(c_max, 0.02, " extrapolation", va="bottom", fontsize="small", color="dimgrey",
                transform=ax.get_xaxis_transform())  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel=COMPUTE, ylabel=loss_label(runs), title="Loss against compute")
    plain_loss_ticks(ax, runs["loss"])
    ax.legend(loc="best")  # the corner that hides the fewest points
    size_colorbar(fig, ScalarMappable(norm, cmap), ax)
    return save(fig, out_dir, name)


def _budget_index(runs: pd.DataFrame, budgets: np.ndarray) -> np.ndarray:
    """Index into `budgets` of each run's IsoFLOP group (whose median compute it is), -1 for a group
    that approach 2 excluded."""
    labels = isoflop_groups(runs)
    median = runs.groupby(labels)["flops"].transform("median").to_numpy()
    distance = np.abs(np.log(median[:, None]) - np.log(budgets[None, :]))
    return np.where(np.isclose(distance.min(1), 0.0), distance.argmin(1), -1)


TRUNCATED_PLASMA = ListedColormap(plt_colormaps["plasma"](np.linspace(0.0, 0.85, 256)))  # no pale yellow


def plot_isoflop(runs: pd.DataFrame, fit: Fit, out_dir: Path, name="isoflop") -> list[Path]:
    """Loss against N at each compute budget, the fitted parabolas in log N, and their minima."""
    profiles = sorted(fit.extra["isoflop"], key=lambda p: p["C"])
    budgets = np.array([p["C"] for p in profiles])
    which = _budget_index(runs, budgets)
    fig, ((ax,),) = figure((6.4, 4.6))  # room for the legend below the axes
    # Budgets are coloured by compute, read off a colour bar: a legend entry per budget crowded the plot.
    colours = ScalarMappable(log_norm(budgets), TRUNCATED_PLASMA)
    for i, p in enumerate(profiles):
        colour = colours.to_rgba(p["C"])
        group = runs[which == i]
        ax.scatter(group["params"], group["loss"], color=colour, s=22, zorder=3)
        log_n = np.log(group["params"].to_numpy()) if len(group) else np.log([p["N_star"]])
        grid = np.linspace(log_n.min() - 0.2, log_n.max() + 0.2, 100)
        ax.plot(np.exp(grid), np.polyval(p["coef"], grid), color=colour, lw=1.2)
        ax.scatter(
            [p["N_star"]], [p["loss_star"]], marker="*", s=120, color=colour, edgecolors="black", zorder=5
        )
    ax.scatter([], [], marker="*", s=120, color="white", edgecolors="black", label="fitted minimum")
    excluded = fit.extra.get("excluded", [])
    gone = _budget_index(runs, np.array([e["C"] for e in excluded])) if excluded else []
    reasons: dict[str, list[int]] = {}  # one legend entry per reason, naming its budgets
    for i, e in enumerate(excluded):
        reason = brief_reason(e["reason"]) + (" (in the fit of a)" if e.get("in_fit") else "")
        reasons.setdefault(reason, []).append(i)
    for reason, members in reasons.items():  # hollow: a budget left out is shown, not hidden
        group = runs[np.isin(gone, members)]
        shown = ", ".join(f"${latex_number(excluded[i]['C'])}$" for i in members)
        label = f"excluded, {reason}: C = {shown}"
        ax.scatter(group["params"], group["loss"], facecolors="none", edgecolors="grey", s=26, label=label)
    ax.set(xscale="log", xlabel=PARAMS, ylabel=loss_label(runs), title="IsoFLOP profiles (approach 2)")
    fig.colorbar(colours, ax=ax, label="Compute budget C (FLOPs)")
    # Below the axes: beside them, the long exclusion entries squeezed the plot.
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    return save(fig, out_dir, name)


def plot_compute_optimal(
    fits: dict[str, Fit], c_range: tuple[float, float], out_dir: Path, name="compute_optimal"
) -> list[Path]:
    """N_opt and D_opt against C for each compute-optimal approach, extrapolated two decades, log-log."""
    fig, ((ax_n, ax_d),) = figure((9.0, 4.0), ncols=2)
    c_grid = np.logspace(np.log10(c_range[0]), np.log10(c_range[1]) + 2.0, 100)
    for i, (key, fit) in enumerate(fits.items()):
        colour, (ls, marker) = f"C{i}", APPROACH_STYLES.get(key, ("-", "o"))
        opt = compute_optimal(fit, c_grid)
        a, b = (latex_number(fit.params[k]) for k in ("a", "b"))
        label = f"{LAW_NAMES[key]}: $a = {a}$, $b = {b}$"
        ax_n.plot(c_grid, opt["N_opt"], color=colour, ls=ls, label=label)
        ax_d.plot(c_grid, opt["D_opt"], color=colour, ls=ls, label=label)
        points = fit.extra.get("isoflop") or fit.extra.get("frontier") or []
        if points:
            c = np.array([p["C"] for p in points])
            n = np.array([p.get("N_star", p.get("N_opt")) for p in points])
            if "frontier" in fit.extra:
                d = np.array([p.get("D_opt", np.nan) for p in points])
            else:
                d = tokens_from_compute(c, n)
            ax_n.scatter(c, n, color=colour, marker=marker, s=18, zorder=3)
            ax_d.scatter(c, d, color=colour, marker=marker, s=18, zorder=3)
    panels = (
        (ax_n, r"Compute-optimal parameters $N_{\rm opt}$", r"$N_{\rm opt} \propto C^{a}$"),
        (ax_d, r"Compute-optimal tokens $D_{\rm opt}$", r"$D_{\rm opt} \propto C^{b}$"),
    )
    for ax, ylabel, title in panels:
        ax.axvline(c_range[1], color="grey", ls=":", lw=1)
        ax.set(xscale="log", yscale="log", xlabel=COMPUTE, ylabel=ylabel, title=title)
    ax_n.legend(fontsize="x-small", loc="upper left")
    return save(fig, out_dir, name)


def plot_loss_contours(runs: pd.DataFrame, fit: Fit, out_dir: Path, name="loss_contours") -> list[Path]:
    """Contours of the fitted L(N, D), the runs on top and the compute-optimal path through them."""
    log_n = np.linspace(np.log10(runs["params"].min()) - 0.5, np.log10(runs["params"].max()) + 0.5, 150)
    log_d = np.linspace(np.log10(runs["tokens"].min()) - 0.5, np.log10(runs["tokens"].max()) + 0.5, 150)
    n_DxN, d_DxN = np.meshgrid(10**log_n, 10**log_d)
    loss_DxN = np.asarray(fit.predict(N=n_DxN.ravel(), D=d_DxN.ravel()), float).reshape(n_DxN.shape)
    fig, ((ax,),) = figure()
    levels = MaxNLocator(14).tick_values(loss_DxN.min(), np.quantile(loss_DxN, 0.95))  # round-number contours
    filled = ax.contourf(n_DxN, d_DxN, loss_DxN, levels=levels, cmap="viridis_r", extend="max")
    ax.contour(n_DxN, d_DxN, loss_DxN, levels=levels, colors="white", linewidths=0.4)
    ax.scatter(
        runs["params"], runs["tokens"], color="white", edgecolors="black", s=22, zorder=3, label="runs"
    )
    c_lo, c_hi = six_nd(10 ** log_n[0], 10 ** log_d[0]), six_nd(10 ** log_n[-1], 10 ** log_d[-1])
    opt = compute_optimal(fit, np.logspace(np.log10(c_lo), np.log10(c_hi), 200))
    ax.plot(
        opt["N_opt"],
        opt["D_opt"],
        color="red",
        lw=1.5,
        label=r"compute-optimal $N_{\rm opt}(C)$, $D_{\rm opt}(C)$",
    )
    ax.set(xscale="log", yscale="log", xlabel=PARAMS, ylabel=TOKENS, title="Fitted L(N, D) (approach 3)")
    ax.set(xlim=(10 ** log_n[0], 10 ** log_n[-1]), ylim=(10 ** log_d[0], 10 ** log_d[-1]))
    ax.legend(fontsize="small", loc="lower left", framealpha=0.9)  # the small-N, small-D corner has no runs
    fig.colorbar(filled, ax=ax, label=f"Predicted {loss_label(runs)[0].lower()}{loss_label(runs)[1:]}")
    return save(fig, out_dir, name)


def plot_tuned(tuned: Tuned, out_dir: Path, name="tuned_optimum") -> list[Path]:
    """Each tuned setting against N and C: the values tried, the best run's, the optimum of a parabola
    through them and the power law fitted to the optima."""
    fig, axes = figure((9.0, 3.6 * len(tuned.optima)), nrows=len(tuned.optima), ncols=2)
    for row, (col, opt) in zip(axes, tuned.optima.items(), strict=True):
        for ax, (x, label) in zip(row, (("params", PARAMS), ("flops", COMPUTE)), strict=True):
            tried, best = tuned.settings, pd.DataFrame(tuned.used)
            ax.scatter(tried[x], tried[col], color="lightgrey", s=14, label="settings tried")
            ax.scatter(best[x], best[col], facecolors="none", edgecolors="black", s=60, label="best run")
            star = pd.DataFrame(opt["points"], columns=[x, f"{col}_star"])
            ax.scatter(star[x], star[f"{col}_star"], marker="*", s=90, color="C0", zorder=3,
                       label=f"optimum (parabola in log {col})")  # fmt: skip
            law = opt.get(f"vs_{x}")
            if law is not None:
                grid = np.geomspace(tried[x].min() / 1.5, tried[x].max() * 1.5, 50)
                ci = f", 95% CI [{law['ci']['a'][0]:.3f}, {law['ci']['a'][1]:.3f}]" if "ci" in law else ""
                text = f"{col}_opt ∝ {'N' if x == 'params' else 'C'}^{law['a']:.3f}{ci}"
                ax.plot(grid, law["k"] * grid ** law["a"], color="C0", lw=1.2, label=text)
            ax.set(xscale="log", yscale="log", xlabel=label, ylabel=col, title=f"Optimal {col}")
            ax.legend(fontsize=7)
    return save(fig, out_dir, name)


def plot_learning_curves(curves: pd.DataFrame, out_dir: Path, x: str = "tokens", name=None) -> list[Path]:
    """Training loss against tokens or compute, one line per run, coloured by parameter count (a cooldown
    sweep's size: its branches' final validation losses, as `load_curves` gives them)."""
    if x not in ("tokens", "flops"):
        raise AnalysisError(f"learning curves: x must be 'tokens' or 'flops', got '{x}'")
    fig, ((ax,),) = figure()
    norm, cmap = size_colours(curves["params"])
    colours = ScalarMappable(norm, cmap)
    for _, run in curves.groupby("run_id", sort=False):
        run = run[run[x] > 0].sort_values("step")
        ax.plot(run[x], run["loss"], color=colours.to_rgba(run["params"].iloc[0]), lw=1.0)
    splits = set(curves["split"]) if "split" in curves else {"train"}
    what = {frozenset({"train"}): "Training loss", frozenset({"val"}): "Validation loss"}.get(
        frozenset(splits), "Loss"
    )
    ax.set(xscale="log", yscale="log", ylabel=f"{what} (nats/token)")
    plain_loss_ticks(ax, curves["loss"])
    ax.set(xlabel=TOKENS if x == "tokens" else COMPUTE, title="Learning curves")
    size_colorbar(fig, colours, ax)
    return save(fig, out_dir, name or f"learning_curves_{x}")


def _metric_label(metric: str) -> str:
    unit = METRIC_UNITS.get(metric)
    return f"{metric} ({unit})" if unit else metric


def plot_emergence_training(
    training: pd.DataFrame, out_dir: Path, metric: str = "exact_match", name="emergence_training"
) -> list[Path]:
    """One panel per task: `metric` against tokens trained on, one line per run coloured by size, at
    the task's largest shot count (the checkpoints each run kept and evaluated)."""
    data = training[training["metric"] == metric]
    if data.empty:
        raise AnalysisError(f"emergence over training: no '{metric}' rows")
    tasks = sorted(data["task"].unique())
    ncols = min(4, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = figure((3.0 * ncols + 0.8, 2.4 * nrows + 0.6), nrows=nrows, ncols=ncols)
    norm, cmap = size_colours(data["params"])
    colours = ScalarMappable(norm, cmap)
    for i, task in enumerate(tasks):
        ax = axes[i // ncols, i % ncols]
        cell = data[data["task"] == task]
        k = cell["shots"].max()
        for _, run in cell[cell["shots"] == k].sort_values("params").groupby("run_id", sort=False):
            run = run[run["tokens"] > 0].sort_values("step")
            n = run["params"].iloc[0]
            ax.plot(run["tokens"], run["value"], marker="o", ms=2.5, lw=1.0, color=colours.to_rgba(n))
        ax.set_xscale("log")
        ax.set_title(f"{task}, {k}-shot", fontsize=9)
        ax.set_xlabel(TOKENS, fontsize=8)
        ax.set_ylabel(_metric_label(metric), fontsize=8)
        ax.tick_params(which="both", labelsize=7)
    for j in range(len(tasks), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    fig.suptitle(f"{metric} over training, at each kept checkpoint", fontsize=10)
    fig.tight_layout()
    size_colorbar(fig, colours, axes.ravel().tolist())
    return save(fig, out_dir, name, layout=False)


def plot_sweep(
    sweep: Sweep, out_dir: str | Path, held: Holdout | None = None, style_name: str = "screen"
) -> tuple[list[Path], dict[str, str]]:
    """Every figure the sweep allows; returns the written paths and, per skipped figure, the reason."""
    with style(style_name):
        return _plot_sweep(sweep, out_dir, held)


def _plot_sweep(sweep: Sweep, out_dir: str | Path, held: Holdout | None) -> tuple[list[Path], dict[str, str]]:
    out_dir, runs, fits, skipped = Path(out_dir), sweep.results.runs, sweep.fits, {}
    paths: list[Path] = plot_loss_vs_compute(runs, fits.get("power"), out_dir, held)
    if "approach2" in fits:
        paths += plot_isoflop(runs, fits["approach2"], out_dir)
    else:
        skipped["isoflop"] = sweep.missing.get("approach2", "no IsoFLOP fit")
    optimal = {k: fits[k] for k in ("approach1", "approach2", "chinchilla") if k in fits}
    if optimal:
        paths += plot_compute_optimal(optimal, (runs["flops"].min(), runs["flops"].max()), out_dir)
    else:
        skipped["compute_optimal"] = "no compute-optimal fit (approaches 1-3 all failed)"
    if "chinchilla" in fits:
        paths += plot_loss_contours(runs, fits["chinchilla"], out_dir)
    else:
        skipped["loss_contours"] = sweep.missing.get("chinchilla", "no L(N, D) fit")
    if sweep.tuned is not None and sweep.tuned.optima:
        paths += plot_tuned(sweep.tuned, out_dir)
    if sweep.curves is not None:
        paths += plot_learning_curves(sweep.curves, out_dir, "tokens")
        paths += plot_learning_curves(sweep.curves, out_dir, "flops")
    else:
        skipped["learning_curves"] = sweep.missing["curves"]
    if sweep.fewshot is not None and "emergence" not in sweep.missing:
        paths += plot_headline(sweep.fewshot, sweep.midpoints["params"], out_dir, "params")
    else:
        skipped["emergence"] = sweep.missing.get("emergence") or sweep.missing["fewshot"]
    if sweep.training is not None:
        paths += plot_emergence_training(sweep.training, out_dir)
    elif "emergence_training" in sweep.missing:
        skipped["emergence_training"] = sweep.missing["emergence_training"]
    if "power" not in fits:
        skipped["loss_vs_compute frontier law"] = sweep.missing["power"]
    for what, reason in skipped.items():
        log.warning("skipped %s: %s", what, reason)
    return paths, skipped


def plot_all(
    source: str | Path, out_dir: str | Path, bootstrap: int = 200, seed: int = 0, columns: dict | None = None,
    tuned_over: list[str] | None = None, style_name: str = "screen",
) -> list[Path]:  # fmt: skip
    """Fit and draw every figure a sweep directory or CSV allows, as PNG and PDF; log what is skipped."""
    return plot_sweep(analyse(source, bootstrap, seed, columns, tuned_over), out_dir, None, style_name)[0]
