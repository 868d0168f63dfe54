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
    stdout = _run(["-m", "cluster.tune", MICRO_SWEEP, "--set", f"run.output_dir={out}"])
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
    # The time this saves is a benchmark's figure (README), not asserted here: the reuse itself is, above.


def test_the_trunk_is_found_not_trained_again(sweep):
    out, _, report, _ = sweep
    metrics = os.path.join(report["trunk"], "metrics.jsonl")
    before = (os.stat(metrics).st_mtime_ns, open(metrics).read())
    stdout = _run(["-m", "cluster.cli", "trunk", "configs/micro.yaml", "--set", f"run.output_dir={out}"])
    assert "trunk: reusing" in stdout and report["trunk"] in stdout and "training SFT" not in stdout
    assert (os.stat(metrics).st_mtime_ns, open(metrics).read()) == before  # no SFT ran


def test_branch_equals_a_run_that_trained_sft_to_that_step(sweep, tmp_path):
    _, _, report, _ = sweep
    (branch,) = [r for r in report["rows"] if r["branch_step"] == 30]
    _run(
        ["-m", "cluster.job", "configs/micro.yaml", "--set", f"run.output_dir={tmp_path}",
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


def _killed_or_done(args, expect_kill):
    """Start the sweep driver as the leader of its own process group (an injected kill takes the group: the
    driver and its local Ray); return its output. The driver either dies by SIGKILL or ends normally."""
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == (-signal.SIGKILL if expect_kill else 0), out[-4000:]
    if expect_kill:
        time.sleep(5)  # the killed Ray's processes release their ports
    return out


def test_a_sweep_killed_anywhere_resumes_each_trial_from_its_own_state(tmp_path):
    # Four SIGKILLs of the whole sweep, fired by the trials themselves at the moments a user's kill can fall
    # between (faults.inject sweep@rl:N, once each, in this order): the first trial's start-up (before it wrote
    # any state), right after its first state (Tune has not heard of that step), right after its last state
    # (finished on disk, not in Tune), and the second trial's second state (the first trial done before it).
    kills = ["sweep@rl:0", "sweep@rl:1", "sweep@rl:6", "sweep@rl:2"]
    args = ["-m", "cluster.tune", MICRO_SWEEP, "--set", f"run.output_dir={tmp_path}",
            "--set", f"faults.inject=[{', '.join(kills)}]"]  # fmt: skip
    _killed_or_done(args, expect_kill=True)
    (exp,) = [tmp_path / d for d in os.listdir(tmp_path) if d.startswith("micro_sweep-sweep-")]
    for _ in kills[1:]:
        _killed_or_done(["-m", "cluster.tune", "--resume", str(exp)], expect_kill=True)
    assert (exp / "injected_kills.jsonl").read_text().split() == kills  # each fired, once, in order

    def folders():
        return sorted((exp / "branches").iterdir(), key=lambda d: int(d.name.rsplit("-step", 1)[1]))

    first_rows = _rows(folders()[0])
    stdout = _killed_or_done(["-m", "cluster.tune", "--resume", str(exp)], expect_kill=False)
    assert [d.name.rsplit("-step", 1)[1] for d in folders()] == [
        "30",
        "60",
    ]  # a folder a trial, none orphaned
    first, second = folders()
    assert _rows(first) == first_rows  # finished before the last kill: not run again
    s1, s2 = _summary(first), _summary(second)
    # Started afresh (killed before its first state), then from its own states at 1 and 6; if Tune's snapshot had
    # not yet recorded its end when the second trial was killed, it is restored at 6 again: no RL step re-run.
    resumes = [(r["rl_step"], r["state"] is not None) for r in s1["resumes"]]
    assert resumes[:3] == [(0, False), (1, True), (6, True)] and set(resumes[3:]) <= {(6, True)}
    assert [r["rl_step"] for r in s2["resumes"]] == [2] and s2["resumed_at_rl_step"] == 2
    for folder in (first, second):  # every RL step exactly once, however often the sweep was killed
        rl = [r["rl_step"] for r in _rows(folder) if r["phase"] == "rl" and "rl_step" in r]
        assert rl == [1, 2, 3, 4, 5, 6]
    report = json.loads((exp / "results.json").read_text())
    assert [(r["branch_step"], r["rl_steps"]) for r in report["rows"]] == [(30, 6), (60, 6)]
    assert report["rows"][0]["resumed_at"].startswith("- 1 6") and report["rows"][1]["resumed_at"] == "2"
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


def test_a_regime_without_checkpoints_stops_a_strict_sweep_before_any_trial(sweep):
    out, _, _, _ = sweep
    before = sorted(os.listdir(out))
    r = subprocess.run(
        [sys.executable, "-m", "cluster.tune", MICRO_SWEEP, "--set", f"run.output_dir={out}",
         "--set", "tune.branch_points=[stable, severe:first]", "--set", "tune.strict_branch_points=true"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "'severe:first' names no checkpoint" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert sorted(os.listdir(out)) == before  # the trunk was found; no experiment folder, no trial
