"""UPT (unified post-training; the HPT algorithm of Lv et al. 2025), as the paper's synchronized baseline ran it:
TsinghuaC3I/Unify-Post-Training, exp_scripts/train.sh (unify_strategy switch, switch_gate 0, n_verify 8,
offline_loss_type sft, sft_loss_coef 1.0, loss_remove_clip, loss_remove_token_mean, grpo_use_std False,
entropy_coeff 0.001, lr 5e-6); the loss is the "sft" branch of update_policy in hpt/verl/verl/mix_src/mix_actor.py.

Per prompt: when none of the G sampled completions is correct they are dropped and the expert trajectory is
trained with the SFT loss in their place (mix_trainer.py, select_on_off_ada_balance); otherwise the group trains
with -A * r on its completions (A: mean-centred reward, no std; r not clipped), summed over their tokens, not
averaged: token-sum-norm, the sum / max_tokens per share of 64 rows (core_algos.compute_policy_loss with
loss_remove_token_mean). The SFT term, coefficient 1.0, is a mean over the expert tokens on its own
(compute_sft_pure_loss), added to it; its global normaliser is `demo_normalizer` (the update batch's
demonstration tokens / world size; RLObjective.demo_token_mean). The entropy bonus (0.001) is a token mean over
every response token (mix_actor.py: masked_mean). FLOPs: generation of every group, RL training of the groups
with a correct completion, an SFT step on the fallback groups' expert rows.

Differences from their code, deliberate: they took the sum and the means per micro-batch of at most 32,768 tokens
on each of 8 GPUs with gradient accumulation 1, so a mean term counted once per micro-batch holding such tokens;
here each is taken once over the update batch. Their optimizer step clips the gradient norm at 1.0 (the actor's
grad_clip default; learner.grad_clip here) and is skipped when the norm exceeds 80 (max_grad_norm=80, a skip
threshold, not a clip); the skip is not implemented here. Their lr 5e-6 is the config key learner.rl_lr.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.objectives import RLObjective, dynamic_sampling_flops, register_objective
from trainers.policy_loss import (
    EMPTY_INFO,
    aggregate_token_loss,
    clipped_rows,
    demo_mean,
    mixed_stats,
    register_policy_loss,
)

SFT_COEF = 1.0


def expert_sft_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip: bool,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float = 0.0,
    loss_agg: str = "token-mean",
    normalizer: float | None = None,
    token_scale: float = 1.0,
    off_policy: Tensor | None = None,
    demo_normalizer: float | None = None,
) -> tuple[Tensor, dict]:
    """The policy-gradient loss (``clip``: PPO-clipped) on sampled rows aggregated by ``loss_agg``, plus
    SFT_COEF * (-log p) averaged over the expert rows' tokens (off_policy, bool [B]) on its own."""
    start = clipped_rows(logprobs, old_logprobs, advantages, mask, off_policy, clip=clip,
                         clip_low=clip_low, clip_high=clip_high, clip_ratio_c=clip_ratio_c)  # fmt: skip
    if start is None:
        return logprobs.sum() * 0.0, dict(EMPTY_INFO)
    token_mask, off, on_loss, parts = start
    rl_loss = aggregate_token_loss(
        torch.where(off, torch.zeros_like(on_loss), on_loss), mask, loss_agg, normalizer
    )
    sft = demo_mean(SFT_COEF * -logprobs, token_mask & off, demo_normalizer)
    loss = (rl_loss + sft) * token_scale
    return loss, mixed_stats(loss, token_mask, off, parts)


@register_policy_loss("upt")
def upt_policy_loss(logprobs, old_logprobs, advantages, mask, *, entropy=None, **settings):
    """UPT: -A * r unclipped on sampled rows, SFT on expert rows (see expert_sft_loss); ``entropy`` unused."""
    del entropy
    return expert_sft_loss(logprobs, old_logprobs, advantages, mask, clip=False, **settings)


register_objective(
    RLObjective(
        name="upt",
        advantage="dr_grpo",  # no std normalisation
        policy_loss="upt",
        loss_agg="token-sum-norm",
        entropy_agg="token-mean",
        expert_fallback=True,
        entropy_coef=0.001,
        demo_token_mean=True,
        # Every group's G rows are generated; only the groups with a correct completion train them (DAPO's
        # accounting with B_train = those groups). A fallback group trains its one expert row, counted by the
        # RL step as an SFT step (RLObjective.step_flops).
        flops=dynamic_sampling_flops,
    )
)
