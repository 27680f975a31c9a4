"""Orbax checkpoints of the train state plus a JSON record of everything else a resume needs.

Each save records a digest of the state it wrote (a position-weighted uint32 sum of every leaf's bits,
computed on the devices, so sharded and multi-host states need no gather) and the loss of its parameters
on one fixed validation batch; `restore` checks the digest and `train` the loss, so a checkpoint damaged
on disk is never trusted. One that fails is set aside (renamed, never deleted) and the previous is tried.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmscale.config import CheckpointConfig, ConfigError

SET_ASIDE = "checkpoints_set_aside"  # beside checkpoints/: checkpoints that failed verification


class CheckpointCorrupt(Exception):
    """A checkpoint whose contents are not what its save wrote."""


@jax.jit
def _digest(tree: Any) -> list:
    def leaf(x: jax.Array) -> jax.Array:
        x = jnp.ravel(x)
        if x.dtype == jnp.bool_ or x.dtype.itemsize < 4:
            bits = (
                x.astype(jnp.uint32) if x.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(x, jnp.uint32)
            )
        else:  # 4 bytes: one word; 8 bytes: two
            bits = jnp.ravel(jax.lax.bitcast_convert_type(x, jnp.uint32))
        # odd weights that depend on the position: any single changed word changes the sum
        weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
        return jnp.sum(bits * weights, dtype=jnp.uint32)

    return [leaf(x) for x in jax.tree.leaves(tree)]


def digest(state: Any) -> list[int]:
    """One uint32 per leaf of `state`, the same for the same bits on any mesh."""
    return [int(np.asarray(d.addressable_data(0))) for d in _digest(state)]


def check(c: CheckpointConfig) -> None:
    """ConfigError (one line) for a retention policy that cannot be kept."""
    if c.keep_period % c.every_steps:
        raise ConfigError(
            f"checkpoint.keep_period={c.keep_period}: must be 0 or a multiple of "
            f"checkpoint.every_steps={c.every_steps}"
        )


def retained_steps(steps: int, every: int, keep: int, keep_period: int = 0, keep_steps=()) -> list[int]:
    """The checkpoints an uninterrupted run of `steps` steps keeps: it saves every `every` steps, at the
    last and at `keep_steps`, and keeps the newest `keep` saves, every multiple of `keep_period` and
    `keep_steps`."""
    saves = sorted({*range(every, steps + 1, every), steps, *(s for s in keep_steps if s <= steps)})
    kept = (s for s in saves if (keep_period and s % keep_period == 0) or s in keep_steps)
    return sorted({*saves[-keep:], *kept})


class Checkpointer:
    """Keep-last-k, plus every `keep_period` steps and the `keep_steps`; atomic (Orbax writes to a
    temporary directory and renames on commit).

    In one process the Orbax manager (and Orbax's 0.2 s import) waits for the first save or for a
    checkpoint directory on disk, so a run that saves nothing never loads it. Several processes build it
    at once: its construction synchronises them.
    """

    def __init__(self, directory: Path, keep: int, async_save: bool, keep_period: int = 0, keep_steps=()):
        self.directory = Path(directory).absolute()
        self._options = (keep, async_save, keep_period, tuple(keep_steps))
        self._manager = None
        if jax.process_count() > 1:
            self._build()

    def _build(self) -> Any:
        import orbax.checkpoint as ocp
        from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

        keep, async_save, keep_period, keep_steps = self._options
        keeping = {"max_to_keep": keep, "keep_period": keep_period or None}
        if keep_steps:  # Orbax takes explicit steps only as a policy, which replaces the two options
            policies = [pp.LatestN(keep), pp.CustomSteps(list(keep_steps))]
            policies += [pp.EveryNSteps(keep_period)] if keep_period else []
            keeping = {"preservation_policy": pp.AnyPreservationPolicy(policies)}
        options = ocp.CheckpointManagerOptions(**keeping, enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    @property
    def manager(self) -> Any:
        return self._manager if self._manager is not None else self._build()

    def _on_disk(self) -> bool:
        """Whether there can be anything to read or clean: a manager, or a checkpoint directory."""
        return self._manager is not None or self.directory.exists()

    def latest_step(self) -> int | None:
        return self.manager.latest_step() if self._on_disk() else None

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps()) if self._on_disk() else []

    def save(self, step: int, state: Any, extra: dict, probe_loss: float | None = None) -> None:
        """Save `state` and `extra`, with the state's digest and `probe_loss` (its parameters' loss on the
        fixed validation batch) under extra's `verify` key."""
        import orbax.checkpoint as ocp

        extra = extra | {"verify": {"digest": digest(state), "probe_loss": probe_loss}}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra))
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs); CheckpointCorrupt
        if the state's digest differs from the one saved. extra's `verify` holds the saved probe loss."""
        import orbax.checkpoint as ocp

        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()
        )
        restored = self.manager.restore(step, args=args)
        state, extra = restored["state"], dict(restored["extra"] or {})
        saved = (extra.get("verify") or {}).get("digest")
        if saved is not None and saved != digest(state):  # checkpoints older than the digest have none
            bad = sum(a != b for a, b in zip(saved, digest(state), strict=False))
            raise CheckpointCorrupt(
                f"the digest of {bad} of {len(saved)} state arrays differs from the save's"
            )
        return state, extra

    def restore_newest(
        self, abstract_state: Any, check: Callable[[Any, dict], None], run_dir: Path
    ) -> tuple[int, Any, dict] | None:
        """(step, state, extra) of the newest checkpoint that restores, matches its digest and passes
        `check`, or None. Each newer one that fails is set aside, with one line on stderr."""
        for step in reversed(self.all_steps()):
            try:
                state, extra = self.restore(step, abstract_state)
                check(state, extra)
                return step, state, extra
            except Exception as e:  # noqa: BLE001 - damaged on disk: any error of the restore means unusable
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                where = self.set_aside(step) if jax.process_index() == 0 else "by process 0"
                print(
                    f"lmscale train: checkpoint {step} of '{run_dir}' is unusable ({reason}); set aside "
                    f"as '{where}', trying the one before it",
                    file=sys.stderr,
                )
        return None

    def remove_partial(self) -> None:
        """Delete the temporary directories of saves that never committed (a kill or a full disk mid-save):
        they are no checkpoint, and Orbax would count them against `keep`. Only for the run's one writer,
        with no save in flight."""
        if not self._on_disk():
            return
        for tmp in Path(self.manager.directory).glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        self.manager.reload()

    def set_aside(self, step: int) -> Path:
        """Move checkpoint `step` out of the manager's sight (never deleted); returns where it went."""
        self.manager.wait_until_finished()
        source = Path(self.manager.directory) / str(step)
        target = source.parent.parent / SET_ASIDE / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(exist_ok=True)
        source.rename(target)
        self.manager.reload()
        return target

    def close(self) -> None:
        if self._manager is None:
            return
        self.manager.wait_until_finished()
        self.manager.close()
