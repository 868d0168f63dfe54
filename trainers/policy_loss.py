"""Token log-probabilities and clipped policy-gradient losses, in a registry as in veRL.

Every policy loss has the signature
``fn(logprobs, old_logprobs, advantages, mask, *, clip_low, clip_high, clip_ratio_c, loss_agg,
normalizer=None, token_scale=1.0, off_policy=None)``
with logprobs/old_logprobs/mask shaped [B, T'] over response tokens, advantages shaped [B]
(one per sequence, broadcast to its tokens) and off_policy a bool [B] marking off-policy
members (expert trajectories). It returns (loss, info) with info = {"loss", "clip_fraction",
"approx_kl", "ratio_mean", "ratio_max_dev", "tokens", ...}; all but "loss" are for logging.

Which loss, clip range and aggregation an algorithm uses is its objective's business
(trainers/objectives.py), so the values passed here come from there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from trainers.sft import check_logits_and_ids
from trainers.token_nll import next_token_nll

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

    Float32 cross entropy a chunk of rows at a time (trainers/token_nll.py), so the float32 copy of the logits
    never exceeds one chunk and the backward keeps the logits as given, not a float32 log-softmax.
    """
    check_logits_and_ids(logits, input_ids)
    return -next_token_nll(logits, input_ids)


def off_policy_tokens(off_policy: Tensor | None, mask: Tensor) -> Tensor:
    """Bool [B, T'] of the off-policy response tokens, from None (none), a bool [B] (whole rows: expert
    trajectories) or a bool [B, T'] (single tokens: an expert prefix)."""
    if off_policy is None:
        return torch.zeros_like(mask, dtype=torch.bool)
    off = off_policy.bool().to(mask.device)
    if off.dim() == 1 and off.shape[0] == mask.shape[0]:
        off = off.unsqueeze(1).expand_as(mask)
    if off.shape != mask.shape:
        raise ValueError(f"off_policy must be [batch] or [batch, response_len] = {tuple(mask.shape)}, got "
                         f"{tuple(off_policy.shape)}")  # fmt: skip
    return off & mask.bool()


