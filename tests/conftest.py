"""Shared fixtures: one uninterrupted micro run that several end-to-end files read or compare against."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_run(run_dir: str) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    return rows, summary


def run_job(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m cluster.job ARGS` as a user runs it (its own local Ray, never a cluster in RAY_ADDRESS); asserts
    it succeeded."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [sys.executable, "-m", "cluster.job", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def init_local_ray() -> None:
    """A new local Ray for actor tests (never a cluster already running here), with the repository importable."""
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": REPO, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}},
    )


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """configs/micro.yaml run to the end through the `ray job submit` entry point (python -m cluster.job), as a
    user would: (run folder, metrics rows, summary, stdout)."""
    out = tmp_path_factory.mktemp("micro_runs")
    r = run_job(["configs/micro.yaml", "--set", f"run.output_dir={out}"])
    # ray.init's py_modules upload notices are dropped on purpose (cluster/runner.py): none on the console.
    assert "file package" not in r.stdout + r.stderr, r.stderr[-3000:]
    (run_dir,) = [os.path.join(out, d) for d in os.listdir(out)]
    rows, summary = read_run(run_dir)
    return run_dir, rows, summary, r.stdout
