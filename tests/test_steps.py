import jax
import numpy as np

from lmscale import config, sharding
from lmscale.data.pipeline import make_source
from lmscale.step_fns import build


def _one_step(accum: int):
    model = {"n_layers": 2, "d_model": 32, "n_heads": 2, "seq_len": 16}
    # eps well above float noise: a gradient that is zero up to rounding must not take a full +-lr step.
    train = {"batch_size": 8, "tokens": 8 * 16 * 10, "grad_accum": accum, "eps": 1e-4}
    cfg = config.from_dict({"model": model, "train": train})
    steps = build(cfg, sharding.make_mesh(cfg.mesh))
    state = steps.init(0)
    batch = steps.put_batch(next(make_source(cfg, "train")))
    state, metrics = steps.train_step(state, batch)
    return jax.device_get(metrics), jax.device_get(state.params)


def test_gradient_accumulation_matches_one_big_batch():
    m1, p1 = _one_step(1)
    m4, p4 = _one_step(4)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    # AdamW's first update is about lr * sign(g): far below lr (3e-3) means the same step.
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_eval_loss_of_a_fresh_model_is_near_uniform():
    # Unit-variance logits at init cost about 0.5 nat over the uniform ln(256).
    cfg = config.from_dict({"model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "seq_len": 16}})
    steps = build(cfg, sharding.make_mesh(cfg.mesh))
    state = steps.init(0)
    batch = steps.put_batch(next(make_source(cfg, "val")))
    assert np.log(256) <= float(steps.eval_loss(state.params, batch)) < np.log(256) + 1.0
