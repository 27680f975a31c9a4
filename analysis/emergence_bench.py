"""How long `emergence` takes, launch to exit, on a 2,000-row table in lm-eval's long shape.

`python -m analysis.emergence_bench [--repeats 5] [--baseline DIR]` writes the table, then runs the
command in fresh processes and prints the median wall time. With `--baseline`, a second checkout of the
project (say `git worktree add /tmp/base main`) runs the same command in alternation with this one, so
that both see the same load on a shared machine, and the ratio is printed beside the absolute times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SIZES = np.logspace(7.5, 10.5, 16)  # 16 models per family, 30M to 30B
FAMILIES = ("standard", "deduped")
SHOTS = (0, 5)
# task: (chance, slope per decade, log10 midpoint, metrics); slope 0 is a task that stays at chance
TASKS = {
    "arc_easy": (0.25, 1.2, 8.8, ("acc", "acc_norm")),
    "arc_challenge": (0.25, 2.0, 9.8, ("acc", "acc_norm")),
    "hellaswag": (0.25, 1.5, 9.2, ("acc", "acc_norm")),
    "piqa": (0.5, 1.0, 8.5, ("acc", "acc_norm")),
    "sciq": (0.25, 1.8, 8.6, ("acc", "acc_norm")),
    "winogrande": (0.5, 1.5, 9.9, ("acc",)),
    "lambada_openai": (0.0, 1.3, 9.3, ("acc", "perplexity")),
    "mmlu": (0.25, 0.0, 0.0, ("acc", "acc_norm")),
}
N_EXAMPLES = 1000


def lm_eval_long_table(seed: int = 0) -> pd.DataFrame:
    """model, family, params, num_fewshot, task, metric, value: lm-eval's results flattened (1,920 rows)."""
    rng = np.random.default_rng(seed)
    log10_n = np.log10(SIZES)
    rows = []
    for family in FAMILIES:
        for shots in SHOTS:
            for task, (chance, slope, mid, metrics) in TASKS.items():
                p = chance + (1 - chance) / (1 + np.exp(-slope * (log10_n - mid - 0.1 * shots / 5)))
                p = np.full_like(p, chance) if slope == 0 else p
                se = np.sqrt(p * (1 - p) / N_EXAMPLES)
                values = {
                    "acc": np.clip(p - 0.02 * (slope > 0) + rng.normal(0, se), 0, 1),
                    "acc_norm": np.clip(p + rng.normal(0, se), 0, 1),
                    "perplexity": 40.0 * (SIZES / 1e8) ** -0.3 * np.exp(rng.normal(0, 0.02, len(SIZES))),
                }
                for metric in metrics:
                    error = se if metric != "perplexity" else 0.02 * values[metric]
                    for i, n in enumerate(SIZES):
                        model = f"{family}-{n / 1e6:.0f}m"
                        rows.append((model, family, n, shots, task, metric, values[metric][i]))
                        rows.append((model, family, n, shots, task, f"{metric}_stderr", error[i]))
    columns = ["model", "family", "params", "num_fewshot", "task", "metric", "value"]
    return pd.DataFrame(rows, columns=columns)


def command(csv: Path, out: Path) -> list[str]:
    """The emergence command a user would type for this table."""
    chance = [a for t, (c, *_) in TASKS.items() if t != "lambada_openai" for a in ("--chance", f"{t}={c}")]
    mapping = ["--shots-col", "num_fewshot", "--group-col", "family"]
    return [sys.executable, "-m", "analysis", "emergence", str(csv), "--out", str(out), *mapping, *chance]


def _seconds(argv: list[str], root: Path) -> float:
    env = os.environ | {"PYTHONPATH": str(root)}
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def bench_emergence(repeats: int = 5, baseline: Path | None = None, seed: int = 0) -> dict:
    """Median launch-to-exit seconds of the command here (and in `baseline`, alternating)."""
    roots = {"this": Path(__file__).resolve().parents[1]} | ({"baseline": baseline} if baseline else {})
    times: dict[str, list[float]] = {name: [] for name in roots}
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "evals.csv"
        table = lm_eval_long_table(seed)
        table.to_csv(csv, index=False)
        for _ in range(repeats):
            for name, root in roots.items():
                times[name].append(_seconds(command(csv, Path(tmp) / name), root))
    out = {"rows": len(table), "repeats": repeats}
    for name, ts in times.items():
        out |= {f"{name}_median_s": statistics.median(ts), f"{name}_s": [round(t, 2) for t in ts]}
    if baseline:
        out["speedup"] = out["baseline_median_s"] / out["this_median_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.emergence_bench", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="runs of each command (default 5)")
    p.add_argument("--baseline", type=Path, help="another checkout to time in alternation")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic table")
    args = p.parse_args(argv)
    for key, value in bench_emergence(args.repeats, args.baseline, args.seed).items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
