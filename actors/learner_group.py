"""LearnerGroup: N LearnerRank actors (actors/learner.py) in one placement group; calls fan out to all ranks.

A call fails as soon as one rank fails: the others may be blocked in a collective waiting for the dead one.
A rank killed mid-collective can surface first as its peer's collective error (a RayTaskError from a live
rank) rather than as its own RayActorError; the group then probes its ranks and, when one is dead, raises
LearnerRankLost (a RayActorError), the rank fault that recovery (actors/recovery.py) rebuilds the group for.
"""

from __future__ import annotations

import time

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.learner import LearnerRank
from switchpoint.config import LearnerConfig

PROBE_TIMEOUT_S = 10.0


def dead_actors(actors: list, timeout_s: float = PROBE_TIMEOUT_S, first_only: bool = False) -> list[int]:
    """Indices of actors that are dead. One still busy (a rank blocked in a collective, an engine finishing
    its part) does not answer within the timeout and counts as alive. first_only: stop at the first dead one
    (a learner group is rebuilt whole, so one dead rank is enough to know)."""
    refs = [a.pid.remote() for a in actors]
    pending, dead = list(refs), []
    deadline = time.time() + timeout_s
    while pending and time.time() < deadline:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.time()))
        for ref in ready:
            try:
                ray.get(ref)
            except RayActorError:
                dead.append(refs.index(ref))
                if first_only:
                    return dead
    return sorted(dead)


class LearnerRankLost(RayActorError):
    """A collective failed on a live rank because a peer rank died: a fault of the group, not of that rank."""

    def __init__(self, dead: list[int], cause: BaseException):
        super().__init__(error_msg=f"learner rank(s) {dead} died; a live rank's call failed with: {cause}")
        self.dead_ranks = dead


