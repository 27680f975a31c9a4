"""`lmscale emergence TABLE|SWEEP_DIR` (also `python -m analysis emergence`): midpoints, figures, summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analysis.atomic import write_atomic
from analysis.errors import AnalysisError

if TYPE_CHECKING:  # imported where used: the command line registers `emergence` without pandas
    import pandas as pd

ROLE_HELP = {
    "model": "model name (default: model, else run_id)",
    "params": "parameter count",
    "flops": "training compute in FLOPs",
    "shots": "shot count (default: 0 for every row)",
    "task": "task name",
    "metric": "metric name (lm-eval's `acc,none` reads as acc; `X_stderr` rows are X's stderr)",
    "value": "metric value",
    "stderr": "standard error of the value",
    "n": "examples evaluated (binomial noise for accuracies without a stderr)",
    "group": "model family: one curve per group, never averaged",
    "chance": "chance level of the row's task",
}


HELP = "accuracy against scale for any evaluation table: midpoints tested against noise, figures"
DESCRIPTION = (
    "Emergence of few-shot metrics with scale. PATH is a sweep directory (its fewshot.csv) "
    "or any long CSV with one row per model, task, shots and metric (lm-eval's shape). Only model, "
    "params (or flops), task, metric and value are needed. A midpoint is reported only when the "
    "curve rises above chance and a flat trend, significant at --alpha. Writes midpoints.csv, "
    "midpoints.json, figures and summary.md to --out; runs no loss fits."
)


def _list(kind=str):
    return lambda text: tuple(kind(v) for v in text.split(",") if v)


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register `emergence` on a subparser group."""
    e = sub.add_parser("emergence", help=HELP, description=DESCRIPTION)
    e.add_argument("path", type=Path, metavar="SWEEP_DIR|CSV")
    e.add_argument("--out", type=Path, help="output directory (default: PATH's directory/emergence)")
    for role, text in ROLE_HELP.items():
        e.add_argument(f"--{role}-col", metavar="COLUMN", help=f"column holding the {text}")
    e.add_argument("--x", choices=("params", "flops"), help="scale axis (default: params when present)")
    e.add_argument("--metric", help="headline metric (default per task: exact_match, acc_norm, acc, ...)")
    e.add_argument("--metrics", type=_list(), default=(), metavar="M,M", help="keep only these metrics")
    e.add_argument("--tasks", type=_list(), default=(), metavar="T,T", help="keep only these tasks")
    e.add_argument("--shots", type=_list(int), default=(), metavar="K,K", help="keep only these shot counts")
    e.add_argument(
        "--lower-is-better",
        type=_list(),
        default=(),
        metavar="M,M",
        help="metrics that improve downwards, beyond the known ones (perplexity, brier, edit_distance, ...)",
    )
    e.add_argument(
        "--chance", action="append", default=[], metavar="TASK=VALUE", help="a task's chance level (repeat)"
    )
    e.add_argument("--aggregate", choices=("mean",), help="average models of one size instead of refusing")
    e.add_argument("--alpha", type=float, default=0.05, help="level of the rise test (default 0.05)")
    e.add_argument("--bootstrap", type=int, default=200, metavar="N", help="resamples for intervals")
    e.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed")
    e.add_argument(
        "--predict",
        type=float,
        metavar="PARAMS|FLOPS",
        help="predict each task's accuracy at this scale from its loss (two steps, Bhagia et al. 2024)",
    )
    e.add_argument(
        "--holdout-largest",
        action="store_true",
        help="fit the two steps without the largest model; predicted against observed accuracy",
    )


def _options(args: argparse.Namespace):
    from analysis.evaltable import Options, parse_chance

    columns = {role: getattr(args, f"{role}_col") for role in ROLE_HELP if getattr(args, f"{role}_col")}
    # A sweep's runs of one size differ in seed or tokens: each stays its own point, as in `report`.
    aggregate = args.aggregate or ("points" if args.path.is_dir() else None)
    return Options(columns, args.tasks, args.metrics, args.shots, parse_chance(args.chance), aggregate)


