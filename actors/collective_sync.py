"""CollectiveSync (rollout.weight_sync: collective): the learner's weights broadcast to the engines over a
torch.distributed group of their own.

The group's members are learner rank 0 (group rank 0, the source) and every rollout engine; it is not the
learners' DeepSpeed group. Its rendezvous is a TCPStore on rank 0's node, at a port picked free there. Backend:
nccl when the learner's device is CUDA (every engine must then hold a GPU), gloo on CPU (`collective_backend`).
Rank 0 broadcasts flat buckets of parameters of one dtype; each engine receives into buffers of the same layout
and loads them into its in-process vLLM model (RolloutWorker.load_weights, as the object store path does).

The member-side steps are functions run inside the actors (`__ray_call__`), so LearnerRank and RolloutWorker
keep no sync code of their own. The group is formed at the first sync and again whenever its members change (an
engine replaced by actors/recovery.py, a rebuilt learner group). When it cannot be formed (an engine on CPU
beside a CUDA learner, a rendezvous that fails) every later sync goes through the object store, with the reason
logged and returned as `fallback`.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import timedelta

import ray
from ray.exceptions import RayActorError

from actors.weight_buckets import pack_bucket, param_items, plan_buckets, unpack_bucket
from actors.weight_sync import ObjectStoreSync, WeightSynchronizer

log = logging.getLogger("switchpoint.weight_sync")

GROUP_TIMEOUT_S = 120
"""Rendezvous and per-broadcast timeout. A member that died mid-broadcast holds rank 0 up to this long."""


def collective_backend(learner_device: str, engine_devices: list[str]) -> tuple[str | None, str | None]:
    """(backend, None), or (None, why not). nccl needs every member on a GPU; gloo runs anywhere (CPU buffers)."""
    if learner_device.startswith("cuda"):
        off_gpu = [i for i, d in enumerate(engine_devices) if not d.startswith("cuda")]
        if off_gpu:
            return None, (
                f"the learner is on {learner_device} but rollout engine(s) {off_gpu} are not on a GPU; "
                "NCCL needs a GPU at every member"
            )
        return "nccl", None
    return "gloo", None


# ---- run inside the actors (actor.__ray_call__.remote(fn, ...)) ------------------------------------------------
def learner_plan(rank) -> dict:
    """On learner rank 0: its device, a rendezvous address on its node, the bucket plan of its parameters
    (full shapes: under ZeRO-3 a parameter's local tensor is a shard, `ds_shape` the whole)."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    items = param_items(rank.engine.module.named_parameters())
    return {
        "device": str(rank.device),
        "host": ray.util.get_node_ip_address(),
        "port": port,
        "buckets": plan_buckets(items),
    }


def engine_device(worker) -> str:
    return "cuda" if worker.on_gpu else "cpu"


def join_group(member, host: str, port: int, rank: int, world: int, backend: str, generation: int) -> None:
    """Leave any earlier group, then join this one (rank 0 hosts the store and waits for the others)."""
    import torch.distributed as dist

    leave_group(member)
    timeout = timedelta(seconds=GROUP_TIMEOUT_S)
    store = dist.TCPStore(host, port, world, is_master=rank == 0, timeout=timeout)
    prefixed = dist.PrefixStore(f"switchpoint-weights-{generation}", store)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        group = dist.ProcessGroupNCCL(prefixed, rank, world, options)
    else:
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        # This node's address, not whatever the host name resolves to (often 127.0.1.1 on Debian).
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=ray.util.get_node_ip_address())]
        group = dist.ProcessGroupGloo(prefixed, rank, world, options)
    member._weight_group = {"group": group, "store": store, "backend": backend}


def leave_group(member) -> None:
    old = getattr(member, "_weight_group", None)
    member._weight_group = None
    if old is not None and old["backend"] == "nccl":
        try:
            old["group"].abort()  # its communicators may include a dead engine: do not wait for it
        except Exception:
            pass


def _broadcast(member, tensor) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    member._weight_group["group"].broadcast([tensor], opts).wait()


