"""`report.md` and `report.html` for a sweep: fitted laws with intervals, compute-optimal allocation,
extrapolation errors, emergence midpoints and every figure.

Both pages are rendered from one list of blocks, so they always say the same thing. The HTML page carries
its own style and refers to the figures by relative path, like the Markdown.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.atomic import write_atomic
from analysis.fit import compute_budgets, compute_optimal, extrapolation_check
from analysis.laws import Fit
from analysis.load import SIX_ND, AnalysisError
from analysis.plots import plot_sweep
from analysis.sweep import Sweep, analyse
from analysis.tuned import Tuned

LAWS = {
    "power": "Loss-compute frontier: L(C) = E + A·C^(−alpha) through the best run of each compute budget",
    "power_no_offset": "Loss-compute frontier: L(C) = A·C^(−alpha) through the best run of each budget "
    "(too few budgets to fit an offset E)",
    "chinchilla": "Approach 3: L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2)",
    "approach1": "Approach 1: N_opt = k_n·C^a and D_opt = k_d·C^b from the training-curve envelope",
    "approach2": "Approach 2: N_opt = k_n·C^a and D_opt = k_d·C^b from the IsoFLOP minima",
}
FIGURES = {
    "loss_vs_compute": "Loss against compute, with the frontier power law and its 95% bootstrap band",
    "isoflop": "IsoFLOP profiles: loss against parameters at fixed compute, with fitted minima",
    "compute_optimal": "Compute-optimal parameters and tokens against compute",
    "loss_contours": "Contours of the fitted L(N, D), with the runs and the compute-optimal path",
    "learning_curves_tokens": "Learning curves against training tokens, coloured by parameter count",
    "learning_curves_flops": "Learning curves against training compute, coloured by parameter count",
    "emergence": "Each task's headline metric against parameters, a line per shot count; dotted lines and "
    "shading mark midpoints and their 95% intervals, dashes chance",
    "emergence_training": "Exact match over training at every checkpoint each run kept, by task",
    "tuned_optimum": "Each tuned setting's optimum against parameters and compute, with its power law",
}

HOLDOUT_NOTE = (
    "The largest model held out: its observed accuracy vs the accuracy predicted from the smaller models "
    "(task loss against parameters, then accuracy against task loss; Bhagia et al. 2024), with a 95% "
    "interval."
)
MIDPOINT_NOTE = (
    "Scale at which each metric is halfway between its floor and ceiling (exact_match: where it crosses "
    "0.5), from a logistic in log scale with a 95% bootstrap interval over runs; — marks a midpoint that "
    "is not identifiable, and the reason says why."
)

EXTRAPOLATION_NOTE = (
    "The largest compute budgets are held out whole; each law is refitted on the rest and asked to "
    "predict them. The frontier power law, fitted to the best run of each kept budget, predicts the best "
    "run of each held-out budget; approach 3 predicts every held-out run."
)

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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _edge(value: float, open_: bool, sign: str) -> str:
    return f"{sign} {fmt(value)}" if open_ else fmt(value)


def fit_table(fit: Fit) -> Table:
    """One row per fitted parameter: estimate and 95% bootstrap interval (an edge on a bound is open)."""
    rows = []
    for name, value in fit.params.items():
        lo, hi = fit.ci.get(name, (np.nan, np.nan))
        low, high = fit.ci_open.get(name, (False, False))
        rows.append([name, fmt(value), _edge(lo, low, "<"), _edge(hi, high, ">")])
    return ["parameter", "estimate", "95% CI low", "95% CI high"], rows


def isoflop_table(fit: Fit) -> Table:
    """Approach 2's minimum per budget: N*, its interval, the loss there and the sizes used."""
    rows = []
    for p in fit.extra["isoflop"]:
        lo, hi = p.get("N_star_ci", (np.nan, np.nan))
        low, high = p.get("ci_open", (False, False))
        usable = f"{p['usable_resamples']}" if "usable_resamples" in p else "—"
        sizes = f"{len(p['points'])} ({fmt(min(p['points']))}–{fmt(max(p['points']))})"
        rows.append([fmt(p["C"]), fmt(p["N_star"]), _edge(lo, low, "<"), _edge(hi, high, ">"),
                     fmt(p["loss_star"]), sizes, usable])  # fmt: skip
    header = ["C (FLOPs)", "N*", "95% CI low", "95% CI high", "loss at N*", "sizes used", "usable resamples"]
    return header, rows


