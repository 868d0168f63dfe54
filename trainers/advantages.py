"""Group-relative advantage estimators, kept in a registry (name -> function) as in veRL.

Every estimator takes the rewards of ``num_groups`` prompts with ``G`` samples each,
shaped [num_groups, G], and returns one advantage per sample of the same shape. The
learner broadcasts a sample's advantage to all of its response tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

AdvantageFn = Callable[..., Tensor]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}


def register_advantage_estimator(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator that adds an estimator to ADVANTAGE_ESTIMATORS under ``name``."""

    def decorator(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorator


def get_advantage_estimator(name: str) -> AdvantageFn:
    """The estimator registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ADVANTAGE_ESTIMATORS))
        raise ValueError(f"unknown advantage estimator {name!r}; known: {known}") from None


def _as_reward_groups(rewards: Tensor) -> Tensor:
    """Check the [num_groups, G] shape and return the rewards as float32."""
    if not isinstance(rewards, Tensor):
        rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2 or rewards.shape[1] == 0:
        raise ValueError(f"rewards must be [num_groups, G] with G >= 1, got shape {tuple(rewards.shape)}")
    rewards = rewards.float()
    if not torch.isfinite(rewards).all():
        bad_group = int((~torch.isfinite(rewards)).any(dim=1).nonzero()[0].item())
        raise ValueError(f"rewards must be finite; group (row) {bad_group} holds a NaN or inf")
    return rewards


def group_mean_centered(rewards: Tensor) -> Tensor:
    """r - mean(r over its group)."""
    rewards = _as_reward_groups(rewards)
    return rewards - rewards.mean(dim=1, keepdim=True)


def group_normalized(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """(r - mean) / (std + eps) within each group.

    std is the unbiased (n - 1) sample deviation, as torch.std and veRL use. A group
    of one sample has no spread to compare against: its advantage is 0.
    """
    rewards = _as_reward_groups(rewards)
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if rewards.shape[1] == 1:
        return centered
    std = rewards.std(dim=1, keepdim=True)
    return centered / (std + eps)


@register_advantage_estimator("grpo")
def grpo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO: group-normalised reward (r - mean) / (std + eps)."""
    return group_normalized(rewards, eps)


@register_advantage_estimator("dapo")
def dapo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """DAPO keeps GRPO's group normalisation; its changes are in sampling and the loss."""
    return group_normalized(rewards, eps)


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Dr.GRPO: r - mean, no division by std (which biases toward easy/hard groups).

    ``eps`` is accepted so that every estimator has the same signature; it is unused.
    """
    del eps
    return group_mean_centered(rewards)
