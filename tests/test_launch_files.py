"""cluster/ launch files: the `ray up` YAML against Ray's own cluster-config schema (shipped in the ray wheel), the
KubeRay RayJob and the Slurm script against the entry point and runtime_env the README documents."""

import json
import os
import re
import shlex

import jsonschema
import pytest
import ray.autoscaler
import yaml

from cluster.runner import CODE_PACKAGES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(REPO, "cluster")


def _load(name):
    with open(os.path.join(CLUSTER, name)) as f:
        return yaml.safe_load(f)


def test_cluster_launcher_yaml_validates_against_rays_schema():
    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        schema = json.load(f)
    config = _load("ray_cluster_gpu.yaml")
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    # The schema is strict where it says so: an unknown top-level key is refused, so validation means something.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(config, providr={}), schema)


def test_rayjob_manifest_runs_the_paper_config_with_the_runtime_env():
    job = _load("rayjob_paper.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "cluster.job"]
    config = argv[3]  # CONFIG first, as every switchpoint command takes it
    assert os.path.isfile(os.path.join(REPO, config)) and "paper" in config
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["working_dir"] and env["env_vars"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "PYTHONPATH" not in env["env_vars"]  # no path of one machine
    assert config in job["spec"]["metadata"]["job_name"]
    pods = [job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    ]
    for pod in pods:
        env_vars = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env_vars["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in env_vars


def test_slurm_script_starts_a_head_workers_and_submits_the_entry_point():
    text = open(os.path.join(CLUSTER, "slurm_switchpoint.sh")).read()
    assert re.search(r"ray start --head .*--block", text.replace("\\\n", " "))
    assert re.search(r"ray start --address=\S+ .*--block", text.replace("\\\n", " "))
    assert "export RAY_AUTH_MODE=token" in text
    submit = text[text.index("ray job submit") :].replace("\\\n", " ")
    env = json.loads(re.search(r"--runtime-env-json '([^']*)'", submit).group(1))
    assert env["working_dir"] == "." and "PYTHONPATH" not in env["env_vars"]
    assert '-- python -m cluster.job "$CONFIG"' in submit


def test_grafana_dashboard_queries_only_exported_series():
    from actors.metrics_export import SERIES

    exported = {f"ray_{s[0]}" for s in SERIES} | {"ray_switchpoint_phase"}
    dash = json.load(open(os.path.join(CLUSTER, "grafana_switchpoint.json")))
    queried = {
        name
        for panel in dash["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ray_switchpoint_\w+", target["expr"])
    }
    assert queried and queried <= exported, queried - exported


def test_code_packages_exist():
    assert all(os.path.isfile(os.path.join(REPO, p, "__init__.py")) for p in CODE_PACKAGES)
