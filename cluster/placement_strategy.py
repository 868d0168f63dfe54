"""Where a plain run's rollout and verifier actors go on a multi-node cluster (`rollout.placement`,
`verifier.placement`). Learner ranks always share one PACK placement group (actors/learner_group.py).

The Controller asks its Placement for each actor's `.options(...)`; outside a Tune trial it gets this one from
the runner, so the strategy is decided here, next to Ray, and the controller stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.placement import Placement
from switchpoint.config import Config

STRATEGIES = ("default", "spread", "colocate", "resource:NAME")
RESOURCE_SHARE = 0.001  # a custom resource only pins the actor to its nodes; it is not a budget


def role_options(strategy: str, key: str, driver_node: str | None = None) -> dict:
    """`.options(...)` for one strategy; ValueError naming the key for anything else."""
    if strategy == "default":
        return {}
    if strategy == "spread":
        return {"scheduling_strategy": "SPREAD"}
    if strategy == "colocate":
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(driver_node, soft=False)}
    if strategy.startswith("resource:") and strategy[len("resource:") :]:
        return {"resources": {strategy[len("resource:") :]: RESOURCE_SHARE}}
    raise ValueError(f"{key} {strategy!r}: use one of {', '.join(STRATEGIES)}")


@dataclass
class StrategyPlacement(Placement):
    """No placement group; each role's actors get the options of its strategy."""

    by_role: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Config, driver_node: str | None = None) -> StrategyPlacement:
        return cls(
            by_role={
                "rollout": role_options(cfg.rollout.placement, "rollout.placement", driver_node),
                "verifier": role_options(cfg.verifier.placement, "verifier.placement", driver_node),
            }
        )

    def options(self, role: str, i: int) -> dict:
        return dict(self.by_role.get(role, {}))
