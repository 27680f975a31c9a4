"""`report.md` and `report.html` for a sweep: a summary first (laws with intervals, the held-out
prediction, compute-optimal exponents and allocation, emergence, warnings), the hero figure under it,
then a section per question, long tables collapsed.

Both pages are rendered from one list of blocks (`analysis.report_render`), so they always say the same
thing in the same order. Every number goes through `analysis.numbers`, as in `lmscale fit`'s output.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import numbers as fmt
from analysis import report_render as render
from analysis import report_summary as summary
from analysis import report_tables as tables
from analysis.atomic import write_atomic
from analysis.fit import compute_budgets
from analysis.holdout import Holdout, predict_held_out
from analysis.laws import Fit
from analysis.load import SIX_ND, AnalysisError
from analysis.plots import plot_sweep
from analysis.sweep import Sweep, analyse
from analysis.tuned import Tuned

_markdown, frame_table = render.markdown, tables.frame_table  # `lmscale emergence` writes its page with these

LAWS = {
    "power": "Loss-compute frontier: L(C) = E + A·C^−α through the best run of each compute budget",
    "power_no_offset": "Loss-compute frontier: L(C) = A·C^−α through the best run of each budget "
    "(too few budgets to fit an offset E)",
    "chinchilla": "Approach 3: L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, eq. 2)",
    "approach1": "Approach 1: N_opt = k_n·C^a and D_opt = k_d·C^b from the training-curve envelope",
    "approach2": "Approach 2: N_opt = k_n·C^a and D_opt = k_d·C^b from the IsoFLOP minima",
}
FIGURES = {
    "loss_vs_compute": "Loss against compute: every run, the best run per budget and the frontier law with "
    "its 95% bootstrap band; squares mark the held-out budgets",
    "isoflop": "IsoFLOP profiles: loss against parameters at fixed compute; stars mark the fitted minima",
    "compute_optimal": "Compute-optimal parameters and tokens against compute, per approach",
    "loss_contours": "Contours of the fitted L(N, D), with the runs and the compute-optimal path",
    "learning_curves_tokens": "Learning curves against training tokens, shaded by parameter count",
    "learning_curves_flops": "Learning curves against training compute, shaded by parameter count",
    "emergence": "Each task's headline metric against parameters, a line per shot count; dotted lines and "
    "shading mark midpoints and their 95% intervals, dashes chance",
    "emergence_training": "Exact match over training at every checkpoint each run kept, by task",
    "tuned_optimum": "Each tuned setting's optimum against parameters and compute, with its power law",
}
HOLDOUT_NOTE = (
    "The largest compute budgets are held out whole; each law is refitted on the rest and asked to "
    "predict them, with a 95% interval from its bootstrap. Approach 3 predicts every held-out run; approach "
    "2 (a power law through the IsoFLOP minima' losses) and the frontier law predict the best run of each "
    "held-out budget."
)
MIDPOINT_NOTE = (
    "Scale at which each metric is halfway between its floor and ceiling (exact_match: where it crosses "
    "0.5), from a logistic in log scale with a 95% bootstrap interval over runs; — marks a midpoint that "
    "is not identifiable, and the reason says why."
)
EMERGENCE_HOLDOUT_NOTE = (
    "The largest model held out: its observed accuracy vs the accuracy predicted from the smaller models "
    "(task loss against parameters, then accuracy against task loss; Bhagia et al. 2024), with a 95% "
    "interval."
)


def bootstrap_note(fit: Fit) -> str:
    """How many resamples the intervals rest on, and how many were dropped, by reason."""
    boot = fit.extra.get("bootstrap")
    if boot is None:
        return ""
    dropped = "; ".join(f"{n} dropped: {reason}" for reason, n in boot["dropped"].items())
    return f" Intervals from {boot['kept']} of {boot['resamples']} bootstrap resamples" + (
        f" ({dropped})." if dropped else "."
    )


def compute_note(flops_source: str) -> str:
    """Which compute convention the allocation fits use, and where it came from."""
    origin = "derived as 6 · params · tokens" if flops_source == SIX_ND else f"column `{flops_source}`"
    return (
        f"Compute C counts 6ND FLOPs ({origin}), so D_opt = C / (6 N_opt) and approach 3's "
        "N_opt = G (C/6)^a share one unit."
    )


def _laws(fits: dict[str, Fit]) -> list[tuple]:
    blocks: list[tuple] = []
    for key, fit in fits.items():
        title = LAWS["power_no_offset" if key == "power" and "E" not in fit.params else key]
        note = f"{fit.n_points} points.{bootstrap_note(fit)}"
        if "fitted_to" in fit.extra:
            note += f" Fitted to {fit.extra['fitted_to']}."
        # the summary states each law with its intervals; the full table (A, B, G, ...) is one click away
        blocks += [
            ("h3", title),
            ("p", note),
            ("details", ("Parameters with 95% intervals", tables.fit_table(fit))),
        ]
        if "isoflop" in fit.extra:
            blocks.append(("details", ("IsoFLOP minima, per budget", tables.isoflop_table(fit))))
    return blocks


def _allocation(fits: dict[str, Fit], runs: pd.DataFrame, flops_source: str) -> list[tuple]:
    blocks: list[tuple] = [("section", ("allocation", "How to spend compute: parameters against tokens"))]
    optimal = {k: fits[k] for k in ("approach1", "approach2", "chinchilla") if k in fits}
    if not optimal:
        return blocks + [("p", "No compute-optimal fit: approaches 1 to 3 were all refused (see Warnings).")]
    blocks += [("p", "N_opt ∝ C^a and D_opt ∝ C^b, per approach. " + tables.overlap_sentence(optimal))]
    blocks += [("table", tables.exponent_table(optimal)), ("p", compute_note(flops_source))]
    table = tables.allocation_table(optimal, compute_budgets(runs["flops"]))
    return blocks + [("details", ("Allocation at a few budgets", table))]


def _holdout(h: Holdout | None, why: str | None) -> list[tuple]:
    blocks: list[tuple] = [("section", ("holdout", "Does the law predict the largest compute?"))]
    blocks.append(("p", summary.holdout_sentence(h, why).replace("**", "")))
    if h is None or h.table.empty:
        return blocks
    blocks += [("p", HOLDOUT_NOTE), ("table", tables.holdout_summary_table(h))]
    blocks.append(("details", ("Every held-out run: predicted against observed", tables.holdout_table(h))))
    skipped = [f"{law}: {summary.strip_prefix(why)}" for law, why in h.skipped.items()]
    return blocks + ([("p", "No prediction from:"), ("list", skipped)] if skipped else [])


def _noise(fits: dict[str, Fit], runs: pd.DataFrame) -> list[tuple]:
    blocks: list[tuple] = [("section", ("noise", "Are the misses noise? Seeds against residuals"))]
    blocks.append(("p", summary.noise_sentence(fits, runs)))
    spread = tables.seed_spread(runs)
    return blocks + ([("table", tables.spread_table(spread))] if not spread.empty else [])


def _tuned(tuned: Tuned | None) -> list[tuple]:
    from analysis.report_tuned import tuned_tables

    if tuned is None:
        return []
    used, laws = tuned_tables(tuned)
    blocks: list[tuple] = [("section", ("tuned", "Which settings were best, and how they scale"))]
    blocks += [
        ("p", f"Every law is fitted to {tuned.note()}."),
        ("details", ("Runs each (N, D) rests on", used)),
    ]
    if laws[1]:
        note = (
            "Each optimum is the minimum of a parabola in the log of the setting, through the best value "
            "tried and its neighbours; intervals are Student t intervals of the least-squares fit."
        )
        blocks += [("p", note), ("table", laws)]
    return blocks + ([("p", "Warnings:"), ("list", list(tuned.warnings))] if tuned.warnings else [])


def _emergence(sweep: Sweep, figure: tuple | None) -> list[tuple]:
    from analysis.emergence_cli import holdout_table, summary_table

    blocks: list[tuple] = [("section", ("emergence", "Which tasks emerge, and at what scale"))]
    if not sweep.midpoints:
        return blocks + [("p", summary.emergence_sentence(sweep))]
    blocks.append(("p", MIDPOINT_NOTE))
    if figure:
        blocks.append(("figure", figure))
    if "params" in sweep.midpoints:
        links = ", ".join(f"[against {x}](midpoints_{x}.csv)" for x in sweep.midpoints)
        head = tables.frame_table(summary_table(sweep.midpoints["params"]))
        blocks += [("p", f"Headline metric per task. Every metric: {links}."), ("table", head)]
        try:
            held = tables.frame_table(holdout_table(sweep.fewshot, sweep.midpoints["params"]))
            blocks += [("p", EMERGENCE_HOLDOUT_NOTE), ("details", ("Largest model predicted", held))]
        except AnalysisError as e:
            blocks.append(("p", f"No downstream prediction: {e}"))
        cols = ["task", "shots", "metric", "kind", "midpoint", "ci_low", "ci_high", "reason"]
        every = tables.frame_table(sweep.midpoints["params"][cols])
        blocks.append(("details", ("Every metric's midpoint, against parameters", every)))
    return blocks


def _excluded_runs(source: Path) -> list[str]:
    table = pd.read_csv(source) if source.name == "results.csv" else pd.DataFrame()
    if not {"status", "run_id"} <= set(table.columns):
        return []
    return table.loc[table["status"] != "completed", "run_id"].astype(str).tolist()


def blocks_of(sweep: Sweep, figures: list[Path], skipped: dict[str, str], fig_dir: str,
              held: Holdout | None, held_why: str | None) -> list[tuple]:  # fmt: skip
    """The report as blocks (see `analysis.report_render`): summary, hero, one section per question."""
    res, runs, fits = sweep.results, sweep.results.runs, sweep.fits
    figs = {p.stem: (f"{fig_dir}/{p.name}", f"{fig_dir}/{p.stem}.pdf", FIGURES.get(p.stem, p.stem), False)
            for p in figures if p.suffix == ".png"}  # fmt: skip
    name = res.source.parent.name if res.source.name == "results.csv" else res.source.stem
    counts = f"{len(runs)} completed runs fitted, {res.excluded} excluded"
    if sweep.tuned is not None:
        best = "the best tuned setting at each (N, D)"
        counts = f"{len(runs)} of {sweep.tuned.total} completed runs fitted ({best})"
    scope = (
        f"N {fmt.size(runs['params'].min())}–{fmt.size(runs['params'].max())} parameters, "
        f"D {fmt.size(runs['tokens'].min())}–{fmt.size(runs['tokens'].max())} tokens, "
        f"C {fmt.flops(runs['flops'].min())}–{fmt.flops(runs['flops'].max())} FLOPs"
    )
    other_loss = res.loss_source != "final_val_loss"  # a report of another column says which, twice
    loss = f", loss from column `{res.loss_source}`" if other_loss else ""
    sentences = [f"**Runs:** {counts}; {scope}. Source: `{res.source}`{loss}."]
    sentences += summary.law_sentences(fits, runs) + [summary.holdout_sentence(held, held_why)]
    sentences += summary.allocation_sentences(fits, float(runs["flops"].max()))
    sentences += [summary.floor_sentence(fits, runs), summary.noise_sentence(fits, runs)]
    sentences.append(summary.emergence_sentence(sweep))
    warnings = summary.warnings(sweep, _excluded_runs(res.source)) + (held.warnings() if held else [])
    title = f"{name}, {res.loss_source}" if other_loss else name
    blocks: list[tuple] = [("h1", f"Scaling report: {title}"), ("section", ("summary", "Summary"))]
    blocks.append(("summary", ([s.replace("**", "") for s in sentences], warnings)))
    blocks.append(("section", ("loss-compute", "How loss falls with compute")))
    if "loss_vs_compute" in figs:
        blocks.append(("figure", figs.pop("loss_vs_compute")[:3] + (True,)))
    blocks += _laws(fits)
    blocks += _allocation(fits, runs, res.flops_source) + _holdout(held, held_why) + _noise(fits, runs)
    blocks += _tuned(sweep.tuned) + _emergence(sweep, figs.pop("emergence", None))
    if figs:
        blocks += [("section", ("figures", "Every other figure")), ("figures", list(figs.values()))]
    notes = [f"figure {k}: {summary.strip_prefix(v)}" for k, v in skipped.items()]
    if notes:
        blocks += [("section", ("skipped", "What could not be drawn")), ("list", notes)]
    return blocks


def write_report(
    sweep_dir: str | Path,
    out_dir: str | Path,
    bootstrap: int = 200,
    seed: int = 0,
    columns: dict | None = None,
    tuned_over: list[str] | None = None,
    style: str = "screen",
) -> dict[str, Path]:
    """Fit, plot and write `report.md` and `report.html` (figures under `figures/`) into out_dir."""
    out_dir = Path(out_dir)
    sweep = analyse(sweep_dir, bootstrap, seed, columns, tuned_over)
    held, held_why = None, None
    try:
        held = predict_held_out(sweep.results.runs, bootstrap, seed)
    except AnalysisError as e:
        held_why = str(e)
    figures, skipped = plot_sweep(sweep, out_dir / "figures", held, style)
    blocks = blocks_of(sweep, figures, skipped, "figures", held, held_why)
    paths = {
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
        "figures": out_dir / "figures",
    }
    for x, table in sweep.midpoints.items():
        write_atomic(out_dir / f"midpoints_{x}.csv", table.to_csv(index=False))
    write_atomic(paths["markdown"], render.markdown(blocks))
    write_atomic(paths["html"], render.page(blocks))
    return paths
