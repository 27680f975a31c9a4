"""Batched L-BFGS for small robust regressions: many starts and many resamples solved at once.

Every problem here has a handful of parameters and a few hundred points, so the work is in running
thousands of them together. `optax.lbfgs` is vmapped over starts (and over bootstrap weights), and
the whole batch is one jitted XLA program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

# log L_hat = log_pred(theta_P, logx_NxK): the model, in log space.
LogPred = Callable[[jax.Array, jax.Array], jax.Array]


def huber(r: jax.Array, delta: float) -> jax.Array:
    """Huber (1964): quadratic within delta, linear beyond; scipy.special.huber(delta, r)."""
    a = jnp.abs(r)
    return jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def huber_np(r: np.ndarray, delta: float) -> np.ndarray:
    """The same Huber loss in numpy, for baselines that run outside JAX."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def objective(log_pred: LogPred, delta: float) -> Callable:
    """sum_i w_i Huber_delta(log_pred(theta, x_i) - log L_i): Hoffmann et al. 2022, eq. (3)."""

    def f(theta_P, logx_NxK, logy_N, w_N):
        return jnp.sum(w_N * huber(log_pred(theta_P, logx_NxK) - logy_N, delta))

    return f


RUNAWAY = 1e4  # |parameter| in log units (e^1e4) beyond which an optimization has diverged


@functools.partial(jax.jit, static_argnames=("log_pred", "delta", "backtracking"))
def _lbfgs_batch(theta_SxP, w_SxN, logx_NxK, logy_N, *, log_pred, delta, max_iter, tol, backtracking):
    loss = objective(log_pred, delta)
    # backtracking=0 asks for the zoom line search (strong Wolfe conditions keep L-BFGS's curvature
    # pairs valid, which polishing needs); a few backtracking steps are cheaper for screening.
    if backtracking:
        linesearch = optax.scale_by_backtracking_linesearch(
            max_backtracking_steps=backtracking, store_grad=True
        )
    else:
        linesearch = optax.scale_by_zoom_linesearch(max_linesearch_steps=30)
    opt = optax.lbfgs(linesearch=linesearch)

    def solve(theta0_P, w_N):
        fun = functools.partial(loss, logx_NxK=logx_NxK, logy_N=logy_N, w_N=w_N)
        value_and_grad = optax.value_and_grad_from_state(fun)

        def step(carry):
            theta, state = carry
            value, grad = value_and_grad(theta, state=state)
            updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=fun)
            return optax.apply_updates(theta, updates), state

        def running(carry):
            theta, state = carry
            count = optax.tree.get(state, "count")
            grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
            # A start running away (|theta| past RUNAWAY, in log units) will not come back: it stops
            # there, unconverged, instead of holding every other lane of the batch to max_iter.
            bounded = jnp.all(jnp.abs(theta) < RUNAWAY)
            return (count == 0) | ((count < max_iter) & (grad_norm >= tol) & bounded)

        theta, state = jax.lax.while_loop(running, step, (theta0_P, opt.init(theta0_P)))
        value, grad = jax.value_and_grad(fun)(theta)
        return theta, value, optax.tree.norm(grad)

    return jax.vmap(solve)(theta_SxP, w_SxN)


MIN_POINTS, MIN_STARTS = 32, 8  # the smallest padded sizes: see padded_points and padded_starts


def _bucket(n: int, least: int) -> int:
    """n rounded up to a power of two, and to at least `least`."""
    return max(least, 1 << (n - 1).bit_length())


def _first_repeated(n: int, size: int) -> np.ndarray:
    """Row indices 0..n-1, then row 0 until there are `size`: what both paddings copy."""
    return np.concatenate([np.arange(n), np.zeros(size - n, int)])


