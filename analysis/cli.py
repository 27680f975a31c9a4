"""`python -m analysis fit|plot|report|emergence` (also `lmscale fit|plot|report|emergence`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Set before numpy loads BLAS. The analysis commands multiply matrices a few dozen models wide, where BLAS
# threads gain nothing, and on a shared host they spin against each other: `emergence` on a 2,000-row
# table under load took 21-31 s with two OpenBLAS threads, 9-10 s with one. A user's own setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from analysis import atomic, emergence_cli  # noqa: E402
from analysis import numbers as fmt  # noqa: E402
from analysis.atomic import write_atomic  # noqa: E402
from analysis.errors import AnalysisError  # noqa: E402

LAWS = ("power", "approach1", "approach2", "approach3", "chinchilla")
WINDOW = 2  # analysis.isoflop.WINDOW, repeated so that --help does not import JAX


def _window(value: str) -> int | None:
    if value == "full":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"'{value}': a whole number of sizes (1 or more) or 'full'")
    return int(value)


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"'{value}': name one or more columns, comma-separated")
    return names


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register fit, plot and report on a subparser group (shared by both command lines)."""
    f = sub.add_parser(
        "fit",
        help="fit a scaling law to a sweep directory or any results CSV",
        description="Fit a scaling law. PATH is a sweep directory (its results.csv) or a CSV; map "
        "other tables' columns with --params-col/--tokens-col/--flops-col/--loss-col. Runs whose "
        "status is not 'completed' are excluded and counted. IsoFLOP budgets (approach 2, and the "
        "frontier of a power law in flops) are the values of --budget-col, else of a 'flops_budget' "
        "column, else runs whose compute lies within 25%% of the cheapest run of their group.",
    )
    f.add_argument("path", type=Path, metavar="SWEEP_DIR|CSV")
    f.add_argument(
        "--law",
        choices=LAWS,
        default="approach3",
        help="approach3 = chinchilla (default); approach1 needs a sweep directory's learning curves",
    )
    f.add_argument("--x", choices=("params", "tokens", "flops"), default="flops", help="power law scale")
    f.add_argument("--no-offset", action="store_true", help="power law without the irreducible E")
    f.add_argument("--bootstrap", type=int, default=0, metavar="N", help="resamples for 95%% intervals")
    f.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed")
    f.add_argument("--delta", type=float, default=1e-3, help="Huber delta (default 1e-3)")
    f.add_argument("--drop-worst", type=int, default=0, metavar="K", help="drop the K highest losses first")
    f.add_argument("--extrapolate", type=float, metavar="FRAC", help="hold out the top FRAC by compute")
    f.add_argument("--json", type=Path, help="write the fit as JSON")
    f.add_argument(
        "--isoflop-window",
        type=_window,
        default=WINDOW,
        metavar="K|full",
        help=f"approach 2: the parabola runs through the best size and K either side (default {WINDOW}); "
        "full: through every size of the budget",
    )
    f.add_argument(
        "--budget-col", metavar="COLUMN", help="column whose values group runs into IsoFLOP budgets"
    )
    f.add_argument(
        "--all-runs",
        action="store_true",
        help="power law in flops: fit every run, not the frontier (the best run of each budget)",
    )

    p = sub.add_parser("plot", help="figures (PNG and PDF) for a sweep directory or CSV")
    p.add_argument("path", type=Path, metavar="SWEEP_DIR|CSV")
    p.add_argument("--out", type=Path, help="output directory (default: PATH's directory/figures)")

    r = sub.add_parser("report", help="report.md and report.html with fits and figures")
    r.add_argument("path", type=Path, metavar="SWEEP_DIR")
    r.add_argument("--out", type=Path, help="output directory (default: SWEEP_DIR/report)")
    for parser in (p, r):
        parser.add_argument(
            "--style",
            choices=("screen", "paper"),
            default="screen",
            help="figure size and fonts: screen (6 x 4 in) or paper (one column of a two-column page)",
        )
    for parser in (f, p, r):
        for col in ("params", "tokens", "flops"):
            parser.add_argument(f"--{col}-col", metavar="COLUMN", help=f"column holding {col}")
        parser.add_argument(
            "--loss-col",
            metavar="COLUMN",
            help="column holding loss (default final_val_loss); final_val_loss_<label> is one mixture "
            "component's, compared with that component's entropy rate",
        )
        parser.add_argument(
            "--tuned-over",
            type=_names,
            metavar="COL[,COL]",
            help="columns tuned at each (params, tokens): only the best setting there enters a law, and "
            "its optimum is fitted against N and C (default: lr and batch_size where runs differ in them)",
        )
    emergence_cli.add_command(sub)


def _columns(args: argparse.Namespace) -> dict:
    return {f"{c}_col": getattr(args, f"{c}_col") for c in ("params", "tokens", "flops", "loss")}


