"""LUFFY (Yan et al. 2025), as the paper's synchronized baseline runs it (Unify-Post-Training settings).

Each group holds G - 1 sampled completions and one expert trajectory (an off-policy member). Advantages are
group-relative over the mixed group without std normalisation. Sampled tokens get the clipped PPO loss;
expert tokens get -A * f(p) with p = pi_theta(token) (the expert's own probability is taken as 1) and the
policy shaping f(p) = p / (p + gamma), gamma = 0.1, not clipped: it boosts the gradient of low-probability
expert tokens. All tokens are averaged together (token-mean). Entropy bonus 0.001, no KL.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.objectives import RLObjective, register_objective
from trainers.policy_loss import (
    EMPTY_INFO,
    MAX_ABS_LOG_RATIO,
    aggregate_token_loss,
    clipped_rows,
    policy_stats,
    register_policy_loss,
)

SHAPING_GAMMA = 0.1


def shaped_probability(logprobs: Tensor, gamma: float = SHAPING_GAMMA) -> Tensor:
    """f(p) = p / (p + gamma) of p = exp(logprobs)."""
    p = torch.exp(logprobs.clamp(max=0.0, min=-MAX_ABS_LOG_RATIO))
    return p / (p + gamma)


@register_policy_loss("luffy")
def luffy_policy_loss(
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
    gamma: float = SHAPING_GAMMA,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """Clipped PPO on the on-policy rows, -A * p / (p + gamma) on the off-policy rows (bool [B]).
    ``entropy`` is accepted and unused."""
    del entropy
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
    safe = torch.where(token_mask, logprobs, torch.zeros_like(logprobs))
    token_adv = advantages.detach().to(logprobs.dtype).unsqueeze(1).expand_as(logprobs)
    off_loss = -token_adv * shaped_probability(safe, gamma)
    token_loss = torch.where(off_rows, off_loss, on_loss)
    loss = aggregate_token_loss(token_loss, mask, loss_agg, normalizer) * token_scale
    on_mask = token_mask & ~off_rows
    if bool(on_mask.any()):
        info = policy_stats(loss, on_mask, **parts)
    else:
        info = {**EMPTY_INFO, "loss": float(loss.item())}
    info["tokens"] = int(token_mask.sum())
    with torch.no_grad():
        off_mask = token_mask & off_rows
        info["off_policy_tokens"] = int(off_mask.sum())
        info["off_policy_prob"] = float(torch.exp(safe)[off_mask].mean()) if bool(off_mask.any()) else 0.0
    return loss, info


register_objective(
    RLObjective(
        name="luffy",
        advantage="dr_grpo",  # group mean-centred over the mixed group, no std normalisation
        policy_loss="luffy",
        off_policy_members=1,
        entropy_coef=0.001,
    )
)
