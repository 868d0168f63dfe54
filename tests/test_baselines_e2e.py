"""The synchronized baselines end to end: each `rl.algorithm` of LUFFY, SRFT, UPT, Prefix-RFT and ReLIFT takes a
real RL step on the real stack (DeepSpeed learner ranks on gloo, a vLLM engine, the exact-match verifier pool),
with the synthetic task's expert trajectories flowing through the step.

One Ray session and one set of actors for all five (actors/branch.py, as a Tune trial reuses them): each
baseline is a branch from the micro run's step-0 checkpoint (the untrained model, so every sampled completion
fails and each objective's expert path is certain to be taken), one RL step, one held-out evaluation.
"""

import json
import math
import os
import shutil

import pytest
import ray

from switchpoint.config import load_config, to_dict
from switchpoint.trunk import build_trunk, sft_settings, trunk_key, write_trunk
from tests.conftest import REPO, init_local_ray

pytestmark = pytest.mark.e2e
BASELINES = ("luffy", "srft", "upt", "prefix_rft", "relift")
SETTINGS = [
    "rl.steps=1",
    "rl.eval_every=1",
    "switch.policy=step:0",
    "rollout.check_sync_prompts=0",
    "eval.max_prompts=8",
    "eval.greedy=false",
    "rl.gen_batch_size=16",  # dynamic sampling's over-sampling: an objective without it must ignore it
]


def _config(tmp, algorithm: str):
    cfg = load_config(
        os.path.join(REPO, "configs", "micro.yaml"),
        [*SETTINGS, f"rl.algorithm={algorithm}", f"run.output_dir={tmp}"],
    )
    cfg.model.path = os.path.join(REPO, cfg.model.path)
    cfg.data.dir = os.path.join(REPO, cfg.data.dir)
    return cfg


def _trunk_from(run_dir: str, tmp, cfg) -> str:
    """The micro run's SFT checkpoints as a trunk (its files copied, its checkpoints linked)."""
    trunk_dir = os.path.join(tmp, "trunk")
    os.makedirs(trunk_dir)
    for name in ("metrics.jsonl", "summary.json", "config.yaml"):
        shutil.copy(os.path.join(run_dir, name), trunk_dir)
    os.symlink(os.path.join(run_dir, "checkpoints"), os.path.join(trunk_dir, "checkpoints"))
    write_trunk(build_trunk(trunk_dir, cfg, trunk_key(cfg), sft_settings(cfg)))
    return trunk_dir


def _read(run_dir: str):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return rows, json.load(open(os.path.join(run_dir, "summary.json")))


@pytest.fixture(scope="module")
def baselines(micro_run, tmp_path_factory):
    from actors.branch import BranchController

    tmp = tmp_path_factory.mktemp("baselines")
    trunk_dir = _trunk_from(micro_run[0], tmp, _config(tmp, "luffy"))
    init_local_ray()
    ctl = BranchController(
        to_dict(_config(tmp, "luffy"))
    )  # luffy: RL rows loaded with their expert trajectory
    out = {}
    try:
        for algorithm in BASELINES:
            run_dir = os.path.join(tmp, algorithm)
            ctl.open(to_dict(_config(tmp, algorithm)), run_dir, trunk_dir)
            while not ctl.done:
                ctl.advance()
            ctl.close()
            out[algorithm] = _read(run_dir)
    finally:
        ctl._shutdown()
        ray.shutdown()
    return out


def _step(rows) -> dict:
    (row,) = [r for r in rows if r["phase"] == "rl" and r.get("rl_step") == 1]
    return row


