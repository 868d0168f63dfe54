"""gpu_check's paper section: does one learner rank of configs/paper_dapo_qwen7b.yaml fit the device it is given
(gpus_per_rank: 1, the whole device)?

Weights, gradients and AdamW states per rank follow the ZeRO paper's mixed-precision accounting (Rajbhandari et
al. 2020), which is what DeepSpeed's bf16 optimizer keeps: 2 bytes of bf16 weights, 2 of bf16 gradients and 12 of
float32 master weights and moments per parameter, the parts each stage shards over the ranks. The parameter count
comes from the model built on the meta device (no memory). Activations are measured: one micro-batch of the
config's length through the project's step (trainers/learner_step.py) on 1- and 2-layer slices of the real width,
so per layer and the rest (embedding, LM head, loss) separate, then scaled to the real depth.
"""

from __future__ import annotations

import json
import os

from benchmarks import gpu_check_model as gm
from benchmarks.gpu_check_sections import _activation_probe

GIB = 1 << 30
ZERO3_LIVE_PARAMS = 1e9
"""DeepSpeed's default stage3_max_live_parameters: gathered bf16 parameters a ZeRO-3 rank may hold at once."""


def zero_state_bytes(n: int, stage: int, ranks: int) -> dict:
    """Bytes per rank of bf16 weights (2/param), bf16 gradients (2) and fp32 master + Adam moments (12)."""
    weights = 2 * n / (ranks if stage >= 3 else 1)
    grads = 2 * n / (ranks if stage >= 2 else 1)
    optim = 12 * n / (ranks if stage >= 1 else 1)
    return {"weights": weights, "grads": grads, "optimizer": optim, "total": weights + grads + optim}


def _shape(model_path: str) -> tuple[dict, str]:
    path = os.path.join(model_path, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            raw = json.load(f)
        return {k: raw[k] for k in gm.SHAPES["qwen2.5-7b"]}, path
    return gm.SHAPES[
        "qwen2.5-7b"
    ], "built-in Qwen2.5-7B shape (the config's model path is not on this machine)"


def _activations(ctx, shape: dict, seq: int, objective: str) -> dict:
    """Activation bytes of one micro-batch at full depth, from 1- and 2-layer slices."""
    one = _activation_probe(ctx, shape, 1, seq, objective)
    two = _activation_probe(ctx, shape, 2, seq, objective)
    if ctx.on_cuda:  # the allocator's peak holds the slice's bf16 gradients too: take them out
        metric, layer_params = "peak_above_weights_bytes", two["params_bytes"] - one["params_bytes"]
        per_layer = two[metric] - one[metric] - layer_params
        rest = one[metric] - (two[metric] - one[metric]) - (one["params_bytes"] - layer_params)
    else:
        metric = "saved_bytes"
        per_layer = two[metric] - one[metric]
        rest = one[metric] - per_layer
    layers = shape["num_hidden_layers"]
    return {"seq": seq, "metric": metric, "per_layer_bytes": per_layer, "rest_bytes": rest,
            "total_bytes": rest + layers * per_layer, "slices": {"1": one, "2": two}}  # fmt: skip


def paper_fit(ctx) -> dict:
    from switchpoint.config import load_config

    cfg = load_config(ctx.paper_config)
    shape, source = _shape(cfg.model.path)
    meta = gm.build_model(shape, "meta", None)
    n = sum(p.numel() for p in meta.parameters())
    ranks, stage, micro = cfg.learner.num_ranks, cfg.learner.zero_stage, cfg.learner.micro_batch_size
    lengths = {"sft": cfg.data.max_len, "rl": cfg.rl.max_prompt_len + cfg.rollout.max_tokens}
    rec = {"config": ctx.paper_config, "shape_source": source, "params": n, "ranks": ranks, "zero_stage": stage,
           "micro_batch": micro, "lengths": lengths, "dtype": cfg.model.dtype,
           "gradient_checkpointing": False,  # the learner never turns it on
           "states_per_rank_by_stage": {str(s): zero_state_bytes(n, s, ranks) for s in range(4)}}  # fmt: skip
    states = rec["states_per_rank_by_stage"][str(stage)]["total"]
    live = 2 * min(n, ZERO3_LIVE_PARAMS) if stage == 3 else 0.0
    rec["zero3_live_params_bytes"] = live
    probe_shape = gm.TINY if ctx.tiny else shape
    rec["probe_shape"] = "tiny (dry run: not the paper's width)" if ctx.tiny else "the paper model's width"
    ctx.paper_micro = micro
    device_bytes = ctx.device_memory()
    rec["device_memory_bytes"] = device_bytes
    rec["phases"] = {}
    for phase, objective in (("sft", "sft"), ("rl", "rl")):
        if ctx.left() < 15:
            rec["stopped"] = f"time box reached before {phase}"
            break
        seq = min(lengths[phase], 64) if ctx.tiny else lengths[phase]
        try:
            act = _activations(ctx, probe_shape, seq, objective)
        except Exception as e:  # noqa: BLE001  (an out-of-memory here is itself an answer; the states stand)
            rec["phases"][phase] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            continue
        # A dry run scales the tiny slice's figures to the paper model's depth all the same: it runs the code.
        if ctx.tiny:
            act["total_bytes"] = act["rest_bytes"] + shape["num_hidden_layers"] * act["per_layer_bytes"]
        total = states + live + act["total_bytes"]
        # With gradient checkpointing per layer (not in the learner today): each layer keeps its bf16 input, and
        # one layer's activations are live again while it is recomputed.
        layer_inputs = shape["num_hidden_layers"] * micro * seq * shape["hidden_size"] * 2
        ckpt = states + live + act["rest_bytes"] + layer_inputs + act["per_layer_bytes"]
        verdict = {"activations": act, "per_rank_bytes": total, "per_rank_gib": round(total / GIB, 2),
                   "fits_80gib": total <= 80 * GIB, "with_checkpointing_gib": round(ckpt / GIB, 2)}  # fmt: skip
        if device_bytes:
            verdict.update(
                fits_this_device=total <= device_bytes, headroom_gib=round((device_bytes - total) / GIB, 2)
            )
        rec["phases"][phase] = verdict
        ctx.partial(rec)
    return rec
