"""`lmscale plan`: a sweep's cells as a table of params, tokens, FLOPs, memory and time. Trains nothing.

Time comes from a short calibration on the current devices: each distinct shape's train step is
compiled and timed for a few steps, the largest and smallest first, until the calibration budget is
spent; shapes left over get their step time interpolated in log FLOPs between measured ones. The
per-run costs beyond the steps (compiling init and eval, evaluations, checkpoints) are measured once.
With `sweep.eval`, the few-shot evaluator is timed on the smallest and largest shapes too: a sample of
every task and shot count, compiled then run, its run scaled to the full set by the batches of each
length bucket.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from lmscale import flops, memory, peak, runlog, sharding
from lmscale.checkpoint import Checkpointer, digest, retained_steps
from lmscale.config import Config
from lmscale.data.pipeline import cache_root, make_source, prepare
from lmscale.fewshot import evaluate, tasks
from lmscale.fewshot.decode import bucket
from lmscale.fewshot.requests import Request, build_requests
from lmscale.flops import step_flops
from lmscale.step_fns import StepFns, build
from lmscale.sweep import cooldown, grid
from lmscale.sweep.grid import Cell, EvalSpec, Sweep, human

CALIBRATION_S = 20.0  # wall-clock budget for timing shapes; the largest and smallest are always timed
TIMED_STEPS = 3  # steps timed per shape after one warm-up step (fewer if a step takes over a second)
# ... and more while they add up to less than this: the median of 3 steps of a 10 ms shape read
# cpu_demo_full's smallest trunks at 2.0-2.3x their measured time (the first steps after a compile run
# slow); 0.25 s of steps costs the plan about a second.
TIMED_MIN_S, TIMED_MAX_STEPS = 0.25, 50
EVAL_COST = 1 / 3  # an eval batch is a forward pass: a third of a train step's FLOPs
EVAL_SAMPLE = 16  # examples per task and shot count that time the evaluator: enough for every compile


@dataclasses.dataclass
class Timing:
    """Measured (or interpolated) costs of one shape."""

    compile_s: float
    step_s: float
    setup_s: float
    measured: bool
    lower_s: float = math.nan  # tracing alone: a later run of the shape loads the compiled step from cache


@dataclasses.dataclass
class RunCosts:
    """Per-run costs that barely depend on the shape, measured once on the smallest."""

    init_compile_s: float  # the jitted init: compiled at every run's start
    eval_compile_s: float  # the eval loss: compiled at the first evaluation
    save_s: float  # one checkpoint save (asynchronous, so mostly the device-to-host copy)
    process_s: float  # once per sweep process: the peak FLOP/s that MFU needs (a matmul calibration on CPU)


def shape_key(cfg: Config) -> tuple:
    """Everything that changes a train step's compiled program or its speed; tokens and seed do not."""
    t = cfg.train
    return (
        tuple(sorted(dataclasses.asdict(cfg.model).items())),
        t.batch_size,
        t.grad_accum,
        tuple(sorted((k, str(v)) for k, v in dataclasses.asdict(cfg.mesh).items())),
    )


@dataclasses.dataclass
class EvalTiming:
    """The few-shot evaluation of one run (`sweep.eval`) on one shape."""

    compile_s: float  # every length bucket's compile: paid by each restore loop (once per run and step set)
    pass_s: float  # one compiled pass over every request, for one checkpoint


