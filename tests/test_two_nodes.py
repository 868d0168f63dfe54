"""Two Ray nodes on this one machine: a head and a second raylet (`ray start --address ...`) that alone has the
custom resource `rollout_node`. The micro config goes in with `ray job submit` and `rollout.placement:
resource:rollout_node`: the vLLM engines run on the second node, learner ranks on the head, weights cross
between them by a gloo broadcast (`rollout.weight_sync: collective`, a group of rank 0 and both engines), and
the engines' greedy outputs still equal the learner's.

The same job is where the dashboard-side checks look: switchpoint's series on the nodes' metrics endpoints
(Prometheus text) with the run's tag and metrics.jsonl's values, a driver log that is the run's own lines, and the
Controller actor's own log (what the dashboard shows for it) holding those lines too.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

from tests.test_ray_job import AGENT_PORT_FLAGS, BIN, REPO, _free_port, _head, _submit

pytestmark = pytest.mark.e2e
RAY = os.path.join(BIN, "ray")
JOB_NAME = "switchpoint micro configs/micro.yaml rollout on node 2"


def _ray(env, *args) -> str:
    r = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=120)
    return r.stdout if r.returncode == 0 else r.stdout + r.stderr


def _alive_nodes(env, address) -> list[dict]:
    try:
        return [n for n in json.loads(_ray(env, "list", "nodes", "--format", "json", "--address", address))]
    except json.JSONDecodeError:  # the state API busy or not up yet: ask again
        return []


def _scrape(port: int) -> dict:
    """switchpoint's series in a node's Prometheus text: {(name, frozenset(labels)): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(ray_switchpoint_\w+)\{([^}]*)\} (\S+)$", line)
        if m:
            out[(m.group(1), frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2))))] = float(m.group(3))
    return out


