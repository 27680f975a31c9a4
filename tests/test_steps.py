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


def test_every_budget_of_a_shape_compiles_to_one_train_step():
    """The schedule is an input: a cooldown trunk and its branches (other budgets, other schedules) lower
    to the same program, so the compilation cache serves them all from one compile."""
    model = {"n_layers": 1, "d_model": 32, "n_heads": 2, "seq_len": 16}
    runs = [
        {"tokens": 8 * 16 * 40, "schedule": "constant", "warmup_steps": 4},
        {"tokens": 8 * 16 * 10, "schedule": "wsd", "warmup_steps": 4},
        {"tokens": 8 * 16 * 30, "schedule": "cosine"},
    ]
    texts, tables = [], []
    for train in runs:
        cfg = config.from_dict({"model": model, "train": {"batch_size": 8, **train}})
        steps = build(cfg, sharding.make_mesh(cfg.mesh))
        texts.append(steps.lower_train_step().as_text())
        tables.append([steps.lrs[i] for i in range(len(steps.lrs))])
    assert texts[0] == texts[1] == texts[2]
    assert [len(t) for t in tables] == [41, 11, 31]  # every update's lr, 0..steps
    assert tables[1][5] == tables[0][5] == max(tables[1]) and tables[1][-1] < tables[1][5]  # WSD decays


def test_the_logged_lr_is_the_schedules_entry_for_each_update():
    model = {"n_layers": 1, "d_model": 32, "n_heads": 2, "seq_len": 16}
    cfg = config.from_dict(
        {"model": model, "train": {"batch_size": 8, "tokens": 8 * 16 * 6, "warmup_frac": 0.5}}
    )
    steps = build(cfg, sharding.make_mesh(cfg.mesh))
    state, source, lrs = steps.init(0), make_source(cfg, "train"), []
    for _ in range(3):
        state, metrics = steps.train_step(state, steps.put_batch(next(source)))
        lrs.append(float(metrics["lr"]))
    assert lrs == [float(steps.lrs[i]) for i in range(3)] and lrs[0] == 0.0 < lrs[1] < lrs[2]  # linear warmup


def test_a_huge_budget_reads_its_schedule_block_by_block():
    from lmscale.config import TrainConfig
    from lmscale.schedule import LearningRates, schedule

    t = TrainConfig(tokens=10**15, lr=1e-3, warmup_frac=0.01)
    total = 2 * 10**9  # the int32 step counter's range; a table of every update would need 8 GB
    lrs = LearningRates(t, total)
    for step in (0, 5, 10**9, total):
        assert lrs[step] == np.float32(schedule(t, total)(step))