class LearnerGroup:
    """N LearnerRank actors in one placement group; calls fan out to all ranks."""

    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        dtype: str = "auto",
        seed: int = 0,
        pg=None,
        bundles: tuple[int, ...] = (),
    ):
        """pg/bundles: place the ranks on these bundles of an existing placement group (a Tune trial's;
        groups do not nest). Without them the group makes its own placement group and removes it at shutdown."""
        n = cfg.num_ranks
        self.own_pg = pg is None
        if self.own_pg:
            bundle = {"CPU": cfg.cpus_per_rank}
            if cfg.gpus_per_rank:
                bundle["GPU"] = cfg.gpus_per_rank
            pg = placement_group([dict(bundle) for _ in range(n)], strategy="PACK")
            ray.get(pg.ready(), timeout=300)
            bundles = tuple(range(n))
        self.pg = pg
        actor_cls = ray.remote(LearnerRank)
        self.ranks = [
            actor_cls.options(
                num_cpus=cfg.cpus_per_rank,
                num_gpus=cfg.gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.pg,
                    placement_group_bundle_index=bundles[i],
                    placement_group_capture_child_tasks=False,
                ),
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(cfg.torch_threads)}},
            ).remote(i, n, model_path, cfg, dtype, seed)
            for i in range(n)
        ]
        addr, port = ray.get(self.ranks[0].node_address.remote())
        self.info = self._gather([r.setup.remote(addr, port) for r in self.ranks])
        self.world_size = n

    def _gather(self, refs: list) -> list:
        """ray.get over the ranks, failing as soon as one fails: a rank that died leaves the others blocked in
        a collective (gloo waits for minutes), so waiting for all of them in order would hang."""
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])  # raises the rank's error (RayActorError when it died) right away
            except RayTaskError as err:
                # A live rank's error: its own, or its collective's when a peer died (gloo: connection closed).
                dead = dead_actors(self.ranks, first_only=True)
                if dead:
                    raise LearnerRankLost(dead, err) from err
                raise
        return ray.get(list(refs))

    def shard(self, batch: dict) -> list[dict]:
        """Round-robin split of a batch of per-sequence lists over the ranks. Shorter shards get padding rows
        (no response tokens, so no loss) so every rank runs the same number of forwards (ZeRO-3 needs that)."""
        shards = [
            {k: list(v[i :: self.world_size]) for k, v in batch.items()} for i in range(self.world_size)
        ]
        width = max(len(s["input_ids"]) for s in shards)
        for s in shards:
            while len(s["input_ids"]) < width:
                s["input_ids"].append(batch["input_ids"][0][:2])
                s["loss_mask"].append([0, 0])
                if "advantages" in s:
                    s["advantages"].append(0.0)
                if "old_logprobs" in s:
                    s["old_logprobs"].append([])
        return shards

    def shard_rows(self, indices: list[int]) -> list[list[int]]:
        """Round-robin split of a batch's row indices over the ranks, as `shard` splits rows; shorter shards get
        -1 (a padding row without loss), so every rank runs the same number of forwards."""
        shards = [list(indices[i :: self.world_size]) for i in range(self.world_size)]
        width = max(len(s) for s in shards)
        return [s + [-1] * (width - len(s)) for s in shards]

    def train_rows(self, folder: str, indices: list[int], global_count: float) -> dict:
        """One SFT step on these rows of the tokenized set in `folder`: each rank gets only its indices and reads
        its rows itself. `rows_per_rank` says how many each read."""
        results = self._gather(
            [
                r.train_rows.remote(folder, s, global_count)
                for r, s in zip(self.ranks, self.shard_rows(indices))
            ]
        )
        return dict(self._reduce(results), rows_per_rank=[r["rows_read"] for r in results])

    def eval_rows(self, folder: str, indices: list[int]) -> float:
        """Mean response-token loss over these rows of the set in `folder`, each rank reading its own."""
        parts = self._gather(
            [r.eval_rows.remote(folder, s) for r, s in zip(self.ranks, self.shard_rows(indices))]
        )
        return sum(p[0] for p in parts) / max(1.0, sum(p[1] for p in parts))

    def train_step(self, batch: dict, global_count: float) -> dict:
        return self._reduce(
            self._gather(
                [r.train_step.remote(s, global_count) for r, s in zip(self.ranks, self.shard(batch))]
            )
        )

    def _reduce(self, results: list[dict]) -> dict:
        # Each rank's loss is its share of the global mean times world_size (DeepSpeed averages gradients).
        out = {
            "loss": sum(r["loss"] for r in results) / self.world_size,
            "tokens": sum(r.get("tokens", 0.0) for r in results),
            "grad_norm": results[0]["grad_norm"],
            "lr": results[0]["lr"],
            "seconds": max(r["seconds"] for r in results),
        }
        weight = out["tokens"] or 1.0
        for key in ("clip_fraction", "approx_kl", "ratio_mean", "logprob_diff_vs_engine"):
            if key in results[0]:
                out[key] = sum(r[key] * r.get("tokens", 0.0) for r in results) / weight
        if "ratio_max_dev" in results[0]:
            out["ratio_max_dev"] = max(r["ratio_max_dev"] for r in results)
        return out

    def compute_logprobs(self, batch: dict) -> list[list[float]]:
        """Every row's response-token log-probs under the current weights (LearnerRank.compute_logprobs), in
        the batch's order."""
        parts = self._gather([r.compute_logprobs.remote(s) for r, s in zip(self.ranks, self.shard(batch))])
        return [parts[j % self.world_size][j // self.world_size] for j in range(len(batch["input_ids"]))]

    def eval_loss(self, batch: dict) -> float:
        parts = self._gather([r.eval_loss.remote(s) for r, s in zip(self.ranks, self.shard(batch))])
        return sum(p[0] for p in parts) / max(1.0, sum(p[1] for p in parts))

    def set_objective(self, objective: str, rl: dict | None = None, reset_optimizer: bool = False) -> None:
        self._gather([r.set_objective.remote(objective, rl, reset_optimizer) for r in self.ranks])

    def get_weights_ref(self) -> ray.ObjectRef:
        """Object ref of rank 0's full state dict (all ranks run the call, needed for ZeRO-3 gathers)."""
        refs = [r.get_weights.remote() for r in self.ranks]
        self._gather(refs[1:])  # the others return None; rank 0's weights stay in the object store
        ray.wait(refs[:1])
        return refs[0]

    def save_hf(self, path: str) -> str:
        return self._gather([r.save_hf.remote(path) for r in self.ranks])[0]

    def load_hf(self, path: str) -> None:
        self._gather([r.load_hf.remote(path) for r in self.ranks])

    def save_state(self, path: str) -> None:
        self._gather([r.save_state.remote(path) for r in self.ranks])

    def load_state(self, path: str) -> dict:
        """Load save_state() into every rank; returns rank 0's objective, SFT step and learning rate."""
        return self._gather([r.load_state.remote(path) for r in self.ranks])[0]

    def pids(self) -> list[int]:
        return ray.get([r.pid.remote() for r in self.ranks])

    def greedy_generate(
        self, prompt_ids: list[list[int]], max_new_tokens: int, eos_id: int
    ) -> list[list[int]]:
        return self._gather(
            [r.greedy_generate.remote(prompt_ids, max_new_tokens, eos_id) for r in self.ranks]
        )[0]

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r)
        if self.own_pg:
            try:
                remove_placement_group(self.pg)
            except Exception:
                pass  # already gone (a rebuilt group's old one, or Ray shutting down)
