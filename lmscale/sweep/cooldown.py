"""Cooldown sweeps: one constant-lr trunk per size, and a WSD branch at each token budget.

Before its decay a WSD schedule does not depend on the budget (`lmscale.schedule.decay_start`), so a
branch to D restored from the trunk's checkpoint at the start of D's decay, data position included, is
exactly a from-scratch WSD run to D. The trunk trains (after its fixed warmup) at constant lr to the
start of the longest budget's decay and keeps a checkpoint at every branch point
(`checkpoint.keep_steps`). A branch is an ordinary run directory seeded with that checkpoint (hard
links) and the trunk's metrics up to it; training then resumes it as after a kill. No JAX here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from lmscale import flops, results, runlog
from lmscale.schedule import decay_start
from lmscale.sweep.grid import Cell, human

TRUNK, BRANCH = "trunk", "branch"


def attach_trunks(cells: list[Cell]) -> list[Cell]:
    """Branch cells (WSD runs that differ only in their budget) grouped under one trunk cell each."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        key = dataclasses.replace(cell.cfg, train=dataclasses.replace(cell.cfg.train, tokens=0))
        groups.setdefault(repr(key.to_dict()), []).append(cell)
    out = []
    for branches in groups.values():
        branches.sort(key=lambda c: c.cfg.train.tokens)
        points = [decay_start(c.cfg.train, c.cfg.steps) for c in branches]
        longest = branches[-1]
        t, per_step = longest.cfg.train, longest.cfg.train.batch_size * longest.cfg.model.seq_len
        trunk_id = longest.run_id.replace(f"-T{human(t.tokens)}-", "-trunk-", 1)
        cfg = dataclasses.replace(
            longest.cfg,
            train=dataclasses.replace(t, schedule="constant", tokens=max(points) * per_step),
            checkpoint=dataclasses.replace(longest.cfg.checkpoint, keep_steps=sorted(set(points))),
        )
        out.append(dataclasses.replace(longest, run_id=trunk_id, cfg=cfg, role=TRUNK))
        out += [
            dataclasses.replace(c, role=BRANCH, trunk=trunk_id, branch_step=s)
            for c, s in zip(branches, points, strict=True)
        ]
    return out


def groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells in units that run together, in order of each unit's first cell: a trunk and its branches
    (trunk first, then its branches in their order), or one plain run."""
    units: dict[str, list[Cell]] = {}
    for cell in cells:
        units.setdefault(cell.trunk or cell.run_id, []).append(cell)
    return [sorted(unit, key=lambda c: c.role != TRUNK) for unit in units.values()]


# -- a branch's start --------------------------------------------------------------------------


def branch_point(trunk_dir: Path, step: int) -> Path:
    """The trunk's checkpoint at `step`: Orbax renames a finished save into place, so it is whole."""
    return Path(trunk_dir) / "checkpoints" / str(step)


def _checkpoints(run_dir: Path) -> list[int]:
    ckpt = Path(run_dir) / "checkpoints"
    return [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []


def started(run_dir: Path) -> bool:
    """Whether the branch has a checkpoint of its own (seeded or trained) or a final status."""
    status = (results.read_summary(run_dir) or {}).get("status")
    return status in ("completed", "diverged") or bool(_checkpoints(run_dir))


def blocked(cell: Cell, trunk_dir: Path) -> str | None:
    """Why the branch can never start (its trunk stopped before the branch point), or None."""
    if branch_point(trunk_dir, cell.branch_step).is_dir():
        return None
    summary = results.read_summary(trunk_dir) or {}
    status = summary.get("status")
    if status == "diverged":
        return f"trunk {cell.trunk} diverged at step {summary.get('steps')}, before the branch point"
    if status == "failed":
        return f"trunk {cell.trunk} failed: {summary.get('error')}"
    if status == "completed":
        return f"trunk {cell.trunk} has no checkpoint at the branch point {cell.branch_step}"
    return None


def seed(cell: Cell, trunk_dir: Path, run_dir: Path) -> None:
    """Give a branch that has no checkpoint the trunk's one at its branch point, and the trunk's
    metrics rows up to it that a from-scratch run would have logged; the checkpoint lands last."""
    if _checkpoints(run_dir):
        return
    s, t = cell.branch_step, cell.cfg.train
    rows = [
        r
        for r in runlog.read_jsonl(Path(trunk_dir) / "metrics.jsonl")
        if r["step"] <= s and r["step"] % (t.eval_every if r.get("split") else t.log_every) == 0
    ]
    runlog.write_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    staging = run_dir / f".branch-{s}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(branch_point(trunk_dir, s), staging, copy_function=_link)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    os.rename(staging, run_dir / "checkpoints" / str(s))


def _link(src: str, dst: str) -> None:
    """A hard link: Orbax never rewrites a finished checkpoint, so the branch shares the trunk's bytes."""
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not supported
        shutil.copy2(src, dst)


def record(cell: Cell, summary: dict) -> dict:
    """The summary with its place in the cooldown sweep: `role`, and for a branch its `trunk`,
    `branch_step` and `flops_spent` (its own steps; `tokens` and `flops` count from step 0)."""
    if cell.role == TRUNK:
        return summary | {"role": TRUNK}
    own = max((summary.get("steps") or 0) - cell.branch_step, 0)
    spent = own * flops.step_flops(cell.cfg)
    branch = {"role": BRANCH, "trunk": cell.trunk, "branch_step": cell.branch_step}
    return summary | branch | {"flops_spent": spent}


# -- what a cooldown sweep costs ---------------------------------------------------------------


def costs(plan: pd.DataFrame) -> dict:
    """A plan's FLOPs two ways: `flops`, every result's run from step 0 (what from-scratch runs to the
    same budgets would cost; trunks are no result), and `flops_spent`, what the sweep trains."""
    trunks = plan["role"] == TRUNK
    return {
        "flops": plan.loc[~trunks, "flops"].sum(),
        "flops_spent": plan["flops_spent"].sum(),
        "trunks": int(trunks.sum()),
        "branches": int((plan["role"] == BRANCH).sum()),
    }


def total_line(totals: dict) -> str | None:
    """The plan's total for a cooldown sweep, with the saving as a ratio; None for any other sweep."""
    if not totals["trunks"]:
        return None
    words = {"trunks": ("trunks", "trunk"), "branches": ("branches", "branch")}
    parts = [f"{totals[k]} {words[k][totals[k] == 1]}" for k in words]
    ratio = totals["flops_spent"] / totals["flops"]
    return (
        f"total: {totals['runs']} runs ({', '.join(parts)}), {totals['flops']:.2e} FLOPs from scratch, "
        f"{totals['flops_spent']:.2e} spent ({ratio:.2f}x)"
    )
