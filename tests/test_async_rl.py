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
            "configs/micro.yaml",
            "--set",
            f"run.output_dir={out}",
            "--set",
            "rl.max_staleness=1",
            "--set",
            "rl.old_logprobs=engine",
            "--set",
            "rl.steps=4",
            # An engine killed while it samples step 3 ahead (during step 2's update), then a learner rank
            # killed at step 3: both recovered, and what the steps trained on says which rollouts survived.
            "--set",
            "faults.inject=[rollout@rl:2,learner@rl:3]",
        ]
    )
    (run_dir,) = [os.path.join(out, d) for d in os.listdir(out)]
    rows, summary = read_run(run_dir)
    return run_dir, [r for r in rows if r["phase"] == "rl" and "reward_mean" in r], summary


def test_rollouts_are_one_update_old_unless_sampled_anew(async_run):
    _, steps, summary = async_run
    assert [r["rl_step"] for r in steps] == [1, 2, 3, 4]
    # Step 1: sampled by the switch weights before any update. Step 2: sampled ahead during step 1. Step 3: its
    # rollouts died with the engine, and after the learner fault the run went back to the state after step 2,
    # so they were sampled anew by the current weights. Step 4: sampled ahead during step 3.
    assert [r["staleness"] for r in steps] == [0, 1, 0, 1]
    for r in steps:
        assert r["old_logprobs"] == "engine"
        assert {"wait_rollouts", "step_wall", "generate", "train"} <= set(r["timing"])
        if r["staleness"] == 0:
            # The engine's log-probs are the learner's own (after temperature): ratio 1 on every token.
            assert r["ratio_max_dev_first_update"] < 1e-3
        else:
            # Sampled by the weights before the previous update: the ratio is against that older policy.
            assert r["ratio_max_dev_first_update"] > 1e-2
    # The learners train while the engine samples ahead: it keeps its own thread (rollout.borrow_learner_cpus).
    assert summary["engine_threads"] == [1]
    faults = sorted(f["role"] for f in summary["faults"])
    assert faults == ["learner", "rollout"], summary["faults"]
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
