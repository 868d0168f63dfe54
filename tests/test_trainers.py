"""Tests of trainers/: SFT loss, policy losses, advantages, dynamic sampling, evaluation metrics."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from switchpoint.config import from_dict
from trainers import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    RLObjective,
    aggregate_token_loss,
    avg_at_k,
    get_advantage_estimator,
    get_policy_loss,
    keep_informative_groups,
    pass_at_k,
    register_objective,
    rl_objective,
    sft_loss,
    summarize_eval,
    token_logprobs,
)

VOCAB = 7


def objective_loss(name: str):
    """The policy loss of objective ``name`` with the objective's own settings (clip range, dual clip,
    aggregation) as defaults, as the learner calls it."""
    o = rl_objective(name)
    return functools.partial(
        o.loss_fn,
        clip_low=o.clip_low,
        clip_high=o.clip_high,
        clip_ratio_c=o.clip_ratio_c,
        loss_agg=o.loss_agg,
    )


def _sft_batch(seed: int = 0):
    """Two sequences of length 6: prompt then response, the second padded at the end."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 6, VOCAB, generator=generator)
    input_ids = torch.randint(0, VOCAB, (2, 6), generator=generator)
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]])
    return logits, input_ids, loss_mask


# ---------------------------------------------------------------- SFT


def test_sft_loss_ignores_prompt_positions_but_not_response_positions():
    logits, input_ids, loss_mask = _sft_batch()
    loss, info = sft_loss(logits, input_ids, loss_mask)
    assert info["tokens"] == 6

    # logits[:, t] predicts token t + 1; it is a prompt position when loss_mask[:, t + 1] == 0.
    prompt_predicting = torch.zeros(2, 6, dtype=torch.bool)
    prompt_predicting[:, :-1] = loss_mask[:, 1:] == 0
    prompt_predicting[:, -1] = True  # the last position predicts nothing
    changed = logits.clone()
    changed[prompt_predicting] += 100.0 * torch.randn(int(prompt_predicting.sum()), VOCAB)
    assert sft_loss(changed, input_ids, loss_mask)[0].item() == pytest.approx(loss.item())

    response_changed = logits.clone()
    response_changed[0, 2] += 5.0 * torch.randn(VOCAB)
    assert sft_loss(response_changed, input_ids, loss_mask)[0].item() != pytest.approx(loss.item())


def test_sft_loss_equals_hand_built_cross_entropy():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]])
    input_ids = torch.tensor([[0, 1, 2, 0]])
    loss_mask = torch.tensor(
        [[0, 0, 1, 1]]
    )  # targets: input_ids[2]=2 (from pos 1), input_ids[3]=0 (from pos 2)
    expected_pos1 = -math.log(math.exp(0.0) / (math.exp(0.0) + math.exp(1.0) + math.exp(0.0)))
    expected_pos2 = -math.log(math.exp(0.0) / (math.exp(0.0) + math.exp(0.0) + math.exp(3.0)))
    loss, info = sft_loss(logits, input_ids, loss_mask)
    assert loss.item() == pytest.approx((expected_pos1 + expected_pos2) / 2, rel=1e-6)
    torch_ce = F.cross_entropy(logits[0, 1:3], input_ids[0, 2:4])
    assert loss.item() == pytest.approx(torch_ce.item(), rel=1e-6)
    assert info == {
        "loss": pytest.approx(loss.item()),
        "loss_sum": pytest.approx(2 * loss.item()),
        "tokens": 2,
    }


def test_sft_token_scale_makes_rank_losses_average_to_global_mean():
    logits, input_ids, loss_mask = _sft_batch(seed=3)
    full_loss, full_info = sft_loss(logits, input_ids, loss_mask)
    world_size = 2
    halves = [(logits[i : i + 1], input_ids[i : i + 1], loss_mask[i : i + 1]) for i in range(2)]
    local_tokens = [int(mask[:, 1:].sum()) for _, _, mask in halves]
    assert local_tokens[0] != local_tokens[1]  # unequal, so an unscaled mean of means would be wrong

    unscaled = [sft_loss(*half)[0].item() for half in halves]
    assert sum(unscaled) / world_size != pytest.approx(full_loss.item())

    scaled = [
        sft_loss(*half, token_scale=n * world_size / full_info["tokens"])[0].item()
        for half, n in zip(halves, local_tokens, strict=True)
    ]
    assert sum(scaled) / world_size == pytest.approx(full_loss.item(), rel=1e-6)


