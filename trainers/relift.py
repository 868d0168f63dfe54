"""ReLIFT (Ma et al. 2025; in the earlier version of the paper only): RL interleaved with SFT on the hardest
prompts. A prompt none of whose G completions is correct leaves the RL batch; its expert trajectory goes to a
buffer, and once the buffer holds rl.prompts_per_step of them they are trained with the SFT loss in an extra
update after that step's RL update (the RL step does this; see RLObjective.interleaved_sft). The RL update is
GRPO without std normalisation; both updates use UPT's loss (clipped PPO on sampled rows, SFT on expert rows).
FLOPs: generation of every group, RL training of the groups kept, and the burst as an SFT step.
"""

from __future__ import annotations

import trainers.upt  # noqa: F401  (registers the "upt" loss this objective uses)
from trainers.objectives import RLObjective, dynamic_sampling_flops, register_objective

register_objective(
    RLObjective(
        name="relift",
        advantage="dr_grpo",  # no std normalisation, as the synchronized baselines were run
        policy_loss="upt",
        interleaved_sft=True,
        entropy_coef=0.001,
        # Every group is generated, only those with a correct completion train with RL: DAPO's accounting
        # (generation of all, training of the kept); the SFT burst is added by the RL step.
        flops=dynamic_sampling_flops,
    )
)
