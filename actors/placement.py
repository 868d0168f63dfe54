"""Where a run's actors go: their own resources (a plain run), or the bundles of a Tune trial's placement group.

Ray does not nest placement groups: a LearnerGroup started inside a Tune trial must not create its own, so
the trial's group carries one bundle per actor (bundle 0 is the trainable itself) and each actor is pinned
to its bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from switchpoint.config import Config

TRAINABLE_CPU = 0.01  # the trial process itself mostly waits on its actors


def stack_bundles(cfg: Config) -> list[dict]:
    """Bundles of a trial: the trainable, then learner ranks, rollout workers, verifier workers."""

    def bundle(cpu: float, gpu: float = 0.0) -> dict:
        out = {"CPU": cpu}
        if gpu:
            out["GPU"] = gpu
        return out

    return (
        [bundle(TRAINABLE_CPU)]
        + [bundle(cfg.learner.cpus_per_rank, cfg.learner.gpus_per_rank)] * cfg.learner.num_ranks
        + [bundle(cfg.rollout.cpus_per_worker, cfg.rollout.gpus_per_worker)] * cfg.rollout.num_workers
        + [bundle(max(cfg.verifier.cpus_per_worker, 0.01))] * cfg.verifier.num_workers
    )


def engine_threads(cfg: Config, alive_nodes: int, cores: int) -> int:
    """Intra-op threads each CPU engine starts with (0: its CPU reservation; rollout.borrow_learner_cpus).

    An on-policy run's learners wait through every engine call (RL generation, held-out evaluations), so on a
    one-node cluster, where engines and learner ranks are known to share the node, the engines take the ranks'
    CPUs too: their own plus the ranks' CPUs shared among the engines, at most each engine's share of the
    node's cores. Not with rollouts sampled ahead (rl.max_staleness), where the learners train meanwhile. Set at
    start: vLLM's CPU GEMMs keep the thread count they were built with (a count raised per call gave 1.1x at
    the small shape where one set at start gives 1.65x, measured)."""
    r = cfg.rollout
    if (
        r.threads
        or not r.borrow_learner_cpus
        or cfg.rl.max_staleness
        or r.gpus_per_worker
        or alive_nodes != 1
    ):
        return r.threads
    own = max(1, int(r.cpus_per_worker))
    lent = int(own + cfg.learner.num_ranks * cfg.learner.cpus_per_rank / max(1, r.num_workers))
    n = min(max(1, cores // max(1, r.num_workers)), lent)
    return n if n > own else 0


@dataclass
class Placement:
    """Bundle indices of one placement group per role; pg None means each actor asks Ray for its own."""

    pg: object = None
    learner: tuple[int, ...] = ()
    rollout: tuple[int, ...] = ()
    verifier: tuple[int, ...] = ()

    @classmethod
    def in_group(cls, pg, cfg: Config) -> Placement:
        """The layout of `stack_bundles` inside placement group pg."""
        n_l, n_r, n_v = cfg.learner.num_ranks, cfg.rollout.num_workers, cfg.verifier.num_workers
        first = 1
        return cls(
            pg,
            tuple(range(first, first + n_l)),
            tuple(range(first + n_l, first + n_l + n_r)),
            tuple(range(first + n_l + n_r, first + n_l + n_r + n_v)),
        )

    def options(self, role: str, i: int) -> dict:
        """Extra `.options(...)` for actor i of a role: its bundle, or nothing outside a placement group."""
        if self.pg is None:
            return {}
        index = getattr(self, role)[i]
        return {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                self.pg, placement_group_bundle_index=index, placement_group_capture_child_tasks=False
            )
        }