@pytest.fixture(scope="module")
def two_node_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_nodes") / "runs"
    gcs, head_metrics, node2_metrics = _free_port(), _free_port(), _free_port()
    seen: dict = {}
    # Metrics reach the agents every 10 s by default: 1 s, so a short run is seen while its actors live.
    # Agents slow to start on a loaded machine: the raylet waits 120 s for them (Ray's default crashed it here).
    fast = {"RAY_metrics_report_interval_ms": "1000", "RAY_agent_register_timeout_ms": "120000"}
    # Each raylet keeps its own temp dir, as on separate machines: sharing the head's session folder, the second
    # node's runtime-env agent unpacked the job's working dir again under the running driver and files vanished.
    node2_tmp = tempfile.mkdtemp(
        prefix="ray2-", dir="/tmp"
    )  # short: Ray's socket paths must stay < 108 bytes
    with _head(3, head_metrics, fast, gcs_port=gcs) as (env, address):
        node2 = subprocess.Popen(
            [
                RAY, "start", "--block", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
                f"--temp-dir={node2_tmp}",
                "--num-cpus=2", '--resources={"rollout_node": 2}', "--object-store-memory=300000000",
                *(f"--{flag}={_free_port()}" for flag in AGENT_PORT_FLAGS if flag not in ("ray-client-server-port", "metrics-export-port")),
                f"--metrics-export-port={node2_metrics}", "--disable-usage-stats",
            ],
            env=dict(env, **fast), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            deadline = time.time() + 120
            while len(_alive_nodes(env, address)) < 2:
                assert node2.poll() is None, node2.stdout.read()
                assert time.time() < deadline, "the second raylet did not join in 120 s: " + _ray(
                    env, "list", "nodes", "--address", address
                )
                time.sleep(2)
            sub = f"switchpoint-micro-two-nodes-{os.getpid()}"
            cmd = [
                RAY, "job", "submit", "--address", address, "--working-dir", REPO, "--submission-id", sub,
                "--metadata-json", json.dumps({"job_name": JOB_NAME}), "--no-wait",
                # The working dir is installed where an actor needs it (not eagerly on every node); the Controller
                # lingers 4 s after the run so its last figures are scraped.
                "--runtime-env-json", json.dumps(
                    {"config": {"eager_install": False}, "env_vars": {"SWITCHPOINT_METRICS_LINGER_S": "4"}}
                ), "--",
                "python", "-m", "cluster.job", "configs/micro.yaml", "--set", f"run.output_dir={out}",
                "--set", "rollout.placement=resource:rollout_node",
                "--set", "rollout.num_workers=2",  # prompts spread over two engines, each synced across nodes
                "--set", "rollout.weight_sync=collective",
                # Model and data on storage both nodes see (here: this machine's disk), not in the job's copy.
                "--set", f"model.path={out.parent / 'model'}", "--set", f"data.dir={out.parent / 'data'}",
            ]  # fmt: skip
            r = _submit(cmd, env)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
            # Scrape both nodes twice a second on a thread of its own (`ray job status` takes seconds under load,
            # and the RL phase of the micro run lasts a few).
            done = threading.Event()

            def scrape_until_done():
                while not done.is_set():
                    for port in (head_metrics, node2_metrics):
                        try:
                            seen.update(_scrape(port))
                        except OSError:
                            pass
                    done.wait(0.5)

            scraper = threading.Thread(target=scrape_until_done, daemon=True)
            scraper.start()
            deadline = time.time() + 900
            while True:
                status = _ray(env, "job", "status", sub, "--address", address)
                if re.search(r"succeeded|failed|stopped", status, re.IGNORECASE) or time.time() > deadline:
                    break
                time.sleep(1)
            done.set()
            scraper.join()
            logs = _ray(env, "job", "logs", sub, "--address", address)
            listing = _ray(env, "job", "list", "--address", address)
            nodes = _alive_nodes(env, address)
            actors = json.loads(
                _ray(
                    env,
                    "list",
                    "actors",
                    "--detail",
                    "--format",
                    "json",
                    "--limit",
                    "1000",
                    "--address",
                    address,
                )
            )
            (controller,) = [a for a in actors if a["class_name"] == "Controller"]
            # The actor's stderr as the dashboard's Logs tab fetches it (the state API).
            controller_log = _ray(
                env,
                "logs",
                "actor",
                "--id",
                controller["actor_id"],
                "--err",
                "--tail",
                "-1",
                "--address",
                f"127.0.0.1:{gcs}",  # `ray logs` takes the GCS address; the dashboard URL is refused
            )
        finally:
            node2.send_signal(signal.SIGTERM)
            try:
                node2.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node2.kill()
            shutil.rmtree(node2_tmp, ignore_errors=True)
    assert "succeeded" in status.lower(), status + logs[-4000:]
    (run_dir,) = list(out.iterdir())
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    summary = json.loads((run_dir / "summary.json").read_text())
    return dict(
        run=run_dir.name, rows=rows, summary=summary, logs=logs, listing=listing, nodes=nodes, actors=actors,
        seen=seen, controller_log=controller_log,
    )  # fmt: skip


def test_rollout_worker_runs_on_the_second_node(two_node_job):
    job = two_node_job
    (node2,) = [n["node_id"] for n in job["nodes"] if "rollout_node" in n["resources_total"]]

    def nodes_of(cls):
        return {a["node_id"] for a in job["actors"] if a["class_name"] == cls}

    assert nodes_of("RolloutWorker") == {node2}
    assert nodes_of("LearnerRank") and node2 not in nodes_of("LearnerRank")
    s = job["summary"]
    assert len(s["actor_pids"]["at_start"]["rollout"]) == 2  # both engines synced (greedy checks below)
    assert s["switch"]["weight_sync"] == "collective" and s["switch"]["weight_sync_backend"] == "gloo"
    assert s["switch"]["weight_sync_fallback"] is None
    assert s["switch"]["greedy_check"]["equal"] is True  # weights crossed nodes, greedy outputs match
    assert s["greedy_check_final"]["equal"] is True
    assert JOB_NAME in job["listing"]  # the job's name in `ray job list` and the dashboard's Name column


def test_run_figures_on_the_metrics_endpoint_match_metrics_jsonl(two_node_job):
    job = two_node_job
    seen, rows = job["seen"], job["rows"]

    def values(name, **tags):
        want = {("run", job["run"]), *tags.items()}
        return [v for (n, labels), v in seen.items() if n == f"ray_{name}" and want <= labels]

    def logged(phase, key):
        return [r[key] for r in rows if r["phase"] == phase and isinstance(r.get(key), (int, float))]

    for name, phase, key in [
        ("switchpoint_sft_loss", "sft", "loss"),
        ("switchpoint_val_loss", "sft", "val_loss"),
        ("switchpoint_reward", "rl", "reward_mean"),
        ("switchpoint_accuracy", "rl", "accuracy"),
    ]:
        got = values(name)
        assert got, f"{name} not exported; saw {sorted({n for n, _ in seen})}"
        assert all(any(math.isclose(v, w, rel_tol=1e-6) for w in logged(phase, key)) for v in got), name
    regimes = {r["regime"] for r in rows if r["phase"] == "sft" and "regime" in r}
    exported = {dict(labels)["regime"] for (n, labels) in seen if n == "ray_switchpoint_regime"}
    assert exported and exported <= regimes
    # The Controller lingers after the run (SWITCHPOINT_METRICS_LINGER_S), so the final figures were scraped.
    final = job["summary"]["accuracy"]["final"]
    assert any(math.isclose(v, final, rel_tol=1e-9) for v in values("switchpoint_accuracy"))
    timing = [r["timing"]["generate"] for r in rows if "timing" in r]
    gen = values("switchpoint_rl_step_seconds", part="generate")
    assert gen and all(any(math.isclose(v, t, rel_tol=1e-6) for t in timing) for v in gen)


SUMMARY_HEADS = ("run folder", "controller actor:", "switch ", "accuracy ", "wall ", "plot ", "switch: ")


def test_job_log_is_the_runs_own_lines(two_node_job):
    lines = [line for line in two_node_job["logs"].splitlines() if line.strip()]
    ours = [line for line in lines if re.match(r"^\[\s*\d+s\] ", line) or line.startswith(SUMMARY_HEADS)]
    progress = [line for line in lines if re.match(r"^\[\s*\d+s\] ", line)]
    other = [line for line in lines if line not in ours]
    print(f"job log: {len(lines)} lines, {len(progress)} progress lines, {len(ours)} the run's own; others:")
    print("\n".join(other))
    assert len(ours) >= 0.8 * len(lines), two_node_job["logs"]
    assert sum(line.startswith("switch: RL from SFT step") for line in lines) == 1
    assert not any("Failed to load weights" in line or "Writing model shards" in line for line in lines)
    assert not any(
        "switchpoint.run: " in line for line in lines
    )  # the Controller's copies stay in its own log


def test_controller_actor_log_has_the_runs_lines(two_node_job):
    log = two_node_job["controller_log"]
    marked = [
        line.split(" switchpoint.run: ", 1)[1] for line in log.splitlines() if " switchpoint.run: " in line
    ]
    # Lines every run writes whatever its speed: each phase's first step, the switch, the end (the periodic
    # 5-second lines between them depend on how fast the machine is, so they are not counted).
    phases = [m.group(1) for m in (re.match(r"^\[\s*\d+s\] (SFT|RL) ", line) for line in marked) if m]
    assert phases[:1] == ["SFT"] and "RL" in phases and phases[-1] == "RL", log[-3000:]
    assert phases.index("RL") > max(i for i, p in enumerate(phases) if p == "SFT"), phases
    assert sum(line.startswith("switch: RL from SFT step") for line in marked) == 1, marked
    final = two_node_job["summary"]["accuracy"]["final"]
    assert marked[-1].startswith("[") and f"held-out acc {final:.3f}" in marked[-1], marked[-1]


def test_placement_keys_are_checked_and_turned_into_options():
    from cluster.placement_strategy import StrategyPlacement, role_options
    from switchpoint.config import Config

    assert role_options("spread", "rollout.placement") == {"scheduling_strategy": "SPREAD"}
    assert role_options("resource:rollout_node", "rollout.placement") == {
        "resources": {"rollout_node": 0.001}
    }
    assert (
        role_options("colocate", "verifier.placement", "ab" * 28)["scheduling_strategy"].node_id == "ab" * 28
    )
    cfg = Config()
    cfg.verifier.placement = "resource:"
    with pytest.raises(ValueError, match="verifier.placement 'resource:'"):
        StrategyPlacement.from_config(cfg)
    cfg.verifier.placement = "default"
    assert StrategyPlacement.from_config(cfg).options("verifier", 0) == {}
