"""`python -m analysis fit|plot|report` (also `lmscale fit|plot|report`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.atomic import write_atomic
from analysis.load import AnalysisError

LAWS = ("power", "approach1", "approach2", "approach3", "chinchilla")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register fit, plot and report on a subparser group (shared by both command lines)."""
    f = sub.add_parser(
        "fit",
        help="fit a scaling law to a sweep directory or any results CSV",
        description="Fit a scaling law. PATH is a sweep directory (its results.csv) or a CSV; map "
        "other tables' columns with --params-col/--tokens-col/--flops-col/--loss-col. Runs whose "
        "status is not 'completed' are excluded and counted.",
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

    p = sub.add_parser("plot", help="figures (PNG and PDF) for a sweep directory or CSV")
    p.add_argument("path", type=Path, metavar="SWEEP_DIR|CSV")
    p.add_argument("--out", type=Path, help="output directory (default: PATH's directory/figures)")

    r = sub.add_parser("report", help="report.md and report.html with fits and figures")
    r.add_argument("path", type=Path, metavar="SWEEP_DIR")
    r.add_argument("--out", type=Path, help="output directory (default: SWEEP_DIR/report)")
    for parser in (f, p, r):
        for col in ("params", "tokens", "flops", "loss"):
            parser.add_argument(f"--{col}-col", metavar="COLUMN", help=f"column holding {col}")


def _columns(args: argparse.Namespace) -> dict:
    return {f"{c}_col": getattr(args, f"{c}_col") for c in ("params", "tokens", "flops", "loss")}


def _fit(args: argparse.Namespace) -> dict:
    from analysis import fit as fits
    from analysis.load import load_curves, load_results

    if args.bootstrap < 0:
        raise AnalysisError(f"--bootstrap={args.bootstrap}: must be zero or positive")
    law = "approach3" if args.law == "chinchilla" else args.law
    require = {"power": ("loss", args.x), "approach3": ("params", "tokens", "loss")}.get(
        law, ("params", "flops", "loss")
    )
    results = load_results(args.path, **_columns(args), require=require)
    runs = results.runs
    if args.drop_worst:
        runs = runs.sort_values("loss").iloc[: len(runs) - args.drop_worst].reset_index(drop=True)
    print(f"{len(runs)} runs from {results.source} ({results.excluded} not completed, excluded)")
    if law == "power":
        fit = fits.fit_power(
            runs[args.x], runs["loss"], args.x, not args.no_offset, args.bootstrap, args.seed, args.delta
        )
    elif law == "approach3":
        fit = fits.fit_chinchilla(
            runs["params"], runs["tokens"], runs["loss"], args.bootstrap, args.seed, args.delta
        )
    elif law == "approach2":
        fit = fits.approach2(runs, args.bootstrap, args.seed)
    else:
        curves = runs
        if args.path.is_dir():
            try:
                curves = load_curves(args.path)
            except AnalysisError:
                pass  # no learning curves: approach1 refuses the final points with its reason
        fit = fits.approach1(curves)
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
    ci = out.get("ci", {})
    print(f"law: {out['law']}  points: {out['n_points']}  objective: {out['objective']:.8g}")
    for k, v in out.items():
        if isinstance(v, float) and k not in ("objective",):
            interval = f"  95% CI [{ci[k][0]:.5g}, {ci[k][1]:.5g}]" if k in ci else ""
            print(f"  {k:>6} = {v:.6g}{interval}")
    for row in out.get("compute_optimal", []):
        print(
            f"  C={row['C']:.3g}: N_opt={row['N_opt']:.3g}  D_opt={row['D_opt']:.3g}  "
            f"tokens/param={row['tokens_per_param']:.3g}"
        )
    for row in out.get("extrapolation", []):
        print(
            f"  held out {row['law']}: C={row['flops']:.3g} loss={row['loss']:.4f} "
            f"rel_error={row['rel_error']:+.2%}"
        )


def run(args: argparse.Namespace) -> int:
    """Run a parsed fit/plot/report command; AnalysisError becomes a one-line error and status 2."""
    try:
        if args.command == "fit":
            out = _fit(args)
            _print_fit(out)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(args.json, json.dumps(out, indent=2) + "\n")
        elif args.command == "plot":
            from analysis import plots

            base = args.path if args.path.is_dir() else args.path.parent
            for path in plots.plot_all(args.path, args.out or base / "figures", columns=_columns(args)):
                print(path)
        elif args.command == "report":
            from analysis import report

            if not args.path.is_dir():
                raise AnalysisError(f"'{args.path}' is not a sweep directory")
            written = report.write_report(args.path, args.out or args.path / "report", columns=_columns(args))
            for path in written.values():
                print(path)
    except AnalysisError as e:
        print(f"{args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description="Scaling-law analysis.")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run(parser.parse_args(argv))
