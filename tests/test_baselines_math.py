"""The synchronized baselines' losses on small hand-computed batches, as TsinghuaC3I/Unify-Post-Training ran
LUFFY, SRFT and UPT (no ratio clipping, token sums / max_tokens per share of 64 rows instead of token means, SFT
terms averaged on their own, entropy bonus a token mean), and ReLIFT as its own code runs it. Every expected
number is worked out here from its formula, not by calling the loss being tested."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from trainers import POLICY_LOSSES, aggregate_token_loss, rl_objective

LOG = math.log


def _lp(probs, grad: bool = False) -> torch.Tensor:
    out = torch.log(torch.tensor(probs, dtype=torch.float32))
    return out.requires_grad_(True) if grad else out


def _call(name: str, new, old, adv, mask, off, normalizer=None, **extra):
    """The objective's loss with its own aggregation, as the learner calls it (clip settings passed and, for
    these objectives, unused)."""
    o = rl_objective(name)
    return o.loss_fn(new, old, torch.tensor(adv), torch.tensor(mask), clip_low=0.2, clip_high=0.2,
                     loss_agg=o.loss_agg, normalizer=normalizer, off_policy=torch.tensor(off), **extra)  # fmt: skip


def test_unify_baselines_share_their_settings():
    for name in ("luffy", "srft", "upt"):
        o = rl_objective(name)
        assert (o.loss_agg, o.bonus_agg, o.entropy_coef, o.advantage) == (
            "token-sum-norm",
            "token-mean",
            0.001,
            "dr_grpo",
        ), name
    # token-sum-norm's global count: sequences with a response x max_tokens / 64 (their rows per GPU share).
    assert rl_objective("luffy").global_count([3, 5, 0], max_tokens=16) == pytest.approx(2 * 16 / 64)
    assert rl_objective("luffy").global_count([3, 5, 0], 16, "token-mean") == 8  # the entropy bonus's
    assert rl_objective("srft").demo_token_mean and rl_objective("upt").demo_token_mean
    assert rl_objective("srft").uses_correct and not rl_objective("luffy").uses_correct


def test_token_sum_norm_is_a_sum_over_tokens_divided_by_the_padded_length_per_64_rows():
    token_loss = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # row 2: padding, counts for nothing
    # Locally: (1 + 2 + 4) / (3 (padded width) x 2 rows / 64).
    assert aggregate_token_loss(token_loss, mask, "token-sum-norm").item() == pytest.approx(7 / (3 * 2 / 64))
    # 64 rows of one token each, padded width 1: their literal sum / eos_mask.shape[-1] = the plain sum.
    ones = torch.ones(64, 1)
    assert aggregate_token_loss(ones * 0.5, ones, "token-sum-norm").item() == pytest.approx(32.0)


def test_luffy_loss_by_hand():
    """A sampled row at ratio 1.5 (PPO would clip it to 1.2; LUFFY as run does not) and an expert row."""
    new = _lp([[0.6, 0.5], [0.5, 0.2]], grad=True)
    old = _lp([[0.4, 0.5], [0.9, 0.9]])  # the expert row's old log-probs are not used
    norm = rl_objective("luffy").global_count([2, 2], max_tokens=4)
    assert norm == pytest.approx(0.125)  # 2 rows x 4 tokens / 64
    loss, info = _call("luffy", new, old, [1.0, 0.6], [[1, 1], [1, 1]], [False, True], normalizer=norm)
    # Sampled: -A * r = -1.5, -1.0. Expert: -A * p / (p + 0.1) = -0.6 * 0.5 / 0.6 = -0.5, -0.6 * 0.2 / 0.3 = -0.4.
    assert loss.item() == pytest.approx((-1.5 - 1.0 - 0.5 - 0.4) / 0.125) and loss.item() == pytest.approx(
        -27.2
    )
    assert info["clip_fraction"] == 0.0 and info["tokens"] == 4 and info["off_policy_tokens"] == 2
    assert info["off_policy_prob"] == pytest.approx(0.35)
    loss.backward()
    # d/dlogp: -A * r on sampled tokens (not zero at r = 1.5: no clip), -A * g * p / (p + g)^2 on expert ones.
    expert = [-0.6 * 0.1 * p / (p + 0.1) ** 2 for p in (0.5, 0.2)]  # -0.083333, -0.133333
    torch.testing.assert_close(new.grad, torch.tensor([[-1.5, -1.0], expert]) / 0.125)


def test_srft_loss_by_hand():
    """A correct and a wrong sampled row and an expert row, each with its own mean entropy H_i."""
    new = _lp([[0.5, 0.25], [0.8, 0.3], [0.5, 0.2]], grad=True)
    old = _lp([[0.1, 0.1], [0.1, 0.1], [0.9, 0.9]])  # no importance ratio: these do not matter
    entropy = torch.tensor([[0.2, 0.4], [1.0, 9.9], [1.5, 0.5]])  # row 1's second token is padding
    mask, off = [[1, 1], [1, 0], [1, 1]], [False, False, True]
    correct = torch.tensor([True, False, True])
    norm = rl_objective("srft").global_count([2, 1, 2], max_tokens=4)
    assert norm == pytest.approx(0.1875)  # 3 rows x 4 / 64
    args = dict(normalizer=norm, entropy=entropy, correct=correct, demo_normalizer=2.0)
    loss, info = _call("srft", new, old, [0.9, -0.3, 0.6], mask, off, **args)
    h0, h2 = 0.3, 1.0  # row means: (0.2 + 0.4) / 2; row 1's H = 1.0 is not used (its weight is -1)
    w0 = 0.1 * math.exp(h0)  # 0.134986: correct -> 0.1 exp(H)
    w_sft = 0.5 * math.exp(-h2)  # 0.183940: the expert's own H
    # -w log p on sampled tokens: 0.093565 + 0.187130 (row 0), +log 0.8 = -0.223144 (row 1, w = -1);
    # expert: -0.5 and -0.4 (LUFFY's term); one token sum / 0.1875.
    rl = (-w0 * LOG(0.5) - w0 * LOG(0.25) + LOG(0.8) - 0.5 - 0.4) / 0.1875
    sft = w_sft * -(LOG(0.5) + LOG(0.2)) / 2  # 0.211768, a mean over the 2 expert tokens of its own
    assert loss.item() == pytest.approx(rl + sft) and loss.item() == pytest.approx(-4.281289, abs=1e-5)
    assert info["sft_weight"] == pytest.approx(w_sft) and info["positive_weight"] == pytest.approx(w0)
    loss.backward()
    g = 0.1
    expected = torch.tensor(
        [
            [-w0 / 0.1875, -w0 / 0.1875],
            [1.0 / 0.1875, 0.0],
            [(-0.6 * g * p / (p + g) ** 2) / 0.1875 - w_sft / 2 for p in (0.5, 0.2)],
        ]
    )
    torch.testing.assert_close(new.grad, expected)
    # Neither the advantages of the sampled rows nor their behaviour log-probs enter.
    again, _ = _call("srft", new.detach(), new.detach(), [-5.0, 5.0, 0.6], mask, off, **args)
    assert again.item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="correct"):
        _call("srft", new, old, [0.9, -0.3, 0.6], mask, off, entropy=entropy)


def test_upt_loss_by_hand():
    """Two sampled rows (-A * r, not clipped) and a fallback group's expert row (SFT, its own token mean)."""
    new = _lp([[0.6, 0.5], [0.25, 0.5], [0.5, 0.25]], grad=True)
    old = _lp([[0.4, 0.5], [0.5, 0.5], [0.9, 0.9]])
    mask = [[1, 1], [1, 0], [1, 1]]
    norm = rl_objective("upt").global_count([2, 1, 2], max_tokens=8)
    assert norm == pytest.approx(0.375)  # 3 rows x 8 / 64
    loss, info = _call("upt", new, old, [0.5, -0.5, 0.0], mask, [False, False, True], normalizer=norm,
                       demo_normalizer=2.0)  # fmt: skip
    # Sampled: -0.5 * 1.5 = -0.75, -0.5 * 1 = -0.5, 0.5 * 0.5 = 0.25 (PPO would give max(0.25, 0.4) = 0.4).
    rl = (-0.75 - 0.5 + 0.25) / 0.375  # -2.666667
    sft = -(LOG(0.5) + LOG(0.25)) / 2  # 1.039721
    assert loss.item() == pytest.approx(rl + sft) and loss.item() == pytest.approx(-1.626946, abs=1e-5)
    assert info["clip_fraction"] == 0.0 and info["off_policy_tokens"] == 2 and info["tokens"] == 5
    loss.backward()
    # d/dlogp: -A * r on sampled tokens / 0.375; -1 / 2 on each of the 2 expert tokens.
    expected = torch.tensor([[-0.75 / 0.375, -0.5 / 0.375], [0.25 / 0.375, 0.0], [-0.5, -0.5]])
    torch.testing.assert_close(new.grad, expected)


