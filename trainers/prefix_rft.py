"""Prefix-RFT (Huang et al. 2025), as the paper's synchronized baseline runs it.

Each group holds G - 1 sampled completions and one hybrid: an expert prefix of sampled length followed by the
policy's own continuation. The prefix fraction is drawn between a lower bound that decays on a cosine from 95%
to 5% over the RL run and an upper bound of 95%, as lower + (upper - lower) * Beta(1, 1): the authors' code
(github.com/ZeroYuHuang/prefix_rft, recipe/prefix_rft/scheduler/global_step.py: BetaSampler, alpha = beta =
1.0 by default, its bounds from CosineDecayController) draws the same way; the shape their runs passed
(prefix_sampler.kwargs) is not in the repository, so its default, a uniform draw, is used. The update is Dr.GRPO (no std normalisation,
fixed-length sum); of the demonstration (prefix) tokens only the 20% with the highest entropy keep their
advantage, the 80% lowest-entropy get none. The prefix tokens are otherwise trained as sampled tokens (their
behaviour log-probs are the learner's, rl.old_logprobs: learner).
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from trainers.objectives import RLObjective, register_objective
from trainers.policy_loss import (
    EMPTY_INFO,
    aggregate_token_loss,
    clipped_rows,
    policy_stats,
    register_policy_loss,
)

PREFIX_HIGH, PREFIX_LOW_START, PREFIX_LOW_END = 0.95, 0.95, 0.05
DEMO_TOKENS_KEPT = 0.2  # highest-entropy share of the demonstration tokens that keep their advantage


def prefix_ratio(progress: float, rng: random.Random) -> float:
    """Fraction of the expert trajectory used as the prefix at RL progress in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    low = PREFIX_LOW_END + (PREFIX_LOW_START - PREFIX_LOW_END) * 0.5 * (1 + math.cos(math.pi * progress))
    return low + (PREFIX_HIGH - low) * rng.betavariate(1.0, 1.0)


def high_entropy_demo_tokens(entropy: Tensor, demo: Tensor, keep: float = DEMO_TOKENS_KEPT) -> Tensor:
    """Bool [B, T']: the demonstration tokens (``demo``) whose entropy is among the top ``keep`` share."""
    n = int(demo.sum())
    if n == 0:
        return torch.zeros_like(demo)
    k = max(1, math.ceil(keep * n))
    threshold = torch.topk(entropy.detach()[demo], k).values.min()
    return demo & (entropy.detach() >= threshold)


@register_policy_loss("prefix_rft")
def prefix_rft_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float = 0.0,
    loss_agg: str = "fixed-length-sum",
    normalizer: float | None = None,
    token_scale: float = 1.0,
    off_policy: Tensor | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """Clipped loss on every token; demonstration tokens (off_policy [B, T']) outside the top-20% entropy get
    advantage 0. ``entropy`` [B, T'] is required."""
    if entropy is None or entropy.shape != logprobs.shape:
        raise ValueError("prefix_rft needs the token entropy [batch, response_len] of the policy")
    start = clipped_rows(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        off_policy,
        clip_low=clip_low,
        clip_high=clip_high,
        clip_ratio_c=clip_ratio_c,
    )
    if start is None:
        return logprobs.sum() * 0.0, dict(EMPTY_INFO)
    token_mask, demo, token_loss, parts = start
    kept = high_entropy_demo_tokens(entropy, demo)
    token_loss = torch.where(demo & ~kept, torch.zeros_like(token_loss), token_loss)  # A = 0 there
    loss = aggregate_token_loss(token_loss, mask, loss_agg, normalizer) * token_scale
    info = policy_stats(loss, token_mask, **parts)
    info.update(off_policy_tokens=int(demo.sum()), demo_tokens_trained=int(kept.sum()))
    return loss, info


register_objective(
    RLObjective(
        name="prefix_rft",
        advantage="dr_grpo",
        policy_loss="prefix_rft",
        loss_agg="fixed-length-sum",
        prefix_members=1,
        prefix_ratio=prefix_ratio,
        uses_entropy=True,
        entropy_coef=0.001,
    )
)
