"""AdamW with warmup and cosine decay over the run's own budget, global-norm clipping."""

from __future__ import annotations

import jax
import optax

from lmscale.config import TrainConfig


def schedule(t: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup, then cosine decay to `final_lr_frac` of peak at exactly `total_steps`.

    The decay length is the run's own budget: Hoffmann et al. 2022 show that a cosine cycle longer
    than the run overestimates its loss and biases the fitted exponents.
    """
    warmup = int(t.warmup_frac * total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=t.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=t.lr * t.final_lr_frac,
    )


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