def test_relift_keeps_its_own_clipped_token_mean():
    """ReLIFT (not in Unify-Post-Training) as its code runs it: clipped PPO token-mean in an RL update, a plain
    token mean of -log p in a burst of expert rows."""
    relift = rl_objective("relift")
    assert relift.loss_fn is POLICY_LOSSES["relift"] and relift.loss_agg == "token-mean"
    assert relift.interleaved_sft and not relift.expert_fallback and relift.needs_expert
    new, old = _lp([[0.6, 0.5], [0.25, 0.5]]), _lp([[0.4, 0.5], [0.5, 0.5]])
    loss, info = _call("relift", new, old, [0.5, -0.5], [[1, 1], [1, 0]], [False, False])
    # Ratios 1.5 -> 1.2 (clipped), 1.0, 0.5 -> 0.8 for A < 0: -0.6, -0.5, +0.4 over 3 tokens.
    assert loss.item() == pytest.approx((-0.6 - 0.5 + 0.4) / 3) and info["clip_fraction"] == pytest.approx(
        2 / 3
    )
    burst, _ = _call("relift", _lp([[0.5, 0.25], [0.8, 0.1]]), torch.zeros(2, 2), [0.0, 0.0], [[1, 1], [1, 0]],
                     [True, True], demo_normalizer=3.0)  # fmt: skip
    assert burst.item() == pytest.approx(-(LOG(0.5) + LOG(0.25) + LOG(0.8)) / 3)


