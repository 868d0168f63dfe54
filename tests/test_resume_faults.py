"""A run survives dead actors and kill -9: the micro config on the real stack, compared with an uninterrupted run.

- faults injected into one run (faults.inject: SIGKILL of a learner rank in SFT and in RL, of the vLLM engine
  and of a verifier worker in RL): the run finishes, every fault is a metrics row with the time it cost, and
  the training rows equal the uninterrupted run's (nothing lost, nothing counted twice);
- the whole run (driver, Ray, every actor) killed with SIGKILL once in SFT and once in RL, each time continued
  with `switchpoint run --resume`: the rows equal the uninterrupted run's too, and so do the switch and the
  final accuracy;
- in both, TensorBoard shows every redone step once.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.conftest import REPO, read_run

pytestmark = pytest.mark.e2e

# What a resumed or recovered run must reproduce (timings, pids and wall clock excluded).
COMPARED = (
    "phase",
    "step",
    "rl_step",
    "loss",
    "val_loss",
    "regime",
    "reward_mean",
    "accuracy",
    "flops",
    "lr",
)


def training_rows(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in COMPARED if k in r} for r in rows if r["phase"] in ("sft", "switch", "rl")]


def assert_same_training(rows: list[dict], reference: list[dict]) -> None:
    got, want = training_rows(rows), training_rows(reference)
    assert [(r["phase"], r["step"]) for r in got] == [(r["phase"], r["step"]) for r in want]
    for g, w in zip(got, want):
        assert g.keys() == w.keys(), (g, w)
        for k in g:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), (k, g, w)
            else:
                assert g[k] == w[k], (k, g, w)


def assert_tensorboard_shows_each_step_once(run_dir: str, rows: list[dict]) -> None:
    """The run's TensorBoard files, read back as TensorBoard reads them: every series holds each step once, with
    the value metrics.jsonl kept (a redone step's first try is gone)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run_dir, "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for tag, phase, key in [
        ("sft/loss", "sft", "loss"),
        ("sft/val_loss", "sft", "val_loss"),
        ("rl/reward_mean", "rl", "reward_mean"),
        ("rl/accuracy", "rl", "accuracy"),
    ]:
        want = [(r["step"], r[key]) for r in rows if r["phase"] == phase and r.get(key) is not None]
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, **extra)
    env.pop("RAY_ADDRESS", None)
    return env


