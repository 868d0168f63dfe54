"""Plasticity-Ceiling fit of one RL branch (the paper's Eq. 2), with the robust recipe of its code release.

An RL branch starts from an SFT checkpoint that scores P_sft. With x the RL compute since the branch,

    P(x) = (eps + P_sft) + (A_post - eps - P_sft) / (1 + (C_mid / x) ** B)

A_post is the ceiling, PL_rl = A_post - P_sft the plasticity RL still has, C_mid the compute at half the
gain, B the steepness (0 < B <= 10), eps >= 0 an offset at the branch point (0 unless freed).

The fit works on gains y = P - P_sft. Only the first N points are fitted; the rest are held out to score
the fit. The robust variant drops fitted points whose modified z-score of the residual exceeds a threshold,
then runs least trimmed squares (LTS) with C-steps. Settings are chosen per branch by
score = R^2_heldout - w * max(0, R^2_fit - R^2_heldout). A plasticity many times the largest observed gain
is a failed fit and is reported as such; a branch that rises and then collapses gets its observed peak.

This module holds the recipe (candidate settings, outlier filter, scoring, safeguards, bootstrap); the batched
Levenberg-Marquardt and LTS solver it calls lives in `plasticity.ceiling_solver`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import expit

from plasticity.ceiling_solver import gain, least_squares, least_trimmed_squares, r2, rmse

FIT, OBSERVED_PEAK, FAILED = "fit", "observed_peak", "failed"
MIN_POINTS = 6  # 4 parameters at most, plus a held-out tail
LOGC_MARGIN = 3.0  # C_mid stays within e**3 of the observed compute: further out no data can place it


def ceiling_curve(x, p_sft: float, a_post: float, c_mid: float, b: float, eps: float = 0.0) -> np.ndarray:
    """Eq. 2: performance after x RL compute since the branch (x = 0 gives P_sft + eps)."""
    with np.errstate(divide="ignore"):
        s = expit(b * (np.log(np.asarray(x, dtype=float)) - math.log(c_mid)))
    return p_sft + eps + (a_post - eps - p_sft) * s


@dataclass(frozen=True)
class FitSettings:
    """One point of the per-branch search."""

    n_fit: int
    """Number of leading points fitted; the points after them are held out."""
    robust: bool = False
    """False: plain least squares. True: modified z-score outlier filter, then least trimmed squares."""
    outlier_threshold: float = 3.5
    """Modified z-score above which a fitted point is dropped (robust only)."""
    trim_fraction: float = 0.8
    """Fraction of the remaining points LTS keeps (robust only)."""
    free_eps: bool = False
    """Fit the branch-point offset eps >= 0 instead of fixing it at 0."""


@dataclass(frozen=True)
class CeilingSearch:
    """Search space and safeguards of `fit_ceiling`."""

    fit_fractions: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    """Candidate N as fractions of the branch's points (at least MIN_POINTS - 2, leaving min_heldout)."""
    outlier_thresholds: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0)
    """Modified z-score thresholds tried by the robust variant."""
    trim_fractions: tuple[float, ...] = (0.75, 0.80, 0.85)
    """LTS kept fractions tried by the robust variant."""
    robust: tuple[bool, ...] = (False, True)
    """Which variants to try: plain least squares, robust, or both."""
    free_eps: tuple[bool, ...] = (False,)
    """eps fixed at 0, free (>= 0), or both (False, True)."""
    gap_weight: float = 0.2
    """w in score = R^2_heldout - w * max(0, R^2_fit - R^2_heldout) (the paper's released fits use 0.2)."""
    min_heldout: int = 3
    """Fewest points held out to score a setting."""
    plausibility_factor: float = 2.0
    """A |PL_rl| above this many times the largest observed change in P is a failed fit."""
    collapse_fraction: float = 0.5
    """Collapsed: the last points fall below the peak by more than this fraction of the peak gain."""
    bootstrap: int = 200
    """Residual-bootstrap resamples for the A_post / PL_rl interval (0: no interval)."""
    ci_level: float = 0.95
    """Coverage of the bootstrap interval."""
    seed: int = 0
    """Seed of the bootstrap resampling."""

    def __post_init__(self):
        checks = {
            "fit_fractions": all(0 < f < 1 for f in self.fit_fractions) and len(self.fit_fractions) > 0,
            "outlier_thresholds": all(t > 0 for t in self.outlier_thresholds),
            "trim_fractions": all(0.5 <= a <= 1 for a in self.trim_fractions),
            "robust": len(self.robust) > 0,
            "free_eps": len(self.free_eps) > 0,
            "gap_weight": self.gap_weight >= 0,
            "min_heldout": self.min_heldout >= 1,
            "plausibility_factor": self.plausibility_factor > 1,
            "collapse_fraction": 0 < self.collapse_fraction <= 1,
            "bootstrap": self.bootstrap >= 0,
            "ci_level": 0 < self.ci_level < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"CeilingSearch.{name} is out of range: {getattr(self, name)!r}")


