"""SFT regimes (the paper's Eq. 5-9) and the online switch policies the controller uses.

Retrospective labels need L_min over the whole SFT run; the controller has to decide during SFT, so each
policy here sees only the validation losses observed so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ADAPTIVE, STABLE, MILD, SEVERE = "adaptive", "stable", "mild", "severe"
REGIMES = (ADAPTIVE, STABLE, MILD, SEVERE)


def _check_deltas(delta: float, delta2: float) -> None:
    if not 0 <= delta < delta2:
        raise ValueError(f"regime thresholds need 0 <= delta < delta2, got delta={delta}, delta2={delta2}")


def _check_losses(losses: Sequence[float]) -> list[float]:
    out = [float(x) for x in losses]
    for i, x in enumerate(out):
        if not math.isfinite(x) or x <= 0:
            raise ValueError(f"validation loss #{i} is {x}: losses must be finite and > 0")
    return out


def label_regimes(losses: Sequence[float], delta: float = 0.02, delta2: float = 0.10) -> list[str]:
    """Retrospective regime of every checkpoint of a complete SFT curve (ordered by step)."""
    _check_deltas(delta, delta2)
    losses = _check_losses(losses)
    if not losses:
        return []
    l_min = min(losses)
    stable = [x <= (1 + delta) * l_min for x in losses]
    first = stable.index(True)
    last = len(stable) - 1 - stable[::-1].index(True)
    labels = []
    for i, x in enumerate(losses):
        if i < first:
            labels.append(ADAPTIVE)
        elif i <= last:
            # Between the first and last Stable checkpoints a bump above the band is still in the Stable window.
            labels.append(STABLE)
        elif x >= (1 + delta2) * l_min:
            labels.append(SEVERE)
        else:
            labels.append(MILD)
    return labels


def online_regime(losses_so_far: Sequence[float], delta: float = 0.02, delta2: float = 0.10) -> str:
    """Regime of the latest checkpoint judged with the minimum seen so far (what the controller can know)."""
    labels = label_regimes(losses_so_far, delta, delta2)
    if not labels:
        raise ValueError("online_regime needs at least one validation loss")
    if len(losses_so_far) == 1:
        return ADAPTIVE  # one point shows no trend yet; training has not started to settle
    latest, best = losses_so_far[-1], min(losses_so_far)
    if labels[-1] == STABLE and latest == best:
        # A fresh minimum that improves clearly on the previous one means we are still descending.
        prev_best = min(losses_so_far[:-1])
        if best < prev_best / (1 + delta):
            return ADAPTIVE
    return labels[-1]


def severe_for(regimes_seen: Sequence[str], n: int) -> bool:
    """Have the last n online regimes all been Severe? (n <= 0: never; a trunk's stop after overfitting)."""
    return n > 0 and len(regimes_seen) >= n and all(r == SEVERE for r in regimes_seen[-n:])


@dataclass(frozen=True)
class Decision:
    """A policy's "switch now"."""

    step: int
    """Step at which the decision was taken (the latest evaluation)."""
    from_step: int
    """Checkpoint step to switch from; differs from `step` when the policy rolls back (min_loss)."""
    reason: str
    """Human-readable why, recorded in the run."""


class SwitchPolicy:
    """Sees (step, val_loss) pairs in order; returns a Decision when it is time to switch to RL."""

    name = "base"

    def __init__(self, delta: float = 0.02, delta2: float = 0.10, patience: int = 2):
        _check_deltas(delta, delta2)
        if patience < 1:
            raise ValueError(f"switch.patience must be >= 1, got {patience}")
        self.delta, self.delta2, self.patience = delta, delta2, patience
        self.steps: list[int] = []
        self.losses: list[float] = []

    def observe(self, step: int, val_loss: float) -> Decision | None:
        _check_losses([val_loss])
        self.steps.append(int(step))
        self.losses.append(float(val_loss))
        return self._decide()

    def _decide(self) -> Decision | None:
        raise NotImplementedError

    def _plateaued(self) -> bool:
        """The best of the last `patience` evaluations improves on the best loss before them by no more than
        delta (relative). Comparing with the best loss `patience` evaluations ago, not with a reference that
        every small gain moves, means a slow steady fall (1.9% per evaluation, 8% over four) is no plateau."""
        if len(self.losses) <= self.patience:
            return False
        before = min(self.losses[: -self.patience])
        recent = min(self.losses[-self.patience :])
        return recent >= before / (1 + self.delta)

    def _regime(self) -> str:
        return online_regime(self.losses, self.delta, self.delta2)


class StablePolicy(SwitchPolicy):
    """Once the loss has plateaued (no relative gain > delta for `patience` evals), switch from the latest
    checkpoint inside the Stable band of the minimum so far: the current one, or an earlier one if the loss has
    already drifted up (checkpoints are kept at every evaluation, so the rollback is cheap)."""

    name = "stable"

    def _decide(self) -> Decision | None:
        if not self._plateaued():
            return None
        band = (1 + self.delta) * min(self.losses)
        i = max(i for i, x in enumerate(self.losses) if x <= band)
        why = f"plateau for {self.patience} evals; latest checkpoint within {self.delta:.0%} of the minimum"
        return Decision(self.steps[-1], self.steps[i], why)


class MildPolicy(SwitchPolicy):
    """Switch at the first checkpoint past the Stable band (early Mild overfitting) once the loss has plateaued
    (no relative gain > delta for `patience` evals): a bump during the descent is noise, not overfitting."""

    name = "mild"

    def _decide(self) -> Decision | None:
        if not self._plateaued():
            return None
        best = min(self.losses)
        latest = self.losses[-1]
        if (1 + self.delta) * best < latest < (1 + self.delta2) * best:
            return Decision(self.steps[-1], self.steps[-1], "loss left the Stable band (mild overfitting)")
        return None


class MinLossPolicy(SwitchPolicy):
    """Once the loss stopped improving for `patience` evals, switch from the best checkpoint seen (rollback)."""

    name = "min_loss"

    def _decide(self) -> Decision | None:
        i_best = min(range(len(self.losses)), key=self.losses.__getitem__)
        if len(self.losses) - 1 - i_best >= self.patience:
            return Decision(self.steps[-1], self.steps[i_best], f"no new minimum for {self.patience} evals")
        return None


class StepPolicy(SwitchPolicy):
    """Switch at the first evaluation at or after a fixed step."""

    name = "step"

    def __init__(self, at_step: int, **kw):
        super().__init__(**kw)
        if at_step < 0:
            raise ValueError(f"switch policy step:N needs N >= 0, got {at_step}")
        self.at_step = at_step

    def _decide(self) -> Decision | None:
        if self.steps[-1] >= self.at_step:
            return Decision(self.steps[-1], self.steps[-1], f"fixed step {self.at_step}")
        return None


class NeverPolicy(SwitchPolicy):
    """Pure SFT: never switch."""

    name = "never"

    def _decide(self) -> Decision | None:
        return None


class RLOnlyPolicy(SwitchPolicy):
    """RL from the base model: switch at the very first evaluation (step 0, before any SFT)."""

    name = "rl_only"

    def _decide(self) -> Decision | None:
        return Decision(self.steps[-1], self.steps[-1], "rl_only: RL from the base model")


POLICIES = {p.name: p for p in (StablePolicy, MildPolicy, MinLossPolicy, NeverPolicy, RLOnlyPolicy)}
POLICY_SPECS = ("stable", "mild", "min_loss", "step:N", "never", "rl_only")


def make_policy(spec: str, delta: float = 0.02, delta2: float = 0.10, patience: int = 2) -> SwitchPolicy:
    """Build a policy from its spec: stable | mild | min_loss | step:N | never | rl_only."""
    spec = str(spec).strip()
    if spec.startswith("step:"):
        try:
            at = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"switch policy {spec!r}: N in step:N must be an integer") from None
        return StepPolicy(at, delta=delta, delta2=delta2, patience=patience)
    if spec not in POLICIES:
        raise ValueError(f"unknown switch policy {spec!r}; known: {', '.join(POLICY_SPECS)}")
    return POLICIES[spec](delta=delta, delta2=delta2, patience=patience)
