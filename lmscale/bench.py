"""`lmscale bench`: training throughput and MFU, each size against the device peak."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from lmscale import config, flops, peak, sharding
from lmscale.data.pipeline import cache_root, make_source, prepare
from lmscale.runlog import write_json
from lmscale.step_fns import build

# Shapes spanning ~60x in parameters; the largest is big enough for matmuls to dominate.
SIZES = {
    "s": {"n_layers": 2, "d_model": 128, "n_heads": 2},
    "m": {"n_layers": 4, "d_model": 256, "n_heads": 4},
    "l": {"n_layers": 8, "d_model": 512, "n_heads": 8},
}
SEQ_LEN, BATCH = 128, 16


# nanoGPT's README CPU recipe (Shakespeare-char): the shape a PyTorch user knows, for the peer ratio.
RECIPE = {"n_layers": 4, "d_model": 128, "n_heads": 4, "seq_len": 64, "vocab_size": 257, "pos_emb": "learned"}
RECIPE_BATCH = 12
SETTLE_S = 0.05  # between the two sides' turns: thread pools that spin after work go idle


def host_peak() -> tuple[float | None, str]:
    """The device peak; on CPU measured again here, and the host's cached peak (what runs read) raised
    to it when higher."""
    return peak.peak_flops(cache_dir=cache_root(config.DataConfig()), remeasure=True)


def _config(model: dict, batch: int) -> config.Config:
    cfg = config.from_dict({"model": model, "train": {"batch_size": batch, "tokens": 10**12}})
    return config.validate(cfg, jax.device_count())


def _lmscale_step(cfg: config.Config, batches: list):
    """A timed-step closure over a freshly initialised train state: one step per call, waited for."""
    fns = build(cfg, sharding.make_mesh(cfg.mesh))
    state, compiled, n = fns.init(0), fns.compile_train_step(), 0

    def step() -> float:
        nonlocal state, n
        t0 = time.perf_counter()
        state, metrics = compiled(state, fns.put_batch(batches[n % len(batches)]), 0)  # lr: any entry
        jax.block_until_ready(metrics)
        n += 1
        return time.perf_counter() - t0

    step()  # warm-up: first-touch allocations
    return step


def _batches(cfg: config.Config, n: int = 4) -> list:
    source = make_source(cfg, "train")
    return [next(source) for _ in range(n)]


def bench_training(name: str, shape: dict, steps: int, peak_flops: float | None) -> dict:
    cfg = _config({**shape, "seq_len": SEQ_LEN}, BATCH)
    step = _lmscale_step(cfg, _batches(cfg, 1))
    times = [step() for _ in range(steps)]
    step_s = statistics.median(times)
    tokens = BATCH * SEQ_LEN
    flops_step = flops.step_flops(cfg)
    counts = flops.param_counts(cfg.model)
    return {
        "size": name,
        **shape,
        "seq_len": SEQ_LEN,
        "batch_size": BATCH,
        "params": counts.total,
        "params_nonembedding": counts.nonembedding,
        "step_time_s": step_s,
        "tokens_per_s": tokens / step_s,
        "flops_per_step": flops_step,
        "flops_per_s": flops_step / step_s,
        "mfu": flops_step / step_s / peak_flops if peak_flops else None,
    }


class PeerProcess:
    """The PyTorch eager peer (lmscale/peer_torch.py) in a worker process of its own, stepping on
    request: in one process, torch's and XLA's thread pools take cores from each other (on a 2-core
    machine the peer's recipe step read 56 ms in-process against 33 ms alone)."""

    def __init__(self, raw: dict, batches: list, on_cpu: bool, workdir: Path):
        np.save(workdir / "batches.npy", np.stack(batches))
        spec = {
            "config": raw,
            "batches": str(workdir / "batches.npy"),
            "device": "cpu" if on_cpu else "cuda",
            "dtype": "float32" if on_cpu else "bfloat16",
            "threads": len(os.sched_getaffinity(0)),  # torch's own default: every usable core
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmscale.peer_torch", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(workdir / "peer.err", "w"),  # noqa: SIM115 - the process owns it
            text=True,
        )
        self.err = workdir / "peer.err"
        self._ask(spec)

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            last = (self.err.read_text().strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"the torch peer process exited: {last}")
        return json.loads(line)

    def steps(self, n: int) -> list[float]:
        return self._ask({"steps": n})["times"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def bench_peer(name: str, model: dict, batch: int, rounds: int, steps_per_round: int = 5) -> dict:
    """lmscale's train step against the PyTorch eager peer on the same batches, alternating
    `steps_per_round` steps of each per round, the peer in its own process (`PeerProcess`); the ratio is
    the median of the rounds' ratios of median step times (above 1: lmscale is faster). Accelerators
    compare in bfloat16."""
    import torch

    on_cpu = jax.devices()[0].platform == "cpu"
    dtype = {} if on_cpu else {"compute_dtype": "bfloat16"}
    raw = {"model": {**model, **dtype}, "train": {"batch_size": batch}}
    cfg = _config(raw["model"], batch)
    batches = _batches(cfg)
    ours = _lmscale_step(cfg, batches)
    with tempfile.TemporaryDirectory(prefix="lmscale-peer-") as workdir:
        peer = PeerProcess(raw, batches, on_cpu, Path(workdir))
        try:
            ours_s, theirs_s, ratios = [], [], []
            for _ in range(rounds):
                a = statistics.median(ours() for _ in range(steps_per_round))
                time.sleep(SETTLE_S)
                b = statistics.median(peer.steps(steps_per_round))
                time.sleep(SETTLE_S)
                ours_s.append(a)
                theirs_s.append(b)
                ratios.append(b / a)
        finally:
            peer.close()
    tokens = batch * cfg.model.seq_len
    step_s, peer_s = statistics.median(ours_s), statistics.median(theirs_s)
    return {
        "shape": name,
        **model,
        "batch_size": batch,
        "compute_dtype": cfg.model.compute_dtype,
        "devices": jax.device_count(),
        "peer": f"torch {torch.__version__} eager, {'its own process' if on_cpu else 'cuda'}",
        "rounds": rounds,
        "step_time_s": step_s,
        "peer_step_time_s": peer_s,
        "tokens_per_s": tokens / step_s,
        "peer_tokens_per_s": tokens / peer_s,
        "speedup_vs_peer": statistics.median(ratios),
        "speedup_range": [min(ratios), max(ratios)],
    }


def bench_peers(names: list[str], rounds: int) -> list[dict] | str:
    """The peer ratio for nanoGPT's CPU recipe and each bench size, or why the peer was skipped."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "skipped: torch is not installed (pip install -e '.[bench]')"
    sizes = [(n, {**SIZES[n], "seq_len": SEQ_LEN}, BATCH) for n in names]
    shapes = [("recipe", RECIPE, RECIPE_BATCH), *sizes]
    rows = []
    for name, model, batch in shapes:
        row = bench_peer(name, model, batch, rounds)
        rows.append(row)
        print(
            f"peer {name}: lmscale {row['step_time_s'] * 1e3:.1f} ms/step, {row['peer']} "
            f"{row['peer_step_time_s'] * 1e3:.1f} ms/step: {row['speedup_vs_peer']:.2f}x "
            f"(rounds {row['speedup_range'][0]:.2f}-{row['speedup_range'][1]:.2f})",
            file=sys.stderr,
        )
    return rows


def bench_pipeline(batches: int = 300) -> dict:
    """Warm-cache token delivery of the default corpus, in the trainer's batch shape."""
    cfg = config.from_dict({"model": {"seq_len": SEQ_LEN}, "train": {"batch_size": BATCH}})
    pipe = prepare(cfg)  # builds the cache on first use; timing starts after
    source = pipe.source("train", BATCH, seed=0)
    next(source)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(source)
    seconds = time.perf_counter() - t0
    return {
        "corpus": cfg.data.corpus,
        "batches": batches,
        "tokens_per_s": batches * BATCH * SEQ_LEN / seconds,
    }


def _bench_fit(csv: Path | None) -> dict:
    """Approach 3 on 4500 starts and a 1000-resample bootstrap, against a scipy L-BFGS-B loop."""
    from analysis import bench as fit_bench

    if csv is not None and not csv.is_file():
        raise config.ConfigError(f"--fit-data '{csv}' does not exist")
    points = fit_bench.reference_points(csv) if csv else fit_bench.synthetic_points()
    row = fit_bench.bench_fit(points) | {"data": str(csv) if csv else "synthetic (published law, 240 points)"}
    print(
        f"fit approach3: {row['jax_fit_s']:.2f} s for {row['starts']} starts vs scipy "
        f"{row['scipy_loop_s_estimated']:.0f} s ({row['speedup_vs_scipy']:.0f}x, rounds "
        f"{min(row['speedup_per_round']):.0f}-{max(row['speedup_per_round']):.0f}x); "
        f"bootstrap x{row['bootstrap_resamples']}: {row['bootstrap_s']:.1f} s",
        file=sys.stderr,
    )
    return row


EVAL_TASKS = ("add3", "modarith", "recall", "reverse", "modlin", "repeat")  # one task of each kind
EVAL_SHOTS, EVAL_EXAMPLES = (0, 1, 4), 200
EVAL_SHAPE = {"n_layers": 4, "d_model": 144, "n_heads": 4, "vocab_size": 320, "seq_len": 256}  # ~1.0M params
ONE_BY_ONE_EVERY = 10  # the one-by-one baseline times every 10th request and extrapolates


def _one_by_one(cfg: config.ModelConfig, params, requests: list, stop: set[int]) -> None:
    """The naive evaluator: per example, one forward to score the answer, then one full forward per
    generated token (no batch, no cache). Inputs are padded to the decoder's length buckets, so the
    warm-up compiles a few shapes rather than one per length."""
    import jax.numpy as jnp
    import numpy as np

    from lmscale.fewshot.decode import bucket
    from lmscale.model import Transformer

    forward = jax.jit(lambda p, t: jax.nn.log_softmax(Transformer(cfg).apply({"params": p}, t), axis=-1))

    def logp_at(seq: list[int]) -> np.ndarray:
        tokens = np.zeros((1, bucket(len(seq), cfg.seq_len)), np.int32)
        tokens[0, : len(seq)] = seq
        return forward(params, jnp.asarray(tokens))[0]

    for r in requests:
        seq = r.context + r.continuation
        logp_LxV = logp_at(seq[:-1])
        pos = np.arange(len(r.context) - 1, len(seq) - 1)
        jax.device_get((logp_LxV[pos, np.array(seq[1:])[pos]], logp_LxV[pos].argmax(-1)))
        generated = list(r.context)
        for _ in range(min(len(r.continuation) + 1, cfg.seq_len - len(r.context))):
            token = int(logp_at(generated)[len(generated) - 1].argmax())
            generated.append(token)
            if token in stop:
                break


def bench_eval(examples: int = EVAL_EXAMPLES, batch_size: int = 64) -> dict:
    """The batched evaluator against scoring and generating one example at a time without a cache."""
    import jax.numpy as jnp

    from lmscale.data.tokenizer import Tokenizer
    from lmscale.fewshot import evaluate
    from lmscale.fewshot.decode import Decoder
    from lmscale.fewshot.requests import build_requests
    from lmscale.model import Transformer

    cfg = config.from_dict({"model": EVAL_SHAPE}).model
    params = Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tok = Tokenizer.byte()
    requests = build_requests(tok, EVAL_TASKS, EVAL_SHOTS, examples, cfg.seq_len)
    subset = requests[::ONE_BY_ONE_EVERY]

    def timed(fn, *args) -> float:
        fn(*args)  # compiles every length bucket first
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0

    batched_s = timed(evaluate.evaluate, Decoder(cfg, params, batch_size), tok, requests)
    batch1_s = timed(evaluate.evaluate, Decoder(cfg, params, 1), tok, subset) * len(requests) / len(subset)
    naive_s = (
        timed(_one_by_one, cfg, params, subset, set(evaluate.stop_ids(tok))) * len(requests) / len(subset)
    )
    row = {
        "params": flops.param_counts(cfg).total,
        "tasks": list(EVAL_TASKS),
        "shots": list(EVAL_SHOTS),
        "examples_per_task": examples,
        "requests": len(requests),
        "batch_size": batch_size,
        "batched_s": batched_s,
        "examples_per_s": len(requests) / batched_s,
        "one_by_one_timed_requests": len(subset),
        "one_by_one_s_estimated": naive_s,
        "speedup_vs_one_by_one": naive_s / batched_s,
        "batch_size_1_s_estimated": batch1_s,  # this evaluator (cached) fed one example at a time
        "speedup_vs_batch_size_1": batch1_s / batched_s,
    }
    print(
        f"eval: {row['requests']} examples ({row['params'] / 1e6:.2f}M params) in {batched_s:.1f} s "
        f"batched vs {naive_s:.0f} s one by one without a cache ({row['speedup_vs_one_by_one']:.0f}x) and "
        f"{batch1_s:.0f} s at batch size 1 ({row['speedup_vs_batch_size_1']:.1f}x); baselines timed on "
        f"{len(subset)} examples and extrapolated",
        file=sys.stderr,
    )
    return row


def main(args: argparse.Namespace) -> int:
    names = args.sizes.split(",") if args.sizes else list(SIZES)
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        raise config.ConfigError(f"--sizes: unknown size '{unknown[0]}'; known: {', '.join(SIZES)}")
    if args.steps < 1:
        raise config.ConfigError(f"--steps={args.steps}: must be positive")
    peak_flops, source = host_peak()
    device = jax.devices()[0]
    rows = []
    for name in names:
        row = bench_training(name, SIZES[name], args.steps, peak_flops)
        rows.append(row)
        print(
            f"train {name}: {row['params'] / 1e6:6.2f}M params  {row['tokens_per_s']:10,.0f} tok/s  "
            f"{row['flops_per_s'] / 1e9:8.1f} GFLOP/s  MFU "
            + (f"{row['mfu']:.1%}" if row["mfu"] is not None else f"n/a ({source})"),
            file=sys.stderr,
        )
    peers = "skipped: --no-peer" if args.no_peer else bench_peers(names, args.steps)
    if isinstance(peers, str):
        print(f"peer: {peers}", file=sys.stderr)
    pipeline = bench_pipeline()
    fastest_trainer = max(row["tokens_per_s"] for row in rows)  # the smallest model eats tokens fastest
    pipeline["vs_trainer"] = {row["size"]: pipeline["tokens_per_s"] / row["tokens_per_s"] for row in rows}
    print(
        f"data pipeline ({pipeline['corpus']}, warm cache): {pipeline['tokens_per_s']:,.0f} tok/s, "
        f"{pipeline['tokens_per_s'] / fastest_trainer:,.0f}x the fastest trainer above",
        file=sys.stderr,
    )
    result = {
        "device": {
            "platform": device.platform,
            "kind": device.device_kind,
            "count": jax.device_count(),
        },
        "peak_flops": peak_flops,
        "peak_source": source,
        "train": rows,
        "peer": peers,
        "pipeline": pipeline,
    }
    if not args.no_fit:
        result["fit"] = _bench_fit(args.fit_data)
    if not getattr(args, "no_eval", False):
        result["eval"] = bench_eval()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.json), result)
    return 0
