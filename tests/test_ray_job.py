"""`ray job submit` of the micro config against a head started with `ray start --head`, token auth on."""

import json
import os
import socket
import subprocess
import sys

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
    start = [
        os.path.join(BIN, "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={_free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--num-cpus=6",
        "--disable-usage-stats",
    ]
    r = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    yield env, f"http://127.0.0.1:{dash}"
    subprocess.run([os.path.join(BIN, "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


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
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "succeeded" in r.stdout
    (run_dir,) = list(out.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["switch"] is not None and summary["accuracy"]["final"] is not None
    # The job is listed by the cluster's job API (what the dashboard shows).
    jobs = subprocess.run(
        [os.path.join(BIN, "ray"), "job", "list", "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "SUCCEEDED" in jobs.stdout
