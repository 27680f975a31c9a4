"""The batched solver's padding: weight-0 points change nothing, and data sets of nearby sizes share one
compiled program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import laws, optimize

pytestmark = pytest.mark.fits  # optimised XLA: see tests/conftest.py


def _points(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    logx = np.log(np.column_stack([10 ** rng.uniform(4, 6, n), 10 ** rng.uniform(6, 8, n)]))
    logx -= logx.mean(axis=0)
    logy = np.log(0.7 + 3 / np.exp(logx[:, 0]) ** 0.3 + 2 / np.exp(logx[:, 1]) ** 0.4)
    return logx, logy * np.exp(0.01 * rng.standard_normal(n))


def test_padded_points_leave_the_objective_and_its_gradient_unchanged():
    logx, logy = _points(23)
    w = optimize.bootstrap_weights(23, 3, 1)
    px, py, pw = optimize.padded_points(logx, logy, w)
    assert px.shape == (32, 2) and py.shape == (32,) and pw.shape == (3, 32)
    assert (pw[:, 23:] == 0).all() and (pw[:, :23] == w).all()
    loss = optimize.objective(laws.chinchilla_log_pred, 1e-3)
    theta = jnp.array([-0.5, 1.0, 0.7, 0.3, 0.4])
    with jax.enable_x64(True):
        for row in range(3):
            plain = jax.value_and_grad(loss)(theta, logx, logy, w[row])
            padded = jax.value_and_grad(loss)(theta, px, py, pw[row])
            np.testing.assert_allclose(padded[0], plain[0], rtol=1e-14)
            np.testing.assert_allclose(padded[1], plain[1], rtol=1e-12)


def test_data_sets_of_nearby_sizes_share_one_compiled_solver():
    starts = np.tile([0.0, 1.0, 0.5, 0.3, 0.3], (4, 1))
    before = None
    for n in (5, 23, 32):  # one bucket: 32 points
        logx, logy = _points(n, seed=n)
        theta, f, g = optimize.minimize(laws.chinchilla_log_pred, starts, logx, logy, max_iter=50)
        assert np.isfinite(theta).all() and np.isfinite(f).all()
        size = optimize._lbfgs_batch._cache_size()
        assert before is None or size == before, f"{n} points compiled the solver again"
        before = size
    assert optimize.padded_points(*_points(33), np.ones((1, 33)))[1].shape == (64,)


def test_start_counts_up_to_a_power_of_two_share_one_compiled_solver_and_keep_each_result():
    """A bootstrap polishes whichever resamples stalled, a different count each time: padded with copies
    of the first start, counts 9 to 16 run one program, and each start's result is its own."""
    logx, logy = _points(40)
    rng = np.random.default_rng(0)
    starts = np.column_stack(
        [rng.normal(0, 0.5, (16, 2)), rng.uniform(-1, 0, 16), rng.uniform(0.2, 0.5, (16, 2))]
    )
    w = optimize.bootstrap_weights(40, 16, 2)
    solve = lambda k: optimize.minimize(laws.chinchilla_log_pred, starts[:k], logx, logy, w[:k], max_iter=100)  # noqa: E731
    full = solve(16)
    size = optimize._lbfgs_batch._cache_size()
    for k in (9, 13):
        part = solve(k)
        assert all(a.shape[0] == k for a in part)
        for a, b in zip(part, full, strict=True):
            np.testing.assert_allclose(a, b[:k], rtol=1e-9, atol=1e-12)
    assert optimize._lbfgs_batch._cache_size() == size, "a start count in the same bucket compiled again"