def allocation_table(fits: dict[str, Fit], c_values: np.ndarray) -> Table:
    """N_opt, D_opt and tokens per parameter at a few compute budgets, per approach."""
    rows = []
    for key, fit in fits.items():
        opt = compute_optimal(fit, c_values)
        for i, c in enumerate(c_values):
            n, d, ratio = (float(np.asarray(opt[k])[i]) for k in ("N_opt", "D_opt", "tokens_per_param"))
            rows.append([key, fmt(float(c)), fmt(n), fmt(d), fmt(ratio)])
    return ["approach", "C (FLOPs)", "N_opt (params)", "D_opt (tokens)", "tokens/param"], rows


def _interval(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"{fmt(ci[0])} – {fmt(ci[1])}"


def exponent_table(fits: dict[str, Fit]) -> Table:
    """Exponents a (N_opt ∝ C^a) and b (D_opt ∝ C^b) with their intervals, per approach."""
    rows = [
        [
            key,
            fmt(fit.params["a"]),
            _interval(fit.ci.get("a")),
            fmt(fit.params["b"]),
            _interval(fit.ci.get("b")),
        ]
        for key, fit in fits.items()
    ]
    return ["approach", "a", "a 95% CI", "b", "b 95% CI"], rows


def frame_table(df: pd.DataFrame) -> Table:
    """A DataFrame as header and formatted rows."""
    return [str(c) for c in df.columns], [[fmt(v) for v in row] for row in df.itertuples(index=False)]


def bootstrap_note(fit: Fit) -> str:
    """How many resamples the intervals rest on, and how many were dropped, by reason."""
    boot = fit.extra.get("bootstrap")
    if boot is None:
        return ""
    dropped = "; ".join(f"{_count(n, 'resample')} dropped: {reason}" for reason, n in boot["dropped"].items())
    return f" Intervals from {boot['kept']} of {boot['resamples']} bootstrap resamples" + (
        f" ({dropped})." if dropped else "."
    )


def _laws(fits: dict[str, Fit]) -> list[tuple]:
    blocks: list[tuple] = [("h2", "Fitted laws")]
    for key, fit in fits.items():
        title = LAWS["power_no_offset" if key == "power" and "E" not in fit.params else key]
        summary = f"{fit.n_points} points, objective {fmt(fit.objective)}.{bootstrap_note(fit)}"
        blocks += [("h3", title), ("p", summary)]
        if "fitted_to" in fit.extra:
            blocks.append(("p", f"Fitted to {fit.extra['fitted_to']}."))
        if fit.warnings:
            blocks += [("p", "Warnings:"), ("list", list(fit.warnings))]
        blocks.append(("table", fit_table(fit)))
        if "isoflop" in fit.extra:
            blocks += [("p", "IsoFLOP minima:"), ("table", isoflop_table(fit))]
        excluded = [
            f"C = {fmt(e['C'])}: {e['reason']}"
            + ("; its profile still enters the joint fit of a" if e.get("in_fit") else "")
            for e in fit.extra.get("excluded", [])
        ]
        if excluded:
            blocks += [("p", "IsoFLOP budgets without a minimum of their own:"), ("list", excluded)]
    return blocks


def compute_note(flops_source: str) -> str:
    """Which compute convention the allocation fits use, and where it came from."""
    origin = "derived as 6 · params · tokens" if flops_source == SIX_ND else f"column `{flops_source}`"
    return (
        f"Compute C counts 6ND FLOPs ({origin}), so D_opt = C / (6 N_opt) and approach 3's "
        "N_opt = G (C/6)^a share one unit."
    )


def _allocation(fits: dict[str, Fit], runs: pd.DataFrame, flops_source: str) -> list[tuple]:
    blocks: list[tuple] = [("h2", "Compute-optimal allocation"), ("p", compute_note(flops_source))]
    optimal = {k: fits[k] for k in ("approach1", "approach2", "chinchilla") if k in fits}
    if not optimal:
        return blocks + [("p", "No compute-optimal fit: approaches 1 to 3 all failed (see Skipped).")]
    blocks += [("p", "Exponents of N_opt ∝ C^a and D_opt ∝ C^b:"), ("table", exponent_table(optimal))]
    table = allocation_table(optimal, compute_budgets(runs["flops"]))
    return blocks + [("p", "Allocation at a few budgets:"), ("table", table)]


def _extrapolation(runs: pd.DataFrame) -> list[tuple]:
    blocks: list[tuple] = [("h2", "Extrapolation check")]
    try:
        check = extrapolation_check(runs)
    except AnalysisError as e:
        return blocks + [("p", f"Not run: {e}")]
    skipped = [f"{law}: {reason}" for law, reason in check.attrs.get("skipped", {}).items()]
    if check.empty:
        return blocks + [
            ("p", "Not run: no law could be fitted to the budgets below the held-out ones."),
            ("list", skipped),
        ]
    summary = check.groupby("law")["rel_error"].agg(lambda e: float(np.abs(e).mean())).reset_index()
    summary.columns = ["law", "mean |relative error|"]
    blocks.append(("p", EXTRAPOLATION_NOTE))
    blocks += [("table", frame_table(summary)), ("table", frame_table(check))]
    return blocks + ([("p", "Not checked:"), ("list", skipped)] if skipped else [])


def tuned_tables(tuned: Tuned) -> tuple[Table, Table]:
    """The runs each (N, D) rests on, and each tuned setting's optimum as a power law of N and of C."""
    used = []
    for u in tuned.used:
        runs = ", ".join(u.get("runs") or [f"line {n}" for n in u["lines"]])
        used.append([fmt(u["params"]), fmt(u.get("tokens")), *(fmt(u[c]) for c in tuned.over),
                     fmt(u["loss"]), fmt(u["settings"]), runs])  # fmt: skip
    laws = []
    for col, opt in tuned.optima.items():
        for x, name in (("params", "N"), ("flops", "C")):
            law = opt.get(f"vs_{x}")
            if law is not None:
                lo, hi = law["ci"]["a"] if "ci" in law else (None, None)
                laws.append([f"{col}_opt = k·{name}^a", fmt(law["k"]), fmt(law["a"]), fmt(lo), fmt(hi),
                             fmt(law["points"])])  # fmt: skip
    header = ["N (params)", "D (tokens)", *tuned.over, "loss", "settings compared", "runs used"]
    return (header, used), (["law", "k", "a", "a 95% CI low", "a 95% CI high", "optima"], laws)


def _tuned(tuned: Tuned | None) -> list[tuple]:
    if tuned is None:
        return []
    used, laws = tuned_tables(tuned)
    blocks: list[tuple] = [("h2", "Tuned hyperparameters"), ("p", f"Every law is fitted to {tuned.note()}.")]
    blocks += [("table", used)]
    if laws[1]:
        note = (
            "Each optimum is the minimum of a parabola in the log of the setting, through the best value "
            "tried and its neighbours; intervals are Student t intervals of the least-squares fit."
        )
        blocks += [("p", note), ("table", laws)]
    return blocks + ([("p", "Warnings:"), ("list", list(tuned.warnings))] if tuned.warnings else [])


def _emergence(sweep: Sweep) -> list[tuple]:
    blocks: list[tuple] = [("h2", "Emergence midpoints")]
    if not sweep.midpoints:
        why = sweep.missing.get("emergence") or sweep.missing.get("fewshot", "no few-shot data")
        return blocks + [("p", f"None: {why}")]
    blocks.append(("p", MIDPOINT_NOTE))
    links = ", ".join(f"[against {x}](midpoints_{x}.csv)" for x in sweep.midpoints)
    if "params" in sweep.midpoints:  # which tasks emerge, and where: the headline metric per shot count
        blocks += [("p", f"Headline metric per task. Every metric: {links}."), ("table", summary(sweep))]
        blocks += _holdout(sweep)
        cols = ["task", "shots", "metric", "kind", "midpoint", "ci_low", "ci_high", "reason"]
        blocks += [
            ("h3", "Every metric, against parameters"),
            ("table", frame_table(sweep.midpoints["params"][cols])),
        ]
    return blocks


def _holdout(sweep: Sweep) -> list[tuple]:
    from analysis.emergence_cli import holdout_table

    try:
        table = holdout_table(sweep.fewshot, sweep.midpoints["params"])
    except AnalysisError as e:
        return [("p", f"No downstream prediction: {e}")]
    return [("p", HOLDOUT_NOTE), ("table", frame_table(table))]


def summary(sweep: Sweep) -> Table:
    from analysis.emergence_cli import summary_table

    return frame_table(summary_table(sweep.midpoints["params"]))


def _blocks(sweep: Sweep, figures: list[Path], skipped: dict[str, str], fig_dir: str) -> list[tuple]:
    """The report as ("h1"|"h2"|"h3"|"p"|"table"|"figure"|"list", payload) blocks."""
    res, runs = sweep.results, sweep.results.runs
    counts = f"{_count(len(runs), 'completed run')} fitted; {_count(res.excluded, 'run')} excluded"
    if sweep.tuned is not None:
        counts = f"{len(runs)} of {_count(sweep.tuned.total, 'completed run')} fitted (the best tuned " + (
            f"setting at each (N, D)); {_count(res.excluded, 'run')} excluded"
        )
    name = res.source.parent.name if res.source.name == "results.csv" else res.source.stem
    blocks: list[tuple] = [
        ("h1", f"Scaling report: {name}"),
        ("p", f"Source: `{res.source}`. {counts} (status not `completed`)."),
    ]
    blocks += _tuned(sweep.tuned) + _laws(sweep.fits) + _allocation(sweep.fits, runs, res.flops_source)
    blocks += _extrapolation(runs) + _emergence(sweep)
    blocks.append(("h2", "Figures"))
    for png in (p for p in figures if p.suffix == ".png"):
        caption = FIGURES.get(png.stem, png.stem)
        blocks.append(("figure", (f"{fig_dir}/{png.name}", f"{fig_dir}/{png.stem}.pdf", caption)))
    notes = [f"fit {k}: {v}" for k, v in sweep.missing.items() if k in LAWS]
    notes += [f"figure {k}: {v}" for k, v in skipped.items()]
    if notes:
        blocks += [("h2", "Skipped"), ("list", notes)]
    return blocks


def _markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {payload}")
        elif kind == "p":
            out.append(payload)
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in payload))
        elif kind == "table":
            header, rows = payload
            esc = lambda s: s.replace("|", "\\|")  # noqa: E731
            lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "figure":
            png, pdf, caption = payload
            out.append(f"![{caption}]({png})\n\n*{caption}* ([PDF]({pdf}))")
    return "\n\n".join(out) + "\n"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;margin:0.5rem 0 1rem;font-size:0.9rem}"
    "th,td{border:1px solid #ccc;padding:0.2rem 0.5rem;text-align:right}th{background:#f3f3f3}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%}figure{margin:1rem 0}"
    "code{background:#f3f3f3;padding:0 0.2rem}"
)


