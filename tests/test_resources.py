"""What a config needs from a Ray cluster, and the one-line refusal when a fixed cluster cannot give it."""

import os

import pytest

from cluster.resources import GIB, ResourceError, actor_groups, autoscaling, check_resources, shortfalls
from switchpoint.checks import needs_engines
from switchpoint.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.yaml")


def node(cpu=0.0, gpu=0.0, memory_gib=16.0) -> dict:
    out = {"CPU": cpu, "memory": memory_gib * GIB, "object_store_memory": GIB}
    if gpu:
        out["GPU"] = gpu
    return out


def test_tiny_needs_three_and_a_half_cpus_and_says_which_keys():
    cfg = load_config(TINY)
    [problem] = shortfalls(cfg, [node(cpu=2)])
    assert problem == (
        "the config needs 3.5 CPUs (learner.num_ranks 2 x learner.cpus_per_rank 1 + rollout.num_workers 1 x "
        "rollout.cpus_per_worker 1 + verifier.num_workers 2 x verifier.cpus_per_worker 0.25); the cluster has "
        "2 CPUs: lower those keys or add nodes"
    )
    assert shortfalls(cfg, [node(cpu=3.5)]) == []
    assert shortfalls(cfg, [node(cpu=2), node(cpu=2)]) == []  # the PACK group may spread over nodes


def test_pure_sft_needs_only_the_learner():
    cfg = load_config(TINY, ["switch.policy=never"])
    assert shortfalls(cfg, [node(cpu=2)], rl=False) == []
    assert [g.count_key for g in actor_groups(cfg, rl=False)["CPU"]] == ["learner.num_ranks"]
    assert actor_groups(cfg, rl=False)["memory"] == []
    assert not needs_engines(cfg)
    # Held-out accuracy during SFT needs the engines and verifiers even without RL; a branch always does.
    assert needs_engines(load_config(TINY, ["switch.policy=never", "sft.heldout_every=2"]))
    assert needs_engines(cfg, from_trunk=True)


def test_one_actor_larger_than_every_node():
    cfg = load_config(TINY, ["learner.cpus_per_rank=4", "learner.num_ranks=1"])
    [problem] = shortfalls(cfg, [node(cpu=3), node(cpu=3)])
    assert problem == (
        "learner.cpus_per_rank 4 asks one actor for more CPUs than the largest node has (3): "
        "lower learner.cpus_per_rank or add a larger node"
    )


def test_gpus_and_kv_cache_memory():
    cfg = load_config(TINY, ["learner.gpus_per_rank=1", "rollout.kv_cache_gib=8", "rollout.num_workers=2"])
    problems = shortfalls(cfg, [node(cpu=16, memory_gib=12)])
    assert problems == [
        "the config needs 2 GPUs (learner.num_ranks 2 x learner.gpus_per_rank 1); the cluster has 0 GPUs: "
        "lower those keys or add nodes",
        "the config needs 16 GiB of memory for vLLM's KV cache on CPU (rollout.num_workers 2 x "
        "rollout.kv_cache_gib 8); the cluster has 12 GiB of memory: lower those keys or add nodes",
    ]
    # A GPU engine sizes its cache from gpu_memory_utilization: no CPU memory asked.
    gpu_engines = load_config(TINY, ["rollout.gpus_per_worker=1", "rollout.kv_cache_gib=64"])
    assert shortfalls(gpu_engines, [node(cpu=16, gpu=1, memory_gib=12)]) == []


@pytest.fixture(scope="module")
def two_cpu_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_fixed_two_cpu_cluster_refuses_tiny(two_cpu_ray, monkeypatch):
    monkeypatch.delenv("SWITCHPOINT_AUTOSCALING", raising=False)
    assert autoscaling() is None  # a plain local Ray: readonly autoscaler, no node groups, nothing pending
    with pytest.raises(ResourceError) as e:
        check_resources(load_config(TINY))
    assert str(e.value).startswith("the config needs 3.5 CPUs") and "the cluster has 2 CPUs" in str(e.value)
    assert "\n" not in str(e.value)
    check_resources(
        load_config(TINY, ["verifier.cpus_per_worker=0", "rollout.cpus_per_worker=0"])
    )  # 2 CPUs: fits


def test_autoscaling_cluster_waits_and_says_for_what(two_cpu_ray, monkeypatch):
    monkeypatch.setenv("SWITCHPOINT_AUTOSCALING", "1")
    said = []
    check_resources(load_config(TINY), say=said.append)
    assert len(said) == 1 and said[0].startswith("waiting for the autoscaler (SWITCHPOINT_AUTOSCALING=1)")
    assert "3.5 CPUs" in said[0]


def test_a_gpu_config_on_a_cluster_without_gpus_says_so(two_cpu_ray, monkeypatch):
    from cluster.resources import NoGPUError

    monkeypatch.delenv("SWITCHPOINT_AUTOSCALING", raising=False)
    gpu = load_config(os.path.join(REPO, "configs", "gpu_single_node.yaml"))
    with pytest.raises(NoGPUError) as e:
        check_resources(gpu)
    text = str(e.value)
    assert text.startswith("this config needs GPUs and the cluster has none: ")
    assert (
        "the config needs 8 GPUs (learner.num_ranks 4 x learner.gpus_per_rank 1 + rollout.num_workers 4 x "
        in text
    )
    assert "pip install -e '.[gpu]'" in text and "\n" not in text
