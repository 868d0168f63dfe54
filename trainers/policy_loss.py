"""Token log-probabilities and clipped policy-gradient losses, in a registry as in veRL.

Every policy loss has the signature
``fn(logprobs, old_logprobs, advantages, mask, *, clip_low, clip_high, token_scale=1.0)``
with logprobs/old_logprobs/mask shaped [B, T'] over response tokens and advantages
shaped [B] (one per sequence, broadcast to its tokens). It returns (loss, info) with
info = {"loss", "clip_fraction", "approx_kl", "ratio_mean", "tokens"}; all but "loss"
are masked token means over this batch, for logging only.

The losses differ only in clip range defaults and in what the token sum is divided by:
GRPO and DAPO divide by the number of response tokens in the batch (token-level
aggregation); Dr.GRPO divides by the constant B * T' so that a long answer's tokens
weigh as much as a short answer's (no length normalisation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.sft import check_logits_and_ids

PolicyLossFn = Callable[..., tuple[Tensor, dict]]

POLICY_LOSSES: dict[str, PolicyLossFn] = {}

# exp() of a log-ratio beyond this overflows float32 long before it means anything;
# veRL clamps at the same value.
MAX_ABS_LOG_RATIO = 20.0


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator that adds a policy loss to POLICY_LOSSES under ``name``."""

    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return decorator


def get_policy_loss(name: str) -> PolicyLossFn:
    """The policy loss registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        known = ", ".join(sorted(POLICY_LOSSES))
        raise ValueError(f"unknown policy loss {name!r}; known: {known}") from None


def token_logprobs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """log p(input_ids[:, t + 1] | input_ids[:, :t + 1]) for every t: [B, T] -> [B, T - 1], float32.

    Computed one sequence at a time with cross_entropy(reduction="none"), so that the
    float32 copy of the logits never exceeds one sequence's [T, V] block.
    """
    check_logits_and_ids(logits, input_ids)
    targets = input_ids[:, 1:].long()
    rows = [
        -F.cross_entropy(row_logits.float(), row_targets, reduction="none")
        for row_logits, row_targets in zip(logits[:, :-1], targets, strict=True)
    ]
    return torch.stack(rows)


def _check_policy_inputs(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [batch, response_len], got shape {tuple(logprobs.shape)}")
    for field, tensor in (("old_logprobs", old_logprobs), ("mask", mask)):
        if tensor.shape != logprobs.shape:
            raise ValueError(
                f"{field} must match logprobs shape {tuple(logprobs.shape)}, got {tuple(tensor.shape)}"
            )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages must be [batch] = [{logprobs.shape[0]}] (one per sequence), "
            f"got shape {tuple(advantages.shape)}"
        )
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low must be in [0, 1) so that 1 - clip_low stays positive, got {clip_low}")
    if not clip_high >= 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")


def clipped_surrogate_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    token_scale: float,
    normalizer: float | None,
) -> tuple[Tensor, dict]:
    """PPO clipped surrogate -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A), summed over
    response tokens and divided by ``normalizer`` (None: the number of response tokens),
    then multiplied by ``token_scale``.
    """
    _check_policy_inputs(logprobs, old_logprobs, advantages, mask, clip_low, clip_high)
    token_mask = mask.bool()
    tokens = int(token_mask.sum().item())
    if tokens == 0:
        empty_info = {"loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "ratio_mean": 1.0, "tokens": 0}
        return logprobs.sum() * 0.0, empty_info

    # Padding positions may hold garbage logprobs (even -inf); where() keeps them out of
    # exp() and the sum so that they cannot turn the loss into NaN.
    log_ratio = torch.where(token_mask, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    log_ratio = log_ratio.clamp(-MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    token_advantages = advantages.detach().to(ratio.dtype).unsqueeze(1).expand_as(ratio)

    unclipped_loss = -token_advantages * ratio
    clipped_loss = -token_advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    token_loss = torch.maximum(unclipped_loss, clipped_loss)
    loss_sum = torch.where(token_mask, token_loss, torch.zeros_like(token_loss)).sum()
    loss = loss_sum / (tokens if normalizer is None else normalizer) * token_scale

    with torch.no_grad():
        # Clipping engaged where the clipped branch was the larger loss: zero gradient there.
        clip_fraction = (clipped_loss > unclipped_loss)[token_mask].float().mean()
        # k3 estimator of KL(old || new) on samples from the old policy: r - 1 - log r.
        approx_kl = (ratio - 1.0 - log_ratio)[token_mask].mean()
        ratio_mean = ratio[token_mask].mean()
    info = {
        "loss": float(loss.item()),
        "clip_fraction": float(clip_fraction.item()),
        "approx_kl": float(approx_kl.item()),
        "ratio_mean": float(ratio_mean.item()),
        "tokens": tokens,
    }
    return loss, info


@register_policy_loss("grpo")
def grpo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    token_scale: float = 1.0,
) -> tuple[Tensor, dict]:
    """GRPO: symmetric clip by default, token-level mean over the batch's response tokens."""
    return clipped_surrogate_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        token_scale=token_scale,
        normalizer=None,
    )


@register_policy_loss("dapo")
def dapo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    token_scale: float = 1.0,
) -> tuple[Tensor, dict]:
    """DAPO: decoupled clip (1 - 0.2, 1 + 0.28) by default ("clip-higher"), token-level mean, no KL."""
    return clipped_surrogate_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        token_scale=token_scale,
        normalizer=None,
    )


@register_policy_loss("dr_grpo")
def dr_grpo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    token_scale: float = 1.0,
) -> tuple[Tensor, dict]:
    """Dr.GRPO: token sum divided by the constant B * T' (mask.shape), not by response lengths.

    Across data-parallel ranks the constant is only shared when every rank pads to the
    same T'; otherwise the caller corrects with token_scale.
    """
    # mask is checked to be [B, T'] before the normalizer is used, so numel() is B * T'.
    return clipped_surrogate_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        token_scale=token_scale,
        normalizer=float(mask.numel()),
    )
