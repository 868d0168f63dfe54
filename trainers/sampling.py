"""DAPO dynamic sampling: keep only prompt groups whose samples disagree.

A group whose G rewards are all equal (all right or all wrong) has zero group-relative
advantage everywhere, so it adds no gradient, only noise in the token count. DAPO drops
such groups and keeps generating until the batch is full of informative ones.
"""

from __future__ import annotations

import torch
from torch import Tensor


def keep_informative_groups(rewards: Tensor) -> Tensor:
    """Bool [num_groups]: True where a group's rewards are not all equal."""
    if not isinstance(rewards, Tensor):
        rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2 or rewards.shape[1] == 0:
        raise ValueError(f"rewards must be [num_groups, G] with G >= 1, got shape {tuple(rewards.shape)}")
    if rewards.dtype.is_floating_point and torch.isnan(rewards).any():
        bad_group = int(torch.isnan(rewards).any(dim=1).nonzero()[0].item())
        raise ValueError(f"rewards must not be NaN; group (row) {bad_group} holds a NaN")
    return (rewards != rewards[:, :1]).any(dim=1)
