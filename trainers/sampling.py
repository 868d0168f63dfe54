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


SHORT_BATCH_POLICIES = ("partial", "skip", "error")


class ShortBatchError(RuntimeError):
    """Dynamic sampling ran out of generation rounds with too few informative groups (rl.short_batch: error)."""


def settle_short_batch(kept: list, wanted: int, policy: str, rounds: int) -> list:
    """What a dynamic-sampling step trains on once its generation rounds are spent: all of ``kept`` when it
    is full (``wanted`` groups); otherwise by ``policy``: `partial` the groups kept, `skip` none (no update),
    `error` raises ShortBatchError as veRL's DAPO recipe does ("Generated too many")."""
    if policy not in SHORT_BATCH_POLICIES:
        raise ValueError(f"unknown short-batch policy {policy!r}; known: {', '.join(SHORT_BATCH_POLICIES)}")
    if len(kept) >= wanted or policy == "partial":
        return kept[:wanted]
    if policy == "skip":
        return []
    raise ShortBatchError(
        f"{len(kept)} of {wanted} informative groups after {rounds} generation rounds (rl.short_batch: error); "
        "the prompts may be too easy or too hard for the model: raise rl.max_gen_rounds or set rl.short_batch"
    )


def overlong_penalty(length: int, max_tokens: int, buffer_len: int, factor: float) -> float:
    """DAPO's soft overlong punishment of a completion of ``length`` tokens: 0 up to max_tokens - buffer_len,
    then falling linearly to -factor at max_tokens (and beyond). buffer_len 0: off."""
    if buffer_len <= 0:
        return 0.0
    exceed = length - (max_tokens - buffer_len)
    return -min(max(exceed, 0) / buffer_len, 1.0) * factor
