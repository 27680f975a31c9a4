"""AdamW on the run's learning-rate schedule (lmscale.schedule), global-norm clipping."""

from __future__ import annotations

import jax
import optax

from lmscale.config import TrainConfig
from lmscale.schedule import schedule


def _decay_mask(params):
    # Weight decay on matrices only: norm scales (1-D per layer, 2-D when scanned) stay undecayed.
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(getattr(k, "key", None) == "scale" for k in path), params
    )


def optimizer(t: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    chain = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
    chain.append(
        optax.adamw(
            schedule(t, total_steps),
            b1=t.b1,
            b2=t.b2,
            eps=t.eps,
            weight_decay=t.weight_decay,
            mask=_decay_mask,
        )
    )
    return optax.chain(*chain)