def _zeros(steps: StepFns):
    """A state of zeros with the right shardings: timing a step needs shapes, not trained values."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype, device=s.sharding), steps.abstract_state)


def time_shape(cfg: Config) -> tuple[Timing, StepFns, object]:
    """Compile `cfg`'s train step and time a few steps of the trainer's loop body, data included."""
    t0 = time.perf_counter()
    steps = build(cfg, sharding.make_mesh(cfg.mesh))
    source = make_source(cfg, "train", jax.process_index(), jax.process_count())
    t1 = time.perf_counter()
    lowered = steps.lower_train_step()
    t_lower = time.perf_counter() - t1
    compiled = steps.compile_train_step(lowered)
    t2 = time.perf_counter()
    state = _zeros(steps)
    state, metrics = compiled(state, steps.put_batch(next(source)), 0)  # warm-up: first-touch allocations
    jax.block_until_ready(metrics)
    # As the trainer's loop runs them: each step dispatched before the previous step's metrics are
    # fetched. Waiting for every step instead adds a dispatch per step that the loop hides: the plan of
    # a 2-device demo read its smallest shape's trunk at 2.2x its measured time that way. Each interval
    # holds one step's dispatch and the wait for the step before it, so the first dispatch is untimed.
    state, pending = compiled(state, steps.put_batch(next(source)), 0)
    times, t = [], time.perf_counter()
    while (len(times) < TIMED_STEPS and sum(times) < 1.0) or (
        sum(times) < TIMED_MIN_S and len(times) < TIMED_MAX_STEPS
    ):
        state, metrics = compiled(state, steps.put_batch(next(source)), 0)
        jax.device_get(pending)
        pending, now = metrics, time.perf_counter()
        times.append(now - t)
        t = now
    jax.block_until_ready(pending)
    return Timing(t2 - t1, statistics.median(times), t1 - t0, True, t_lower), steps, state


def run_costs(steps: StepFns, state) -> RunCosts:
    """Init and eval compile times and a checkpoint save, on one (small) shape."""
    t0 = time.perf_counter()
    jax.block_until_ready(steps.init(0))  # compiles and runs init, as every run's start does
    t1 = time.perf_counter()
    batch = steps.put_batch(np.zeros((steps.cfg.train.batch_size, steps.cfg.model.seq_len + 1), np.int32))
    jax.block_until_ready(steps.eval_loss(state.params, batch))
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmscale-plan-") as tmp:
        digest(state)  # compiled once per run (at its first save), not per save
        for run in ("first", "timed"):  # the first pays Orbax's import, once per process, not per run
            ckpt = Checkpointer(Path(tmp) / run, keep=2, async_save=True)
            t3 = time.perf_counter()
            ckpt.save(1, state, {"data": {}})
            ckpt.close()
            save_s = time.perf_counter() - t3
    t4 = time.perf_counter()
    peak.peak_flops(cache_dir=cache_root(steps.cfg.data))  # MFU's denominator: on CPU, once per host
    return RunCosts(t1 - t0, t2 - t1, save_s, time.perf_counter() - t4)


def time_eval(steps: StepFns, state, spec: EvalSpec) -> EvalTiming:
    """Time the evaluator on `steps`' shape with `state`'s (untrained) params, over the first
    `EVAL_SAMPLE` examples of every task and shot count: compiled then run, then run again, the second
    pass scaled to the full set by the batches of each length bucket. Generation runs to each request's
    limit whatever the weights (one token past the answer), so untrained params time it too."""
    cfg, seq_len = steps.cfg, steps.cfg.model.seq_len
    tok = prepare(cfg).tokenizer
    names = spec.tasks or list(tasks.TASKS)

    def requests(n: int) -> list[Request]:
        return build_requests(tok, names, spec.shots, n, seq_len, option="sweep.eval.shots")

    decoder = evaluate.new_decoder(steps, state.params, spec.batch_size)

    def cost(reqs: list[Request]) -> float:
        """Batches weighted by their bucket's length: the decoder's grouping of the forward pass."""
        per_bucket = collections.Counter(bucket(r.length - 1, seq_len) for r in reqs)
        return sum(-(-n // decoder.batch_size) * size for size, n in per_bucket.items())

    sample = requests(min(spec.examples, EVAL_SAMPLE))
    t0 = time.perf_counter()
    evaluate.evaluate(decoder, tok, sample)
    t1 = time.perf_counter()
    evaluate.evaluate(decoder, tok, sample)
    t2 = time.perf_counter()
    compile_s = max((t1 - t0) - (t2 - t1), 0.0)
    pass_s = (t2 - t1) * cost(requests(spec.examples)) / cost(sample)
    return EvalTiming(compile_s, pass_s)


def _interpolate(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise linear in log-log through (xs, ys), flat beyond the ends; xs sorted."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    lx, lx0, lx1 = math.log(x), math.log(xs[i - 1]), math.log(xs[i])
    w = min(max((lx - lx0) / (lx1 - lx0), 0.0), 1.0) if lx1 > lx0 else 0.0
    return math.exp((1 - w) * math.log(ys[i - 1]) + w * math.log(ys[i]))


def _label(cfg: Config) -> str:
    m = cfg.model
    return f"L{m.n_layers}-D{m.d_model}-H{m.n_heads} (batch {cfg.train.batch_size})"


def calibrate(
    cells: list[Cell], budget_s: float = CALIBRATION_S, spec: EvalSpec | None = None
) -> tuple[dict[tuple, Timing], RunCosts, dict[tuple, EvalTiming]]:
    """Time the distinct shapes, smallest and largest first, then the one farthest (in log FLOPs) from any
    timed, while the budget lasts; with `spec`, time the evaluator on the smallest and largest, and
    interpolate it for the rest. A shape that fails (say, out of memory) gets NaN times."""
    shapes: dict[tuple, Config] = {}
    for cell in cells:
        shapes.setdefault(shape_key(cell.cfg), cell.cfg)
    order = sorted(shapes, key=lambda k: step_flops(shapes[k]))
    pending = [order[0], order[-1]] if len(order) > 1 else [order[0]]
    timings: dict[tuple, Timing] = {}
    evals: dict[tuple, EvalTiming] = {}
    eval_keys = pending[:] if spec is not None else []
    costs, t_start, spent = None, time.perf_counter(), []
    failed: set[tuple] = set()
    while pending:
        key = pending.pop(0)
        t0 = time.perf_counter()
        try:
            timings[key], steps, state = time_shape(shapes[key])
            if key in eval_keys:
                evals[key] = time_eval(steps, state, spec)
        except Exception as e:  # noqa: BLE001 - e.g. out of device memory: that row says so, the rest go on
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(
                f"lmscale plan: shape {_label(shapes[key])} failed: {type(e).__name__}: {first}",
                file=sys.stderr,
            )
            failed.add(key)
            timings[key] = Timing(math.nan, math.nan, math.nan, False)
            evals.pop(key, None)
            continue
        spent.append(time.perf_counter() - t0)
        if costs is None:  # the smallest shape that runs
            costs = run_costs(steps, state)
        del steps, state
        if not pending and time.perf_counter() - t_start + statistics.mean(spent) < budget_s:
            logged = [math.log(step_flops(shapes[k])) for k in timings]
            rest = [k for k in order if k not in timings]
            if rest:
                pending.append(
                    max(rest, key=lambda k: min(abs(math.log(step_flops(shapes[k])) - x) for x in logged))
                )
    measured = sorted((k for k in timings if k not in failed), key=lambda k: step_flops(shapes[k]))
    if not measured:
        return timings, RunCosts(math.nan, math.nan, math.nan, math.nan), {}
    xs = [step_flops(shapes[k]) for k in measured]
    compile_s = statistics.mean(timings[k].compile_s for k in measured)
    setup_s = statistics.mean(timings[k].setup_s for k in measured)
    lower_s = statistics.mean(timings[k].lower_s for k in measured)
    for key in order:
        if key not in timings:
            step_s = _interpolate(step_flops(shapes[key]), xs, [timings[k].step_s for k in measured])
            timings[key] = Timing(compile_s, step_s, setup_s, False, lower_s)
    if evals:
        timed = sorted(evals, key=lambda k: step_flops(shapes[k]))
        ex = [step_flops(shapes[k]) for k in timed]
        eval_compile_s = statistics.mean(evals[k].compile_s for k in timed)
        for key in order:
            if key not in evals and key not in failed:
                pass_s = _interpolate(step_flops(shapes[key]), ex, [evals[k].pass_s for k in timed])
                evals[key] = EvalTiming(eval_compile_s, pass_s)
    return timings, costs, evals


def _due(start: int, end: int, every: int) -> int:
    """Steps in (start, end] that are multiples of `every`, plus the last if it is not one."""
    return end // every - start // every + (end % every > 0)


def estimate_s(cfg: Config, timing: Timing, costs: RunCosts, start: int = 0, cached: bool = False) -> float:
    """One run's wall time as `summary.json` measures it: setup, compiles, steps, evals and saves;
    a cooldown branch trains from its trunk's step `start`. A `cached` run's shape was compiled by an
    earlier run of the sweep (budgets and schedules do not change the program): it only traces."""
    n, t = cfg.steps - start, cfg.train
    evals = _due(start, cfg.steps, t.eval_every) if t.eval_batches else 0
    saves = _due(start, cfg.steps, cfg.checkpoint.every_steps) + len(cfg.checkpoint.keep_steps)
    # A cached shape's eval loss is loaded like its step; a branch restores its trunk's state, no init.
    eval_s = evals * (t.eval_batches * EVAL_COST * timing.step_s)
    eval_s += costs.eval_compile_s if evals and not cached else 0.0
    return (
        timing.setup_s
        + (timing.lower_s if cached and math.isfinite(timing.lower_s) else timing.compile_s)
        + (costs.init_compile_s if start == 0 else 0.0)
        + n * timing.step_s
        + eval_s
        + saves * costs.save_s
    )


def eval_estimate_s(cfg: Config, timing: EvalTiming, spec: EvalSpec) -> float:
    """One run's few-shot evaluation: the final checkpoint, or with `steps: all` every kept one, all in
    one restore loop (the buckets compile once)."""
    c = cfg.checkpoint
    n = len(retained_steps(cfg.steps, c.every_steps, c.keep, c.keep_period)) if spec.steps == "all" else 1
    return timing.compile_s + timing.pass_s * n


def table(sweep: Sweep, n_devices: int, budget_s: float | None = CALIBRATION_S) -> tuple[pd.DataFrame, dict]:
    """One row per cell (cheapest first) and the totals; no time columns when `budget_s` is None.

    `time_s` is a run's training as `summary.json`'s `wall_time_s` measures it; `eval_s` (with
    `sweep.eval`) its few-shot evaluation, as `eval_time_s` does. The total time holds both."""
    timings, costs, evals = (
        calibrate(sweep.cells, budget_s, sweep.eval) if budget_s is not None else ({}, None, {})
    )
    rows, evaluated, compiled = [], grid.evaluated(sweep), set()
    for i, cell in enumerate(sweep.cells):
        m, counts = cell.cfg.model, flops.param_counts(cell.cfg.model)
        row = {
            "run_id": cell.run_id,
            "n_layers": m.n_layers,
            "d_model": m.d_model,
            "n_heads": m.n_heads,
            "d_ff": m.ff_dim,
            "params": counts.total,
            "params_nonembedding": counts.nonembedding,
            "tokens": cell.cfg.steps * cell.cfg.train.batch_size * m.seq_len,
            "steps": cell.cfg.steps,
            "flops": cell.flops,
            "role": cell.role,
            "flops_spent": cell.flops_spent,
            "memory_bytes": memory.memory_bytes(cell.cfg, n_devices),
            "lr": cell.cfg.train.lr,
        }
        if timings:
            timing = timings[shape_key(cell.cfg)]
            start = cell.branch_step
            key = shape_key(cell.cfg)
            row["time_s"] = estimate_s(cell.cfg, timing, costs, start, cached=key in compiled)
            row["time_s"] += costs.process_s if i == 0 else 0.0
            compiled.add(key)
            row["timed"] = timing.measured
            if sweep.eval is not None and cell.run_id not in evaluated:  # trunks, and `runs: largest`
                row["eval_s"] = 0.0
            elif sweep.eval is not None:
                key = shape_key(cell.cfg)
                row["eval_s"] = (
                    eval_estimate_s(cell.cfg, evals[key], sweep.eval) if key in evals else math.nan
                )
        rows.append(row)
    df = pd.DataFrame(rows)
    totals = {"runs": len(df), **cooldown.costs(df)}
    if timings:
        totals |= {
            "time_s": df["time_s"].sum() + (df["eval_s"].sum() if "eval_s" in df else 0.0),
            "shapes": len(timings),
            "timed": sum(t.measured for t in timings.values()),
        }
    return df, totals


def _duration(s: float) -> str:
    if math.isnan(s):
        return "failed"
    return f"{s:.1f}s" if s < 60 else f"{s / 60:.1f}min" if s < 3600 else f"{s / 3600:.1f}h"


def render(df: pd.DataFrame, totals: dict, device: str) -> str:
    """The table as text, with human units, then one line of totals."""
    shown = pd.DataFrame(
        {
            "run_id": df["run_id"],
            "L": df["n_layers"],
            "D": df["d_model"],
            "H": df["n_heads"],
            "F": df["d_ff"],
            "params": df["params"].map(human),
            "non-emb": df["params_nonembedding"].map(human),
            "tokens": df["tokens"].map(human),
            "FLOPs": df["flops"].map(lambda x: f"{x:.2e}"),
            "memory": df["memory_bytes"].map(lambda b: f"{b / 2**20:.1f}MiB"),
            "lr": df["lr"].map(lambda x: f"{x:.3g}"),
        }
    )
    if (df["role"] != "run").any():  # a cooldown sweep: what each run adds (a branch starts on its trunk)
        shown["spent"] = df["flops_spent"].map(lambda x: f"{x:.2e}")
    if "time_s" in df:
        shown["time"] = [
            _duration(s) + ("" if timed or math.isnan(s) else "*")
            for s, timed in zip(df["time_s"], df["timed"], strict=True)
        ]
    if "eval_s" in df:
        shown["eval"] = df["eval_s"].map(_duration)
    lines = [shown.to_string(index=False)]
    total = f"total: {totals['runs']} runs, {totals['flops']:.2e} FLOPs"
    total = cooldown.total_line(totals) or total
    if "time_s" in totals:
        total += f", about {_duration(totals['time_s'])} on {device}"
        if df["time_s"].isna().any():
            total += f" ({int(df['time_s'].isna().sum())} runs not included: their shape failed, see above)"
        if totals["timed"] < totals["shapes"]:
            total += f" (* step time interpolated: {totals['timed']} of {totals['shapes']} shapes timed)"
    lines.append(total)
    return "\n".join(lines)


def main(sweep: Sweep, calibrate: bool = True, csv: Path | None = None) -> int:
    """Print the plan of an expanded, validated sweep (and write it to `csv` if given)."""
    t0 = time.perf_counter()
    devices = jax.devices()
    device = f"{len(devices)} x {devices[0].device_kind}"
    df, totals = table(sweep, len(devices), CALIBRATION_S if calibrate else None)
    print(render(df, totals, device))
    if csv is not None:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        runlog.write_atomic(Path(csv), df.to_csv(index=False))
    if calibrate:
        print(f"plan took {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0