def test_sft_loss_without_targets_is_zero_with_a_graph():
    logits, input_ids, _ = _sft_batch()
    logits.requires_grad_(True)
    loss, info = sft_loss(logits, input_ids, torch.zeros_like(input_ids))
    loss.backward()
    assert info["tokens"] == 0 and loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_sft_loss_rejects_bad_shapes():
    logits, input_ids, loss_mask = _sft_batch()
    with pytest.raises(ValueError, match="loss_mask"):
        sft_loss(logits, input_ids, loss_mask[:, :-1])
    with pytest.raises(ValueError, match="input_ids"):
        sft_loss(logits, input_ids[:1], loss_mask[:1])
    with pytest.raises(ValueError, match="integer"):
        sft_loss(logits, input_ids.float(), loss_mask)


# ---------------------------------------------------------------- token log-probs and policy losses


def test_token_logprobs_match_log_softmax_gather():
    logits, input_ids, _ = _sft_batch(seed=5)
    expected = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, input_ids), expected)
    # Half-precision logits come back as float32 log-probs, within bf16 rounding of the exact ones.
    from_bf16 = token_logprobs(logits.to(torch.bfloat16), input_ids)
    assert from_bf16.shape == (2, 5) and from_bf16.dtype == torch.float32
    torch.testing.assert_close(from_bf16, expected, atol=0.05, rtol=0.0)


def _policy_batch():
    """Two responses of unequal length (4 and 2 tokens) padded to T' = 4."""
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    advantages = torch.tensor([1.5, -0.5])
    old_logprobs = torch.log(torch.tensor([[0.5, 0.4, 0.3, 0.2], [0.6, 0.7, 0.1, 0.1]]))
    return old_logprobs, advantages, mask


@pytest.mark.parametrize("name", ["grpo", "dapo"])
def test_ratio_one_gives_minus_token_weighted_mean_advantage(name):
    old_logprobs, advantages, mask = _policy_batch()
    loss, info = objective_loss(name)(
        old_logprobs.clone(), old_logprobs, advantages, mask, clip_low=0.2, clip_high=0.28
    )
    lengths = mask.sum(dim=1).float()
    expected = -(advantages * lengths).sum() / lengths.sum()  # -(1.5*4 - 0.5*2) / 6
    assert loss.item() == pytest.approx(expected.item())
    assert info["ratio_mean"] == pytest.approx(1.0)
    assert info["clip_fraction"] == 0.0 and info["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert info["tokens"] == 6


def test_dr_grpo_divides_by_constant_not_by_token_count():
    old_logprobs, advantages, mask = _policy_batch()
    common = dict(clip_low=0.2, clip_high=0.2)
    grpo_loss, _ = objective_loss("grpo")(old_logprobs.clone(), old_logprobs, advantages, mask, **common)
    dr_loss, _ = objective_loss("dr_grpo")(old_logprobs.clone(), old_logprobs, advantages, mask, **common)
    token_sum = -(1.5 * 4 - 0.5 * 2)
    assert grpo_loss.item() == pytest.approx(token_sum / 6)
    assert dr_loss.item() == pytest.approx(token_sum / (2 * 4))
    assert grpo_loss.item() != pytest.approx(dr_loss.item())


def _gradient_at_ratio(ratio: float, advantage: float) -> float:
    """d loss / d logprob for one token with the DAPO loss at its default clip range."""
    logprobs = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, _ = objective_loss("dapo")(
        logprobs, torch.zeros(1, 1), torch.tensor([advantage]), torch.ones(1, 1), clip_low=0.2, clip_high=0.28
    )
    loss.backward()
    return logprobs.grad.item()


def test_dapo_clipping_engages_exactly_at_its_bounds():
    # Positive advantage: the ratio may rise to 1.28, no further.
    assert _gradient_at_ratio(1.27, 1.0) == pytest.approx(-1.27, rel=1e-5)
    assert _gradient_at_ratio(1.29, 1.0) == 0.0
    # Positive advantage below the lower bound still learns (clipping is one-sided).
    assert _gradient_at_ratio(0.7, 1.0) == pytest.approx(-0.7, rel=1e-5)
    # Negative advantage: the ratio may fall to 0.8, no further.
    assert _gradient_at_ratio(0.81, -1.0) == pytest.approx(0.81, rel=1e-5)
    assert _gradient_at_ratio(0.79, -1.0) == 0.0
    assert _gradient_at_ratio(1.5, -1.0) == pytest.approx(1.5, rel=1e-5)


def test_clip_fraction_and_kl_report_the_clipped_tokens():
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.0, 1.1, 1.35, 1.5]]))
    loss, info = objective_loss("dapo")(
        logprobs, old, torch.tensor([1.0]), torch.ones(1, 4), clip_low=0.2, clip_high=0.28
    )
    assert info["clip_fraction"] == pytest.approx(0.5)
    ratios = torch.tensor([1.0, 1.1, 1.35, 1.5])
    assert info["approx_kl"] == pytest.approx((ratios - 1 - ratios.log()).mean().item(), rel=1e-5)
    assert info["ratio_mean"] == pytest.approx(ratios.mean().item(), rel=1e-6)
    assert info["loss"] == pytest.approx(-(1.0 + 1.1 + 1.28 + 1.28) / 4, rel=1e-6)


