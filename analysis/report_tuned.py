"""The report's tables of a tuned sweep: the runs each (N, D) rests on, and each tuned setting's optimum
as a power law of N and of C."""

from __future__ import annotations

from analysis import numbers as fmt
from analysis.report_tables import Table
from analysis.tuned import Tuned


def tuned_tables(tuned: Tuned) -> tuple[Table, Table]:
    """The runs each (N, D) rests on, and each tuned setting's optimum as a power law of N and of C."""
    used = []
    for u in tuned.used:
        runs = ", ".join(u.get("runs") or [f"line {n}" for n in u["lines"]])
        settings = (fmt.number(u[c]) for c in tuned.over)
        used.append([fmt.size(u["params"]), fmt.size(u.get("tokens")), *settings,
                     fmt.number(u["loss"]), fmt.number(u["settings"]), runs])  # fmt: skip
    laws = []
    for col, opt in tuned.optima.items():
        for x, name in (("params", "N"), ("flops", "C")):
            law = opt.get(f"vs_{x}")
            if law is not None:
                ci = fmt.interval(*law["ci"]["a"]) if "ci" in law else fmt.MISSING
                laws.append([f"{col}_opt = k·{name}^a", fmt.number(law["k"]), fmt.number(law["a"]), ci,
                             fmt.number(law["points"])])  # fmt: skip
    header = ["N (params)", "D (tokens)", *tuned.over, "loss", "settings compared", "runs used"]
    return (header, used), (["law", "k", "a", "a: 95% interval", "optima"], laws)
