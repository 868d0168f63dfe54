"""Regime analytics on a whole SFT curve, and how an online switch decision compares with hindsight.

The retrospective labels (plasticity/regimes.py, the paper's Eq. 5-9) need L_min over the whole run; a
switch policy decides with the losses seen so far. Replaying a policy over a complete curve shows where it
would have switched, which retrospective regime that checkpoint has, and how far it is from the Stable
window in steps and in compute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from plasticity.regimes import REGIMES, STABLE, label_regimes, make_policy


@dataclass
class RegimeSummary:
    """Retrospective regimes of one SFT curve."""

    steps: list[float]
    losses: list[float]
    compute: list[float] | None
    labels: list[str]
    l_min: float
    argmin_step: float
    stable_window: tuple[float, float]
    """First and last step labelled Stable."""
    stable_compute: tuple[float, float] | None
    """Compute at the ends of the Stable window (None when no compute was logged)."""
    counts: dict[str, int]
    """Checkpoints per regime."""
    final_regime: str
    """Regime of the last checkpoint (where pure SFT ends up)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PolicyComparison:
    """Where an online policy (or an actual run) switched, judged with the retrospective labels."""

    policy: str
    switched: bool
    decided_at: float | None
    """Step at which the policy said "switch now"."""
    from_step: float | None
    """Checkpoint switched from (earlier than decided_at when the policy rolls back)."""
    reason: str
    label: str | None
    """Retrospective regime of the checkpoint switched from."""
    in_stable_window: bool
    steps_from_window: float | None
    """0 inside the Stable window; negative = before it (still Adaptive), positive = after it."""
    compute_from_window: float | None
    """The same distance in compute (None when no compute was logged)."""
    loss_excess: float | None
    """L(from_step) / L_min - 1."""

    def to_dict(self) -> dict:
        return asdict(self)


def _check_curve(steps, losses, compute):
    steps = np.asarray(steps, dtype=float)
    losses = np.asarray(losses, dtype=float)
    if steps.ndim != 1 or steps.shape != losses.shape:
        raise ValueError(
            f"SFT curve: steps and losses must be 1-D of equal length, got {steps.shape}, {losses.shape}"
        )
    if len(steps) < 2:
        raise ValueError(f"SFT curve: too few checkpoints ({len(steps)}); need at least 2")
    for name, arr in (("step", steps), ("validation loss", losses)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            raise ValueError(f"SFT curve: {name} #{bad[0]} is {arr[bad[0]]}; every value must be finite")
    if np.any(np.diff(steps) <= 0):
        raise ValueError("SFT curve: steps must be strictly increasing")
    if compute is not None:
        compute = np.asarray(compute, dtype=float)
        if compute.shape != steps.shape or not np.all(np.isfinite(compute)):
            raise ValueError("SFT curve: compute must be finite and match the steps one to one")
        if np.any(compute < 0) or np.any(np.diff(compute) < 0):
            raise ValueError("SFT curve: compute must be >= 0 and non-decreasing")
    return steps, losses, compute


def analyze_sft_curve(
    steps: Sequence[float],
    losses: Sequence[float],
    compute: Sequence[float] | None = None,
    delta: float = 0.02,
    delta2: float = 0.10,
) -> RegimeSummary:
    """Retrospective labels, L_min and the Stable window of a complete SFT curve."""
    steps, losses, compute = _check_curve(steps, losses, compute)
    labels = label_regimes(losses, delta, delta2)
    stable = [i for i, lab in enumerate(labels) if lab == STABLE]
    first, last = stable[0], stable[-1]
    i_min = int(np.argmin(losses))
    return RegimeSummary(
        steps=steps.tolist(),
        losses=losses.tolist(),
        compute=None if compute is None else compute.tolist(),
        labels=labels,
        l_min=float(losses[i_min]),
        argmin_step=float(steps[i_min]),
        stable_window=(float(steps[first]), float(steps[last])),
        stable_compute=None if compute is None else (float(compute[first]), float(compute[last])),
        counts={r: labels.count(r) for r in REGIMES},
        final_regime=labels[-1],
    )


def judge_switch(
    summary: RegimeSummary,
    from_step: float | None,
    policy: str,
    reason: str = "",
    decided_at: float | None = None,
) -> PolicyComparison:
    """Compare a switch from checkpoint `from_step` (None: never switched) with the retrospective labels."""
    if from_step is None:
        return PolicyComparison(
            policy, False, None, None, reason or "never switched", None, False, None, None, None
        )
    steps = np.asarray(summary.steps)
    matches = np.flatnonzero(np.isclose(steps, from_step))
    if not len(matches):
        raise ValueError(
            f"switch step {from_step} is not a checkpoint of the SFT curve (steps {steps.tolist()})"
        )
    i = int(matches[0])
    lo, hi = summary.stable_window
    steps_off = 0.0 if lo <= from_step <= hi else (from_step - lo if from_step < lo else from_step - hi)
    compute_off = None
    if summary.compute is not None and summary.stable_compute is not None:
        c, (c_lo, c_hi) = summary.compute[i], summary.stable_compute
        compute_off = 0.0 if c_lo <= c <= c_hi else (c - c_lo if c < c_lo else c - c_hi)
    return PolicyComparison(
        policy=policy,
        switched=True,
        decided_at=from_step if decided_at is None else float(decided_at),
        from_step=float(from_step),
        reason=reason,
        label=summary.labels[i],
        in_stable_window=steps_off == 0.0,
        steps_from_window=float(steps_off),
        compute_from_window=compute_off,
        loss_excess=float(summary.losses[i] / summary.l_min - 1),
    )


def replay_policy(
    summary: RegimeSummary, spec: str, delta: float = 0.02, delta2: float = 0.10, patience: int = 2
) -> PolicyComparison:
    """Feed the curve to an online policy in order; judge its first "switch now" with hindsight."""
    policy = make_policy(spec, delta, delta2, patience)
    for step, loss in zip(summary.steps, summary.losses):
        decision = policy.observe(int(step) if float(step).is_integer() else step, loss)
        if decision is not None:
            return judge_switch(summary, decision.from_step, spec, decision.reason, decision.step)
    return judge_switch(summary, None, spec, "no decision within the curve")


def compare_policies(
    summary: RegimeSummary,
    specs: Sequence[str] = ("stable", "mild", "min_loss"),
    delta: float = 0.02,
    delta2: float = 0.10,
    patience: int = 2,
) -> list[PolicyComparison]:
    """replay_policy for several policy specs."""
    return [replay_policy(summary, spec, delta, delta2, patience) for spec in specs]


def describe(comparison: PolicyComparison) -> str:
    """One line for the terminal."""
    c = comparison
    if not c.switched:
        return f"{c.policy:>9}: no switch ({c.reason})"
    side = "before" if c.steps_from_window < 0 else "after"
    where = "inside the Stable window"
    if not c.in_stable_window:
        where = f"{abs(c.steps_from_window):g} steps {side} the Stable window"
    rollback = f" (decided at {c.decided_at:g})" if c.decided_at != c.from_step else ""
    excess = (
        "" if c.loss_excess is None or math.isnan(c.loss_excess) else f", L/L_min - 1 = {c.loss_excess:.1%}"
    )
    return f"{c.policy:>9}: switch from step {c.from_step:g}{rollback} -> {c.label}, {where}{excess}"
