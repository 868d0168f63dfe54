"""RL algorithms as (advantage estimator, policy loss, dynamic sampling) triples.

The config names one algorithm; this is the one place that says which advantage
estimator and which policy loss it uses, and whether it drops uninformative groups.
"""

from __future__ import annotations

from typing import NamedTuple

from trainers.advantages import AdvantageFn, get_advantage_estimator
from trainers.policy_loss import PolicyLossFn, get_policy_loss

# algorithm -> (advantage estimator name, policy loss name)
RL_OBJECTIVES: dict[str, tuple[str, str]] = {
    "grpo": ("grpo", "grpo"),
    "dapo": ("dapo", "dapo"),
    "dr_grpo": ("dr_grpo", "dr_grpo"),
}

# Algorithms that drop groups whose rewards are all equal (trainers.sampling).
DYNAMIC_SAMPLING_OBJECTIVES = frozenset({"dapo"})


class RLObjective(NamedTuple):
    """What the learner needs for one RL algorithm; unpacks as a 3-tuple."""

    advantage_fn: AdvantageFn
    """Rewards [num_groups, G] -> advantages [num_groups, G]."""
    loss_fn: PolicyLossFn
    """Clipped policy loss over response tokens (see trainers.policy_loss)."""
    uses_dynamic_sampling: bool
    """Whether to keep only groups whose rewards differ (DAPO)."""


def rl_objective(name: str) -> RLObjective:
    """(advantage_fn, loss_fn, uses_dynamic_sampling) of algorithm ``name``."""
    if name not in RL_OBJECTIVES:
        known = ", ".join(sorted(RL_OBJECTIVES))
        raise ValueError(f"unknown RL objective {name!r}; known: {known}")
    advantage_name, loss_name = RL_OBJECTIVES[name]
    return RLObjective(
        advantage_fn=get_advantage_estimator(advantage_name),
        loss_fn=get_policy_loss(loss_name),
        uses_dynamic_sampling=name in DYNAMIC_SAMPLING_OBJECTIVES,
    )
