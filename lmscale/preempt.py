"""SIGTERM (preemption, `scancel`, `kill`) as a request to checkpoint and stop, agreed by every process."""

from __future__ import annotations

import signal

import jax
import numpy as np


class StopRequested:
    """SIGTERM (preemption, `scancel`, `kill`) asks the loop to checkpoint and exit at the next step.

    With several processes the signal reaches each at its own moment, but all must stop after the same
    step: one saving (a collective) while another runs the next step would hang both. Their flags are
    therefore combined every `sync_every` steps (the logged steps, where the loop waits on the step's
    metrics anyway), and every process stops at the first such step after any of them was asked to.
    """

    def __init__(self, sync_every: int = 1):
        self.requested = False
        self.sync_every = sync_every

    def now(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step`: the same answer in every process."""
        if jax.process_count() == 1:
            return self.requested
        if step % self.sync_every:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)
