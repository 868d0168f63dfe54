"""Supervised fine-tuning loss: next-token cross entropy on response tokens only.

The prompt is context, not a target: only positions whose ``loss_mask`` is set
contribute. Aggregation is a token mean, with ``token_scale`` letting the caller
turn a per-rank mean into the exact global token mean across data-parallel ranks
(pass ``token_scale = local_tokens * world_size / global_tokens`` when the
gradients are averaged over ranks).
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.token_nll import next_token_nll


def check_logits_and_ids(logits: Tensor, input_ids: Tensor) -> None:
    """Raise ValueError unless logits is [B, T, V] and input_ids is an integer [B, T] with T >= 2."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, seq, vocab], got shape {tuple(logits.shape)}")
    if input_ids.dim() != 2 or input_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"input_ids must be [batch, seq] matching logits {tuple(logits.shape[:2])}, "
            f"got shape {tuple(input_ids.shape)}"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.shape[1] < 2:
        raise ValueError(
            f"sequences need at least 2 tokens to predict a next token, got seq={input_ids.shape[1]}"
        )


def sft_loss(
    logits: Tensor, input_ids: Tensor, loss_mask: Tensor, token_scale: float = 1.0
) -> tuple[Tensor, dict]:
    """Mean next-token cross entropy over response tokens, times ``token_scale``.

    logits: [B, T, V]; input_ids: [B, T]; loss_mask: [B, T], nonzero where the token
    is part of the response (a target). logits[:, t] predicts input_ids[:, t + 1], so
    the target mask is loss_mask[:, 1:].

    Returns (loss, info) where info = {"loss": value of the returned loss,
    "loss_sum": unscaled sum of token losses, "tokens": number of target tokens}.
    Summing loss_sum and tokens over ranks gives the exact global mean for logging.
    A batch without target tokens gives a zero loss that still has a graph, so every
    rank can take part in the backward pass.
    """
    check_logits_and_ids(logits, input_ids)
    if loss_mask.shape != input_ids.shape:
        raise ValueError(
            f"loss_mask must match input_ids shape {tuple(input_ids.shape)}, got {tuple(loss_mask.shape)}"
        )
    target_mask = loss_mask[:, 1:].bool()
    tokens = int(target_mask.sum().item())
    if tokens == 0:
        zero = logits.sum() * 0.0
        return zero, {"loss": 0.0, "loss_sum": 0.0, "tokens": 0}

    # Float32 cross entropy a chunk of rows at a time (trainers/token_nll.py): no float32 copy of the whole
    # [tokens, V] block is made or kept for the backward.
    loss_sum = next_token_nll(logits, input_ids, target_mask).sum()
    loss = loss_sum / tokens * token_scale
    loss_value, sum_value = torch.stack([loss.detach(), loss_sum.detach()]).tolist()  # one device sync
    return loss, {"loss": loss_value, "loss_sum": sum_value, "tokens": tokens}
