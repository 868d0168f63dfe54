"""The GPU quick start on a machine without GPUs, as a new user would meet it: configs/gpu_single_node.yaml passes
every check before the resources (config, the model built, the data tokenized, the output folder) and stops at the
resource check with one line saying the config needs GPUs and the cluster has none; no run folder is left behind.
Starts a local Ray (about half a minute)."""

import os
import subprocess
import sys

from tests.conftest import REPO


def test_gpu_config_stops_where_it_needs_gpus(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, SWITCHPOINT_AUTOSCALING="0")
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "runs"
    r = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "run", "configs/gpu_single_node.yaml", "--quiet",
         "--set", f"run.output_dir={out}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
         "--set", f"model.path={tmp_path / 'model'}", "--set", f"data.dir={tmp_path / 'data'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("switchpoint: error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert errors[0].startswith(
        "switchpoint: error: this config needs GPUs and the cluster has none: the config needs 8 GPUs"
    )
    assert "learner.gpus_per_rank" in errors[0] and "rollout.gpus_per_worker" in errors[0]
    # Everything before the resource check ran: the model was built and the data tokenized into the cache.
    assert any(name.startswith("h128_") for name in os.listdir(tmp_path / "model"))
    assert os.listdir(tmp_path / "cache")
    assert not out.exists() or not os.listdir(out)  # no run folder
