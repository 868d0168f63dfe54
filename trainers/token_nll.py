"""Next-token negative log-likelihood over a large vocabulary, in float32, without float32 copies of all logits.

``token_nll`` gives -log softmax(logits[row])[target] for chosen rows of [B, T, V] logits, exactly the float32
cross entropy of those rows, but works through the rows in chunks: the float32 copy of the logits never exceeds
one chunk, and the autograd graph keeps only the logits themselves (as given, e.g. bf16) and one float32
log-sum-exp per row, where ``F.cross_entropy(logits.float())`` keeps a float32 [rows, V] log-softmax for the
backward and its index/slice/cast steps each write another full-vocab tensor there. On a 152K vocabulary that is
most of the memory traffic of the loss and the largest tensor of the step.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 27
"""Logit elements per chunk (float32: 512 MiB); a chunk holds at least one row."""


def _chunks(count: int, vocab: int):
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, count, step):
        yield start, min(count, start + step)


class _TokenNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, rows: Tensor, targets: Tensor) -> Tensor:
        flat = logits.view(-1, logits.shape[-1])
        dtype = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 for float64 logits
        nll = torch.empty(rows.shape[0], dtype=dtype, device=logits.device)
        lse = torch.empty_like(nll)
        for s, e in _chunks(rows.shape[0], flat.shape[1]):
            x = flat.index_select(0, rows[s:e]).to(dtype)
            lse[s:e] = torch.logsumexp(x, dim=-1)
            nll[s:e] = lse[s:e] - x.gather(1, targets[s:e, None]).squeeze(1)
        ctx.save_for_backward(logits, rows, targets, lse)
        return nll

    @staticmethod
    def backward(ctx, grad_nll: Tensor):
        logits, rows, targets, lse = ctx.saved_tensors
        flat = logits.view(-1, logits.shape[-1])
        grad = torch.zeros_like(flat)
        for s, e in _chunks(rows.shape[0], flat.shape[1]):
            p = (flat.index_select(0, rows[s:e]).to(lse.dtype) - lse[s:e, None]).exp_()  # softmax
            p.scatter_add_(1, targets[s:e, None], torch.full_like(p[:, :1], -1.0))  # minus the one-hot target
            p.mul_(grad_nll[s:e, None].to(p.dtype))
            grad.index_copy_(0, rows[s:e], p.to(grad.dtype))
        return grad.view_as(logits), None, None


def token_nll(logits: Tensor, rows: Tensor, targets: Tensor) -> Tensor:
    """-log softmax(logits.view(-1, V)[rows])[targets]: [len(rows)], float32 (float64 for float64 logits).

    logits: [..., V] (any float dtype; made contiguous if it is not); rows: distinct int64 indices into the
    flattened leading dimensions; targets: int64 token ids, one per row."""
    if not logits.is_contiguous():
        logits = logits.contiguous()
    rows, targets = rows.to(logits.device).long(), targets.to(logits.device).long()
    return _TokenNLL.apply(logits, rows, targets)


def next_token_rows(batch: int, width: int, device=None) -> Tensor:
    """Row indices into logits.view(B * T, V) of the positions that predict a next token (t < T - 1), in
    [B, T - 1] order: row b * T + t predicts input_ids[b, t + 1]."""
    t = torch.arange(width - 1, device=device)
    return (torch.arange(batch, device=device)[:, None] * width + t).reshape(-1)
