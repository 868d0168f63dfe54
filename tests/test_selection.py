"""Data selection: ranking SFT runs on different expert data and correlating the ranking with A_post."""

import numpy as np
import pytest
from scipy import stats

from plasticity.selection import BEST_SFT_P, MIN_VAL_LOSS, correlation, rank_datasets


def test_rank_by_minimum_validation_loss_and_correlate():
    min_loss = {"easy": 0.92, "uniform": 0.85, "hard": 0.80, "mixed": 0.88}
    ceilings = {"easy": [76.0, 77.5], "uniform": [79.0], "hard": [80.5, 82.0, None], "mixed": [78.1]}
    report = rank_datasets(min_loss, ceilings, MIN_VAL_LOSS)
    assert [d.scene for d in report.ranking] == ["hard", "uniform", "mixed", "easy"]
    assert [d.rank for d in report.ranking] == [1, 2, 3, 4]
    hard = report.ranking[0]
    assert hard.a_post == 82.0 and hard.n_branches == 2  # the best supportable ceiling, failed fits skipped
    xs = [0.80, 0.85, 0.88, 0.92]
    ys = [82.0, 79.0, 78.1, 77.5]
    assert report.n_pairs == 4
    assert report.pearson == pytest.approx(stats.pearsonr(xs, ys)[0])
    assert report.pearson == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    assert report.spearman == pytest.approx(-1.0)  # lower loss, higher ceiling, in every case
    assert any("negative correlation" in n for n in report.notes)


def test_rank_by_best_sft_performance_is_descending():
    report = rank_datasets({"a": 74.0, "b": 77.9, "c": 75.7}, None, BEST_SFT_P)
    assert [d.scene for d in report.ranking] == ["b", "c", "a"]
    assert report.pearson is None and report.n_pairs == 0
    assert any("need 3" in n for n in report.notes)


def test_too_few_pairs_or_constant_gives_no_correlation():
    report = rank_datasets({"a": 1.0, "b": 0.9}, {"a": [70.0], "b": [72.0]})
    assert report.pearson is None and report.spearman is None and report.n_pairs == 2
    assert correlation([1, 2, 3], [5, 5, 5]) == (None, None)
    r, rho = correlation([1, 2, 3, 4], [1, 3, 2, 4])
    assert r == pytest.approx(0.8) and rho == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("values", "quantity", "match"),
    [
        ({}, MIN_VAL_LOSS, "at least one"),
        ({"a": float("nan")}, MIN_VAL_LOSS, "'a' is nan"),
        ({"a": 1.0}, "max_reward", "unknown selection quantity"),
    ],
)
def test_bad_input(values, quantity, match):
    with pytest.raises(ValueError, match=match):
        rank_datasets(values, None, quantity)


def test_correlation_input_checked():
    with pytest.raises(ValueError, match="equal length"):
        correlation([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        correlation([1, 2, float("inf")], [1, 2, 3])
