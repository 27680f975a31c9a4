"""The `lmscale` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmscale.config import ConfigError

EPILOG = "Overrides are dotted config paths, e.g. train.seed=3 mesh.tensor=2 model.d_model=128."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmscale", description="Scaling-law experiments in JAX/Flax: train, measure, fit."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train one run (resumes from its latest checkpoint)",
        description="Train one model. Rerunning the same command resumes from the latest "
        "checkpoint; a completed run is left as it is. SIGTERM checkpoints and exits.",
        epilog=EPILOG,
    )
    t.add_argument("config", type=Path, help="run config YAML, e.g. experiments/tiny.yaml")
    t.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    b = sub.add_parser(
        "bench",
        help="training throughput and MFU for several model sizes",
        description="Train a few steps of several model sizes on the current devices and report "
        "tokens/s and MFU against the device peak (on CPU, a matmul calibrated in this process); "
        "then time the Approach-3 fit (4500 starts) against a scipy L-BFGS-B loop over the same "
        "starts, and a 1000-resample bootstrap.",
    )
    b.add_argument("--json", type=Path, help="also write the results to this JSON file")
    b.add_argument("--steps", type=int, default=6, help="timed steps per size (default: 6)")
    b.add_argument("--sizes", help="comma-separated subset of size names to run")
    b.add_argument("--no-fit", action="store_true", help="skip the scaling-law fitting benchmark")
    b.add_argument(
        "--fit-data",
        type=Path,
        help="points for the fitting benchmark: the Chinchilla replication CSV "
        "(default: 240 points drawn from Hoffmann et al.'s published law)",
    )

    from analysis.cli import add_commands  # the reading side: fit, plot, report

    add_commands(sub)
    return p


def _train(args: argparse.Namespace) -> int:
    from lmscale import config

    cfg = config.load(args.config, args.overrides)
    from lmscale import sharding  # jax is imported only once the config has parsed

    sharding.initialize_distributed(cfg.mesh.distributed)
    import jax

    config.validate(cfg, jax.device_count())
    out = args.out or Path("runs") / args.config.stem
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' exists and is not a directory")
    from lmscale.train import train

    summary = train(cfg, out, progress=not args.no_progress)
    status = summary["status"]
    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
    print(
        f"{status}: {out}  step {summary['steps']}  loss {fmt(summary['final_loss'], '.4f')}  "
        f"val_loss {fmt(summary['final_val_loss'], '.4f')}  mfu {fmt(summary['mfu'], '.1%')}"
    )
    if status == "running":
        print("stopped by SIGTERM after a checkpoint; rerun the same command to resume")
    return 1 if status == "diverged" else 0


def _bench(args: argparse.Namespace) -> int:
    from lmscale import bench

    return bench.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may follow options (`train CFG --out DIR a.b=1`); argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command in ("fit", "plot", "report"):
        from analysis.cli import run

        return run(args)
    try:
        return {"train": _train, "bench": _bench}[args.command](args)
    except ConfigError as e:
        print(f"lmscale {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
