"""Orbax checkpoints of the train state plus a JSON record of everything else a resume needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


def retained_steps(steps: int, every: int, keep: int, keep_period: int = 0, keep_steps=()) -> list[int]:
    """The checkpoints an uninterrupted run of `steps` steps keeps: it saves every `every` steps, at the
    last and at `keep_steps`, and keeps the newest `keep` saves, every multiple of `keep_period` and
    `keep_steps`."""
    saves = sorted({*range(every, steps + 1, every), steps, *(s for s in keep_steps if s <= steps)})
    kept = (s for s in saves if (keep_period and s % keep_period == 0) or s in keep_steps)
    return sorted({*saves[-keep:], *kept})


class Checkpointer:
    """Keep-last-k, plus every `keep_period` steps and the `keep_steps`; atomic (Orbax writes to a
    temporary directory and renames on commit)."""

    def __init__(self, directory: Path, keep: int, async_save: bool, keep_period: int = 0, keep_steps=()):
        keeping = {"max_to_keep": keep, "keep_period": keep_period or None}
        if keep_steps:  # Orbax takes explicit steps only as a policy, which replaces the two options
            policies = [pp.LatestN(keep), pp.CustomSteps(list(keep_steps))]
            policies += [pp.EveryNSteps(keep_period)] if keep_period else []
            keeping = {"preservation_policy": pp.AnyPreservationPolicy(policies)}
        options = ocp.CheckpointManagerOptions(**keeping, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, extra: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra))
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()
        )
        restored = self.manager.restore(step, args=args)
        return restored["state"], dict(restored["extra"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