def _inline(text: str) -> str:
    """Escape text for HTML, turning `code` spans into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html(blocks: list[tuple]) -> str:
    title = next(p for k, p in blocks if k == "h1")
    out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    out.append(f"<style>{STYLE}</style></head><body>")
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_inline(payload)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(payload)}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in payload) + "</ul>")
        elif kind == "table":
            header, rows = payload
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            png, pdf, caption = (html.escape(s) for s in payload)
            out.append(
                f"<figure><img src='{png}' alt='{caption}'><figcaption>{caption} "
                f"(<a href='{pdf}'>PDF</a>)</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(
    sweep_dir: str | Path,
    out_dir: str | Path,
    bootstrap: int = 200,
    seed: int = 0,
    columns: dict | None = None,
    tuned_over: list[str] | None = None,
) -> dict[str, Path]:
    """Fit, plot and write `report.md` and `report.html` (figures under `figures/`) into out_dir."""
    out_dir = Path(out_dir)
    sweep = analyse(sweep_dir, bootstrap, seed, columns, tuned_over)
    figures, skipped = plot_sweep(sweep, out_dir / "figures")
    blocks = _blocks(sweep, figures, skipped, "figures")
    paths = {
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
        "figures": out_dir / "figures",
    }
    for x, table in sweep.midpoints.items():
        write_atomic(out_dir / f"midpoints_{x}.csv", table.to_csv(index=False))
    write_atomic(paths["markdown"], _markdown(blocks))
    write_atomic(paths["html"], _html(blocks))
    return paths
