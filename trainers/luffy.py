"""LUFFY (Yan et al. 2025), as the paper's synchronized baseline ran it: TsinghuaC3I/Unify-Post-Training,
exp_scripts/train_luffy.sh (offline_loss_type off_policy, off_policy_reshape p_div_p_0.1, loss_remove_clip,
loss_remove_token_mean, grpo_use_std False, entropy_coeff 0.001, kl 0, lr 1e-6), whose loss is
compute_token_on_off_policy_loss in hpt/verl/verl/mix_src/mix_core_alg.py.

Each group holds G - 1 sampled completions and one expert trajectory (an off-policy member). Advantages are
group-relative over the mixed group without std normalisation. Sampled tokens get -A * r, r = pi / pi_old, not
clipped (loss_remove_clip); expert tokens get -A * f(p) with p = pi_theta(token) (the expert's own probability is
taken as 1) and the policy shaping f(p) = p / (p + 0.1), not clipped: it boosts the gradient of low-probability
expert tokens. Both kinds are summed over their tokens, not averaged (loss_remove_token_mean): token-sum-norm,
the sum / max_tokens per share of 64 rows (trainers/policy_loss.py, aggregate_token_loss). The entropy bonus
(0.001) is a token mean over every response token, expert ones included (mix_actor.py: masked_mean), no KL.

Differences from their code, deliberate: they took the sum (and the entropy mean) per micro-batch of at most
32,768 tokens on each of 8 GPUs with gradient accumulation 1, so the entropy mean counted once per micro-batch
there; here every term is taken once over the update batch (one micro-batch per share at our scale).
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
    mixed_stats,
    register_policy_loss,
)

SHAPING_GAMMA = 0.1


def shaped_probability(logprobs: Tensor, gamma: float = SHAPING_GAMMA) -> Tensor:
    """f(p) = p / (p + gamma) of p = exp(logprobs)."""
    p = torch.exp(logprobs.clamp(max=0.0, min=-MAX_ABS_LOG_RATIO))
    return p / (p + gamma)


def off_policy_term(logprobs: Tensor, advantages: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(LUFFY's expert-token loss -A * f(p) [B, T'], the log-probs with padding zeroed)."""
    safe = torch.where(token_mask, logprobs, torch.zeros_like(logprobs))
    token_adv = advantages.detach().to(logprobs.dtype).unsqueeze(1).expand_as(logprobs)
    return -token_adv * shaped_probability(safe), safe


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
    loss_agg: str = "token-sum-norm",
    normalizer: float | None = None,
    token_scale: float = 1.0,
    off_policy: Tensor | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """-A * r (unclipped) on the on-policy rows, -A * p / (p + 0.1) on the off-policy rows (bool [B]).
    The clip settings and ``entropy`` are accepted and unused."""
    del entropy
    start = clipped_rows(logprobs, old_logprobs, advantages, mask, off_policy, clip=False,
                         clip_low=clip_low, clip_high=clip_high, clip_ratio_c=clip_ratio_c)  # fmt: skip
    if start is None:
        return logprobs.sum() * 0.0, dict(EMPTY_INFO)
    token_mask, off, on_loss, parts = start
    off_loss, safe = off_policy_term(logprobs, advantages, token_mask)
    token_loss = torch.where(off, off_loss, on_loss)
    loss = aggregate_token_loss(token_loss, mask, loss_agg, normalizer) * token_scale
    info = mixed_stats(loss, token_mask, off, parts)
    with torch.no_grad():
        off_mask = token_mask & off
        info["off_policy_prob"] = float(torch.exp(safe)[off_mask].mean()) if bool(off_mask.any()) else 0.0
    return loss, info


register_objective(
    RLObjective(
        name="luffy",
        advantage="dr_grpo",  # group mean-centred over the mixed group, no std normalisation
        policy_loss="luffy",
        loss_agg="token-sum-norm",
        entropy_agg="token-mean",
        off_policy_members=1,
        entropy_coef=0.001,
    )
)
