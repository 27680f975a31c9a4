"""The `lmscale` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmscale import launch, runlog  # launch imports no JAX: it only starts processes
from lmscale.config import ConfigError

EPILOG = "Overrides are dotted config paths, e.g. train.seed=3 mesh.tensor=2 model.d_model=128."


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line with exit status 2, like every other bad input (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lmscale", description="Scaling-law experiments in JAX/Flax: train, measure, fit.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train one run (resumes from its latest checkpoint)",
        description="Train one model. Rerunning the same command resumes from the latest "
        "checkpoint; a completed run is left as it is. SIGTERM checkpoints and exits. One process trains a "
        "directory at a time (it holds DIR/.lock): a second exits 2 at once naming its pid and host.",
        epilog=EPILOG,
    )
    t.add_argument("config", type=Path, help="run config YAML, e.g. experiments/tiny.yaml")
    t.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    t.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars (tokenizing, training) and notices"
    )
    t.add_argument(
        "--restart-from-scratch",
        action="store_true",
        help="if every checkpoint fails verification (each is set aside, never deleted), train again from "
        "step 0 instead of exiting 2",
    )
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    b = sub.add_parser(
        "bench",
        help="training throughput and MFU for several model sizes",
        description="Train a few steps of several model sizes on the current devices and report "
        "tokens/s and MFU against the device peak (on CPU, a matmul calibrated in this process); "
        "then time the Approach-3 fit (4500 starts) against a scipy L-BFGS-B loop over the same "
        "starts, and a 1000-resample bootstrap; then the batched few-shot evaluator against scoring "
        "and generating one example at a time without a cache, and against itself at batch size 1.",
    )
    b.add_argument("--json", type=Path, help="also write the results to this JSON file")
    b.add_argument("--steps", type=int, default=6, help="timed steps per size (default: 6)")
    b.add_argument("--sizes", help="comma-separated subset of size names to run")
    b.add_argument(
        "--cpu-devices",
        type=int,
        default=1,
        metavar="N",
        help="split the CPU into N JAX devices and train data-parallel over them, as mesh.cpu_devices "
        "does (default: 1)",
    )
    b.add_argument("--no-fit", action="store_true", help="skip the scaling-law fitting benchmark")
    b.add_argument(
        "--no-peer",
        action="store_true",
        help="skip the PyTorch eager peer (run when torch is installed: nanoGPT's CPU recipe and each size)",
    )
    b.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the evaluator benchmark (batched few-shot evaluation against one example at a time)",
    )
    b.add_argument(
        "--fit-data",
        type=Path,
        help="points for the fitting benchmark: the Chinchilla replication CSV "
        "(default: 240 points drawn from Hoffmann et al.'s published law)",
    )

    pl = sub.add_parser(
        "plan",
        help="a sweep's cells with params, tokens, FLOPs, memory and time estimates; trains nothing",
        description="Expand a sweep YAML into its cells and print one row per run: shape, params "
        "(total and non-embedding), tokens, FLOPs, a per-device memory estimate and a time estimate "
        "from compiling and timing a few train steps of each distinct shape on the current devices. "
        "With the sweep's `eval:` section, an eval column adds each run's few-shot evaluation, timed "
        "by running the evaluator on the smallest and largest shapes. The total (training and "
        "evaluation) comes last. Nothing is trained and no run directory is written.",
        epilog=EPILOG + " Sweep keys are overridden the same way, e.g. sweep.seeds=[0,1].",
    )
    pl.add_argument("sweep", type=Path, help="sweep YAML, e.g. experiments/cpu_demo.yaml")
    pl.add_argument("--no-time", action="store_true", help="skip the calibration and the time estimates")
    pl.add_argument("--csv", type=Path, help="also write the table, in plain units, to this CSV file")
    pl.add_argument("overrides", nargs="*", metavar="key=value", help="config or sweep overrides")

    sw = sub.add_parser(
        "sweep",
        help="train every cell of a sweep: skip, resume, lock, and tabulate",
        description="Train the cells of a sweep YAML cheapest first into DIR/<sweep name>/<run_id>/. "
        "Completed runs are skipped, partial ones resume from their checkpoints, diverged or failed "
        "runs are marked and the sweep carries on. Each run is locked while it trains, so several "
        "sweep processes can share one sweep. Each completed run is then evaluated few-shot as by "
        "`lmscale eval` (configured by the sweep's `eval:` section; sweep.eval=false skips it). "
        "results.csv and fewshot.csv are rewritten after every run. Exit status 1 if any run "
        "diverged or failed.",
        epilog=EPILOG + " Sweep keys are overridden the same way, e.g. sweep.seeds=[0,1].",
    )
    sw.add_argument("sweep", type=Path, help="sweep YAML, e.g. experiments/cpu_demo.yaml")
    sw.add_argument(
        "--out", type=Path, default=Path("runs"), help="parent of the sweep directory (default: runs)"
    )
    sw.add_argument("--worker", type=int, default=0, help="this process's share, 0 .. N-1 (default: 0)")
    sw.add_argument("--num-workers", type=int, default=1, help="split the cells round-robin into N shares")
    sw.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    sw.add_argument("overrides", nargs="*", metavar="key=value", help="config or sweep overrides")

    e = sub.add_parser(
        "eval",
        help="few-shot evaluation of a run's latest checkpoint (or any it kept)",
        description="Evaluate the latest checkpoint of RUN_DIR on k-shot prompts of the built-in tasks: "
        "exact match of the greedy answer, answer log-prob, token accuracy and edit distance (and "
        "choice probability and Brier score for multiple-choice tasks). Writes RUN_DIR/fewshot.jsonl "
        "and the `fewshot` field of RUN_DIR/summary.json, replacing only the tasks and shots evaluated. "
        "--steps all evaluates every checkpoint the run kept (see checkpoint.keep_period), for accuracy "
        "over training: each step's rows go to fewshot.jsonl and its means to summary.json (the final "
        "checkpoint's under `fewshot`, earlier ones under `fewshot_steps`).",
    )
    e.add_argument("run_dir", type=Path, help="run directory with config.yaml, tokenizer.json, checkpoints/")
    from lmscale.fewshot.tasks import TASKS  # pure Python: no JAX import for --help

    e.add_argument("--tasks", help=f"comma-separated task names (default: all: {', '.join(TASKS)})")
    e.add_argument(
        "--shots", help="comma-separated shot counts (default: 0,1,2,4,8, each kept if it fits the context)"
    )
    e.add_argument(
        "--examples", type=int, default=100, help="examples per task and shot count (default: 100)"
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the evaluation examples (default: 0)")
    e.add_argument("--batch-size", type=int, default=64, help="sequences per batch (default: 64)")
    e.add_argument(
        "--steps",
        default="latest",
        help="checkpoints: latest, all (every one kept) or comma-separated steps (default: latest)",
    )

    from analysis.cli import add_commands  # the reading side: fit, plot, report, emergence

    add_commands(sub)
    launch.add_command(sub)
    return p


def _train(args: argparse.Namespace) -> int:
    from lmscale import config, runlog

    cfg = config.load(args.config, args.overrides)
    out = args.out or Path("runs") / args.config.stem
    runlog.check_writable(out, "--out", directory=True)
    from lmscale import sharding  # jax is imported only once the config has parsed

    sharding.use_cpu_devices(cfg.mesh.cpu_devices)
    sharding.initialize_distributed(cfg.mesh.distributed)
    import jax

    config.validate(cfg, jax.device_count())
    from lmscale.memory import check_memory

    check_memory(cfg, jax.devices())
    from absl import logging as absl_logging

    from lmscale.train import RunFailed, train

    # Orbax logs a failed background save's traceback from each of its threads; the run's error.log
    # keeps one, and stderr gets one line.
    absl_logging.set_verbosity(absl_logging.FATAL)

    from lmscale import results

    finished = (results.read_summary(out) or {}).get("status") == "completed"
    try:
        summary = train(
            cfg, out, progress=not args.no_progress, restart_from_scratch=args.restart_from_scratch
        )
    except RunFailed as e:
        print(f"lmscale train: error: {e}", file=sys.stderr)
        return 1
    status = summary["status"]
    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
    if finished:  # train() checked the config is the same one and left the run as it was
        print(
            f"completed: {out} was already complete at step {summary['steps']} (loss "
            f"{fmt(summary['final_loss'], '.4f')}); nothing was trained. Use a new --out to train again"
        )
        return 0
    print(
        f"{status}: {out}  step {summary['steps']}  loss {fmt(summary['final_loss'], '.4f')}  "
        f"val_loss {fmt(summary['final_val_loss'], '.4f')}  mfu {fmt(summary['mfu'], '.1%')}"
    )
    if status == "running":
        print("stopped by SIGTERM after a checkpoint; rerun the same command to resume")
    return 1 if status == "diverged" else 0


def _load_sweep(args: argparse.Namespace):
    """Expand and validate the sweep on this host's devices; nothing is written before this passes."""
    from lmscale.sweep import grid

    sweep = grid.load(args.sweep, args.overrides)
    from lmscale import sharding  # jax is imported only once the spec has parsed

    sharding.use_cpu_devices(sweep.cells[0].cfg.mesh.cpu_devices)
    sharding.initialize_distributed(sweep.cells[0].cfg.mesh.distributed)
    import jax

    sweep = grid.validate_cells(sweep, jax.device_count())
    if args.command == "sweep":  # plan shows each run's memory estimate; sweep must not start one that fails
        from lmscale.memory import check_memory

        for cell in sweep.cells:
            check_memory(cell.cfg, jax.devices())
    return sweep


