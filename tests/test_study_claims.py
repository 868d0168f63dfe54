"""The study's verdicts on hand-made rows: intervals over seeds, paired differences, equal-compute accuracy, and
each claim's verdict in the three outcomes (the numbers are chosen so the t interval is known by hand)."""

import math

import pytest

from plasticity.study_claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    acc_at,
    claim_c1,
    claim_c2,
    claim_c3,
    claim_c4,
    claim_c5,
    interval,
)


def test_interval_is_the_t_interval_over_seeds():
    iv = interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert iv["n"] == 3 and iv["mean"] == 2.0
    assert iv["lo"] == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-5)
    assert interval([5.0]) == {"n": 1, "mean": 5.0, "lo": None, "hi": None}
    assert interval([None, float("nan")])["n"] == 0


def test_accuracy_at_a_budget_is_interpolated_and_none_past_the_curve():
    curve = [[0.0, 40.0], [10.0, 50.0], [20.0, 70.0]]
    assert acc_at(curve, 15.0) == 60.0 and acc_at(curve, 0.0) == 40.0
    assert acc_at(curve, 25.0) is None


def _row(ds, seed, arm, a_post, **kw):
    base = {"dataset": ds, "seed": seed, "arm": arm, "a_post": a_post, "kind": "switch", "regime": "stable"}
    base.setdefault("curve", [[0.0, 30.0], [100.0, a_post or 0.0]])
    return {**base, **kw}


def test_c1_sequential_against_each_arm_at_equal_compute():
    rows = []
    for s, (seq, rl, sft) in enumerate([(80, 60, 70), (82, 61, 72), (81, 59, 71)]):
        rows.append(_row("big", s, "sequential", seq, curve=[[0, 70], [100, seq]]))
        rows.append(
            _row("big", s, "pure_rl", rl, kind="from_base", curve=[[0, 10], [50, rl]])
        )  # less compute
        rows.append(_row("big", s, "pure_sft", sft, kind="pure_sft", curve=None, final_acc=sft))
    c1 = claim_c1(rows, "big", ["pure_sft", "pure_rl"])
    assert c1["verdict"] == REPRODUCED
    by = {p["versus"]: p for p in c1["parts"]}
    assert by["pure_rl"]["diffs"] == [20, 21, 22]
    # Equal compute: pure RL stopped at 50 FLOPs, so sequential is read at 50 on its curve (70 -> seq halfway).
    assert by["pure_rl"]["acc_eq_diff"]["diffs"] == [
        (70 + 80) / 2 - 60,
        (70 + 82) / 2 - 61,
        (70 + 81) / 2 - 59,
    ]
    arms = {a["arm"]: a for a in c1["arms"]}
    assert arms["pure_sft"]["acc_eq"]["mean"] == 71.0  # no RL: its own accuracy


def test_c1_one_arm_that_beats_sequential_makes_it_not_reproduced():
    rows = [_row("big", s, "sequential", 70 + s) for s in range(3)]
    rows += [_row("big", s, "luffy", 80 + s) for s in range(3)]
    rows += [_row("big", s, "pure_rl", 60.0 + s) for s in range(3)]  # 10 each: an interval above 0
    c1 = claim_c1(rows, "big", ["pure_rl", "luffy"])
    assert [p["verdict"] for p in c1["parts"]] == [REPRODUCED, NOT_REPRODUCED]
    assert c1["verdict"] == NOT_REPRODUCED


def test_c2_best_of_stable_and_mild_per_seed_and_plasticity():
    rows = []
    for s in range(3):
        rows.append(_row("small", s, "sequential", 80 + s, regime="stable", pl_rl=20 + s))
        rows.append(_row("small", s, "mild:middle", 85 + s, regime="mild"))
        rows.append(_row("small", s, "adaptive:middle", 70 + 2 * s, regime="adaptive"))
        rows.append(_row("small", s, "severe:last", 84 + 2 * s, regime="severe", pl_rl=10 + 3 * s))
    c2 = claim_c2(rows, ["small"])
    parts = {p["what"]: p for p in c2["parts"]}
    assert parts["A_post max(Stable, Mild) - adaptive"]["diffs"] == [
        15,
        14,
        13,
    ]  # Mild is the best of the two
    assert parts["A_post max(Stable, Mild) - severe"]["diffs"] == [1, 0, -1]
    assert parts["A_post max(Stable, Mild) - severe"]["verdict"] == INCONCLUSIVE
    assert parts["PL_rl Stable - Severe"]["diffs"] == [10, 8, 6]
    assert c2["verdict"] == INCONCLUSIVE


def test_c2_an_absent_regime_drops_only_that_seed():
    rows = [_row("small", s, "sequential", 80, regime="stable", pl_rl=20) for s in range(3)]
    rows += [_row("small", s, "adaptive:middle", 70 - s, regime="adaptive") for s in range(3)]
    rows += [_row("small", s, "severe:last", 60 + s, regime="severe", pl_rl=5) for s in (0, 2)]
    rows += [{"dataset": "small", "seed": 1, "arm": "severe:last", "regime": "severe", "absent": True}]
    c2 = claim_c2(rows, ["small"])
    severe = [p for p in c2["parts"] if p["what"] == "A_post max(Stable, Mild) - severe"][0]
    assert severe["seeds"] == [0, 2] and severe["diffs"] == [20, 18]


def test_c3_slope_per_doubling_and_c4_hard_minus_easy():
    rows = []
    for s in range(3):
        for i, (ds, n) in enumerate([("s8", 50), ("s4", 100), ("s2", 200)]):
            rows.append(_row(ds, s, "sequential", 60 + 5 * i + s, sft_rows=n))  # +5 a doubling
        rows.append(_row("easy", s, "sequential", 70 + s))
        rows.append(_row("hard", s, "sequential", 65 + s))
    c3 = claim_c3(rows, ["s8", "s4", "s2"])
    assert c3["parts"][0]["diffs"] == pytest.approx([5.0, 5.0, 5.0]) and c3["verdict"] == REPRODUCED
    c4 = claim_c4(rows, ["easy", "hard"])
    assert c4["parts"][0]["diffs"] == [-5, -5, -5]


def test_c5_negative_correlation_per_seed():
    rows = []
    for s in range(3):
        for ds, loss, a in [("a", 0.30, 85), ("b", 0.35, 80 + s), ("c", 0.50, 70)]:
            rows.append(_row(ds, s, "sequential", a, min_val_loss=loss))
    c5 = claim_c5(rows, ["a", "b", "c"])
    assert all(p < -0.9 for p in c5["pearson"]["per_seed"]) and c5["spearman"]["per_seed"] == [-1.0] * 3
    assert c5["verdict"] == REPRODUCED