def test_padding_garbage_does_not_leak_into_the_loss():
    old_logprobs, advantages, mask = _policy_batch()
    logprobs = old_logprobs.clone()
    logprobs[1, 2:] = float("-inf")
    reference, _ = objective_loss("grpo")(
        old_logprobs.clone(), old_logprobs, advantages, mask, clip_low=0.2, clip_high=0.2
    )
    loss, info = objective_loss("grpo")(logprobs, old_logprobs, advantages, mask, clip_low=0.2, clip_high=0.2)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(reference.item())


def test_policy_loss_token_scale_gives_global_mean_over_ranks():
    old_logprobs, advantages, mask = _policy_batch()
    logprobs = old_logprobs + torch.tensor([[0.1, -0.05, 0.2, 0.0], [0.03, -0.1, 0.0, 0.0]])
    loss_fn = objective_loss("grpo")
    full, _ = loss_fn(logprobs, old_logprobs, advantages, mask, clip_low=0.2, clip_high=0.2)
    total = int(mask.sum())
    per_rank = [
        loss_fn(
            logprobs[i : i + 1],
            old_logprobs[i : i + 1],
            advantages[i : i + 1],
            mask[i : i + 1],
            clip_low=0.2,
            clip_high=0.2,
            token_scale=int(mask[i].sum()) * 2 / total,
        )[0].item()
        for i in range(2)
    ]
    assert sum(per_rank) / 2 == pytest.approx(full.item(), rel=1e-6)


def test_policy_loss_rejects_bad_inputs():
    old_logprobs, advantages, mask = _policy_batch()
    loss_fn = objective_loss("dapo")
    with pytest.raises(ValueError, match="advantages"):
        loss_fn(old_logprobs, old_logprobs, advantages[:1], mask, clip_low=0.2, clip_high=0.28)
    with pytest.raises(ValueError, match="mask"):
        loss_fn(old_logprobs, old_logprobs, advantages, mask[:, :2], clip_low=0.2, clip_high=0.28)
    with pytest.raises(ValueError, match="clip_low"):
        loss_fn(old_logprobs, old_logprobs, advantages, mask, clip_low=1.0, clip_high=0.28)


def test_positive_advantage_raises_sampled_token_logprob_after_one_sgd_step():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(VOCAB, 8)
    head = torch.nn.Linear(8, VOCAB)
    parameters = list(embedding.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.5)
    input_ids = torch.tensor([[1, 4, 2, 6, 3], [5, 0, 3, 3, 1]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]])  # response tokens after a one-token prompt
    advantages = torch.tensor([1.0, -1.0])

    def logprobs_now() -> torch.Tensor:
        return token_logprobs(head(embedding(input_ids)), input_ids)

    old = logprobs_now().detach()
    loss, _ = objective_loss("grpo")(logprobs_now(), old, advantages, mask, clip_low=0.2, clip_high=0.2)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        new = logprobs_now()
    sequence_change = ((new - old) * mask).sum(dim=1)
    assert sequence_change[0] > 0  # rewarded sample became more likely
    assert sequence_change[1] < 0  # penalised sample became less likely


