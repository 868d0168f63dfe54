"""`ray job submit` of the micro config (and of the micro sweep) against a `ray start --head` head, token auth on."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="token", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    # --block keeps this head in one process tree we own, so teardown stops this cluster only (`ray stop`
    # would stop every Ray on the machine).
    start = [
        os.path.join(BIN, "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={_free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--num-cpus=6",
        "--disable-usage-stats",
    ]
    proc = subprocess.Popen(start, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        # Ready when the job API answers (the dashboard answers earlier than its job agent).
        while True:
            assert proc.poll() is None, proc.stdout.read()
            probe = subprocess.run(
                [os.path.join(BIN, "ray"), "job", "list", "--address", address],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if probe.returncode == 0:
                break
            assert time.time() < deadline, (
                "ray head's job API did not come up in 180 s: " + probe.stderr[-500:]
            )
            time.sleep(2)
        yield env, address
    finally:  # also when start-up failed: never leave a head behind for later tests to join
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _submit(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    for _ in range(60):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        # The head's job agent may come up a little after its API; Ray says to try again later.
        if r.returncode == 0 or "No available agent" not in r.stdout + r.stderr:
            return r
        time.sleep(2)
    return r


def test_job_submit_runs_the_pipeline(head, tmp_path):
    env, address = head
    out = tmp_path / "runs"
    cmd = [
        os.path.join(BIN, "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        REPO,
        "--",
        "python",
        "-m",
        "cluster.job",
        "--config",
        "configs/micro.yaml",
        "--set",
        f"run.output_dir={out}",
        "--set",
        "rl.steps=2",
        "--set",
        "sft.max_steps=20",
        "--set",
        "rollout.num_workers=2",  # prompts spread over two engines, each synced
    ]
    r = _submit(cmd, env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "succeeded" in r.stdout
    (run_dir,) = list(out.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["switch"] is not None and summary["accuracy"]["final"] is not None
    assert len(summary["actor_pids"]["at_start"]["rollout"]) == 2
    assert summary["greedy_check_final"]["equal"] is True
    # The job is listed by the cluster's job API (what the dashboard shows).
    jobs = subprocess.run(
        [os.path.join(BIN, "ray"), "job", "list", "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "SUCCEEDED" in jobs.stdout


def test_job_submit_runs_a_micro_sweep(head, tmp_path):
    """`ray job submit -- python -m cluster.tune`: trunk, Tune trials on the cluster, results in the folder."""
    env, address = head
    out = tmp_path / "runs"
    cmd = [
        os.path.join(BIN, "ray"), "job", "submit", "--address", address, "--working-dir", REPO, "--",
        "python", "-m", "cluster.tune", "--config", "configs/micro_sweep.yaml",
        "--set", f"run.output_dir={out}", "--set", "rl.steps=2", "--set", "sft.max_steps=30",
        "--set", "tune.branch_points=[10, 30]",
    ]  # fmt: skip
    r = _submit(cmd, env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "succeeded" in r.stdout and "recommended branch point" in r.stdout
    (exp,) = [p for p in out.iterdir() if p.name.startswith("micro_sweep-sweep-")]
    report = json.loads((exp / "results.json").read_text())
    assert sorted(row["branch_step"] for row in report["rows"]) == [10, 30]
    assert all(row["rl_steps"] == 2 for row in report["rows"])
    assert (out / "trunks").is_dir() and (exp / "results.png").is_file()
