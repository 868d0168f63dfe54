"""WeightSynchronizer: how the learner's weights reach the rollout engines (NeMo-RL style seam).

- ObjectStoreSync: rank 0's state dict goes through Ray's object store, engines `reload_weights` in place.
- DiskSync: the learner saves a Hugging Face folder, engines `reload_weights(weights_path=...)`.
- CollectiveSync (actors/collective_sync.py): rank 0 broadcasts over a torch.distributed group of its own with
  the engines, NCCL on GPU and gloo on CPU.
"""

from __future__ import annotations

import os
import shutil
import time
from abc import ABC, abstractmethod

import ray


class WeightSynchronizer(ABC):
    name = "base"

    @abstractmethod
    def sync(self, learner, workers: list, step: int) -> dict:
        """Push the learner's current weights to every worker; returns timing figures."""

    def describe(self) -> dict:
        """What the run's summary records about how weights travelled."""
        return {"name": self.name}


class ObjectStoreSync(WeightSynchronizer):
    name = "object_store"

    def sync(self, learner, workers: list, step: int) -> dict:
        t0 = time.perf_counter()
        ref = learner.get_weights_ref()
        t_gather = time.perf_counter() - t0
        load = ray.get([w.load_weights.remote(ref) for w in workers])
        return {"seconds": time.perf_counter() - t0, "gather_seconds": t_gather, "load_seconds": max(load)}


class DiskSync(WeightSynchronizer):
    name = "disk"

    def __init__(self, folder: str):
        self.folder = folder

    def sync(self, learner, workers: list, step: int) -> dict:
        t0 = time.perf_counter()
        path = os.path.join(self.folder, "weights_sync")
        shutil.rmtree(path, ignore_errors=True)
        learner.save_hf(path)
        t_save = time.perf_counter() - t0
        load = ray.get([w.load_weights_from_path.remote(path) for w in workers])
        return {"seconds": time.perf_counter() - t0, "gather_seconds": t_save, "load_seconds": max(load)}


def make_weight_sync(kind: str, run_dir: str) -> WeightSynchronizer:
    if kind == "object_store":
        return ObjectStoreSync()
    if kind == "disk":
        return DiskSync(run_dir)
    if kind == "collective":
        from actors.collective_sync import CollectiveSync  # it builds on this module

        return CollectiveSync()
    raise ValueError(f"unknown rollout.weight_sync {kind!r}; known: object_store, disk, collective")
