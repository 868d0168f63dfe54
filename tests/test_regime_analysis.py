"""Regime analytics on a whole SFT curve and online switch decisions judged with hindsight."""

import numpy as np
import pytest

from plasticity.regime_analysis import (
    analyze_sft_curve,
    compare_policies,
    describe,
    judge_switch,
    replay_policy,
)
from plasticity.regimes import ADAPTIVE, MILD, SEVERE, STABLE

STEPS = np.arange(0, 525, 25.0)
# Underfits, bottoms out at step 225, then overfits: L = 0.8 + 1.5 exp(-s/40) + 0.0006 max(0, s - 225).
LOSS = 0.8 + 1.5 * np.exp(-STEPS / 40) + 0.0006 * np.maximum(0, STEPS - 225)
FLOPS = STEPS * 2e12


@pytest.fixture
def curve():
    return analyze_sft_curve(STEPS, LOSS, FLOPS)


def test_labels_window_and_minimum(curve):
    assert curve.l_min == pytest.approx(LOSS.min()) and curve.argmin_step == 225
    # Stable: L <= 1.02 L_min, i.e. steps 175..250; Severe once L >= 1.10 L_min (step 375 on).
    assert curve.stable_window == (175.0, 250.0)
    assert curve.stable_compute == (175 * 2e12, 250 * 2e12)
    assert curve.labels[:7] == [ADAPTIVE] * 7 and curve.labels[7:11] == [STABLE] * 4
    assert curve.labels[11:15] == [MILD] * 4 and curve.labels[15:] == [SEVERE] * 6
    assert curve.counts == {ADAPTIVE: 7, STABLE: 4, MILD: 4, SEVERE: 6}
    assert curve.final_regime == SEVERE
    bound = 1.02 * curve.l_min
    assert all((lab == STABLE) == (loss <= bound) for lab, loss in zip(curve.labels, LOSS))


def test_policies_replayed_against_hindsight(curve):
    stable, mild, min_loss = compare_policies(curve, ("stable", "mild", "min_loss"))
    assert stable.switched and stable.label == STABLE and stable.in_stable_window
    assert stable.steps_from_window == 0 and stable.compute_from_window == 0
    # Mild switches at the first checkpoint past the band: one evaluation after the window.
    assert mild.from_step == 275 and mild.label == MILD and mild.steps_from_window == 25
    assert mild.compute_from_window == pytest.approx(25 * 2e12)
    assert mild.loss_excess == pytest.approx(LOSS[11] / LOSS.min() - 1)
    # min_loss decides two evaluations after the minimum and rolls back to it.
    assert min_loss.decided_at == 275 and min_loss.from_step == 225 and min_loss.loss_excess == 0
    assert "decided at 275" in describe(min_loss)


def test_early_and_never(curve):
    early = replay_policy(curve, "step:50")
    assert early.label == ADAPTIVE and early.steps_from_window == -125
    assert "125 steps before the Stable window" in describe(early)
    never = replay_policy(curve, "never")
    assert not never.switched and never.label is None


def test_an_actual_run_switch_is_judged(curve):
    late = judge_switch(curve, 400, "run tiny (stable)")
    assert late.label == SEVERE and late.steps_from_window == 150
    with pytest.raises(ValueError, match="not a checkpoint"):
        judge_switch(curve, 230, "run")


def test_no_compute_logged():
    curve = analyze_sft_curve(STEPS, LOSS)
    assert curve.stable_compute is None
    assert replay_policy(curve, "stable").compute_from_window is None


@pytest.mark.parametrize(
    ("steps", "losses", "match"),
    [
        ([0], [1.0], "too few checkpoints"),
        ([0, 25, 50], [1.0, float("nan"), 0.9], "validation loss #1 is nan"),
        ([0, 25, 25], [1.0, 0.9, 0.8], "strictly increasing"),
        ([0, 25, 50], [1.0, 0.9], "equal length"),
        ([0, 25, 50], [1.0, 0.0, 0.9], r"loss #1 is 0.0"),
    ],
)
def test_bad_curves_are_refused(steps, losses, match):
    with pytest.raises(ValueError, match=match):
        analyze_sft_curve(steps, losses)


def test_bad_compute_is_refused():
    with pytest.raises(ValueError, match="non-decreasing"):
        analyze_sft_curve(STEPS, LOSS, FLOPS[::-1])
