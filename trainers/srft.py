"""SRFT (Fu et al. 2025), as the paper's synchronized baseline runs it (Unify-Post-Training settings).

Groups as LUFFY's: G - 1 sampled completions and one expert trajectory. Three terms, one token-mean:
- the expert trajectory: LUFFY's off-policy term -A * p / (p + 0.1) plus an SFT term w1 * (-log p), with
  w1 = 0.5 * exp(-H);
- sampled completions: the clipped PPO loss, those with a positive advantage weighted w2 = 0.1 * exp(H);
H is the policy's mean token entropy over the sampled completions, detached (a weight, not a target).
The two RL terms share one token-mean over the batch's response tokens; the SFT term is a mean of its own over
the batch's demonstration (expert) tokens, as SRFT's code (compute_sft_pure_loss, a masked mean over the
off-policy rows) and the paper's E_demo[-log p] take it. Its global normaliser is `demo_normalizer` (the
demonstration tokens of the whole update batch / world size; RLObjective.demo_token_mean asks the RL step for it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trainers.luffy import SHAPING_GAMMA, shaped_probability
from trainers.objectives import RLObjective, register_objective
from trainers.policy_loss import (
    EMPTY_INFO,
    aggregate_token_loss,
    clipped_rows,
    policy_stats,
    register_policy_loss,
)

SFT_WEIGHT, POSITIVE_WEIGHT = 0.5, 0.1


@register_policy_loss("srft")
def srft_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float = 0.0,
    loss_agg: str = "token-mean",
    normalizer: float | None = None,
    token_scale: float = 1.0,
    off_policy: Tensor | None = None,
    entropy: Tensor | None = None,
    demo_normalizer: float | None = None,
) -> tuple[Tensor, dict]:
    """SRFT's loss; ``entropy`` [B, T'] is the policy's token entropy (needed for the weights);
    ``demo_normalizer`` divides the SFT term's sum (default: this batch's demonstration tokens)."""
    if entropy is None or entropy.shape != logprobs.shape:
        raise ValueError("srft needs the token entropy [batch, response_len] of the policy")
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
    token_mask, off_rows, on_loss, parts = start
    on_mask = token_mask & ~off_rows
    h = float(entropy.detach()[on_mask].mean()) if bool(on_mask.any()) else 0.0
    w1, w2 = SFT_WEIGHT * math.exp(-h), POSITIVE_WEIGHT * math.exp(h)
    positive = (advantages > 0).to(logprobs.device).unsqueeze(1).expand_as(on_loss)
    on_loss = torch.where(positive, w2 * on_loss, on_loss)
    safe = torch.where(token_mask, logprobs, torch.zeros_like(logprobs))
    token_adv = advantages.detach().to(logprobs.dtype).unsqueeze(1).expand_as(logprobs)
    off_loss = -token_adv * shaped_probability(safe, SHAPING_GAMMA)
    rl_loss = aggregate_token_loss(torch.where(off_rows, off_loss, on_loss), mask, loss_agg, normalizer)
    demo_mask = token_mask & off_rows
    demo_count = float(demo_mask.sum()) if demo_normalizer is None else demo_normalizer
    sft_sum = (w1 * -torch.where(demo_mask, logprobs, torch.zeros_like(logprobs))).sum()
    loss = (rl_loss + sft_sum / max(demo_count, 1e-12)) * token_scale
    info = (
        policy_stats(loss, on_mask, **parts) if bool(on_mask.any()) else {**EMPTY_INFO, "loss": float(loss)}
    )
    info.update(tokens=int(token_mask.sum()), off_policy_tokens=int((token_mask & off_rows).sum()))
    info.update(sft_weight=w1, positive_weight=w2)
    return loss, info


register_objective(
    RLObjective(
        name="srft",
        advantage="dr_grpo",  # group mean-centred over the mixed group, no std normalisation
        policy_loss="srft",
        off_policy_members=1,
        entropy_coef=0.001,
        uses_entropy=True,
        demo_token_mean=True,
    )
)
