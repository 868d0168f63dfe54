"""FLOPs accounting of the paper's Appendix E, from a Hugging Face config and the lengths actually seen.

Forward FLOPs per token of a decoder-only transformer:

    F = 2 * [L * (3 * H * H_ff + 2 * H * (H + D_kv)) + 2 * V * H] + 4 * S * L * H

L layers, H hidden size, H_ff MLP width, D_kv = num_key_value_heads * head_dim, V vocabulary, S sequence
length. The first bracket counts the dense weights (gated MLP, Q/K/V/O projections, embedding and LM head),
the last term the attention scores and their weighted sum. Backward costs twice the forward, hence:

    SFT step:  3 * B * S * F                      (B sequences of mean length S)
    GRPO step: 4 * B * G * S * F                  (generation forward + reference/old forward + backward)
    DAPO step: (K * B_gen + 3 * B_train) * G * S * F

For DAPO, K * B_gen is the number of prompts generated in total including the groups dynamic sampling
dropped, B_train the prompts trained on. S is always the mean length actually seen, not the maximum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

EXA = 1e18  # the paper reports compute in exaFLOPs

_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _positive(value, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def _config_int(hf_config: Mapping, key: str) -> int:
    if key not in hf_config or hf_config[key] is None:
        raise ValueError(f"model config is missing {key!r} (needed for FLOPs accounting)")
    value = hf_config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"model config {key!r} must be a positive integer, got {value!r}")
    return value


def model_dims(hf_config: Mapping) -> dict[str, int]:
    """L, H, H_ff, V, n_heads, n_kv_heads, head_dim and D_kv from a config.json dict.

    head_dim defaults to hidden_size / num_attention_heads and num_key_value_heads to num_attention_heads,
    as in Hugging Face's own defaults.
    """
    if not isinstance(hf_config, Mapping):
        raise ValueError(f"model config must be a dict (config.json), got {type(hf_config).__name__}")
    dims = {key: _config_int(hf_config, key) for key in _REQUIRED}
    heads = dims["num_attention_heads"]
    kv_heads = hf_config.get("num_key_value_heads")
    dims["num_key_value_heads"] = heads if kv_heads is None else _config_int(hf_config, "num_key_value_heads")
    if hf_config.get("head_dim") is None:
        if dims["hidden_size"] % heads:
            raise ValueError(
                f"model config has no 'head_dim' and hidden_size {dims['hidden_size']} is not divisible by "
                f"num_attention_heads {heads}"
            )
        dims["head_dim"] = dims["hidden_size"] // heads
    else:
        dims["head_dim"] = _config_int(hf_config, "head_dim")
    dims["kv_dim"] = dims["num_key_value_heads"] * dims["head_dim"]
    return dims


def attention_flops_per_token(hf_config: Mapping, seq_len: float) -> float:
    """Forward FLOPs per token of the attention scores and their weighted sum at sequence length seq_len:
    4 * S * L * H (the whole S x S product, as Appendix E counts it, not half for the causal mask)."""
    s = _positive(seq_len, "seq_len")
    d = model_dims(hf_config)
    return 4.0 * s * d["num_hidden_layers"] * d["hidden_size"]


def forward_flops_per_token(hf_config: Mapping, seq_len: float) -> float:
    """Forward FLOPs per token at mean sequence length seq_len (DESIGN.md / the paper's Appendix E)."""
    d = model_dims(hf_config)
    n_layers, h, h_ff, v = d["num_hidden_layers"], d["hidden_size"], d["intermediate_size"], d["vocab_size"]
    dense = n_layers * (3 * h * h_ff + 2 * h * (h + d["kv_dim"])) + 2 * v * h
    return 2.0 * dense + attention_flops_per_token(hf_config, seq_len)


def sft_step_flops(hf_config: Mapping, batch_size: float, seq_len: float) -> float:
    """One SFT optimizer step on batch_size sequences of mean length seq_len: 3 * B * S * F."""
    b = _positive(batch_size, "batch_size")
    return 3.0 * b * float(seq_len) * forward_flops_per_token(hf_config, seq_len)


def grpo_step_flops(hf_config: Mapping, n_prompts: float, group_size: float, seq_len: float) -> float:
    """One GRPO step: n_prompts prompts, group_size samples each, mean length seq_len: 4 * B * G * S * F."""
    b, g = _positive(n_prompts, "n_prompts"), _positive(group_size, "group_size")
    return 4.0 * b * g * float(seq_len) * forward_flops_per_token(hf_config, seq_len)


def dapo_step_flops(
    hf_config: Mapping,
    n_prompts_generated: float,
    n_prompts_trained: float,
    group_size: float,
    seq_len: float,
) -> float:
    """One DAPO step: (K * B_gen + 3 * B_train) * G * S * F.

    n_prompts_generated is K * B_gen, every prompt generated for this step including the groups dynamic
    sampling dropped; n_prompts_trained is B_train. A step that trained nothing still paid for generation.
    """
    generated = _positive(n_prompts_generated, "n_prompts_generated")
    if isinstance(n_prompts_trained, bool) or not isinstance(n_prompts_trained, (int, float)):
        raise ValueError(f"n_prompts_trained must be a number >= 0, got {n_prompts_trained!r}")
    if not math.isfinite(n_prompts_trained) or n_prompts_trained < 0:
        raise ValueError(f"n_prompts_trained must be a finite number >= 0, got {n_prompts_trained!r}")
    if n_prompts_trained > generated:
        raise ValueError(
            f"n_prompts_trained ({n_prompts_trained}) cannot exceed "
            f"n_prompts_generated ({n_prompts_generated})"
        )
    g = _positive(group_size, "group_size")
    per_sequence = float(seq_len) * forward_flops_per_token(hf_config, seq_len)
    return (generated + 3.0 * n_prompts_trained) * g * per_sequence


def to_exaflops(flops: float) -> float:
    """FLOPs -> exaFLOPs, the unit of the paper's curves."""
    return float(flops) / EXA