def _plan(args: argparse.Namespace) -> int:
    if args.csv is not None:
        runlog.check_writable(args.csv, "--csv", directory=False)
    sweep = _load_sweep(args)
    from lmscale.sweep import plan

    return plan.main(sweep, calibrate=not args.no_time, csv=args.csv)


def _sweep(args: argparse.Namespace) -> int:
    runlog.check_writable(args.out, "--out", directory=True)
    sweep = _load_sweep(args)
    from lmscale.fewshot import evaluate
    from lmscale.sweep.grid import evaluated
    from lmscale.sweep.runner import EVAL_FAILED, assigned, run_sweep

    assigned(sweep.cells, args.worker, args.num_workers)  # bad --worker fails before anything runs
    hooks = [evaluate.after_train(sweep.eval, evaluated(sweep))] if sweep.eval is not None else []
    statuses = run_sweep(
        sweep, args.out, args.worker, args.num_workers, progress=not args.no_progress, after_train=hooks
    )
    counts = {s: sum(v == s for v in statuses.values()) for s in sorted(set(statuses.values()))}
    print(f"{args.out / sweep.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if "running" in statuses.values():
        print("stopped by SIGTERM after a checkpoint; rerun the same command to resume")
    return 1 if {"diverged", "failed", EVAL_FAILED} & set(statuses.values()) else 0


def _bench(args: argparse.Namespace) -> int:
    from lmscale import bench, sharding

    if args.cpu_devices < 1:
        raise ConfigError(f"--cpu-devices={args.cpu_devices}: must be positive")
    sharding.use_cpu_devices(args.cpu_devices)
    if args.json is not None:
        runlog.check_writable(args.json, "--json", directory=False)
    return bench.main(args)


def _eval(args: argparse.Namespace) -> int:
    from lmscale.fewshot import evaluate, tasks

    names = evaluate.parse_list(args.tasks, "--tasks")
    for name in names or []:
        tasks.get(name)
    shots = evaluate.parse_list(args.shots, "--shots", int)
    steps = args.steps if args.steps in ("latest", "all") else evaluate.parse_list(args.steps, "--steps", int)
    if args.run_dir.is_dir():  # fewshot.jsonl and summary.json are written there, after the evaluation
        runlog.check_writable(args.run_dir, "RUN_DIR", directory=True)
    fewshot = evaluate.evaluate_run(
        args.run_dir, names, shots, args.examples, args.seed, args.batch_size, steps
    )
    print(f"{'task':<12} {'shots':>5} {'exact_match':>16} {'logprob/token':>14}")
    for task in names or tasks.TASKS:
        for k, m in fewshot.get(task, {}).items():
            if shots is None or int(k) in shots:
                em, lp = m["exact_match"], m["logprob_per_token"]
                se = f" ± {em['stderr']:.3f}" if em["stderr"] is not None else ""
                print(f"{task:<12} {k:>5} {em['value']:>8.3f}{se:<8} {lp['value']:>14.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may follow options (`train CFG --out DIR a.b=1`); argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command in ("fit", "plot", "report", "emergence"):
        from analysis.cli import run

        return run(args)
    try:
        commands = {"train": _train, "plan": _plan, "sweep": _sweep, "bench": _bench, "eval": _eval}
        return (commands | {"launch": launch.run})[args.command](args)
    except ConfigError as e:
        print(f"lmscale {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only or vanished output before the work began
        print(f"lmscale {args.command}: error: {runlog.one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
