"""SRFT (Fu et al. 2025), as the paper's synchronized baseline ran it: TsinghuaC3I/Unify-Post-Training,
exp_scripts/train_srft.sh (offline_loss_type srft, srft_type "paper" by default, off_policy_reshape p_div_p_0.1,
loss_remove_clip, loss_remove_token_mean, grpo_use_std False, entropy_coeff 0.001, lr 1e-6); the loss is
hpt/verl/verl/mix_src/mix_actor.py (the "srft" branch of update_policy) and compute_token_on_off_policy_srft_loss
in mix_core_alg.py.

Groups as LUFFY's: G - 1 sampled completions and one expert trajectory. H_i is each sequence's own mean token
entropy (detached), for every row. Three terms:
- sampled completions: -w_i * log p, with w_i = 0.1 * exp(H_i) when the completion is correct (reward 1) and
  w_i = -1 when it is not; no group advantage, no importance ratio, no clipping;
- the expert trajectory: LUFFY's off-policy term -A * p / (p + 0.1) (A: the mixed group's mean-centred reward);
  these two share token-sum-norm, a sum over their tokens / max_tokens per share of 64 rows (loss_remove_token_mean);
- an SFT term on the expert trajectory, 0.5 * exp(-H_i) * (-log p), averaged over the demonstration tokens on its
  own (compute_sft_pure_loss, a masked mean over the off-policy rows): its global normaliser is
  `demo_normalizer` (the update batch's demonstration tokens / world size; RLObjective.demo_token_mean).
The entropy bonus (0.001) is a token mean over every response token (mix_actor.py: masked_mean).

Differences from their code, deliberate: they took the sums and both means per micro-batch of at most 32,768
tokens on each of 8 GPUs with gradient accumulation 1, so a mean term counted once per micro-batch holding such
tokens; here each is taken once over the update batch (one micro-batch per share at our scale). "Correct" is a
score of at least CORRECT_THRESHOLD (theirs: reward == 1; the rewards are binary in both).
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.luffy import off_policy_term
from trainers.objectives import RLObjective, register_objective
from trainers.policy_loss import (
    EMPTY_INFO,
    aggregate_token_loss,
    clipped_rows,
    demo_mean,
    mixed_stats,
    register_policy_loss,
)

SFT_WEIGHT, POSITIVE_WEIGHT, NEGATIVE_WEIGHT = 0.5, 0.1, -1.0


def sequence_entropy(entropy: Tensor, token_mask: Tensor) -> Tensor:
    """Each row's mean token entropy over its response tokens [B], detached (0 for a row without any)."""
    ent = torch.where(token_mask, entropy.detach(), torch.zeros_like(entropy))
    return ent.sum(dim=1) / token_mask.sum(dim=1).clamp(min=1)


def _mean(values: Tensor, rows: Tensor) -> float:
    return float(values[rows].mean()) if bool(rows.any()) else 0.0


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
    loss_agg: str = "token-sum-norm",
    normalizer: float | None = None,
    token_scale: float = 1.0,
    off_policy: Tensor | None = None,
    entropy: Tensor | None = None,
    correct: Tensor | None = None,
    demo_normalizer: float | None = None,
) -> tuple[Tensor, dict]:
    """SRFT's loss; ``entropy`` [B, T'] is the policy's token entropy and ``correct`` (bool [B]) marks the
    sampled rows that are correct (both needed for the weights); ``demo_normalizer`` divides the SFT term's sum
    (default: this batch's demonstration tokens). The clip settings are accepted and unused."""
    if entropy is None or entropy.shape != logprobs.shape:
        raise ValueError("srft needs the token entropy [batch, response_len] of the policy")
    if correct is None or correct.shape != logprobs.shape[:1]:
        raise ValueError("srft needs `correct`, one bool per row [batch]")
    start = clipped_rows(logprobs, old_logprobs, advantages, mask, off_policy, clip=False,
                         clip_low=clip_low, clip_high=clip_high, clip_ratio_c=clip_ratio_c)  # fmt: skip
    if start is None:
        return logprobs.sum() * 0.0, dict(EMPTY_INFO)
    token_mask, off, _, parts = start
    h, good = sequence_entropy(entropy, token_mask), correct.to(logprobs.device).bool()
    w_on = torch.where(good, POSITIVE_WEIGHT * torch.exp(h), torch.full_like(h, NEGATIVE_WEIGHT))
    w_sft = SFT_WEIGHT * torch.exp(-h)
    off_loss, safe = off_policy_term(logprobs, advantages, token_mask)
    on_loss = -w_on.unsqueeze(1) * safe
    rl_loss = aggregate_token_loss(torch.where(off, off_loss, on_loss), mask, loss_agg, normalizer)
    sft = demo_mean(-w_sft.unsqueeze(1) * safe, token_mask & off, demo_normalizer)
    loss = (rl_loss + sft) * token_scale
    info = mixed_stats(loss, token_mask, off, parts)
    expert_rows, sampled_rows = off.any(dim=1), token_mask.any(dim=1) & ~off.any(dim=1)
    info.update(sft_weight=_mean(w_sft, expert_rows), positive_weight=_mean(w_on, sampled_rows & good))
    return loss, info


register_objective(
    RLObjective(
        name="srft",
        advantage="dr_grpo",  # the expert's A: mean-centred over the mixed group, no std normalisation
        policy_loss="srft",
        loss_agg="token-sum-norm",
        entropy_agg="token-mean",
        off_policy_members=1,
        entropy_coef=0.001,
        uses_entropy=True,
        uses_correct=True,
        demo_token_mean=True,
    )
)