# ---------------------------------------------------------------- advantages and dynamic sampling


def test_advantages_are_zero_mean_per_group_and_dr_grpo_is_not_scaled():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    for name in ("grpo", "dapo", "dr_grpo"):
        advantages = get_advantage_estimator(name)(rewards)
        assert advantages.shape == rewards.shape
        torch.testing.assert_close(advantages.mean(dim=1), torch.zeros(3), atol=1e-6, rtol=0)
    grpo = get_advantage_estimator("grpo")(rewards)
    torch.testing.assert_close(grpo[:2].std(dim=1), torch.ones(2), atol=1e-4, rtol=0)
    assert torch.all(grpo[2] == 0)  # constant group: no signal, no NaN
    dr_grpo = get_advantage_estimator("dr_grpo")(rewards)
    torch.testing.assert_close(dr_grpo[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    torch.testing.assert_close(get_advantage_estimator("dapo")(rewards), grpo)


def test_advantages_reject_bad_rewards():
    with pytest.raises(ValueError, match="num_groups"):
        get_advantage_estimator("grpo")(torch.zeros(4))
    with pytest.raises(ValueError, match="row\\) 1"):
        get_advantage_estimator("grpo")(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))


def test_dynamic_sampling_drops_constant_groups():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.2]])
    keep = keep_informative_groups(rewards)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, True, False, True]


# ---------------------------------------------------------------- evaluation


def _brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(subset) for subset in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force_combinatorics():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_force_pass_at_k(n, c, k), abs=1e-12)
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c \\(correct"):
        pass_at_k(4, 5, 1)


def test_avg_at_k_and_summary():
    scores = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [True, True, True, False]]
    assert avg_at_k(scores) == pytest.approx((0.5 + 0.0 + 0.75) / 3)
    summary = summarize_eval(scores, ks=(1, 2))
    assert summary["avg@k"] == pytest.approx(avg_at_k(scores))
    assert summary["pass@1"] == pytest.approx(avg_at_k(scores))
    assert summary["pass@2"] == pytest.approx((_brute_force_pass_at_k(4, 2, 2) + 0.0 + 1.0) / 3)
    assert summary["n_prompts"] == 3 and summary["samples_per_prompt"] == 4
    with pytest.raises(ValueError, match="prompt 1"):
        summarize_eval([[1.0, 0.0], [1.0]], ks=(2,))
    with pytest.raises(ValueError, match="prompt 0, sample 1"):
        avg_at_k([[1.0, 2.0]])


# ---------------------------------------------------------------- registries


def test_rl_objectives_map_to_registered_functions():
    dapo = rl_objective("dapo")
    assert dapo.advantage_fn is ADVANTAGE_ESTIMATORS["dapo"] and dapo.loss_fn is POLICY_LOSSES["ppo_clip"]
    assert dapo.dynamic_sampling and (dapo.clip_low, dapo.clip_high, dapo.clip_ratio_c) == (0.2, 0.28, 10.0)
    for name in ("grpo", "dr_grpo"):
        objective = rl_objective(name)
        assert objective.loss_fn is POLICY_LOSSES["ppo_clip"] and not objective.dynamic_sampling
    assert (
        rl_objective("dr_grpo").loss_agg == "fixed-length-sum"
        and rl_objective("grpo").loss_agg == "token-mean"
    )
    luffy = rl_objective("luffy")
    assert (
        luffy.off_policy_members == 1
        and luffy.loss_fn is POLICY_LOSSES["luffy"]
        and luffy.entropy_coef == 0.001
    )


def test_unknown_names_give_a_clear_error():
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'.*luffy, ppo_clip"):
        get_policy_loss("ppo")
    with pytest.raises(ValueError, match="unknown advantage estimator 'gae'.*dapo, dr_grpo, grpo"):
        get_advantage_estimator("gae")
    with pytest.raises(ValueError, match="unknown RL objective 'reinforce'"):
        rl_objective("reinforce")


