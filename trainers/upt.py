"""UPT (unified post-training), as the paper's synchronized baseline runs it (Unify-Post-Training settings).

Per prompt: when none of the G sampled completions is correct they are dropped and the expert trajectory is
trained with the SFT loss (coefficient 1.0) in their place; otherwise the group trains with the GRPO loss
(no std normalisation). Both kinds of token share one token-mean. FLOPs: generation of every group, RL
training of the groups with a correct completion, an SFT step on the fallback groups' expert rows. The authors ran it with lr 5e-6 and grad
clip 80 (config keys learner.rl_lr and learner.grad_clip, not the objective's).
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.objectives import RLObjective, dynamic_sampling_flops, register_objective
from trainers.policy_loss import (
    EMPTY_INFO,
    aggregate_token_loss,
    clipped_rows,
    policy_stats,
    register_policy_loss,
)

SFT_COEF = 1.0


@register_policy_loss("upt")
def upt_policy_loss(
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
) -> tuple[Tensor, dict]:
    """Clipped PPO on sampled rows, SFT_COEF * (-log p) on expert rows (off_policy, bool [B])."""
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
    sft_loss = SFT_COEF * -torch.where(token_mask, logprobs, torch.zeros_like(logprobs))
    loss = (
        aggregate_token_loss(torch.where(off_rows, sft_loss, on_loss), mask, loss_agg, normalizer)
        * token_scale
    )
    on_mask = token_mask & ~off_rows
    info = (
        policy_stats(loss, on_mask, **parts) if bool(on_mask.any()) else {**EMPTY_INFO, "loss": float(loss)}
    )
    info.update(tokens=int(token_mask.sum()), off_policy_tokens=int((token_mask & off_rows).sum()))
    return loss, info


register_objective(
    RLObjective(
        name="upt",
        advantage="dr_grpo",  # no std normalisation
        policy_loss="upt",
        expert_fallback=True,
        entropy_coef=0.001,
        # Every group's G rows are generated; only the groups with a correct completion train them (DAPO's
        # accounting with B_train = those groups). A fallback group trains its one expert row, counted by the
        # RL step as an SFT step (RLObjective.step_flops).
        flops=dynamic_sampling_flops,
    )
)
