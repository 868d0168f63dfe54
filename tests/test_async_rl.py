"""Asynchronous RL (rl.max_staleness: 1) on the real stack: the micro config through the `ray job submit` entry
point with rollouts sampled one update ahead, against what one-step-off-policy RL must look like in its rows."""

import json
import os

import pytest

from tests.conftest import read_run, run_job

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def async_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("async_runs")
    run_job(
        [
            "--config",
            "configs/micro.yaml",
            "--set",
            f"run.output_dir={out}",
            "--set",
            "rl.max_staleness=1",
            "--set",
            "rl.old_logprobs=engine",
        ]
    )
    (run_dir,) = [os.path.join(out, d) for d in os.listdir(out)]
    rows, summary = read_run(run_dir)
    return run_dir, [r for r in rows if r["phase"] == "rl" and "reward_mean" in r], summary


def test_rollouts_are_one_update_old_after_the_first_step(async_run):
    _, steps, summary = async_run
    assert [r["rl_step"] for r in steps] == [1, 2, 3]
    # Step 1's rollouts come from the switch weights, sampled before any update: the engine's log-probs are the
    # learner's own (processed log-probs, after temperature), ratio 1 on every token.
    assert steps[0]["staleness"] == 0
    assert steps[0]["ratio_max_dev_first_update"] < 1e-3
    # Later steps train on rollouts sampled by the weights before the previous update: the ratio at the first
    # update is against that older policy, so it moves away from 1.
    for r in steps[1:]:
        assert r["staleness"] == 1
        assert r["ratio_max_dev_first_update"] > 1e-2
        assert r["old_logprobs"] == "engine"
    for r in steps:
        assert {"wait_rollouts", "step_wall", "generate", "train"} <= set(r["timing"])
    assert summary["greedy_check_final"]["equal"] is True
    assert 0.0 <= summary["accuracy"]["final"] <= 1.0


def test_resume_state_sampler_excludes_the_rollouts_sampled_ahead(async_run):
    """The state after step 2 is written while step 3's rollouts are already drawn: its sampler must stand after
    step 2's prompts (a resumed run samples step 3 again), not after step 3's."""
    run_dir, steps, _ = async_run
    states = sorted(os.listdir(os.path.join(run_dir, "resume")))
    (at_2,) = [s for s in states if s.endswith("-rl-000002")]
    with open(os.path.join(run_dir, "resume", at_2, "state.json")) as f:
        state = json.load(f)
    drawn = steps[0]["prompts_generated"] + steps[1]["prompts_generated"]
    assert drawn < 64  # micro's RL set: still in the first pass, so the position is the count drawn
    assert state["stepper"]["pass_taken"] == drawn