# ---------------------------------------------------------------- objectives own their settings (issue 10)


def test_dapo_dual_clip_bounds_a_negative_advantage_tokens_loss():
    # A = -1, ratio 12: the clipped loss is max(12, 1.2) = 12; DAPO's dual clip c = 10 caps it at 10 (no gradient).
    def grad(name: str) -> float:
        logprobs = torch.tensor([[math.log(12.0)]], requires_grad=True)
        loss, info = objective_loss(name)(logprobs, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
        loss.backward()
        return loss.item(), logprobs.grad.item(), info["clip_fraction"]

    assert grad("dapo") == (pytest.approx(10.0), 0.0, 1.0)
    assert grad("grpo") == (pytest.approx(12.0), pytest.approx(12.0), 0.0)


def test_loss_aggregations_by_hand():
    # Token losses -A at ratio 1: row 0 four tokens of -1.5, row 1 two tokens of +0.5; a padding row.
    token_loss = torch.tensor([[-1.5] * 4, [0.5, 0.5, 7.0, 7.0], [9.0] * 4])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    by_hand = {
        "token-mean": (-6 + 1) / 6,
        "seq-mean-token-mean": (-1.5 + 0.5) / 2,
        "seq-mean-token-sum": (-6 + 1) / 2,
        "fixed-length-sum": (-6 + 1) / (3 * 4),
        "token-sum-norm": (-6 + 1) / (4 * 2 / 64),  # padded width 4, 2 rows with a response, per 64 rows
    }
    for agg, value in by_hand.items():
        assert aggregate_token_loss(token_loss, mask, agg).item() == pytest.approx(value), agg
    assert aggregate_token_loss(token_loss, mask, "token-mean", denominator=10.0).item() == pytest.approx(
        -0.5
    )
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_token_loss(token_loss, mask, "sum")


def test_global_count_follows_the_objectives_aggregation():
    lengths = [4, 2, 0]
    assert rl_objective("dapo").global_count(lengths, max_tokens=8) == 6
    assert rl_objective("dr_grpo").global_count(lengths, max_tokens=8) == 3 * 8
    seq = RLObjective(name="_seq", advantage="grpo", loss_agg="seq-mean-token-mean")
    assert seq.global_count(lengths, max_tokens=8) == 2
    assert rl_objective("luffy").global_count(lengths, max_tokens=8) == 2 * 8 / 64


def test_a_new_objective_is_one_registration_and_the_config_takes_its_defaults():
    register_objective(
        RLObjective(name="_test_clip33", advantage="dr_grpo", clip_low=0.1, clip_high=0.33, clip_ratio_c=3.0)
    )
    cfg = from_dict({"rl": {"algorithm": "_test_clip33"}})
    assert (cfg.rl.clip_low, cfg.rl.clip_high, cfg.rl.clip_ratio_c) == (0.1, 0.33, 3.0)
    assert from_dict({"rl": {"algorithm": "dapo"}}).rl.clip_high == 0.28
    assert from_dict({"rl": {"algorithm": "dapo", "clip_high": 0.3}}).rl.clip_high == 0.3  # a key overrides
    assert from_dict({"rl": {"algorithm": "luffy"}}).rl.clip_ratio_c == 0.0  # no dual clip
    with pytest.raises(ValueError, match="already registered"):
        register_objective(RLObjective(name="_test_clip33", advantage="grpo"))


def test_a_clipped_loss_refuses_off_policy_members():
    new = torch.tensor([[math.log(0.9)]], requires_grad=True)
    with pytest.raises(ValueError, match="no off-policy members"):
        objective_loss("dapo")(
            new, new.detach(), torch.tensor([1.0]), torch.ones(1, 1), off_policy=torch.tensor([True])
        )


def test_token_entropy_matches_its_definition():
    from trainers.policy_loss import token_entropy

    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, 5.0]]])
    ent = token_entropy(logits, torch.tensor([[1, 0]]))
    assert ent[0, 0].item() == pytest.approx(math.log(2)) and ent[0, 1].item() == 0.0