def test_every_baseline_trains_a_step_and_evaluates(baselines):
    for algorithm, (rows, summary) in baselines.items():
        row = _step(rows)
        assert summary["switch"]["step"] == 0 and summary["accuracy"]["at_switch"] == 0.0, algorithm
        assert summary["accuracy"]["final"] is not None and row["flops"] > 0, algorithm
        assert row["gen_tokens"] > 0 and row["timing"]["train"] > 0, algorithm
        assert row["prompts_generated"] == 8, algorithm  # micro's prompts_per_step, not rl.gen_batch_size
        assert row.get("loss") is not None or algorithm == "relift", (algorithm, row)
        evals = [r for r in rows if r["phase"] == "rl" and r.get("accuracy") is not None]
        assert len(evals) == 2  # at the branch point and after the step
        (sft_row,) = [
            r for r in rows if r["phase"] == "sft"
        ]  # the trunk's step 0, with its held-out accuracy
        assert sft_row["from_trunk"] and 0.0 <= sft_row["accuracy"] <= 1.0, algorithm


def test_a_trunk_carries_its_sft_heldout_accuracy(micro_run, tmp_path):
    """sft.heldout_every (3 in configs/micro.yaml): the trunk keeps each checkpoint's held-out accuracy (through
    trunk.json) and a branch's SFT rows carry it, so a branch's folder draws P over SFT compute."""
    from switchpoint.trunk import load_trunk

    run_dir, rows, _, _ = micro_run
    measured = {r["step"]: r for r in rows if r["phase"] == "sft" and r.get("accuracy") is not None}
    assert 0 in measured and len(measured) >= 2
    trunk = load_trunk(_trunk_from(run_dir, tmp_path, _config(tmp_path, "luffy")))
    last = trunk.steps()[-1]
    carried = {r["step"]: r for r in trunk.sft_rows(last) if r.get("accuracy") is not None}
    assert carried.keys() == measured.keys()
    for step, r in carried.items():
        for key in ("accuracy", "pass@1", "pass@2", "eval_prompts", "eval_status", "flops"):
            assert r[key] == measured[step][key], (step, key)
    up_to = sorted(measured)[1]  # a branch from there carries the rows up to its step only
    assert sorted(r["step"] for r in trunk.sft_rows(up_to) if "accuracy" in r) == [0, up_to]


def test_luffy_and_srft_groups_hold_the_expert_as_an_off_policy_member(baselines):
    group = 4
    for algorithm in ("luffy", "srft"):
        row = _step(baselines[algorithm][0])
        # The untrained model's completions all fail; the expert member of each group is correct: 1 of G.
        assert row["reward_mean"] == pytest.approx(1 / group), algorithm
        assert row["groups_kept"] == 8 and row["off_policy_tokens"] > 0, algorithm
    # LUFFY: the mean probability of the expert's tokens under the policy, the p in its shaping f(p).
    assert 0 < _step(baselines["luffy"][0])["off_policy_prob"] < 1
    srft = _step(baselines["srft"][0])
    # SRFT's SFT term on the expert member is weighted 0.5 * exp(-H), H the expert row's own mean entropy > 0.
    assert 0 < srft["sft_weight"] < 0.5


def test_upt_trains_the_expert_with_sft_when_every_rollout_fails(baselines):
    row = _step(baselines["upt"][0])
    assert row["reward_mean"] == 0.0  # no expert member among the scored samples
    assert row["expert_sft_groups"] == row["groups_kept"] == 8
    assert row["off_policy_tokens"] > 0 and row["loss"] > 0  # -log p of expert tokens under a random model


def test_prefix_rft_hybrid_members_carry_an_expert_prefix(baselines):
    row = _step(baselines["prefix_rft"][0])
    demo, kept = row["off_policy_tokens"], row["demo_tokens_trained"]
    # Expert prefix tokens in the hybrid members; the top 20% by entropy (per rank, rounded up) keep advantage.
    assert demo > 0 and math.floor(0.2 * demo) <= kept < demo


def test_relift_moves_failed_prompts_to_an_sft_burst(baselines):
    row = _step(baselines["relift"][0])
    assert row["groups_kept"] == 0 and row["loss"] is None  # every prompt left RL for the buffer
    assert row["interleaved_sft_groups"] == 8 and row["interleaved_sft_loss"] > 0
    assert row["sft_buffer"] == 0  # the burst used the buffer up