def headline(midpoints: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Each (group, task)'s headline rows: `metric`, else its first metric in the table's order."""
    if metric is not None:
        if metric not in set(midpoints["metric"]):
            raise AnalysisError(
                f"--metric {metric}: not in the table; has {sorted(set(midpoints['metric']))}"
            )
        return midpoints[midpoints["metric"] == metric]
    first = midpoints.groupby(["group", "task"], sort=False)["metric"].transform("first")
    return midpoints[midpoints["metric"] == first]


def size_text(v: float) -> str:
    """70M, 1.4B, 2.4e+21: sizes as people say them."""
    if not np.isfinite(v):
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale and abs(v) < 1e3 * scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.2g}"


def midpoint_text(r: pd.Series) -> str:
    """`1.4B [890M, 2.2B]`, an open end as `> 2.4T`, or the reason there is no midpoint."""
    if not np.isfinite(r["midpoint"]):
        return short_reason(r["reason"])
    if not np.isfinite(r["ci_low"]):
        return size_text(r["midpoint"])
    low = ("< " if r["ci_open_low"] else "") + size_text(r["ci_low"])
    high = ("> " if r["ci_open_high"] else "") + size_text(r["ci_high"])
    return f"{size_text(r['midpoint'])} [{low}, {high}]"


SHORT = {
    "midpoint above": "above the largest size",
    "midpoint below": "below the smallest size",
    "only ": "too few sizes",
}


def short_reason(reason: str) -> str:
    """A reason as a table cell: `no significant rise (p=0.31)`, `above the largest size`, `flat curve`."""
    if reason.startswith("no significant rise"):
        return reason
    return next((s for prefix, s in SHORT.items() if reason.startswith(prefix)), reason.split(":")[0])


def summary_table(midpoints: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """A row per (group,) task, a column per shot count: the headline metric's midpoint or why none."""
    head = headline(midpoints, metric).copy()
    head["text"] = head.apply(midpoint_text, axis=1)
    index = ["group", "task", "metric"] if (head["group"] != "").any() else ["task", "metric"]
    table = head.pivot_table(index=index, columns="shots", values="text", aggfunc="first", sort=True)
    table.columns = [f"{k}-shot" for k in table.columns]
    return table.fillna("-").reset_index()


def run_emergence(args: argparse.Namespace) -> list[Path]:
    import pandas as pd

    from analysis import emergence_plots
    from analysis.emergence import emergence_midpoints
    from analysis.evaltable import load_table, table_path
    from analysis.markdown import frame_table, render

    if args.bootstrap < 0:
        raise AnalysisError(f"--bootstrap={args.bootstrap}: must be zero or positive")
    table = load_table(args.path, _options(args))
    x = args.x or ("params" if table.get("params", pd.Series(dtype=float)).notna().all() else "flops")
    mids = emergence_midpoints(
        table, x, args.bootstrap, args.seed, args.alpha, frozenset(args.lower_is_better)
    )
    out = args.out or table_path(args.path).parent / "emergence"
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_table(mids, args.metric)
    paths = [out / "midpoints.csv", out / "midpoints.json", out / "summary.md"]
    write_atomic(paths[0], mids.to_csv(index=False))
    write_atomic(paths[1], json.dumps(mids.to_dict(orient="records"), indent=2, default=float) + "\n")
    figures = emergence_plots.plot_emergence(table, mids, out, x, args.metric)
    ladder = _ladder(args, table, mids, x, out)
    blocks = [
        ("h1", f"Emergence: {table_path(args.path)}"),
        (
            "p",
            f"Midpoint {x} of each task's headline metric (95% bootstrap interval), or why it has none. "
            f"A midpoint needs a rise above chance and a flat trend at p <= {args.alpha:g}. "
            "Every metric: [midpoints.csv](midpoints.csv).",
        ),
        ("table", frame_table(summary)),
    ]
    for title, frame in ladder:
        blocks += [("h2", title), ("table", frame_table(frame))]
        print(f"{title}\n{frame.to_string(index=False)}")
    pngs = [p for p in figures if p.suffix == ".png"]
    blocks += [("figure", (p.name, p.with_suffix(".pdf").name, p.stem)) for p in pngs]
    write_atomic(paths[2], render(blocks))
    print(summary.to_string(index=False))
    return paths + figures


def _ladder(args, table: pd.DataFrame, mids: pd.DataFrame, x: str, out: Path) -> list[tuple]:
    """--predict and --holdout-largest: (title, table) pairs, each also written as CSV."""
    from analysis import ladder

    metric_of = dict(zip(*headline(mids, args.metric)[["task", "metric"]].to_numpy().T, strict=True))
    kw = {"bootstrap": args.bootstrap or 200, "seed": args.seed}
    found = []
    if args.predict is not None:
        found.append((f"Predicted accuracy at {x} = {size_text(args.predict)}", "prediction", ladder.predict(
            table, x, metric_of, args.predict, **kw
        )))  # fmt: skip
    if args.holdout_largest:
        found.append(("Largest model held out: predicted against observed", "holdout", ladder.holdout_largest(
            table, x, metric_of, **kw
        )))  # fmt: skip
    for _, name, frame in found:
        write_atomic(out / f"{name}.csv", frame.to_csv(index=False))
    return [(title, frame) for title, _, frame in found]


def holdout_table(fewshot: pd.DataFrame, midpoints: pd.DataFrame) -> pd.DataFrame:
    """The largest model held out of the two-step prediction: `observed, predicted [95% interval]` per
    task (rows) and shot count (columns), for the headline metric."""
    from analysis import ladder

    table = fewshot.assign(**{c: fewshot.get(c, d) for c, d in (("group", ""), ("chance", np.nan))})
    metric_of = dict(zip(*headline(midpoints)[["task", "metric"]].to_numpy().T, strict=True))
    held = ladder.holdout_largest(table, "params", metric_of)
    held["text"] = [
        f"{r.observed:.2f} vs {r.predicted:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" for r in held.itertuples()
    ]
    out = held.pivot_table(index=["task", "metric"], columns="shots", values="text", aggfunc="first")
    out.columns = [f"{k}-shot" for k in out.columns]
    return out.fillna("-").reset_index()


def run(args: argparse.Namespace) -> int:
    """Run a parsed emergence command; AnalysisError becomes one line and status 2."""
    try:
        for path in run_emergence(args):
            print(path)
    except AnalysisError as e:
        print(f"emergence: error: {e}", file=sys.stderr)
        return 2
    return 0
