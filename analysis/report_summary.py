"""The report's summary box, in plain sentences with numbers, and its warnings box: every parameter a fit
did not identify, interval on a bound, fit refused for too few points, and run or budget left out."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from analysis import numbers as fmt
from analysis.fit import compute_optimal
from analysis.holdout import Holdout
from analysis.isoflop import brief_reason
from analysis.laws import LAW_NAMES, Fit
from analysis.report_tables import overlap_sentence, residual_rms, seed_spread
from analysis.sweep import Sweep

NAMES = {**LAW_NAMES, "power": "Frontier law L(C)", "curves": "Learning curves", "fewshot": "Few-shot table",
         "emergence": "Emergence", "emergence_training": "Emergence over training"}  # fmt: skip
GREEK = {"alpha": "α", "beta": "β"}


def brief(message: str, items: int = 2) -> str:
    """A refusal that lists every budget, cut to its first `items` reasons: `(a; b; 4 more)`."""
    head, sep, listed = message.partition(" (")
    parts = listed.rstrip(")").split("; ")
    if not sep or len(parts) <= items + 1:
        return message
    return f"{head} ({'; '.join(parts[:items])}; {len(parts) - items} more)"


def strip_prefix(message: str) -> str:
    """`approach3: 5 points ...` -> `5 points ...`: the reader already knows which fit it is."""
    return re.sub(r"^(approach\d|approach3|power|chinchilla|frontier[^:]*):\s*", "", message)


def _with_ci(fit: Fit, name: str) -> str:
    value = f"{GREEK.get(name, name)} = {fmt.number(fit.params[name])}"
    ci = fit.ci.get(name)
    return value + (f" {fmt.interval(*ci, fit.ci_open.get(name))}" if ci else "")


def law_sentences(fits: dict[str, Fit], runs: pd.DataFrame) -> list[str]:
    out = []
    if "power" in fits:
        f = fits["power"]
        form = "E + A·C^−α" if "E" in f.params else "A·C^−α"
        named = ", ".join(_with_ci(f, k) for k in ("E", "alpha") if k in f.params)
        out.append(f"Loss falls with compute as L(C) = {form}, {named}, through {f.n_points} frontier runs.")
    if "chinchilla" in fits:
        f = fits["chinchilla"]
        named = ", ".join(_with_ci(f, k) for k in ("E", "alpha", "beta"))
        out.append(f"Approach 3 fits L(N, D) = E + A/N^α + B/D^β to {f.n_points} runs: {named}.")
    return out


def holdout_sentence(h: Holdout | None, why: str | None) -> str:
    if h is None or h.table.empty:
        reasons = why or "; ".join(f"{k}: {strip_prefix(v)}" for k, v in (h.skipped if h else {}).items())
        return f"No held-out prediction: {reasons}."
    budgets = ", ".join(fmt.flops(c) for c in h.held_flops)
    errors = "; ".join(f"{law.lower()} {fmt.percent(e)}" for law, e in h.errors().items())
    held = f"the {h.held_runs} held-out runs" if h.held_runs > 1 else "the held-out run"
    return (
        f"**Held-out prediction:** fitted on the {h.fitted_runs} runs up to {fmt.flops(h.below)} FLOPs, "
        f"each law predicts {held} at {budgets} FLOPs with mean |error|: {errors}."
    )


def allocation_sentences(fits: dict[str, Fit], c_max: float) -> list[str]:
    optimal = {k: fits[k] for k in ("chinchilla", "approach2", "approach1") if k in fits}
    if not optimal:
        return ["No compute-optimal allocation: approaches 1 to 3 were all refused (see the warnings)."]
    exps = "; ".join(f"{LAW_NAMES[k]}: {_with_ci(f, 'a')}, {_with_ci(f, 'b')}" for k, f in optimal.items())
    out = [f"Compute-optimal N_opt ∝ C^a and D_opt ∝ C^b. {exps}. {overlap_sentence(optimal)}"]
    key, fit = next(iter(optimal.items()))
    c = 10 * c_max
    opt = {k: float(np.asarray(v)) for k, v in compute_optimal(fit, c).items()}
    out.append(
        f"At 10× the largest budget, C = {fmt.flops(c)} FLOPs, {LAW_NAMES[key]} recommends "
        f"N = {fmt.size(opt['N_opt'])} parameters trained on D = {fmt.size(opt['D_opt'])} tokens "
        f"({fmt.number(opt['tokens_per_param'])} tokens per parameter)."
    )
    return out


def floor_sentence(fits: dict[str, Fit], runs: pd.DataFrame) -> str:
    """Approach 3's E beside the data's entropy rate, the true floor, where the sweep knows it."""
    rate = pd.to_numeric(runs.get("data_entropy_rate", pd.Series(dtype=float)), errors="coerce").dropna()
    known = rate.nunique() == 1
    floor = f"the data's entropy rate is {fmt.number(rate.iloc[0])} nats/token" if known else (
        "the data's entropy rate (the true floor) is unknown for this corpus"
    )  # fmt: skip
    if "chinchilla" not in fits:
        return f"Irreducible loss: no approach 3 fit, so no E to compare; {floor}."
    f = fits["chinchilla"]
    verdict = ""
    if known and "E" in f.ci:
        lo, hi = f.ci["E"]
        inside = "inside" if lo <= rate.iloc[0] <= hi else "outside"
        off = fmt.percent((f.params["E"] - rate.iloc[0]) / rate.iloc[0], signed=True)
        verdict = f", {inside} E's interval (E is {off} off)"
    return f"Irreducible loss: approach 3's {_with_ci(f, 'E')}; {floor}{verdict}."


def noise_sentence(fits: dict[str, Fit], runs: pd.DataFrame) -> str:
    spread = seed_spread(runs)
    resid = f"approach 3's residuals have RMS {fmt.percent(residual_rms(fits['chinchilla'], runs))}" if (
        "chinchilla" in fits) else "there is no approach 3 fit to compare with"  # fmt: skip
    if spread.empty:
        return f"Run-to-run noise: no size was trained with more than one seed, so it is unknown; {resid}."
    std = fmt.percent(float(np.sqrt(np.mean((spread["std"] / spread["mean"]) ** 2))))
    where = f"repeated seeds at {len(spread)} (N, D)"
    return f"Run-to-run noise: {where} vary by {std} (std of the final loss); {resid}."


def emergence_sentence(sweep: Sweep) -> str:
    from analysis.emergence_cli import headline

    if "params" not in sweep.midpoints:
        why = sweep.missing.get("emergence") or sweep.missing.get("fewshot", "no few-shot data")
        return f"Emergence: none measured ({strip_prefix(why)})."
    head = headline(sweep.midpoints["params"])
    found = head[np.isfinite(head["midpoint"])]
    where = {}
    for r in found.sort_values("midpoint").itertuples():
        where.setdefault(r.task, f"{r.task} at {fmt.size(r.midpoint)} params ({r.shots}-shot {r.metric})")
    none = sorted(set(head["task"]) - set(where))
    text = "; ".join(where.values()) or "none"
    rest = f"; no midpoint in range: {', '.join(none)}" if none else ""
    return f"Emergence (where each task's headline metric is halfway up): {text}{rest}."


def _excluded_budgets(name: str, excluded: list[dict]) -> list[str]:
    """One sentence per reason: the IsoFLOP budgets without an N* of their own, and whether they still
    enter the joint fit of the exponent."""
    by_reason: dict[tuple[str, bool], list[float]] = {}
    for e in excluded:
        by_reason.setdefault((brief_reason(e["reason"]), bool(e.get("in_fit"))), []).append(e["C"])
    out = []
    for (reason, in_fit), Cs in by_reason.items():
        where = ", ".join(fmt.flops(C) for C in Cs)
        what = (
            "1 budget has no N* of its own" if len(Cs) == 1 else f"{len(Cs)} budgets have no N* of their own"
        )
        fate = "still in the joint fit of a" if in_fit else "left out"
        out.append(f"{name}: {what} ({reason}) at {where} FLOPs; {fate}.")
    return out


def warnings(sweep: Sweep, excluded_runs: list[str]) -> list[str]:
    """One sentence each: unidentified parameters and intervals on bounds (from each fit), fits refused
    and budgets or runs left out."""
    out = []
    for key, fit in sweep.fits.items():
        out += [f"{NAMES[key]}: {strip_prefix(w)}" for w in fit.warnings]
        if key == "power" and "E" not in fit.params:
            out.append(f"{NAMES[key]}: fitted without E: fewer than 5 frontier points cannot identify it.")
        out += _excluded_budgets(NAMES[key], fit.extra.get("excluded", []))
    for key in ("power", "chinchilla", "approach1", "approach2"):
        if key in sweep.missing:
            out.append(f"{NAMES[key]} not fitted: {brief(strip_prefix(sweep.missing[key])).rstrip('.')}.")
    if excluded_runs:
        shown = ", ".join(excluded_runs[:5]) + (", ..." if len(excluded_runs) > 5 else "")
        out.append(f"{len(excluded_runs)} run(s) excluded from every fit (not completed): {shown}.")
    return out
