"""Ceiling-aware early stopping of RL branches: stop a branch whose fitted ceiling cannot reach the best one.

After each held-out evaluation a branch's partial curve (accuracy over RL compute since its branch point) is fitted
with Eq. 2 (plasticity.ceiling). A branch is stopped when the upper end of its A_post interval lies below the
reference: the best lower end of another branch's A_post interval, or the best accuracy another branch has
actually reached, whichever is higher. It needs `min_evals` evaluations first and the condition on `confirm`
consecutive evaluations, so one noisy point never stops a branch; a fit without an interval never stops one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from plasticity.ceiling import FIT, CeilingSearch, fit_ceiling

# Partial curves are short: hold out 2 points (not 3) and bootstrap 100 times, so a fit needs 6 evaluations.
PARTIAL_SEARCH = CeilingSearch(min_heldout=2, bootstrap=100)
MIN_PARTIAL_POINTS = 6


def partial_fit(flops: list[float], accuracy: list[float], p_sft: float) -> dict:
    """Eq. 2 on the evaluations so far (x = RL FLOPs since the branch, > 0). Keys: status, a_post, a_post_lo,
    a_post_hi, pl_rl, c_mid, b, n_points, message; status 'too_few' / 'failed' leave the numbers None."""
    pts = [(x, a) for x, a in zip(flops, accuracy) if x > 0]
    out = {
        "status": "too_few",
        "a_post": None,
        "a_post_lo": None,
        "a_post_hi": None,
        "pl_rl": None,
        "c_mid": None,
        "b": None,
        "n_points": len(pts),
        "message": f"{len(pts)} evaluations after the branch point; a fit needs {MIN_PARTIAL_POINTS}",
    }
    if len(pts) < MIN_PARTIAL_POINTS:
        return out
    try:
        fit = fit_ceiling([x for x, _ in pts], [a for _, a in pts], p_sft, PARTIAL_SEARCH)
    except ValueError as e:  # a flat curve has no rise to fit
        return dict(out, status="failed", message=str(e))
    out.update(status=fit.status, message=fit.message)
    if math.isfinite(fit.a_post):
        out.update(a_post=fit.a_post, pl_rl=fit.pl_rl, c_mid=fit.c_mid, b=fit.b)
    if fit.a_post_ci is not None:
        out.update(a_post_lo=fit.a_post_ci[0], a_post_hi=fit.a_post_ci[1])
    return out


@dataclass
class BranchState:
    """What the rule knows of one branch from its latest report."""

    evals: int = 0
    """Held-out evaluations after the branch point."""
    best_accuracy: float = -math.inf
    """Best held-out accuracy reached (including at the branch point)."""
    fit: dict = field(default_factory=dict)
    """Latest partial fit (partial_fit's keys)."""
    streak: int = 0
    """Consecutive reports on which the stop condition held."""
    stopped: bool = False
    """Whether the rule stopped this branch."""


@dataclass
class CeilingRule:
    """The stopping rule, without Ray: feed it every report, it says stop or not and why."""

    min_evals: int = 6
    """Evaluations after the branch point before the rule looks at a branch."""
    confirm: int = 2
    """Consecutive reports the condition must hold."""
    branches: dict[str, BranchState] = field(default_factory=dict)
    """Per branch (trial id) state."""

    def reference(self, exclude: str) -> tuple[float, str]:
        """The best evidence of another branch: (value, which branch and what it is)."""
        best, why = -math.inf, ""
        for tid, b in self.branches.items():
            if tid == exclude:
                continue
            lo = b.fit.get("a_post_lo") if b.fit.get("status") == FIT else None
            if lo is not None and lo > best:
                best, why = lo, f"{tid}: A_post lower bound {lo:.4f}"
            if b.best_accuracy > best:
                best, why = b.best_accuracy, f"{tid}: observed accuracy {b.best_accuracy:.4f}"
        return best, why

    def observe(self, trial: str, evals: int, accuracy: float, fit: dict) -> dict | None:
        """Record a report; returns a stop record (reason, fit, reference) when the branch should stop."""
        b = self.branches.setdefault(trial, BranchState())
        b.evals, b.fit = evals, dict(fit)
        b.best_accuracy = max(b.best_accuracy, accuracy)
        if b.stopped or evals < self.min_evals:
            return None
        ref, ref_why = self.reference(trial)
        hi = fit.get("a_post_hi") if fit.get("status") == FIT else None
        if hi is None or not math.isfinite(ref) or hi >= ref:
            b.streak = 0
            return None
        b.streak += 1
        if b.streak < self.confirm:
            return None
        b.stopped = True
        return {
            "trial": trial,
            "evals": evals,
            "reason": (
                f"ceiling upper bound {hi:.4f} below {ref_why} on {b.streak} consecutive evaluations "
                f"(A_post {fit.get('a_post'):.4f}, interval [{fit.get('a_post_lo'):.4f}, {hi:.4f}])"
            ),
            "fit": dict(fit),
            "reference": ref,
            "reference_from": ref_why,
            "best_accuracy": b.best_accuracy,
        }

    def to_dict(self) -> dict:
        return {
            "min_evals": self.min_evals,
            "confirm": self.confirm,
            "branches": {
                k: {**asdict(v), "best_accuracy": _finite(v.best_accuracy)} for k, v in self.branches.items()
            },
        }

    @classmethod
    def from_dict(cls, raw: dict) -> CeilingRule:
        rule = cls(raw["min_evals"], raw["confirm"])
        for k, v in raw["branches"].items():
            v = dict(v)
            v["best_accuracy"] = -math.inf if v["best_accuracy"] is None else v["best_accuracy"]
            rule.branches[k] = BranchState(**v)
        return rule


def _finite(x: float):
    return x if math.isfinite(x) else None