def test_rl_step_rows_carry_correctness_and_the_losses_normalisers():
    """The RL step flags each row correct or not (SRFT's weights) and sends the learner the entropy bonus's and
    the SFT term's own counts alongside the loss's."""
    from actors.rl_step import RLStepper

    sent = []

    class Rank:
        class train_step:  # noqa: N801  (stands in for a Ray actor method)
            @staticmethod
            def remote(shard, count, counts):
                sent.append((shard, count, counts))
                return {"loss": 1.0, "tokens": 5.0, "grad_norm": 0.0, "lr": 0.0}

    step = RLStepper.__new__(RLStepper)
    step.objective = rl_objective("srft")
    step.cfg = SimpleNamespace(rl=SimpleNamespace(overlong_filter=False, old_logprobs="learner"),
                               rollout=SimpleNamespace(max_tokens=4))  # fmt: skip
    step.learner = SimpleNamespace(ranks=[Rank()], shard=lambda b: [b], _gather=lambda refs: refs)
    sample = lambda ids, **kw: {"token_ids": ids, "logprobs": [-0.1] * len(ids), **kw}  # noqa: E731
    group = {"prompt_token_ids": [7], "samples": [sample([1, 2]), sample([3]), sample([4, 5], expert=True)]}
    batch = step._batch([group], [[0.5, -0.5, 0.5]], [[1.0, 0.0, 1.0]])
    assert batch["correct"] == [True, False, True] and batch["off_policy"] == [0, 0, 2]
    step._train(batch)
    _, count, counts = sent[0]
    assert count == pytest.approx(3 * 4 / 64) and counts == {"entropy": 5.0, "demo": 2.0}
