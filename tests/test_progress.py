"""The terminal progress line: what a user watching a run reads."""

from cluster.runner import _progress_line


def state(phase, step, **last):
    return {"phase": phase, "step": step, "sft_max_steps": 600, "rl_steps": 64, "elapsed": 12.0, "last": last}


def test_sft_line_shows_the_latest_validation_and_its_regime():
    line = _progress_line(state("sft", 120, loss=0.5, val_loss=0.25, regime="adaptive"))
    assert "SFT 120/600" in line and "val 0.2500 (adaptive)" in line and "switched" not in line


def test_rl_line_shows_the_branch_point_not_the_stale_sft_validation():
    last = dict(loss=0.01, val_loss=0.0635, regime="severe", reward=0.7, accuracy=0.72)
    last.update(switch_step=300, switch_regime="stable", switch_val_loss=0.052)
    line = _progress_line(state("rl", 10, **last))
    assert "RL 10/64" in line and "switched@300 (val 0.0520, stable)" in line
    assert "severe" not in line and "reward 0.700" in line and "held-out acc 0.720" in line
