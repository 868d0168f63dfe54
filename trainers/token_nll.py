"""Next-token negative log-likelihood over a large vocabulary, in float32, without float32 copies of all logits.

``next_token_nll(logits, input_ids, mask)`` is -log softmax(logits[b, t])[input_ids[b, t + 1]], exactly the
float32 cross entropy, but it works through the flattened [B * T, V] logits in contiguous chunks of rows: the
float32 copy never exceeds one chunk, and the autograd graph keeps only the logits themselves (as given, e.g.
bf16) and one float32 log-sum-exp per position. ``F.cross_entropy(logits.float())`` keeps a float32 [rows, V]
log-softmax for the backward, and selecting rows and casting each write another full-vocabulary tensor. On a
152K vocabulary those passes are most of the loss's memory traffic and its largest tensors.

Contiguous chunks cost no gather: positions outside the mask are computed and given zero weight (prompt tokens,
padding; the last position of each row, which predicts nothing). The backward takes the float32 softmax straight
from the bf16 chunk (no float32 copy), scales it in place and writes it once into the gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 27
"""Logit elements per chunk (float32: 512 MiB); a chunk holds at least one row."""


def _chunks(rows: int, vocab: int):
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


class _NextTokenNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
        # logits [N, V] contiguous; targets [N] (any id where weights is 0); weights [N]: 1 to keep, 0 to drop
        dtype = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 for float64 logits
        lse = torch.empty(logits.shape[0], dtype=dtype, device=logits.device)
        for s, e in _chunks(*logits.shape):
            lse[s:e] = torch.logsumexp(logits[s:e].to(dtype), dim=-1)
        picked = logits.gather(1, targets[:, None]).squeeze(1).to(dtype)
        ctx.save_for_backward(logits, targets, weights, lse)
        return (lse - picked) * weights

    @staticmethod
    def backward(ctx, grad_nll: Tensor):
        logits, targets, weights, lse = ctx.saved_tensors
        scale = (grad_nll * weights).to(lse.dtype)
        grad = torch.empty_like(logits)
        for s, e in _chunks(*logits.shape):
            p = torch.softmax(logits[s:e], dim=-1, dtype=lse.dtype)
            p.mul_(scale[s:e, None])
            p.scatter_add_(1, targets[s:e, None], -scale[s:e, None])  # minus the one-hot target
            grad[s:e] = p
        return grad, None, None


def next_token_nll(logits: Tensor, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """-log p(input_ids[:, t + 1] | logits[:, t]) for t < T - 1: [B, T] -> [B, T - 1], float32 (float64 for
    float64 logits), 0 where mask ([B, T - 1]) is false.

    logits: [B, T, V], any float dtype (made contiguous if it is not); gradients come back in its dtype."""
    batch, width, vocab = logits.shape
    if not logits.is_contiguous():
        logits = logits.contiguous()
    ids = input_ids.to(logits.device).long()
    targets = torch.zeros_like(ids)
    targets[:, :-1] = ids[:, 1:]
    weights = torch.zeros(
        batch, width, dtype=torch.promote_types(logits.dtype, torch.float32), device=logits.device
    )
    weights[:, :-1] = 1.0 if mask is None else mask.to(logits.device).bool().to(weights.dtype)
    nll = _NextTokenNLL.apply(logits.view(-1, vocab), targets.view(-1), weights.view(-1))
    return nll.view(batch, width)[:, :-1]
