"""FLOPs accounting (the paper's Appendix E) against hand arithmetic and the paper's own compute axes."""

import pytest

from plasticity.flops import (
    dapo_step_flops,
    forward_flops_per_token,
    grpo_step_flops,
    model_dims,
    sft_step_flops,
    to_exaflops,
)

# Qwen2.5-7B's config.json (the paper's base model).
QWEN_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
}
TINY = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "vocab_size": 100,
}


def test_forward_flops_by_hand():
    # L=2, H=128, H_ff=512, D_kv=1*64, V=100, S=10
    dense = 2 * (3 * 128 * 512 + 2 * 128 * (128 + 64)) + 2 * 100 * 128
    expected = 2 * dense + 4 * 10 * 2 * 128
    assert forward_flops_per_token(TINY, 10) == expected
    assert forward_flops_per_token(TINY, 10.5) == 2 * dense + 4 * 10.5 * 2 * 128  # mean lengths are floats


@pytest.mark.parametrize(
    ("steps", "batch", "mean_len", "paper_eflops"),
    [
        (360, 512, 3771, 34.92),  # SFT889K ("general"): first SFT key of the reference curves
        (360, 512, 2153 + 64, 19.76),  # easy102K
        (360, 512, 3673 + 74, 34.67),  # uniform102K
        (360, 512, 8532 + 101, 89.25),  # hard102K
        (62, 16, 9884 + 127, 0.57),  # s1K
    ],
)
def test_sft_compute_matches_the_paper_curves(steps, batch, mean_len, paper_eflops):
    # The paper's SFT compute keys (tests/data/retu_curves.json) were made with the same formula from the
    # data sets' mean lengths; they are rounded to 0.01 EFLOPs.
    assert to_exaflops(steps * sft_step_flops(QWEN_7B, batch, mean_len)) == pytest.approx(
        paper_eflops, abs=0.006
    )


def test_rl_formulas():
    f = forward_flops_per_token(TINY, 40.0)
    assert sft_step_flops(TINY, 8, 40.0) == 3 * 8 * 40.0 * f
    assert grpo_step_flops(TINY, 16, 8, 40.0) == 4 * 16 * 8 * 40.0 * f
    # DAPO generated 3 rounds of 16 prompts (48) and trained on the 16 informative ones.
    assert dapo_step_flops(TINY, 48, 16, 8, 40.0) == (48 + 3 * 16) * 8 * 40.0 * f
    # Without dropped groups DAPO costs what GRPO costs; a step that trained nothing still generated.
    assert dapo_step_flops(TINY, 16, 16, 8, 40.0) == pytest.approx(grpo_step_flops(TINY, 16, 8, 40.0))
    assert dapo_step_flops(TINY, 16, 0, 8, 40.0) == 16 * 8 * 40.0 * f


def test_upt_fallback_groups_train_the_expert_row_only():
    """UPT: a group whose G rollouts all failed is generated (G rows) but trains its one expert row with the SFT
    loss (3 * S_e * F, forward + backward); the other groups train their G rows as RL (3 * G * S * F each)."""
    from trainers import rl_objective

    f40, f30 = forward_flops_per_token(TINY, 40.0), forward_flops_per_token(TINY, 30.0)
    upt = rl_objective("upt")
    # 8 prompts generated, G = 4, mean length 40; 3 groups train with RL, 5 fell back to their expert row of
    # 30 tokens (prompt + expert trajectory).
    got = upt.step_flops(TINY, 8, 3, 4, 40.0, [30] * 5)
    assert got == pytest.approx(8 * 4 * 40.0 * f40 + 3 * 3 * 4 * 40.0 * f40 + 3 * 5 * 30.0 * f30)
    # Every group fell back (an untrained model): generation of 8 x 4 rows, training of the 8 expert rows;
    # counting 8 x 4 trained rows (4 * B * G * S * F = 128 S F) would be 128 / 56 = 2.3x too much here.
    assert upt.step_flops(TINY, 8, 0, 4, 40.0, [40] * 8) == pytest.approx((8 * 4 + 3 * 8) * 40.0 * f40)
    # Without fallback groups UPT costs what GRPO costs.
    grpo = rl_objective("grpo")
    assert upt.step_flops(TINY, 8, 8, 4, 40.0) == pytest.approx(grpo.step_flops(TINY, 8, 8, 4, 40.0))


def test_config_defaults_follow_hugging_face():
    cfg = {k: v for k, v in TINY.items() if k not in ("head_dim", "num_key_value_heads")}
    dims = model_dims(cfg)
    assert dims["head_dim"] == 64 and dims["num_key_value_heads"] == 2 and dims["kv_dim"] == 128
    # Grouped-query attention shrinks only the K/V projections.
    gqa = forward_flops_per_token({**cfg, "num_key_value_heads": 1}, 10)
    mha = forward_flops_per_token(cfg, 10)
    assert mha - gqa == 2 * 2 * 2 * 128 * 64


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({k: v for k, v in TINY.items() if k != "vocab_size"}, "missing 'vocab_size'"),
        ({**TINY, "num_hidden_layers": 0}, "'num_hidden_layers' must be a positive integer"),
        ({**TINY, "hidden_size": 12.5}, "'hidden_size' must be a positive integer"),
        ({**TINY, "head_dim": None, "hidden_size": 129}, "not divisible"),
        ("config.json", "must be a dict"),
    ],
)
def test_bad_config_names_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        forward_flops_per_token(cfg, 10)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: forward_flops_per_token(TINY, 0), "seq_len"),
        (lambda: forward_flops_per_token(TINY, float("nan")), "seq_len"),
        (lambda: sft_step_flops(TINY, -1, 10), "batch_size"),
        (lambda: grpo_step_flops(TINY, 4, 0, 10), "group_size"),
        (lambda: dapo_step_flops(TINY, 0, 0, 8, 10), "n_prompts_generated"),
        (lambda: dapo_step_flops(TINY, 8, 9, 8, 10), "cannot exceed"),
        (lambda: dapo_step_flops(TINY, 8, -1, 8, 10), "n_prompts_trained"),
    ],
)
def test_zero_or_negative_sizes_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