def token_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Entropy of the next-token distribution at every response position: logits [B, T, V] -> [B, T - 1]
    (matching token_logprobs), computed one sequence at a time in float32; 0 where mask is 0."""
    rows = []
    for row_logits, row_mask in zip(logits[:, :-1], mask, strict=True):
        logp = torch.log_softmax(row_logits.float(), dim=-1)
        ent = -(logp.exp() * logp).sum(dim=-1)
        rows.append(torch.where(row_mask.bool(), ent, torch.zeros_like(ent)))
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


LOSS_AGGREGATIONS = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "fixed-length-sum",
    "token-sum-norm",
)
# token-sum-norm: rows in one of Unify-Post-Training's data-parallel shares (64 prompts x 8 samples over 8 GPUs).
TOKEN_SUM_NORM_ROWS = 64


def aggregate_token_loss(
    token_loss: Tensor, mask: Tensor, loss_agg: str, denominator: float | None = None
) -> Tensor:
    """Masked per-token losses [B, T'] -> one scalar, as veRL's agg_loss:

    - token-mean: sum over every response token / number of response tokens (DAPO, GRPO here);
    - seq-mean-token-mean: each sequence's token mean, averaged over sequences (the original GRPO);
    - seq-mean-token-sum: each sequence's token sum, averaged over sequences;
    - fixed-length-sum: sum over tokens / (sequences x a fixed length) (Dr.GRPO: no length normalisation);
    - token-sum-norm: sum over tokens / (a fixed length x sequences / TOKEN_SUM_NORM_ROWS), i.e.
      TOKEN_SUM_NORM_ROWS x fixed-length-sum: Unify-Post-Training's ``loss_remove_token_mean`` (mix_core_alg.py,
      ``(pg_losses * eos_mask).sum() / eos_mask.shape[-1]``, the padded width being max_response_length), which
      each of their 8 GPUs took over its 64 rows (one micro-batch per row share, gradient accumulation 1) before
      the gradient average: a sum over a share's tokens, not a mean.

    ``denominator`` replaces the local count (tokens; sequences; B * T'; B * T' / TOKEN_SUM_NORM_ROWS) so that
    data-parallel ranks divide by the global count / world size and their mean is the global loss. Sequences
    without a response token (padding rows) count for nothing.
    """
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {loss_agg!r}; known: {', '.join(LOSS_AGGREGATIONS)}")
    token_mask = mask.bool()
    masked = torch.where(token_mask, token_loss, torch.zeros_like(token_loss))
    seq_tokens = token_mask.sum(dim=1)
    if loss_agg == "token-mean":
        total, local = masked.sum(), float(seq_tokens.sum())
    elif loss_agg == "seq-mean-token-mean":
        total = (masked.sum(dim=1) / seq_tokens.clamp(min=1)).sum()
        local = float((seq_tokens > 0).sum())
    elif loss_agg == "seq-mean-token-sum":
        total, local = masked.sum(), float((seq_tokens > 0).sum())
    elif loss_agg == "fixed-length-sum":
        total, local = masked.sum(), float(mask.numel())
    else:
        total = masked.sum()
        local = float((seq_tokens > 0).sum()) * mask.shape[-1] / TOKEN_SUM_NORM_ROWS
    return total / max(denominator if denominator is not None else local, 1e-12)


def clipped_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float = 0.0,
    clip: bool = True,
) -> tuple[Tensor, dict]:
    """Per-token PPO loss -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A) [B, T'], with the dual clip
    (clip_ratio_c > 1) that bounds a negative-advantage token's loss by -c * A; ``clip=False``: the plain -r * A
    (Unify-Post-Training's ``loss_remove_clip``). Returns the token losses and the tensors the statistics need
    (ratio, log_ratio, clipped)."""
    _check_policy_inputs(logprobs, old_logprobs, advantages, mask, clip_low, clip_high)
    if clip_ratio_c and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c (dual clip) must be > 1 or 0 (off), got {clip_ratio_c}")
    token_mask = mask.bool()
    # Padding positions may hold garbage logprobs (even -inf); where() keeps them out of
    # exp() and the sum so that they cannot turn the loss into NaN.
    log_ratio = torch.where(token_mask, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    log_ratio = log_ratio.clamp(-MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    token_advantages = advantages.detach().to(ratio.dtype).unsqueeze(1).expand_as(ratio)
    unclipped_loss = -token_advantages * ratio
    if not clip:
        return unclipped_loss, {
            "ratio": ratio,
            "log_ratio": log_ratio,
            "clipped": torch.zeros_like(token_mask),
        }
    clipped_loss = -token_advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    token_loss = torch.maximum(unclipped_loss, clipped_loss)
    clipped = clipped_loss > unclipped_loss  # clipping engaged: zero gradient there
    if clip_ratio_c:
        dual = -token_advantages * clip_ratio_c
        dual_clipped = (token_advantages < 0) & (token_loss > dual)
        token_loss = torch.where(token_advantages < 0, torch.minimum(token_loss, dual), token_loss)
        clipped = clipped | dual_clipped
    return token_loss, {"ratio": ratio, "log_ratio": log_ratio, "clipped": clipped}


def clipped_rows(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    off_policy: Tensor | None,
    *,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float = 0.0,
    clip: bool = True,
) -> tuple[Tensor, Tensor, Tensor, dict] | None:
    """The start the objectives with off-policy members share: None for a batch without a response token, else
    (token mask, off-policy token mask, per-token clipped (``clip=False``: unclipped) loss, the tensors its
    statistics need)."""
    token_mask = mask.bool()
    if int(token_mask.sum()) == 0:
        _check_policy_inputs(logprobs, old_logprobs, advantages, mask, clip_low, clip_high)
        return None
    off = off_policy_tokens(off_policy, mask)
    token_loss, parts = clipped_token_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        clip_ratio_c=clip_ratio_c,
        clip=clip,
    )
    return token_mask, off, token_loss, parts


def demo_mean(token_values: Tensor, demo: Tensor, normalizer: float | None = None) -> Tensor:
    """An SFT-style term averaged over the demonstration tokens on its own (Unify-Post-Training's
    compute_sft_pure_loss, a masked mean over the off-policy rows): the sum of ``token_values`` where ``demo``
    (bool [B, T']) holds, divided by ``normalizer`` (the update batch's demonstration tokens / world size) or,
    without one, by this batch's demonstration tokens. 0 (with a graph) when there are none."""
    count = float(demo.sum()) if normalizer is None else normalizer
    return torch.where(demo, token_values, torch.zeros_like(token_values)).sum() / max(count, 1e-12)


def policy_stats(loss: Tensor, mask: Tensor, ratio: Tensor, log_ratio: Tensor, clipped: Tensor) -> dict:
    """Logging info of a policy loss: masked token means over this batch, and max |ratio - 1|."""
    token_mask = mask.bool()
    with torch.no_grad():
        # k3 estimator of KL(old || new) on samples from the old policy: r - 1 - log r.
        return {
            "loss": float(loss.item()),
            "clip_fraction": float(clipped[token_mask].float().mean().item()),
            "approx_kl": float((ratio - 1.0 - log_ratio)[token_mask].mean().item()),
            "ratio_mean": float(ratio[token_mask].mean().item()),
            "ratio_max_dev": float((ratio - 1.0)[token_mask].abs().max().item()),
            "tokens": int(token_mask.sum().item()),
        }


EMPTY_INFO = {"loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "ratio_mean": 1.0, "ratio_max_dev": 0.0,
              "tokens": 0}  # fmt: skip


def mixed_stats(loss: Tensor, token_mask: Tensor, off: Tensor, parts: dict) -> dict:
    """policy_stats over the on-policy tokens of a batch with off-policy ones (``off``, bool [B, T']), with the
    token counts of both."""
    on_mask = token_mask & ~off
    info = (
        policy_stats(loss, on_mask, **parts) if bool(on_mask.any()) else {**EMPTY_INFO, "loss": float(loss)}
    )
    info.update(tokens=int(token_mask.sum()), off_policy_tokens=int((token_mask & off).sum()))
    return info


def clipped_surrogate_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    token_scale: float = 1.0,
    normalizer: float | None = None,
    clip_ratio_c: float = 0.0,
    loss_agg: str = "token-mean",
    off_policy: Tensor | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """PPO clipped surrogate per token, aggregated by ``loss_agg`` (``normalizer``: the global denominator
    divided by the world size, None: this batch's own count), then multiplied by ``token_scale``.

    ``off_policy`` (bool [B]) is accepted so every policy loss has one signature; a clipped loss has no
    off-policy member, so any True there is an error. ``entropy`` is accepted and unused.
    """
    del entropy
    if off_policy is not None and bool(off_policy.any()):
        raise ValueError("this policy loss has no off-policy members; use an objective that declares them")
    _check_policy_inputs(logprobs, old_logprobs, advantages, mask, clip_low, clip_high)
    if int(mask.bool().sum()) == 0:
        return logprobs.sum() * 0.0, dict(EMPTY_INFO)
    token_loss, parts = clipped_token_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        clip_ratio_c=clip_ratio_c,
    )
    loss = aggregate_token_loss(token_loss, mask, loss_agg, normalizer) * token_scale
    return loss, policy_stats(loss, mask, **parts)


# The one clipped loss GRPO, DAPO and Dr.GRPO share: they differ in the settings their objective passes
# (trainers/objectives.py: clip range, dual clip, aggregation), not in code.
register_policy_loss("ppo_clip")(clipped_surrogate_loss)
