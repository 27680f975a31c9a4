"""AdamW with global-norm clipping, at a learning rate given per step (lmscale.schedule's table)."""

from __future__ import annotations

import jax
import optax

from lmscale.config import TrainConfig


def _decay_mask(params):
    # Weight decay on matrices only: norm scales (1-D per layer, 2-D when scanned) stay undecayed.
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(getattr(k, "key", None) == "scale" for k in path), params
    )


def optimizer(t: TrainConfig, lr: float | jax.Array) -> optax.GradientTransformation:
    """`lr` is a number or a traced scalar (the step's entry of the schedule): the state does not
    depend on it, so a state made with any lr serves every step."""
    chain = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
    chain.append(
        optax.adamw(
            lr,
            b1=t.b1,
            b2=t.b2,
            eps=t.eps,
            weight_decay=t.weight_decay,
            mask=_decay_mask,
        )
    )
    return optax.chain(*chain)