def padded_points(logx_NxK, logy_N, w_SxN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points padded to a power of two (at least MIN_POINTS) with weight-0 copies of the first.

    A weight-0 point adds nothing to the objective or its gradient (as a bootstrap resample's undrawn
    points do), and one compiled solver then serves every data set up to that size: a report fits each
    law to several subsets (all runs, the held-out refit, the frontier, a bootstrap's polish rounds), and
    tracing and compiling the batched L-BFGS costs seconds where running it costs milliseconds. Not
    below 32 points: the screen runs every start of Hoffmann's 4,500 over every point, padded ones too.
    """
    logx_NxK, logy_N, w_SxN = np.asarray(logx_NxK), np.asarray(logy_N), np.asarray(w_SxN)
    n = len(logy_N)
    rows = _first_repeated(n, _bucket(n, MIN_POINTS))
    return logx_NxK[rows], logy_N[rows], np.pad(w_SxN, ((0, 0), (0, len(rows) - n)))


def padded_starts(starts_SxP, w_SxN) -> tuple[np.ndarray, np.ndarray]:
    """The starts (and their weight rows) padded with copies of the first, to a power of two (at least
    MIN_STARTS) or, past 512, to a multiple of 512; the caller keeps the first S results. The number of
    starts varies from fit to fit (the bootstrap's resamples, and among them those a polish round takes
    on), and each count would compile the solver again. A copy runs in its own lane of the batch and
    changes no other lane's result."""
    n = len(starts_SxP)
    rows = _first_repeated(n, _bucket(n, MIN_STARTS) if n <= 512 else -(-n // 512) * 512)
    return np.asarray(starts_SxP)[rows], np.asarray(w_SxN)[rows]


def minimize(
    log_pred: LogPred,
    starts_SxP: np.ndarray,
    logx_NxK: np.ndarray,
    logy_N: np.ndarray,
    weights_SxN: np.ndarray | None = None,
    delta: float = 1e-3,
    max_iter: int = 500,
    tol: float = 1e-10,
    dtype=np.float64,
    backtracking: int = 15,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run L-BFGS from every start (row), each with its own point weights. Returns theta, f, |grad|."""
    S = len(starts_SxP)
    w = np.ones((S, len(logy_N))) if weights_SxN is None else weights_SxN
    logx_NxK, logy_N, w = padded_points(logx_NxK, logy_N, w)
    starts_SxP, w = padded_starts(starts_SxP, w)
    with jax.enable_x64(dtype == np.float64):
        cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
        theta, f, g = _lbfgs_batch(
            cast(starts_SxP), cast(w), cast(logx_NxK), cast(logy_N),
            log_pred=log_pred, delta=delta, max_iter=max_iter, tol=tol, backtracking=backtracking,
        )  # fmt: skip
        return tuple(np.asarray(a, np.float64)[:S] for a in (theta, f, g))


# Polish steps per start. A fit whose E runs to its bound creeps there: cpu_demo's held-out approach-3
# fit needed between 500 and 1000 steps to reach |grad| < 1e-6, and was refused as unconverged at 500.
# The loop stops at convergence, so the cap costs nothing on a fit that converges sooner.
POLISH_ITER = 2000


def multistart(
    log_pred: LogPred,
    starts_SxP: np.ndarray,
    logx_NxK: np.ndarray,
    logy_N: np.ndarray,
    delta: float = 1e-3,
    screen_iter: int = 15,
    keep: int = 8,
) -> tuple[np.ndarray, float, float]:
    """Best optimum over a grid of starts, in two stages, as Hoffmann et al. run L-BFGS from every start.

    Screen: every start takes `screen_iter` L-BFGS steps in float32 (cheap, and enough to land in its
    basin). Polish: the `keep` lowest take float64 L-BFGS to |grad| < 1e-9 (at most POLISH_ITER steps).
    Returns the best theta, its objective and its gradient norm.

    No start is dropped for its objective at the start: on a wide grid the start whose basin holds the
    optimum can begin orders of magnitude off the data. Keeping only the 256 lowest of Hoffmann's 4,500
    missed the optimum on 2 of 24 simulated sweeps, with 4 to 7 times its objective (B or E at a bound,
    a meaningless a); screening every start found it on all 24, in about the same time.
    """
    if len(starts_SxP) > keep:
        theta, f, _ = minimize(
            log_pred, starts_SxP, logx_NxK, logy_N, delta=delta, max_iter=screen_iter, tol=1e-7,
            dtype=np.float32, backtracking=3,
        )  # fmt: skip
        finite = np.isfinite(f) & np.isfinite(theta).all(axis=1)
        order = np.argsort(np.where(finite, f, np.inf))[:keep]
        starts_SxP = np.where(finite[order, None], theta[order], starts_SxP[order])
    theta, f, g = minimize(
        log_pred, starts_SxP, logx_NxK, logy_N, delta=delta, max_iter=POLISH_ITER, tol=1e-9, backtracking=0
    )
    f = np.where(np.isfinite(f) & np.isfinite(theta).all(axis=1), f, np.inf)
    best = int(np.argmin(f))
    return theta[best], float(f[best]), float(g[best])


def bootstrap_weights(
    n: int, resamples: int, seed: int | np.random.Generator, labels=None, min_distinct: int = 1
) -> np.ndarray:
    """Multinomial counts: resampling points with replacement as integer weights [R, n].

    A resample that draws fewer than `min_distinct` distinct `labels` (say, x values) is drawn again,
    so that every resample can identify the law fitted to it.
    """
    rng = np.random.default_rng(seed)
    codes = np.unique(np.arange(n) if labels is None else np.asarray(labels), return_inverse=True)[1]
    if codes.max() + 1 < min_distinct:
        raise ValueError(f"{codes.max() + 1} distinct labels; resamples need {min_distinct}")
    point_in_label_NxU = np.eye(codes.max() + 1)[codes.ravel()]

    def draw(count: int) -> np.ndarray:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=count).astype(np.float64)

    def too_few(w_RxN: np.ndarray) -> np.ndarray:
        return ((w_RxN @ point_in_label_NxU) > 0).sum(axis=1) < min_distinct

    w_RxN = draw(resamples)
    redraw = too_few(w_RxN)
    while redraw.any():
        w_RxN[redraw] = draw(int(redraw.sum()))
        redraw = too_few(w_RxN)
    return w_RxN
