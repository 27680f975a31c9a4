"""Approach 2's exponent from every IsoFLOP profile at once: a parabola in log N per budget whose
vertices all lie on one line, log N* = m + a log C.

Taking each budget's vertex on its own and then regressing log N* on log C (Hoffmann et al. 2022,
3.2) is biased on lopsided grids: a noisy, flat profile throws its vertex past the end of its sizes,
the budget is excluded, and the budgets that remain carry minima displaced the other way. The joint
fit needs no vertex per budget: a flat profile simply says little about the line, and one whose
minimum lies past its sizes still says which side the line passes. It is the least-squares fit of
approach 2's own model: log L_gm = L_g + c_g (log N_gm - m - a log C_g)^2, c_g >= 0.
"""

from __future__ import annotations

import numpy as np

# The line is found by a grid search over (m, a) that zooms in: each round a GRID x GRID grid over
# +-2 steps of the previous one. For fixed (m, a) every budget's (L_g, c_g) is a 2-parameter weighted
# least-squares fit, solved in closed form from moments of log N (variable projection).
GRID, ROUNDS = 21, 10
A_RANGE = (-1.0, 2.0)  # the exponent's search range; physical values lie in (0, 1)


def _moments(x_GxM, y_RxGxM, w_RxGxM):
    """Weighted sums over sizes: of w x^j (j = 0..4) [R, G, 5], w x^j y (j = 0..2) [R, G, 3], w y^2."""
    xp = x_GxM[..., None] ** np.arange(5)  # [G, M, 5]
    Sx = np.einsum("rgm,gmj->rgj", w_RxGxM, xp)
    Sxy = np.einsum("rgm,rgm,gmj->rgj", w_RxGxM, y_RxGxM, xp[..., :3])
    return Sx, Sxy, np.einsum("rgm,rgm->rg", w_RxGxM, y_RxGxM**2)


def _rss(v_RxKxG, Sx, Sxy, Syy):
    """Residual sum of squares of the best L_g + c_g (x - v_g)^2, c_g >= 0, summed over budgets [R, K]."""
    v = v_RxKxG
    s = [Sx[:, None, :, j] for j in range(5)]
    t = [Sxy[:, None, :, j] for j in range(3)]
    # q = (x - v)^2: its sums S1 = sum w q, S2 = sum w q^2, T1 = sum w q y, from the moments of x
    S0 = s[0]
    S1 = s[2] - 2 * v * s[1] + v**2 * s[0]
    S2 = s[4] - 4 * v * s[3] + 6 * v**2 * s[2] - 4 * v**3 * s[1] + v**4 * s[0]
    T0, T1 = t[0], t[2] - 2 * v * t[1] + v**2 * t[0]
    with np.errstate(all="ignore"):
        det = S0 * S2 - S1**2
        c = (S0 * T1 - S1 * T0) / det
        flat = Syy[:, None] - T0**2 / S0  # c = 0: the mean alone
        fitted = Syy[:, None] - (T0 * (S2 * T0 - S1 * T1) + T1 * (S0 * T1 - S1 * T0)) / det
        rss = np.where((c > 0) & (det > 0), fitted, flat)
    return np.where(S0 > 0, rss, 0.0).sum(-1)


def joint_line(logC_G, x_GxM, logL_RxGxM, w_RxGxM) -> tuple[np.ndarray, np.ndarray]:
    """The line log N* = m + a (log C - mean log C) through every profile's vertex: a, m [R].

    x_GxM is log N; w_RxGxM weighs each point (runs at that size, 0 where a size is not used)."""
    x0 = float(np.sum(x_GxM * (w_RxGxM[0] > 0)) / max(np.sum(w_RxGxM[0] > 0), 1))
    x = x_GxM - x0
    with np.errstate(all="ignore"):  # centre log L per budget: the intercepts absorb it, and it keeps
        mean = (w_RxGxM * logL_RxGxM).sum(-1, keepdims=True) / w_RxGxM.sum(-1, keepdims=True)
    y = np.where(w_RxGxM > 0, logL_RxGxM - np.nan_to_num(mean), 0.0)  # the sums well scaled
    Sx, Sxy, Syy = _moments(x, y, w_RxGxM)
    lc = logC_G - logC_G.mean()
    used = w_RxGxM[0] > 0
    span = float(x[used].max() - x[used].min()) if used.any() else 1.0
    R = len(logL_RxGxM)
    m_c, a_c = np.zeros(R), np.full(R, np.mean(A_RANGE))
    m_half, a_half = np.full(R, span), np.full(R, (A_RANGE[1] - A_RANGE[0]) / 2)
    u = np.linspace(-1, 1, GRID)
    for _ in range(ROUNDS):
        m_RxK = np.repeat(m_c[:, None] + m_half[:, None] * u, GRID, axis=1)  # m outer, a inner
        a_RxK = np.tile(a_c[:, None] + a_half[:, None] * u, (1, GRID))
        rss = _rss(m_RxK[..., None] + a_RxK[..., None] * lc, Sx, Sxy, Syy)
        best = np.argmin(np.where(np.isfinite(rss), rss, np.inf), axis=1)
        m_c, a_c = m_RxK[np.arange(R), best], a_RxK[np.arange(R), best]
        m_half, a_half = m_half * 4 / (GRID - 1), a_half * 4 / (GRID - 1)  # +-2 steps of this grid
    return a_c, m_c + x0
