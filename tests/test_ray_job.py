"""`ray job submit` of the micro config (and of the micro sweep) against a `ray start --head` head, token auth on."""

import contextlib
import json
import os
import re
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


AGENT_PORT_FLAGS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "ray-client-server-port",
)


@contextlib.contextmanager
def _head(num_cpus: int, metrics_port: int | None = None, extra_env: dict | None = None, gcs_port: int = 0):
    """A `ray start --head --block` of our own; metrics_port: where its metrics agent serves Prometheus text."""
    env = dict(os.environ, RAY_AUTH_MODE="token", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("RAY_ADDRESS", None)
    env.update(extra_env or {})
    dash = _free_port()
    ports = {flag: _free_port() for flag in AGENT_PORT_FLAGS}
    if metrics_port:
        ports["metrics-export-port"] = metrics_port
    # --block keeps this head in one process tree we own, so teardown stops this cluster only (`ray stop`
    # would stop every Ray on the machine).
    start = [
        os.path.join(BIN, "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port or _free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--num-cpus={num_cpus}",
        # Ports of our own for the agents too: with Ray's defaults a second head on this machine (another test
        # session) leaves the job agent unreachable and `ray job submit` retrying for minutes.
        *(f"--{flag}={port}" for flag, port in ports.items()),
        "--disable-usage-stats",
    ]
    proc = subprocess.Popen(start, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 300
        # Ready when the job API answers (the dashboard answers earlier than its job agent). A probe that hangs
        # (a loaded machine: the CLI's own start-up and the agent's) is asked again until the deadline.
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                probe = subprocess.run(
                    [os.path.join(BIN, "ray"), "job", "list", "--address", address],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                if probe.returncode == 0:
                    break
                why = probe.stderr[-500:]
            except subprocess.TimeoutExpired:
                why = "`ray job list` did not answer in 60 s"
            assert time.time() < deadline, "ray head's job API did not come up in 300 s: " + why
            time.sleep(2)
        yield env, address
    finally:  # also when start-up failed: never leave a head behind for later tests to join
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def head():
    with _head(6) as h:
        yield h


@pytest.fixture
def two_cpu_head():
    """A plain `ray start --head` on a 2-core machine: 2 CPUs, no autoscaler that could add more."""
    with _head(2) as h:
        yield h


def _submit(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    for _ in range(60):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        # The head's job agent may come up a little after its API; Ray says to try again later.
        if r.returncode == 0 or "No available agent" not in r.stdout + r.stderr:
            return r
        time.sleep(2)
    return r


def test_job_submit_runs_a_micro_sweep(head, tmp_path):
    """`ray job submit -- python -m cluster.tune`: trunk, Tune trials on the cluster, results in the folder."""
    env, address = head
    out = tmp_path / "runs"
    cmd = [
        os.path.join(BIN, "ray"), "job", "submit", "--address", address, "--working-dir", REPO, "--",
        "python", "-m", "cluster.tune", "configs/micro_sweep.yaml",
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


def test_job_submit_refuses_a_config_the_cluster_cannot_fit(two_cpu_head, tmp_path):
    """tiny.yaml needs 3.5 CPUs: on a fixed 2-CPU head the job fails in seconds with the numbers and the keys,
    where it used to wait forever at "starting actors"."""
    env, address = two_cpu_head
    env = dict(env)
    env.pop("SWITCHPOINT_AUTOSCALING", None)
    out = tmp_path / "runs"
    cmd = [
        os.path.join(BIN, "ray"), "job", "submit", "--address", address, "--working-dir", REPO, "--",
        "python", "-m", "cluster.job", "configs/tiny.yaml", "--set", f"run.output_dir={out}",
    ]  # fmt: skip
    t0 = time.time()
    r = _submit(cmd, env)
    seconds = time.time() - t0
    print(f"2-CPU job submit of tiny.yaml ended after {seconds:.1f} s\n{r.stdout[-1500:]}")
    assert r.returncode != 0, r.stdout[-3000:]
    job_id = re.search(r"raysubmit_\w+", r.stdout).group(0)
    ray = os.path.join(BIN, "ray")
    status = subprocess.run(
        [ray, "job", "status", job_id, "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "failed" in status.stdout.lower(), status.stdout + status.stderr
    logs = subprocess.run(
        [ray, "job", "logs", job_id, "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    errors = [line for line in logs.splitlines() if line.startswith("switchpoint: error:")]
    assert errors == [
        "switchpoint: error: the config needs 3.5 CPUs (learner.num_ranks 2 x learner.cpus_per_rank 1 + "
        "rollout.num_workers 1 x rollout.cpus_per_worker 1 + verifier.num_workers 2 x "
        "verifier.cpus_per_worker 0.25); the cluster has 2 CPUs: lower those keys or add nodes"
    ], logs[-3000:]
    assert "Traceback" not in logs
    assert (
        not out.exists() or list(out.iterdir()) == []
    )  # refused before a run folder (or data, a model) was made