def test_short_batch_policies():
    from trainers.sampling import ShortBatchError, settle_short_batch

    assert settle_short_batch([1, 2, 3, 4, 5], 4, "error", 10) == [1, 2, 3, 4]  # full: truncated to the batch
    assert settle_short_batch([1, 2], 4, "partial", 3) == [1, 2]
    assert settle_short_batch([1, 2], 4, "skip", 3) == []  # no partial batch
    with pytest.raises(ShortBatchError, match="2 of 4 informative groups after 10 generation rounds"):
        settle_short_batch([1, 2], 4, "error", 10)


def test_overlong_penalty_is_dapos_linear_buffer():
    from trainers.sampling import overlong_penalty

    assert overlong_penalty(100, max_tokens=100, buffer_len=0, factor=1.0) == 0.0  # off
    assert overlong_penalty(60, max_tokens=100, buffer_len=40, factor=1.0) == 0.0
    assert overlong_penalty(70, max_tokens=100, buffer_len=40, factor=1.0) == pytest.approx(-0.25)
    assert overlong_penalty(100, max_tokens=100, buffer_len=40, factor=0.5) == pytest.approx(-0.5)


def test_defaults_start_rl_with_a_new_optimizer_and_learner_logprobs():
    cfg = from_dict({})
    assert cfg.learner.reset_optimizer_at_switch is True  # the authors' RL: SFT weights, a new AdamW
    assert cfg.rl.old_logprobs == "learner"
    with pytest.raises(ValueError, match="rl.old_logprobs"):
        from_dict({"rl": {"old_logprobs": "vllm"}})
    with pytest.raises(ValueError, match="rl.short_batch"):
        from_dict({"rl": {"short_batch": "drop"}})


def test_micro_run_first_update_ratio_is_one(micro_run):
    """The behaviour log-probs are the learner's own (rl.old_logprobs: learner, the default): the first update
    of every RL step trains on the weights that sampled it and takes its own forward's log-probs, so the ratio
    is exactly 1 on every token, as logged in the RL rows (the engine's log-probs would not give exactly 1;
    the recomputation for later mini-batches is checked in tests/test_learner_sync.py)."""
    _, rows, _, _ = micro_run
    trained = [r for r in rows if r.get("phase") == "rl" and r.get("loss") is not None]
    assert trained
    for r in trained:
        assert r["old_logprobs"] == "learner"
        assert r["ratio_max_dev_first_update"] == 0.0, r


def test_prefix_rft_loss_by_hand():
    """Dr.GRPO sum over B x T'; of the two demonstration tokens only the higher-entropy one (top 20%) is trained."""
    new = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.4, 0.3, 0.2]])).requires_grad_(True)
    old = new.detach().clone()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    demo = torch.tensor([[False, False, False], [True, True, False]])  # the hybrid's 2-token expert prefix
    entropy = torch.tensor([[1.0, 1.0, 0.0], [0.1, 0.9, 0.5]])
    o = rl_objective("prefix_rft")
    assert o.prefix_members == 1 and o.loss_agg == "fixed-length-sum" and o.uses_entropy and o.needs_expert
    loss, info = o.loss_fn(new, old, torch.tensor([1.0, 0.5]), mask, clip_low=0.2, clip_high=0.2,
                           loss_agg=o.loss_agg, off_policy=demo, entropy=entropy)  # fmt: skip
    assert loss.item() == pytest.approx((-1.0 - 1.0 + 0.0 - 0.5 - 0.5) / 6)
    assert info["off_policy_tokens"] == 2 and info["demo_tokens_trained"] == 1
    loss.backward()
    assert new.grad[1, 0].item() == 0.0 and new.grad[1, 1].item() == pytest.approx(-0.5 / 6)


def test_prefix_ratio_decays_from_95_to_5_percent():
    import random

    from trainers.prefix_rft import prefix_ratio

    rng = random.Random(0)
    assert prefix_ratio(0.0, rng) == pytest.approx(0.95)  # lower bound = upper bound at the start
    late = [prefix_ratio(1.0, rng) for _ in range(200)]
    assert 0.05 <= min(late) < 0.15 and 0.85 < max(late) <= 0.95
    mid = [prefix_ratio(0.5, rng) for _ in range(200)]
    assert min(mid) >= 0.5 - 1e-9  # the cosine is halfway: low = 0.5
