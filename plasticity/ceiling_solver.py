"""Batched least-squares solver behind the Plasticity-Ceiling fit (`plasticity.ceiling`), pure numpy/scipy.

It fits gains over P_sft, y = P - P_sft, at log-compute lx with theta = (pl, log_c, b, eps):

    gain(lx) = eps + (pl - eps) * expit(b * (lx - log_c))

which is Eq. 2 less P_sft, with pl = PL_rl and log_c = log C_mid. A profile grid over (log_c, b) finds the
start (pl and eps enter linearly, so they are solved in closed form at every grid point); Levenberg-Marquardt
refines it. Every function takes a batch: all candidate settings of a branch, or all bootstrap resamples, are
fitted at once, each row with its own 0/1 weights saying which points it fits. `least_trimmed_squares` adds
the C-steps of least trimmed squares on top. `r2` and `rmse` score a fit.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

MAX_STEEPNESS = 10.0
_B_GRID = np.geomspace(0.1, 9.5, 24)


def gain(lx, theta):
    """Gain over P_sft at log-compute lx for theta (pl, log_c, b, eps), or a batch of thetas [R, 4]."""
    pl, log_c, b, eps = (np.asarray(theta, dtype=float)[..., k, None] for k in range(4))
    return eps + (pl - eps) * expit(b * (lx - log_c))


def grid_start(lx, y, w, free_eps: bool, fixed_pl: float | None, bounds):
    """Best (pl, log_c, b, eps) per row of y [R, n] (weights w) on a (log_c, b) grid; pl and eps enter
    linearly, so they are solved in closed form at every grid point."""
    log_cs = np.linspace(bounds[0] + 0.5, bounds[1] - 0.5, 40)
    s = expit(_B_GRID[:, None, None] * (lx - log_cs[:, None]))  # [b, c, point]
    wy = w * y
    ss, sy = np.einsum("rn,bcn->rbc", w, s * s), np.einsum("rn,bcn->rbc", wy, s)
    pl = np.full_like(ss, fixed_pl) if fixed_pl is not None else sy / np.maximum(ss, 1e-300)
    eps, a, c, ty = np.zeros_like(ss), 0.0, 0.0, 0.0
    if free_eps and fixed_pl is None:
        t = 1 - s
        a, c, ty = (
            np.einsum("rn,bcn->rbc", w, t * t),
            np.einsum("rn,bcn->rbc", w, t * s),
            np.einsum("rn,bcn->rbc", wy, t),
        )
        det = a * ss - c * c
        ok = det > 1e-12 * a * ss
        eps_free = np.where(ok, (ss * ty - c * sy) / np.where(ok, det, 1.0), 0.0)
        pl_free = np.where(ok, (a * sy - c * ty) / np.where(ok, det, 1.0), pl)
        use = eps_free > 0  # eps >= 0: otherwise the eps = 0 solution is the constrained optimum
        pl, eps = np.where(use, pl_free, pl), np.where(use, eps_free, 0.0)
    yy = np.sum(wy * y, 1)[:, None, None]
    sse = eps**2 * a + 2 * eps * pl * c + pl**2 * ss - 2 * eps * ty - 2 * pl * sy + yy
    i, j = np.unravel_index(sse.reshape(len(y), -1).argmin(1), ss.shape[1:])
    rows = np.arange(len(y))
    return np.stack([pl[rows, i, j], log_cs[j], _B_GRID[i], eps[rows, i, j]], axis=1)


# Levenberg-Marquardt runs unconstrained on q: b = 10 * expit(u) keeps 0 < b < 10, eps = v**2 keeps eps >= 0,
# and log_c = lo + span * expit(w) keeps C_mid within the bounds the caller gives (near the observed compute).


def _logit(p):
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def _to_free(theta, free_eps, fixed_pl, lo, span):
    pl, log_c, b, eps = theta.T
    cols = [] if fixed_pl is not None else [pl]
    cols += [_logit((log_c - lo) / span), _logit(b / MAX_STEEPNESS)]
    return np.stack(cols + ([np.sqrt(np.maximum(eps, 1e-8))] if free_eps else []), axis=1)


def _from_free(q, free_eps, fixed_pl, lo, span):
    k = 0 if fixed_pl is not None else 1
    pl = np.full(len(q), fixed_pl) if fixed_pl is not None else q[:, 0]
    eps = q[:, k + 2] ** 2 if free_eps else np.zeros(len(q))
    return np.stack([pl, lo + span * expit(q[:, k]), MAX_STEEPNESS * expit(q[:, k + 1]), eps], axis=1)


def _residual_jacobian(q, lx, y, sw, free_eps, fixed_pl, lo, span):
    pl, log_c, b, eps = (col[:, None] for col in _from_free(q, free_eps, fixed_pl, lo, span).T)
    s = expit(b * (lx - log_c))
    ds = s * (1 - s) * (pl - eps)
    w = (log_c - lo) / span
    cols = [] if fixed_pl is not None else [s]
    cols += [-b * ds * span * w * (1 - w), (lx - log_c) * ds * b * (1 - b / MAX_STEEPNESS)]
    if free_eps:
        cols.append((1 - s) * 2 * q[:, -1:])
    return sw * (eps + (pl - eps) * s - y), np.stack(cols, axis=2) * sw[..., None]


def least_squares(lx, y, free_eps: bool, bounds, start=None, fixed_pl=None, weights=None, iters=200):
    """Least-squares theta for gains y ([n] or a batch [R, n]) at log-compute lx, by Levenberg-Marquardt.

    bounds (lo, hi) confine log_c. weights (0/1 per point, like y) select the points each row fits. Starts
    from `start` ([4] or [R, 4]) or from the best point of a profile grid. fixed_pl holds pl at that value.
    """
    single = np.ndim(y) == 1
    y = np.atleast_2d(np.asarray(y, dtype=float))
    w = np.ones_like(y) if weights is None else np.broadcast_to(np.asarray(weights, dtype=float), y.shape)
    if start is None:
        start = grid_start(lx, y, w, free_eps, fixed_pl, bounds)
    start = np.broadcast_to(np.asarray(start, dtype=float), (len(y), 4))
    lo, span = bounds[0], bounds[1] - bounds[0]
    args = (lx, y, np.sqrt(w), free_eps, fixed_pl, lo, span)
    q = _to_free(start, free_eps, fixed_pl, lo, span)
    r, jac = _residual_jacobian(q, *args)
    cost, lam = np.sum(r * r, 1), np.full(len(y), 1e-3)
    finished, eye = np.zeros(len(y), dtype=bool), np.eye(q.shape[1])
    for _ in range(iters):
        jtj = np.einsum("rni,rnj->rij", jac, jac)
        diag = np.einsum("rii->ri", jtj)
        diag = diag + 1e-9 * (1 + diag.max(1, keepdims=True))  # Marquardt scaling, never singular
        grad = np.einsum("rni,rn->ri", jac, r)
        step = np.linalg.solve(jtj + (lam[:, None] * diag)[:, :, None] * eye, -grad[..., None])[..., 0]
        r_new, jac_new = _residual_jacobian(q + step, *args)
        cost_new = np.sum(r_new * r_new, 1)
        better = (cost_new < cost) & ~finished
        small = np.abs(step).max(1) <= 1e-7 * (1 + np.abs(q).max(1))
        at_minimum = ~better & ((lam > 1e8) | (np.abs(cost_new - cost) <= 1e-12 * cost))
        finished |= at_minimum | (better & ((cost - cost_new <= 1e-10 * cost) | small))
        q = np.where(better[:, None], q + step, q)
        r, jac = np.where(better[:, None], r_new, r), np.where(better[:, None, None], jac_new, jac)
        cost, lam = np.where(better, cost_new, cost), np.where(better, lam / 3, lam * 4)
        if finished.all():
            break
    theta = _from_free(q, free_eps, fixed_pl, lo, span)
    return theta[0] if single else theta


def least_trimmed_squares(lx, ys, free_eps: bool, bounds, start, allowed, trim_fractions, max_steps=20):
    """Least trimmed squares for a batch of gains ys [R, n]: (theta [R, 4], mask [R, n] of the points used).

    Row r keeps h = trim_fractions[r] of its `allowed` points (at least as many as parameters). It fits all
    allowed points from `start`, then runs C-steps: refit on the h smallest residuals among the allowed
    points, until no row's subset changes (or max_steps).
    """
    allowed = np.asarray(allowed, dtype=bool)
    keep = np.maximum(4 + free_eps, np.ceil(np.asarray(trim_fractions) * allowed.sum(1))).astype(int)
    used = allowed.copy()
    theta = least_squares(lx, ys, free_eps, bounds, start=start, weights=used)
    for _ in range(max_steps):
        squared = np.where(allowed, (ys - gain(lx, theta)) ** 2, np.inf)
        rank = np.argsort(np.argsort(squared, axis=1, kind="stable"), axis=1)
        new = rank < keep[:, None]
        changed = (new != used).any(1)
        if not changed.any():
            break
        used[changed] = new[changed]
        theta[changed] = least_squares(
            lx, ys[changed], free_eps, bounds, start=theta[changed], weights=used[changed]
        )
    return theta, used


def r2(y, pred) -> float:
    """Coefficient of determination of pred for y (NaN for fewer than 2 points or a flat y)."""
    sst = float(np.sum((y - np.mean(y)) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / sst if sst > 0 and len(y) > 1 else float("nan")


def rmse(y, pred) -> float:
    """Root mean squared error of pred for y (NaN for no points)."""
    return float(np.sqrt(np.mean((y - pred) ** 2))) if len(y) else float("nan")