def _fit(args: argparse.Namespace) -> dict:
    from analysis import fit as fits
    from analysis.isoflop import isoflop_groups
    from analysis.load import load_curves, load_results
    from analysis.tuned import tune

    if args.bootstrap < 0:
        raise AnalysisError(f"--bootstrap={args.bootstrap}: must be zero or positive")
    law = "approach3" if args.law == "chinchilla" else args.law
    require = {"power": ("loss", args.x), "approach3": ("params", "tokens", "loss")}.get(
        law, ("params", "flops", "loss")
    )
    results = load_results(args.path, **_columns(args), require=require, budget_col=args.budget_col)
    tuned = tune(results, args.tuned_over)
    runs = results.runs if tuned is None else tuned.runs
    print(f"{len(results.runs)} runs from {results.source} ({results.excluded} not completed, excluded)")
    if args.drop_worst:
        runs = runs.sort_values("loss").iloc[: len(runs) - args.drop_worst].reset_index(drop=True)
    if law == "power":
        points, note = runs, None
        several = args.x == "flops" and len(np.unique(isoflop_groups(runs))) < len(runs)
        if several and not args.all_runs:  # an IsoFLOP table: the law of the best achievable loss
            points = fits.frontier(runs)
            note = fits.frontier_note(runs, points) + " (--all-runs fits every run)"
        fit = fits.fit_power(
            points[args.x], points["loss"], args.x, not args.no_offset, args.bootstrap, args.seed, args.delta
        )
        if note:
            fit.extra["fitted_to"] = note
    elif law == "approach3":
        fit = fits.fit_chinchilla(
            runs["params"], runs["tokens"], runs["loss"], args.bootstrap, args.seed, args.delta
        )
    elif law == "approach2":
        fit = fits.approach2(runs, args.bootstrap, args.seed, args.isoflop_window)
    else:
        curves = runs
        if args.path.is_dir():
            try:
                curves = load_curves(args.path, args.loss_col)
            except AnalysisError:
                pass  # no learning curves: approach1 refuses the final points with its reason
        fit = fits.approach1(curves)
    if tuned is not None:
        fit.extra["tuned"] = tuned.to_json()
        fit.warnings += tuned.warnings
    if results.repeated:
        shown = ", ".join(map(str, results.repeated[:5])) + (", ..." if len(results.repeated) > 5 else "")
        fit.warnings.append(
            f"{len(results.repeated)} rows repeat an earlier row exactly (lines {shown}) and count twice "
            "in the fit: remove them if they are copies"
        )
    out = fit.to_json() | {"excluded_runs": results.excluded}
    if law != "power":
        C = fits.compute_budgets(runs["flops"])
        alloc = fits.compute_optimal(fit, C)
        out["compute_optimal"] = [{k: float(v[i]) for k, v in alloc.items()} for i in range(len(C))]
    if args.extrapolate:
        table = fits.extrapolation_check(runs, args.extrapolate)
        out["extrapolation"] = table.to_dict(orient="records")
    return out


def _print_fit(out: dict) -> None:
    objective = f"  objective: {fmt.number(out['objective'])}" if np.isfinite(out["objective"]) else ""
    print(f"law: {out['law']}  points: {out['n_points']}{objective}")
    if "fitted_to" in out:
        print(f"  fitted to {out['fitted_to']}")
    boot = out.get("bootstrap")
    if boot:
        dropped = ", ".join(f"{n} dropped: {why}" for why, n in boot["dropped"].items()) or "none dropped"
        print(f"  95% CI from {boot['kept']} of {boot['resamples']} bootstrap resamples ({dropped})")
    ci, opened, kept = out.get("ci", {}), out.get("ci_open", {}), _kept(out)
    for k, v in out.items():
        if isinstance(v, float) and k not in ("objective",):
            interval = f"  95% CI {interval_text(ci[k], opened.get(k))} {kept}" if k in ci else ""
            print(f"  {k:>6} = {fmt.number(v)}{interval}")
    _print_isoflop(out)
    _print_tuned(out)
    for row in out.get("compute_optimal", []):
        print(
            f"  C = {fmt.flops(row['C'])} FLOPs: N_opt = {fmt.size(row['N_opt'])}  "
            f"D_opt = {fmt.size(row['D_opt'])}  tokens/param = {fmt.number(row['tokens_per_param'])}"
        )
    for warning in out.get("warnings", []):
        print(f"  warning: {warning}")
    for row in out.get("extrapolation", []):
        error = fmt.percent(row["rel_error"], signed=True)
        print(
            f"  held out {row['law']}: C = {fmt.flops(row['flops'])} FLOPs  loss = {fmt.number(row['loss'])}"
            f"  predicted = {fmt.number(row['predicted'])}  error = {error}"
        )


