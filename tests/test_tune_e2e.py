"""The micro sweep on the real stack: Ray Tune trials on a real local Ray, DeepSpeed (2 ranks, gloo), vLLM (CPU)
and the verifier pool; the trunk trained once, branches as trials with reused actors, results, analyze;
a branch equals a run that trained SFT itself; a killed sweep resumes without running finished trials again."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.e2e
MICRO_SWEEP = "configs/micro_sweep.yaml"


def _env():
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("RAY_ADDRESS", None)
    return env


def _run(args, timeout=900):
    r = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    return r.stdout


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    stdout = _run(["-m", "cluster.tune", "--config", MICRO_SWEEP, "--set", f"run.output_dir={out}"])
    (exp,) = [out / d for d in os.listdir(out) if d.startswith("micro_sweep-sweep-")]
    report = json.loads((exp / "results.json").read_text())
    return out, exp, report, stdout


def test_sweep_writes_table_plot_and_recommendation(sweep):
    out, exp, report, stdout = sweep
    with open(exp / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted(int(r["branch_step"]) for r in table) == [30, 60]
    assert all(r["set:learner.rl_lr"] == "0.0005" for r in table)
    assert os.path.getsize(exp / "results.png") > 10_000
    rec = report["recommended"]
    assert rec is not None and rec["branch_step"] in (30, 60)
    assert "recommended branch point: step" in stdout and str(exp) in stdout
    trunk = json.loads(open(os.path.join(report["trunk"], "trunk.json")).read())
    hindsight = {c["step"]: c["regime"] for c in trunk["checkpoints"]}
    for row in report["rows"]:
        s = _summary(row["run_dir"])
        assert row["regime"] == hindsight[row["branch_step"]] == s["switch"]["regime"]
        assert s["switch"]["optimizer_reset"] is True and s["switch"]["greedy_check"]["equal"] is True
        assert row["rl_steps"] == 6 and row["p_sft"] is not None
        rl = [r["rl_step"] for r in _rows(row["run_dir"]) if r["phase"] == "rl" and "rl_step" in r]
        assert rl == [1, 2, 3, 4, 5, 6]
        # Tune's own files are there too: one trial folder per branch.
    assert len([d for d in os.listdir(exp) if d.startswith("BranchTrial_")]) == 2


def test_trials_run_on_their_placement_group_and_reuse_the_actors(sweep):
    _, _, report, _ = sweep
    first, second = sorted((_summary(r["run_dir"]) for r in report["rows"]), key=lambda s: s["actors_reused"])
    assert first["actors_reused"] is False and second["actors_reused"] is True
    # Same learner ranks and vLLM engine processes: the second branch was loaded into the live actors.
    assert first["actor_pids"]["at_end"] == second["actor_pids"]["at_start"]
    place = second["placement"]
    assert place["placement_group"] and place["bundles"] == {
        "learner": [1, 2],
        "rollout": [3],
        "verifier": [4, 5],
    }
    assert 0 < second["startup_seconds"] < first["startup_seconds"]


def test_the_trunk_is_found_not_trained_again(sweep):
    out, _, report, _ = sweep
    t0 = time.time()
    stdout = _run(["-m", "cluster.cli", "trunk", "configs/micro.yaml", "--set", f"run.output_dir={out}"])
    assert "trunk: reusing" in stdout and report["trunk"] in stdout
    assert time.time() - t0 < 60  # no SFT ran


def test_branch_equals_a_run_that_trained_sft_to_that_step(sweep, tmp_path):
    _, _, report, _ = sweep
    (branch,) = [r for r in report["rows"] if r["branch_step"] == 30]
    _run(
        ["-m", "cluster.job", "--config", "configs/micro.yaml", "--set", f"run.output_dir={tmp_path}",
         "--set", "switch.policy=step:30", "--set", "learner.reset_optimizer_at_switch=true",
         "--set", "rl.steps=2", "--set", "rl.eval_every=1", "--set", "learner.rl_lr=0.0005"]
    )  # fmt: skip
    (run_dir,) = list(tmp_path.iterdir())
    own, from_trunk = _summary(run_dir), _summary(branch["run_dir"])
    assert own["switch"]["val_loss"] == pytest.approx(from_trunk["switch"]["val_loss"], rel=1e-9)
    assert own["accuracy"]["at_switch"] == from_trunk["accuracy"]["at_switch"]  # P_sft
    steps = [
        [r for r in _rows(d) if r["phase"] == "rl" and r.get("loss") is not None][:2]
        for d in (run_dir, branch["run_dir"])
    ]
    for a, b in zip(*steps):
        assert a["reward_mean"] == b["reward_mean"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-9)


def test_analyze_reads_the_experiment_folder(sweep):
    _, exp, report, _ = sweep
    stdout = _run(["-m", "cluster.cli", "analyze", str(exp), "--no-plots"], timeout=300)
    assert "recommended branch point: step" in stdout
    assert stdout.count("rl_lr=0.0005") >= 2


def _wait_for(predicate, proc, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"sweep exited before {what}: " + proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    args = ["-m", "cluster.tune", "--config", MICRO_SWEEP, "--set", f"run.output_dir={tmp_path}",
            "--set", "tune.branch_points=[30, 40, 60]"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,  # its own process group: the kill takes the local Ray with it
    )  # fmt: skip

    def branches():
        exps = [tmp_path / d for d in os.listdir(tmp_path) if d.startswith("micro_sweep-sweep-")]
        folder = exps[0] / "branches" if exps else None
        if folder is None or not folder.is_dir():
            return []
        return sorted(folder / d for d in os.listdir(folder))

    def second_trial_midway():
        b = branches()
        if len(b) < 2 or not (b[0] / "plot.png").exists() or not (b[1] / "metrics.jsonl").exists():
            return False
        return len([r for r in _rows(b[1]) if r.get("rl_step")]) >= 3

    try:
        _wait_for(second_trial_midway, proc, 900, "the second branch's third RL step")
        time.sleep(3)  # let Tune snapshot the experiment state with the latest checkpoint
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    first, second = branches()[:2]
    first_rows = (first / "metrics.jsonl").read_text()
    exp = first.parent.parent
    time.sleep(5)  # the killed Ray's processes release their ports
    stdout = _run(["-m", "cluster.tune", "--resume", str(exp)])
    assert (first / "metrics.jsonl").read_text() == first_rows  # the finished trial did not run again
    resumed = _summary(second)
    assert resumed.get("resumed_at_rl_step", 0) >= 1  # continued from its checkpoint, not from scratch
    rl = [r["rl_step"] for r in _rows(second) if r["phase"] == "rl" and "rl_step" in r]
    assert rl == [1, 2, 3, 4, 5, 6]  # no duplicated or missing rows
    report = json.loads((exp / "results.json").read_text())
    assert sorted(r["branch_step"] for r in report["rows"]) == [30, 40, 60]
    assert all(r["rl_steps"] == 6 for r in report["rows"])
    assert "recommended branch point" in stdout


@pytest.mark.parametrize(
    "override, needle",
    [
        ("switch.policy=step:35", "has no checkpoint at step 35"),
        ("learner.lr=0.01", "trained with other SFT settings than this config: learner.lr: 0.003 vs 0.01"),
    ],
)
def test_run_from_trunk_rejects_a_missing_step_or_other_sft_settings(sweep, tmp_path, override, needle):
    _, _, report, _ = sweep
    r = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "run", "configs/micro.yaml", "--from-trunk", report["trunk"],
         "--set", f"run.output_dir={tmp_path}", "--set", override],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and needle in r.stderr and r.stderr.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []  # nothing started, no run folder


def test_a_regime_without_checkpoints_stops_the_sweep_before_any_trial(sweep):
    out, _, _, _ = sweep
    before = sorted(os.listdir(out))
    r = subprocess.run(
        [sys.executable, "-m", "cluster.tune", "--config", MICRO_SWEEP, "--set", f"run.output_dir={out}",
         "--set", "tune.branch_points=[stable, severe:first]"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "'severe:first' names no checkpoint" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert sorted(os.listdir(out)) == before  # the trunk was found; no experiment folder, no trial
