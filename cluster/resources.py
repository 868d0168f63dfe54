"""Does a config fit the Ray cluster it joined? Checked before the Controller starts any actor.

Without this, a config that needs more CPUs or GPUs than a fixed cluster has waits forever at "starting actors"
(Ray keeps the placement group and the actors pending). On a fixed cluster a shortfall stops the run with one
line naming both numbers and the keys that set them; on an autoscaling cluster it is only reported, since the
autoscaler may add the nodes.

Layout checked (actors/learner.py, actors/controller.py): the learner ranks are one PACK placement group, so
they may spread over nodes but each rank's bundle must fit on one node; each rollout worker and verifier worker
is an actor of its own; the Controller takes no CPU. A CPU vLLM engine allocates rollout.kv_cache_gib GiB of
KV cache on its node, memory Ray does not reserve but the node must have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from switchpoint.config import Config

GIB = 1024**3


class ResourceError(ValueError):
    """The config cannot fit the cluster; the message names the numbers and the keys (the CLI prints it, exit 2)."""


class NoGPUError(ResourceError):
    """The config asks for GPUs and no node of a fixed cluster has one (a GPU config on a CPU machine): every
    check before this one passed; the message says so and how to go on."""


NO_GPU_ADVICE = (
    "run it where Ray sees GPUs (install the GPU wheels there: pip install -e '.[gpu]'), or set "
    "learner.gpus_per_rank and rollout.gpus_per_worker to 0 for a CPU run (see docs/gpus-and-clusters.md)"
)


@dataclass
class Group:
    """Identical actors: `count` of them (named by `count_key`), each asking `amount` of a resource (`amount_key`)."""

    count_key: str
    count: int
    amount_key: str
    amount: float

    def term(self) -> str:
        return f"{self.count_key} {self.count} x {self.amount_key} {self.amount:g}"


def actor_groups(cfg: Config, rl: bool = True) -> dict[str, list[Group]]:
    """Per Ray resource (CPU, GPU, memory in GiB), the actor groups that ask for it. rl False: a pure-SFT run
    (switch.policy never), which starts no engines and no verifiers."""
    lr, ro, ve = cfg.learner, cfg.rollout, cfg.verifier
    cpu = [Group("learner.num_ranks", lr.num_ranks, "learner.cpus_per_rank", lr.cpus_per_rank)]
    gpu = [Group("learner.num_ranks", lr.num_ranks, "learner.gpus_per_rank", lr.gpus_per_rank)]
    memory = []
    if rl:
        cpu += [
            Group("rollout.num_workers", ro.num_workers, "rollout.cpus_per_worker", ro.cpus_per_worker),
            Group("verifier.num_workers", ve.num_workers, "verifier.cpus_per_worker", ve.cpus_per_worker),
        ]
        gpu.append(
            Group("rollout.num_workers", ro.num_workers, "rollout.gpus_per_worker", ro.gpus_per_worker)
        )
        if not ro.gpus_per_worker:  # a GPU engine sizes its cache from gpu_memory_utilization instead
            memory.append(
                Group("rollout.num_workers", ro.num_workers, "rollout.kv_cache_gib", ro.kv_cache_gib)
            )
    out = {"CPU": cpu, "GPU": gpu, "memory": memory}
    return {k: [g for g in groups if g.count and g.amount] for k, groups in out.items()}


UNITS = {"CPU": "CPUs", "GPU": "GPUs", "memory": "GiB of memory"}


def _node_amount(node: dict, key: str) -> float:
    """A node's resource in the config's unit (Ray counts memory in bytes)."""
    value = float(node.get(key, 0.0))
    return value / GIB if key == "memory" else value


def shortfalls(cfg: Config, nodes: list[dict], rl: bool = True) -> list[str]:
    """What the config needs that these nodes (each a Ray resource dict: {"CPU": 2.0, "memory": bytes, ...})
    cannot give: the sum over the cluster, and each single actor on the largest node. One sentence each."""
    problems = []
    for key, groups in actor_groups(cfg, rl).items():
        if not groups:
            continue
        unit = UNITS[key]
        need = sum(g.count * g.amount for g in groups)
        have = sum(_node_amount(n, key) for n in nodes)
        if need > have + 1e-9:
            what = "vLLM's KV cache on CPU" if key == "memory" else ""
            problems.append(
                f"the config needs {need:g} {unit}{' for ' + what if what else ''} "
                f"({' + '.join(g.term() for g in groups)}); the cluster has {have:.4g} {unit}: "
                "lower those keys or add nodes"
            )
            continue
        largest = max((_node_amount(n, key) for n in nodes), default=0.0)
        for g in groups:
            if g.amount > largest + 1e-9:
                problems.append(
                    f"{g.amount_key} {g.amount:g} asks one actor for more {unit} than the largest node has "
                    f"({largest:.4g}): lower {g.amount_key} or add a larger node"
                )
    return problems


def autoscaling() -> str | None:
    """How this cluster can grow, or None for a fixed one. SWITCHPOINT_AUTOSCALING=1/0 overrides the guess
    (a v1 autoscaler with no pending nodes exposes nothing a driver can read)."""
    forced = os.environ.get("SWITCHPOINT_AUTOSCALING", "").strip().lower()
    if forced in ("1", "true", "yes"):
        return "SWITCHPOINT_AUTOSCALING=1"
    if forced in ("0", "false", "no"):
        return None
    import ray._private.state

    try:  # autoscaler v2 / KubeRay publish their node groups in the GCS (Ray Data reads the same record)
        config = ray._private.state.state.get_cluster_config()
    except Exception:
        config = None
    if config is not None:
        for group in config.node_group_configs:
            if (
                group.resources
                and group.max_count != 0
                and (group.max_count == -1 or group.max_count > group.min_count)
            ):
                return f"autoscaler node group {group.name or '?'} (max {group.max_count})"
    try:  # autoscaler v1: its last status report, with the nodes it is launching
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    except Exception:
        report = {}
    pending = len(report.get("pending_nodes") or []) + len(report.get("pending_launches") or {})
    if pending:
        return f"autoscaler launching {pending} node(s)"
    return None


def check_resources(cfg: Config, rl: bool = True, say: Callable[[str], None] = print) -> None:
    """Compare the config with the cluster ray.init joined. Fixed cluster and a shortfall: ResourceError.
    Autoscaling cluster: say what the run waits for and return. Enough in total but held by other jobs: say so."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problems = shortfalls(cfg, nodes, rl)
    if problems:
        grows = autoscaling()
        if grows is None:
            gpus = sum(g.count * g.amount for g in actor_groups(cfg, rl)["GPU"])
            if gpus and not any(_node_amount(n, "GPU") for n in nodes):
                raise NoGPUError(
                    f"this config needs GPUs and the cluster has none: {'; '.join(problems)}. The config's "
                    f"inputs passed every check before this one; {NO_GPU_ADVICE}"
                )
            raise ResourceError("; ".join(problems))
        say(f"waiting for the autoscaler ({grows}): {'; '.join(problems)}")
        return
    free = ray.available_resources()
    for key, groups in actor_groups(cfg, rl).items():
        need = sum(g.count * g.amount for g in groups)
        if key != "memory" and need > free.get(key, 0.0) + 1e-9:
            say(
                f"waiting for {need:g} {UNITS[key]}: {free.get(key, 0.0):.4g} free now, the rest held by other work"
            )