@dataclass
class CeilingFit:
    """Result for one branch (NaN values when status is 'failed').

    status: 'fit' (Eq. 2 fitted), 'observed_peak' (rise then collapse) or 'failed' (no supportable ceiling).
    p_sft, pl_rl, a_post, c_mid, b, eps: Eq. 2 (c_mid in the unit of x). r2_fit / rmse_fit: on the points
    the fit used; r2_heldout / rmse_heldout: on the held-out tail; score: the selection score. max_gain:
    largest observed P - P_sft. outliers: indices (in x order) the robust variant left out of the fitted
    points. a_post_ci / pl_rl_ci: bootstrap intervals. message: why the status is what it is, in words.
    """

    status: str
    p_sft: float
    pl_rl: float
    a_post: float
    c_mid: float
    b: float
    eps: float
    r2_fit: float
    r2_heldout: float
    rmse_fit: float
    rmse_heldout: float
    score: float
    n_points: int
    max_gain: float
    settings: FitSettings | None = None
    outliers: tuple[int, ...] = ()
    a_post_ci: tuple[float, float] | None = None
    pl_rl_ci: tuple[float, float] | None = None
    message: str = ""
    candidates: int = 0

    def predict(self, x) -> np.ndarray:
        """Fitted P at compute x (observed_peak: the rise fitted with the ceiling held at the peak)."""
        return ceiling_curve(x, self.p_sft, self.a_post, self.c_mid, self.b, self.eps)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["settings"] = asdict(self.settings) if self.settings else None
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


@dataclass
class _Branch:
    lx: np.ndarray  # log x, sorted
    y: np.ndarray  # gains P - P_sft
    p_sft: float
    scale: float  # largest observed change, for plausibility
    glitches: np.ndarray  # single bad evaluations, left out of every held-out score

    @property
    def logc_bounds(self) -> tuple[float, float]:
        return float(self.lx.min()) - LOGC_MARGIN, float(self.lx.max()) + LOGC_MARGIN


def _zscore_kept(br: _Branch, settings: FitSettings, theta) -> np.ndarray:
    """Fitted points whose residual's modified z-score is within the threshold (all, if too few remain)."""
    fitted = np.arange(len(br.y)) < settings.n_fit
    r = (br.y - gain(br.lx, theta))[fitted]
    mad = float(np.median(np.abs(r - np.median(r))))
    if mad == 0:
        return fitted
    kept = fitted.copy()
    kept[fitted] = np.abs(0.6745 * (r - np.median(r)) / mad) <= settings.outlier_threshold
    return kept if kept.sum() > 4 + settings.free_eps else fitted


