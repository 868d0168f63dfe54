"""ReLIFT (Ma et al. 2025; in the earlier version of the paper only): RL interleaved with SFT on the hardest
prompts. A prompt none of whose G completions is correct leaves the RL batch; its expert trajectory goes to a
buffer, and once the buffer holds rl.prompts_per_step of them they are trained with the SFT loss in an extra
update after that step's RL update (the RL step does this; see RLObjective.interleaved_sft). The RL update is
GRPO without std normalisation, clipped PPO, token-mean (as in ReLIFT's own code, TheRoadQaQ/ReLIFT:
relift/core_algos.py compute_policy_loss with loss_remove_clip and loss_remove_token_mean off); the burst is a
token mean of -log p over the expert tokens. Unify-Post-Training, which ran the other baselines, has no ReLIFT.
FLOPs: generation of every group, RL training of the groups kept, and the burst as an SFT step.

Not reproduced from ReLIFT's own scripts (examples/math-7b/train_relift.sh): its SFT burst uses an optimizer of
its own (lr 1e-6, grad clip 0.5) and its runs had entropy coefficient 0 and an overlong buffer; here the burst
shares the RL optimizer and the synchronized baselines' entropy coefficient 0.001.
"""

from __future__ import annotations

from trainers.objectives import RLObjective, dynamic_sampling_flops, register_objective
from trainers.policy_loss import register_policy_loss
from trainers.upt import expert_sft_loss


@register_policy_loss("relift")
def relift_policy_loss(logprobs, old_logprobs, advantages, mask, *, entropy=None, **settings):
    """Clipped PPO on sampled rows (an RL update), SFT on expert rows (a burst); ``entropy`` unused."""
    del entropy
    return expert_sft_loss(logprobs, old_logprobs, advantages, mask, clip=True, **settings)


register_objective(
    RLObjective(
        name="relift",
        advantage="dr_grpo",  # no std normalisation, as the synchronized baselines were run
        policy_loss="relift",
        interleaved_sft=True,
        entropy_coef=0.001,
        demo_token_mean=True,  # a burst holds expert rows only: its SFT term is their token mean
        # Every group is generated, only those with a correct completion train with RL: DAPO's accounting
        # (generation of all, training of the kept); the SFT burst is added by the RL step.
        flops=dynamic_sampling_flops,
    )
)