def _start(args: list[str], log, ray_tmp: str) -> subprocess.Popen:
    # The local Ray it starts lives under ray_tmp, so every process of the run (GCS, raylet, the controller
    # and the other actors) can be found and killed at once, as when a node is lost.
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "run", "--quiet", *args],
        cwd=REPO,
        env=_env(RAY_TMPDIR=ray_tmp),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _processes_of(ray_tmp: str) -> list[int]:
    """Every process whose environment names ray_tmp: the driver, GCS, raylet and each actor (actors rename
    their process title, so their command lines do not show it; the environment they inherit does)."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _kill_all(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the driver and every process of its Ray cluster at once (kill -9 of the whole run)."""
    for _ in range(3):  # again, for anything that was being started while the others died
        for pid in _processes_of(ray_tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait()
    time.sleep(1)
    assert not _processes_of(ray_tmp)


def _rows_now(run_dir: str) -> list[dict]:
    import json

    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _kill_when(proc: subprocess.Popen, ray_tmp: str, run_dir_of, until, timeout: float = 600) -> tuple:
    """Kill the whole run once until(rows) holds; returns (run folder, the rows on disk at the kill)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "the run ended before the kill"
        run_dir = run_dir_of()
        if run_dir and until(_rows_now(run_dir)):
            _kill_all(proc, ray_tmp)
            return run_dir, _rows_now(run_dir)
        time.sleep(0.1)
    _kill_all(proc, ray_tmp)
    raise AssertionError("the run never reached the kill point")


def test_kill_9_in_sft_and_in_rl_then_resume_matches_the_uninterrupted_run(micro_run, tmp_path):
    _, ref_rows, ref_summary, _ = micro_run
    out = tmp_path / "runs"
    log = open(tmp_path / "log.txt", "w")
    ray_tmp = tempfile.mkdtemp(prefix="sp-kill-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes

    def run_dir_of():
        dirs = os.listdir(out) if out.exists() else []
        return str(out / dirs[0]) if dirs else None

    # 1. Killed in SFT once its second resume state (step 20) is written.
    proc = _start(["configs/micro.yaml", "--set", f"run.output_dir={out}"], log, ray_tmp)
    run_dir, at_kill = _kill_when(
        proc, ray_tmp, run_dir_of, lambda rows: any(r["phase"] == "sft" and r["step"] >= 21 for r in rows)
    )
    sft_state = sorted(os.listdir(os.path.join(run_dir, "resume")))[-1]
    assert "-sft-" in sft_state and at_kill[-1]["phase"] == "sft", (sft_state, at_kill[-1])
    # 2. Resumed, then killed in RL after its first step (the resume state at the switch exists).
    proc = _start(["--resume", run_dir], log, ray_tmp)
    _, at_kill = _kill_when(proc, ray_tmp, run_dir_of, lambda rows: any(r.get("rl_step") == 1 for r in rows))
    assert not any(r.get("rl_step") == 3 for r in at_kill)  # the kill landed inside RL
    # 3. Resumed to the end.
    proc = _start(["--resume", run_dir], log, ray_tmp)
    assert proc.wait(timeout=900) == 0, open(tmp_path / "log.txt").read()[-3000:]
    rows, summary = read_run(run_dir)

    assert_same_training(rows, ref_rows)
    assert_tensorboard_shows_each_step_once(run_dir, rows)
    resumes = [r for r in rows if r["phase"] == "resume"]
    assert [r["from"].split(" ")[0][6:] for r in resumes] == [sft_state[6:], "rl-000000"]
    assert summary["switch"]["step"] == ref_summary["switch"]["step"]
    assert summary["accuracy"]["final"] == pytest.approx(ref_summary["accuracy"]["final"])
    assert summary["accuracy"]["at_switch"] == pytest.approx(ref_summary["accuracy"]["at_switch"])
    assert summary["greedy_check_final"]["equal"] is True
    # Retention: only the newest checkpoint.keep_last_states (2) resume states stay, no partial ones.
    assert len(os.listdir(os.path.join(run_dir, "resume"))) == 2


def test_injected_actor_faults_are_survived_and_cost_only_the_work_in_flight(micro_run, tmp_path):
    _, ref_rows, ref_summary, _ = micro_run
    out = tmp_path / "runs"
    faults = "[learner@sft:15,rollout@rl:1,verifier@rl:2,learner@rl:3]"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cluster.job",
            "configs/micro.yaml",
            "--set",
            f"run.output_dir={out}",
            "--set",
            f"faults.inject={faults}",
            # Weights by broadcast: its group must form again with the new engine and the rebuilt learner.
            "--set",
            "rollout.weight_sync=collective",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (run_dir,) = [str(out / d) for d in os.listdir(out)]
    rows, summary = read_run(run_dir)

    assert_same_training(rows, ref_rows)  # no step lost or counted twice
    assert_tensorboard_shows_each_step_once(run_dir, rows)  # a rebuilt learner's redone steps too
    fault_rows = [r for r in rows if r["phase"] == "fault"]
    by_role = {(r["role"], r["during"]) for r in fault_rows}
    assert ("learner", "sft") in by_role and ("learner", "rl") in by_role
    assert ("rollout", "rl") in by_role and ("verifier", "rl") in by_role
    for f in fault_rows:
        assert f["seconds_lost"] >= 0 and f["error"] and f["action"] and f["redone"]
    learner_sft = next(f for f in fault_rows if f["role"] == "learner" and f["during"] == "sft")
    assert "sft step 10" in learner_sft["action"]  # rebuilt from the state before the kill, not from scratch
    assert summary["faults"] == fault_rows
    assert summary["accuracy"]["final"] == pytest.approx(ref_summary["accuracy"]["final"])
    assert summary["greedy_check_final"]["equal"] is True
    # Formed at the switch, again with the replacement engine, again with the rebuilt learner; never fell back.
    assert summary["weight_sync"]["backend"] == "gloo" and summary["weight_sync"]["fallback"] is None
    assert summary["weight_sync"]["groups_formed"] >= 3
    for f in fault_rows:  # each fault is announced on its own line
        assert f"{f['role']} {f['worker']} died" in r.stdout


def test_more_faults_than_allowed_stop_the_run_with_the_reason_and_keep_its_work(tmp_path):
    out = tmp_path / "runs"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "run",
            "configs/micro.yaml",
            "--quiet",
            "--set",
            f"run.output_dir={out}",
            "--set",
            "switch.policy=never",  # SFT only: no engines to start, the fault comes sooner
            "--set",
            "sft.heldout_every=0",
            "--set",
            "faults.max_faults=0",
            "--set",
            "faults.inject=[learner@sft:12]",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("switchpoint: stopped:")]
    assert "faults.max_faults=0" in line and "learner 1 died" in line and "--resume" in line
    assert "Traceback" not in r.stderr
    (run_dir,) = [str(out / d) for d in os.listdir(out)]
    rows, summary = read_run(run_dir)
    assert "FaultLimitError" in summary["error"]
    assert [r["role"] for r in rows if r["phase"] == "fault"] == ["learner"]
    assert any(r["phase"] == "sft" and r.get("val_loss") is not None and r["step"] == 10 for r in rows)
    assert any(name.endswith("sft-000010") for name in os.listdir(os.path.join(run_dir, "resume")))