def _fit_candidates(br: _Branch, candidates: list[FitSettings]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(theta, mask of the points used) for every candidate. Batched: all plain fits of the first N points at
    once, then the robust candidates together: z-score filter, LTS fit, C-steps until no subset changes."""
    n, out = len(br.y), [None] * len(candidates)
    for free_eps in sorted({c.free_eps for c in candidates}):
        group = [i for i, c in enumerate(candidates) if c.free_eps == free_eps]
        n_fits = sorted({candidates[i].n_fit for i in group})
        first_n = np.arange(n)[None, :] < np.array(n_fits)[:, None]
        ys = np.tile(br.y, (len(n_fits), 1))
        plain = dict(zip(n_fits, least_squares(br.lx, ys, free_eps, br.logc_bounds, weights=first_n)))
        robust = [i for i in group if candidates[i].robust]
        for i in group:
            if not candidates[i].robust:
                out[i] = (plain[candidates[i].n_fit], np.arange(n) < candidates[i].n_fit)
        if not robust:
            continue
        allowed = np.array([_zscore_kept(br, candidates[i], plain[candidates[i].n_fit]) for i in robust])
        theta, used = least_trimmed_squares(
            br.lx,
            np.tile(br.y, (len(robust), 1)),
            free_eps,
            br.logc_bounds,
            start=np.array([plain[candidates[i].n_fit] for i in robust]),
            allowed=allowed,
            trim_fractions=[candidates[i].trim_fraction for i in robust],
        )
        for row, i in enumerate(robust):
            out[i] = (theta[row], used[row])
    return out


_METRICS = ("r2_fit", "r2_heldout", "rmse_fit", "rmse_heldout")


def _score(br: _Branch, settings: FitSettings, theta, used, gap_weight: float):
    """(score, metrics) of one candidate: R^2 and RMSE on the points it used and on the held-out tail."""
    hold = np.arange(settings.n_fit, len(br.y))
    hold = hold[~br.glitches[hold]]
    pred = gain(br.lx, theta)
    m = {
        "r2_fit": r2(br.y[used], pred[used]),
        "r2_heldout": r2(br.y[hold], pred[hold]),
        "rmse_fit": rmse(br.y[used], pred[used]),
        "rmse_heldout": rmse(br.y[hold], pred[hold]),
    }
    score = m["r2_heldout"] - gap_weight * max(0.0, m["r2_fit"] - m["r2_heldout"])
    return (score if math.isfinite(score) else -np.inf), m


def _candidates(n: int, search: CeilingSearch):
    n_fits = {min(n - search.min_heldout, max(MIN_POINTS - 2, round(f * n))) for f in search.fit_fractions}
    for free_eps in search.free_eps:
        for n_fit in sorted(n_fits):
            if n_fit < 4 + free_eps:  # more points than parameters
                continue
            if False in search.robust:
                yield FitSettings(n_fit, False, free_eps=free_eps)
            if True in search.robust:
                for thr in search.outlier_thresholds:
                    for alpha in search.trim_fractions:
                        yield FitSettings(n_fit, True, thr, alpha, free_eps)


def _check_branch(x, p, p_sft):
    x = np.asarray(x, dtype=float)
    p = np.asarray(p, dtype=float)
    if x.ndim != 1 or p.ndim != 1 or len(x) != len(p):
        raise ValueError(f"ceiling fit: x and P must be 1-D of equal length, got {x.shape} and {p.shape}")
    if not math.isfinite(float(p_sft)):
        raise ValueError(f"ceiling fit: P_sft must be finite, got {p_sft}")
    for name, arr in (("x (RL compute)", x), ("P", p)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            raise ValueError(f"ceiling fit: {name} point #{bad[0]} is {arr[bad[0]]}; values must be finite")
    bad = np.flatnonzero(x <= 0)
    if len(bad):
        raise ValueError(
            f"ceiling fit: RL compute since the branch must be > 0, point #{bad[0]} has x={x[bad[0]]}"
        )
    if len(x) < MIN_POINTS:
        raise ValueError(f"ceiling fit: too few points ({len(x)}); need at least {MIN_POINTS}")
    if float(np.ptp(p)) == 0.0:
        raise ValueError(f"ceiling fit: flat curve, every P equals {p[0]}; there is no rise to fit")
    order = np.argsort(x, kind="stable")
    return x[order], p[order]


def _running_median(p, half: int = 2) -> np.ndarray:
    return np.array([np.median(p[max(0, i - half) : i + half + 1]) for i in range(len(p))])


def _heldout_outliers(y, threshold: float) -> np.ndarray:
    """Points far from a running median of the curve (modified z-score), the same for every setting."""
    r = y - _running_median(y)
    mad = float(np.median(np.abs(r - np.median(r))))
    return np.abs(0.6745 * (r - np.median(r)) / mad) > threshold if mad > 0 else np.zeros(len(y), dtype=bool)


def detect_collapse(p, p_sft: float, collapse_fraction: float = 0.5) -> int | None:
    """Index of the peak of a branch that rises and then collapses, else None.

    Collapsed: the median of the last points (10%, at least 3) lies below the smoothed peak by more than
    `collapse_fraction` of the peak gain and by more than 3 noise standard deviations.
    """
    p = np.asarray(p, dtype=float)
    n = len(p)
    smooth = _running_median(p)
    peak = int(np.argmax(smooth))
    tail = max(3, int(math.ceil(0.1 * n)))
    if n - peak - 1 < tail:
        return None
    gain = smooth[peak] - p_sft
    drop = smooth[peak] - float(np.median(p[-tail:]))  # median: one bad evaluation is not a collapse
    noise = 1.4826 * float(np.median(np.abs(np.diff(p) - np.median(np.diff(p))))) / math.sqrt(2)
    if gain > 0 and drop > collapse_fraction * gain and drop > 3 * noise:
        return int(np.argmax(p[: peak + 2]))  # the raw peak at (or just after) the smoothed one
    return None


def _bootstrap(br: _Branch, used, theta, free_eps, search: CeilingSearch):
    """Residual bootstrap of PL_rl on the points the fit used; implausible refits count as failures."""
    if search.bootstrap == 0:
        return None, None, ""
    rng = np.random.default_rng(search.seed)
    fitted = gain(br.lx[used], theta)
    resid = br.y[used] - fitted
    y_star = fitted + rng.choice(resid, size=(search.bootstrap, len(used)), replace=True)
    pls = least_squares(br.lx[used], y_star, free_eps, br.logc_bounds, start=theta)[:, 0]
    ok = np.abs(pls) <= search.plausibility_factor * br.scale
    bad = f"{np.sum(~ok)} of {len(ok)} bootstrap refits give no supportable ceiling"
    if ok.mean() < 0.5:
        return None, None, f"; no interval: {bad}"
    tail = (1 - search.ci_level) / 2 * 100
    lo, hi = np.percentile(pls[ok], [tail, 100 - tail])
    note = f"; {bad}" if not ok.all() else ""
    return (float(br.p_sft + lo), float(br.p_sft + hi)), (float(lo), float(hi)), note


def _result(br, status, theta, m, score, **kw) -> CeilingFit:
    pl, log_c, b, eps = (float(v) for v in theta)
    return CeilingFit(
        status, br.p_sft, pl, br.p_sft + pl, math.exp(log_c), b, eps, **m, score=float(score),
        n_points=len(br.y), max_gain=float(np.max(br.y)), **kw,
    )  # fmt: skip


def _observed_peak(br: _Branch, peak: int, search: CeilingSearch, n_candidates: int) -> CeilingFit:
    """Ceiling = observed peak; C_mid and B from the rise up to the peak with the ceiling held there."""
    idx = np.arange(peak + 1)
    pl = float(br.y[peak])
    m = dict.fromkeys(_METRICS, float("nan"))
    theta = np.array([pl, float(np.median(br.lx[idx])), 1.0, 0.0])
    if len(idx) >= 3:
        theta = least_squares(br.lx[idx], br.y[idx], False, br.logc_bounds, fixed_pl=pl)
        pred = gain(br.lx[idx], theta)
        m["r2_fit"], m["rmse_fit"] = r2(br.y[idx], pred), rmse(br.y[idx], pred)
    msg = (
        f"rises then collapses after point #{peak} (x={math.exp(br.lx[peak]):.4g}); "
        f"ceiling = observed peak {br.p_sft + pl:.4g}"
    )
    return _result(br, OBSERVED_PEAK, theta, m, float("nan"), message=msg, candidates=n_candidates)


def _failed(br: _Branch, message: str, n_candidates: int, settings=None) -> CeilingFit:
    nan = float("nan")
    fit = _result(
        br, FAILED, [nan] * 4, dict.fromkeys(_METRICS, nan), nan, settings=settings, message=message
    )
    fit.candidates = n_candidates
    return fit


def fit_ceiling(x, p, p_sft: float, search: CeilingSearch | None = None) -> CeilingFit:
    """Fit Eq. 2 to one RL branch: x = RL compute since the branch (> 0), p = performance, p_sft at x = 0.

    Searches the settings of `search` by held-out score, rejects implausible ceilings, falls back to the
    observed peak for a branch that collapses, and adds a residual-bootstrap interval for A_post and PL_rl.
    """
    search = search or CeilingSearch()
    x, p = _check_branch(x, p, p_sft)
    y = p - float(p_sft)
    scale = max(float(np.max(np.abs(y))), float(np.ptp(y)))
    br = _Branch(np.log(x), y, float(p_sft), scale, _heldout_outliers(y, max(search.outlier_thresholds)))
    if len(y) < search.min_heldout + MIN_POINTS - 2:
        raise ValueError(f"ceiling fit: too few points ({len(y)}) to fit and hold out {search.min_heldout}")
    candidates = list(_candidates(len(y), search))
    peak = detect_collapse(p, float(p_sft), search.collapse_fraction)
    if peak is not None:
        return _observed_peak(br, peak, search, len(candidates))
    best, rejected = None, []
    for settings, (theta, used) in zip(candidates, _fit_candidates(br, candidates)):
        score, m = _score(br, settings, theta, used, search.gap_weight)
        pl = theta[0]
        if abs(pl) > search.plausibility_factor * br.scale:
            rejected.append((pl, settings))
            continue
        if best is None or score > best[0]:
            best = (score, theta, used, m, settings)
    if best is None:
        pl, settings = min(rejected, key=lambda r: abs(r[0]))
        return _failed(
            br,
            f"no supportable ceiling: every fit gives PL_rl of {pl:.4g} or beyond, more than "
            f"{search.plausibility_factor:g}x the largest observed change {br.scale:.4g}",
            len(candidates),
            settings,
        )
    score, theta, used, m, settings = best
    outliers = tuple(int(i) for i in np.flatnonzero(~used[: settings.n_fit]))
    a_ci, pl_ci, note = _bootstrap(br, np.flatnonzero(used), theta, settings.free_eps, search)
    msg = (
        f"{'robust' if settings.robust else 'least squares'} on the first {settings.n_fit} of {len(y)} points"
    )
    msg += note
    if theta[1] > float(br.lx.max()):
        msg += "; C_mid lies beyond the observed compute, the ceiling is an extrapolation"
    return _result(
        br, FIT, theta, m, score, settings=settings, outliers=outliers,
        a_post_ci=a_ci, pl_rl_ci=pl_ci, message=msg, candidates=len(candidates),
    )  # fmt: skip