def _kept(out: dict) -> str:
    boot = out.get("bootstrap")
    return f"({boot['kept']}/{boot['resamples']} resamples kept)" if boot else ""


def interval_text(ci, opened=None, kind=fmt.number) -> str:
    """[lo, hi], with an edge on a bound or at the end of the sampled range shown open: (< lo, hi]."""
    return fmt.interval(ci[0], ci[1], opened, kind)


IN_FIT = "; no N* of its own, but its profile still enters the joint fit of a"


def _print_isoflop(out: dict) -> None:
    if "isoflop" not in out:
        return
    window = out.get("window")
    how = "every size" if window == "full" else f"the best size and up to {window} either side"
    noise = out.get("noise")
    level = f"; loss noise {fmt.percent(noise['sigma_rel'])} (pooled, {noise['dof']} dof)" if noise else ""
    print(f"  IsoFLOP budgets (N* from a parabola in log N through {how}{level}; a from one fit of every")
    print("  budget's parabola, the vertices held on one power law in C):")
    for p in out["isoflop"]:
        ci = ""
        if "N_star_ci" in p:
            usable = f"usable in {p['usable_resamples']}/{out['bootstrap']['resamples']} resamples"
            ci = f" 95% CI {interval_text(p['N_star_ci'], p['ci_open'], fmt.size)} ({usable})"
        sizes = f"{fmt.size(min(p['points']))}-{fmt.size(max(p['points']))}"
        used = f"{len(p['points'])} sizes {sizes}, {p['runs']} runs"
        loss = fmt.number(p["loss_star"])
        print(f"    C = {fmt.flops(p['C'])}: N* = {fmt.size(p['N_star'])}{ci}  loss* = {loss}  ({used})")
    for e in out.get("excluded", []):
        print(f"    C = {fmt.flops(e['C'])}: excluded, {e['reason']}{IN_FIT if e.get('in_fit') else ''}")


def _print_tuned(out: dict) -> None:
    if "tuned" not in out:
        return
    tuned = out["tuned"]
    print(f"  tuned: {tuned['note']}")
    for u in tuned["used"]:
        setting = "  ".join(
            f"{c}={fmt.number(u[c])}" if isinstance(u[c], float) else f"{c}={u[c]}" for c in tuned["over"]
        )
        runs = ", ".join(u.get("runs") or [f"line {n}" for n in u["lines"]])
        point = f"N={fmt.size(u['params'])}" + (f" D={fmt.size(u['tokens'])}" if "tokens" in u else "")
        print(f"    {point}: {setting}  loss={fmt.number(u['loss'])}  (best of {u['settings']}; {runs})")
    for col, opt in tuned["optima"].items():
        for x, name in (("params", "N"), ("flops", "C")):
            law = opt.get(f"vs_{x}")
            if law is None:
                continue
            ci = law.get("ci")
            interval = f"  95% CI {interval_text(ci['a'])} ({law['dof']} dof)" if ci else ""
            print(
                f"  {col}_opt = {fmt.number(law['k'])} {name}^{fmt.number(law['a'])}{interval}  "
                f"from {law['points']} optima"
            )


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output location can be written, checked before a fit's seconds or minutes of work."""
    if args.command == "fit":
        outputs = [("--json", args.json, False)] if args.json else []
    else:  # plot and report write a directory, by default beside the table
        base = args.path if args.path.is_dir() else args.path.parent
        outputs = [("--out", args.out or base / ("figures" if args.command == "plot" else "report"), True)]
    for what, path, directory in outputs:
        try:
            atomic.check_writable(path, what, directory)
        except atomic.NotWritable as e:
            raise AnalysisError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    """Run a parsed fit/plot/report command; AnalysisError becomes a one-line error and status 2."""
    if args.command == "emergence":
        return emergence_cli.run(args)
    try:
        _check_outputs(args)
        if args.command == "fit":
            out = _fit(args)
            _print_fit(out)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(args.json, json.dumps(out, indent=2) + "\n")
        elif args.command == "plot":
            from analysis import plots

            base = args.path if args.path.is_dir() else args.path.parent
            out = args.out or base / "figures"
            figures = plots.plot_all(
                args.path, out, columns=_columns(args), tuned_over=args.tuned_over, style_name=args.style
            )
            for path in figures:
                print(path)
        elif args.command == "report":
            from analysis import report

            if not args.path.is_dir():
                raise AnalysisError(f"'{args.path}' is not a sweep directory")
            written = report.write_report(
                args.path,
                args.out or args.path / "report",
                columns=_columns(args),
                tuned_over=args.tuned_over,
                style=args.style,
            )
            for path in written.values():
                print(path)
    except AnalysisError as e:
        print(f"{args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write that failed after the checks: a full disk, a vanished directory
        print(f"{args.command}: error: '{e.filename}': {e.strerror}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description="Scaling-law analysis.")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run(parser.parse_args(argv))
