"""The pure part of the collective weight sync (actors/collective_sync.py): parameters packed into flat buckets of
one dtype and unpacked into views, with no Ray and no process group, so benchmarks/gpu_check.py can time it on GPU
tensors."""

from __future__ import annotations

from collections.abc import Mapping

BUCKET_BYTES = 256 << 20
"""Largest flat buffer one broadcast carries (a parameter larger than this goes alone)."""


def plan_buckets(items: list[tuple[str, tuple, str, int]], limit: int = BUCKET_BYTES) -> list[dict]:
    """Consecutive (name, shape, dtype, bytes per element) of one dtype packed into buckets of at most limit
    bytes: [{"dtype", "numel", "items": [(name, shape, numel)]}]."""
    buckets: list[dict] = []
    for name, shape, dtype, itemsize in items:
        numel = 1
        for s in shape:
            numel *= int(s)
        last = buckets[-1] if buckets else None
        if last is None or last["dtype"] != dtype or (last["numel"] + numel) * itemsize > limit:
            last = {"dtype": dtype, "numel": 0, "items": []}
            buckets.append(last)
        last["items"].append((name, tuple(int(s) for s in shape), numel))
        last["numel"] += numel
    return buckets


def param_items(named_params) -> list[tuple[str, tuple, str, int]]:
    """plan_buckets' items from (name, parameter) pairs; under ZeRO-3 `ds_shape` is the whole parameter's."""
    return [
        (n, tuple(getattr(p, "ds_shape", p.shape)), str(p.dtype).removeprefix("torch."), p.element_size())
        for n, p in named_params
    ]


def pack_bucket(params: Mapping, bucket: dict, device):
    """One bucket's parameters, flattened and concatenated on `device` (the sender's buffer)."""
    import torch

    with torch.no_grad():
        return torch.cat([params[n].detach().reshape(-1).to(device) for n, _, _ in bucket["items"]])


def unpack_bucket(flat, bucket: dict) -> dict:
    """name -> view of the received flat buffer, in the parameter's shape (no copy)."""
    weights, offset = {}, 0
    for name, shape, numel in bucket["items"]:
        weights[name] = flat[offset : offset + numel].view(shape)
        offset += numel
    return weights