def learner_broadcast(rank, buckets: list[dict]) -> float:
    """On every learner rank (a ZeRO-3 gather needs them all); rank 0 sends. Returns seconds."""
    import deepspeed

    t0 = time.perf_counter()
    params = dict(rank.engine.module.named_parameters())
    gather = rank.cfg.zero_stage == 3
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None, enabled=gather):
        if rank.rank != 0:
            return 0.0
        device = rank.device if rank._weight_group["backend"] == "nccl" else "cpu"
        for bucket in buckets:
            _broadcast(rank, pack_bucket(params, bucket, device))
    return time.perf_counter() - t0


def engine_receive(worker, buckets: list[dict]) -> float:
    """On each engine: receive every bucket, then load the weights into vLLM. Returns the load's seconds."""
    import torch

    device = "cuda" if worker._weight_group["backend"] == "nccl" else "cpu"
    weights = {}
    for bucket in buckets:
        flat = torch.empty(bucket["numel"], dtype=getattr(torch, bucket["dtype"]), device=device)
        _broadcast(worker, flat)
        weights.update(unpack_bucket(flat, bucket))
    return worker.load_weights(weights)


def _all(refs: list) -> list:
    """ray.get, failing as soon as one fails: the others may wait in the collective for the failed one."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done[0])
    return ray.get(list(refs))


class CollectiveSync(WeightSynchronizer):
    name = "collective"

    def __init__(self):
        self.members: tuple | None = None  # actor ids of the formed group: learner rank 0, then the engines
        self.plan: dict | None = None
        self.generation = 0
        self.fallback: ObjectStoreSync | None = None
        self.fallback_reason: str | None = None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "backend": "object_store" if self.fallback else (self.plan or {}).get("backend"),
            "groups_formed": self.generation,
            "fallback": self.fallback_reason,
        }

    def _form(self, learner, workers: list, members: tuple) -> None:
        plan_ref = learner.ranks[0].__ray_call__.remote(learner_plan)
        devices = _all([w.__ray_call__.remote(engine_device) for w in workers])
        plan = ray.get(plan_ref)
        backend, why_not = collective_backend(plan["device"], devices)
        if backend is None:
            raise RuntimeError(why_not)
        self.generation += 1
        world, args = 1 + len(workers), (plan["host"], plan["port"])
        refs = [learner.ranks[0].__ray_call__.remote(join_group, *args, 0, world, backend, self.generation)]
        refs += [
            w.__ray_call__.remote(join_group, *args, i + 1, world, backend, self.generation)
            for i, w in enumerate(workers)
        ]
        _all(refs)
        self.plan, self.members = dict(plan, backend=backend), members
        log.info(
            "weight-sync group %d formed: %s, %d members, rendezvous %s:%d",
            self.generation,
            backend,
            world,
            *args,
        )

    def sync(self, learner, workers: list, step: int) -> dict:
        if self.fallback is not None:
            return dict(self.fallback.sync(learner, workers, step), fallback=self.fallback_reason)
        t0 = time.perf_counter()
        members = (learner.ranks[0]._actor_id.hex(), *(w._actor_id.hex() for w in workers))
        if members != self.members:
            try:
                self._form(learner, workers, members)
            except RayActorError:
                self.members = None
                raise  # a dead engine or rank: the controller replaces it, the next sync forms the group anew
            except Exception as e:
                self.members = None
                self.fallback, self.fallback_reason = ObjectStoreSync(), f"{type(e).__name__}: {e}"
                log.warning(
                    "rollout.weight_sync collective: no broadcast group (%s); syncing through the object "
                    "store from now on",
                    self.fallback_reason,
                )
                return dict(self.fallback.sync(learner, workers, step), fallback=self.fallback_reason)
        t_form = time.perf_counter() - t0
        buckets = self.plan["buckets"]
        refs = [r.__ray_call__.remote(learner_broadcast, buckets) for r in learner.ranks]
        refs += [w.__ray_call__.remote(engine_receive, buckets) for w in workers]
        try:
            times = _all(refs)
        except Exception:
            self.members = None  # a member failed in the broadcast: the group is broken, form it anew
            raise
        return {
            "seconds": time.perf_counter() - t0,
            "gather_seconds": t_form,
            "load_seconds": max(times[len(learner.ranks) :], default=0.0),
            "backend": self.plan["backend"],
            "group": self.generation,
        }
