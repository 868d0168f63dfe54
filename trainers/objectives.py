"""RL objectives: everything one algorithm decides, in one record, kept in a registry (veRL style).

An objective names its advantage estimator and policy loss and owns its knobs: clip range and dual clip
defaults, how the loss is aggregated over tokens and sequences, whether it uses dynamic sampling, how many
off-policy members (expert trajectories) each group holds, its entropy bonus, and its FLOPs formula. The
config, the learner and the RL step ask the objective; none of them branches on an algorithm's name.
Adding an algorithm is one file in trainers/ that calls register_objective(...), imported by
trainers/__init__.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from plasticity.flops import dapo_step_flops, grpo_step_flops, sft_step_flops
from trainers.advantages import AdvantageFn, get_advantage_estimator
from trainers.policy_loss import LOSS_AGGREGATIONS, TOKEN_SUM_NORM_ROWS, PolicyLossFn, get_policy_loss

FlopsFn = Callable[[Mapping, int, int, int, float], float]


def on_policy_flops(
    hf_config: Mapping, generated_prompts: int, kept_groups: int, group: int, seq: float
) -> float:
    """GRPO accounting (Appendix E): 4 * B * G * S * F on the groups trained."""
    del generated_prompts
    return grpo_step_flops(hf_config, kept_groups, group, seq) if kept_groups else 0.0


def dynamic_sampling_flops(
    hf_config: Mapping, generated_prompts: int, kept_groups: int, group: int, seq: float
) -> float:
    """DAPO accounting (Appendix E): (K * B_gen + 3 * B_train) * G * S * F, K generated over all rounds."""
    return dapo_step_flops(hf_config, generated_prompts, kept_groups, group, seq)


@dataclass(frozen=True)
class RLObjective:
    """One RL algorithm's settings; `rl.*` config keys left at 0 / empty take these."""

    name: str
    """Registry name, the value of `rl.algorithm`."""
    advantage: str
    """Advantage estimator (trainers.advantages registry)."""
    policy_loss: str = "ppo_clip"
    """Policy loss (trainers.policy_loss registry)."""
    clip_low: float = 0.2
    """Default lower clip: ratio >= 1 - clip_low."""
    clip_high: float = 0.2
    """Default upper clip: ratio <= 1 + clip_high."""
    clip_ratio_c: float = 0.0
    """Default dual clip (> 1) bounding a negative-advantage token's loss at -c * A; 0: off."""
    loss_agg: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum | fixed-length-sum | token-sum-norm (see
    aggregate_token_loss)."""
    entropy_agg: str = ""
    """How the entropy bonus is aggregated; empty: as the loss (Unify-Post-Training's baselines: token-mean)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and generate more (DAPO)."""
    off_policy_members: int = 0
    """Expert trajectories per group, in place of that many sampled completions (LUFFY: 1)."""
    prefix_members: int = 0
    """Hybrid members per group, in place of that many sampled completions: an expert prefix, then the policy's
    own continuation (Prefix-RFT: 1)."""
    prefix_ratio: Callable[[float, random.Random], float] | None = None
    """For hybrid members: the prefix's fraction of the expert trajectory, from (RL progress in [0, 1], rng)."""
    interleaved_sft: bool = False
    """A group none of whose completions is correct leaves RL; its expert trajectory is buffered and trained with
    the SFT loss once rl.prompts_per_step are buffered, in an extra update after the RL one (ReLIFT)."""
    expert_fallback: bool = False
    """A group none of whose completions is correct is replaced by its expert trajectory, flagged off-policy
    (UPT trains it with the SFT loss)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss, aggregated like it); 0: none."""
    uses_entropy: bool = False
    """The policy loss takes the token entropy (`entropy=`), e.g. for entropy-dependent weights (SRFT)."""
    uses_correct: bool = False
    """The policy loss takes `correct=` (bool [B]: the row's score reached CORRECT_THRESHOLD), for weights that
    depend on the outcome rather than the advantage (SRFT)."""
    demo_token_mean: bool = False
    """The policy loss has an SFT term averaged over the batch's demonstration tokens on its own (SRFT, UPT): the
    RL step counts them over the whole update batch and the loss gets ``demo_normalizer=`` that / world size."""
    flops: FlopsFn = on_policy_flops
    """RL step FLOPs from (hf_config, prompts generated, groups trained, group size, mean sequence length)."""

    def __post_init__(self) -> None:
        for agg in (self.loss_agg, self.entropy_agg or self.loss_agg):
            if agg not in LOSS_AGGREGATIONS:
                raise ValueError(f"objective {self.name!r}: unknown loss aggregation {agg!r}")

    @property
    def bonus_agg(self) -> str:
        """The entropy bonus's aggregation."""
        return self.entropy_agg or self.loss_agg

    @property
    def needs_expert(self) -> bool:
        """Whether RL rows must carry the expert trajectory (their `response`)."""
        return bool(
            self.off_policy_members or self.prefix_members or self.expert_fallback or self.interleaved_sft
        )

    @property
    def advantage_fn(self) -> AdvantageFn:
        """Rewards [num_groups, G] -> advantages [num_groups, G]."""
        return get_advantage_estimator(self.advantage)

    @property
    def loss_fn(self) -> PolicyLossFn:
        """The policy loss (see trainers.policy_loss for its signature)."""
        return get_policy_loss(self.policy_loss)

    def step_flops(
        self,
        hf_config: Mapping,
        generated_prompts: int,
        rl_groups: int,
        group: int,
        seq: float,
        sft_lengths: list[int] | tuple[int, ...] = (),
    ) -> float:
        """One RL step's FLOPs: this objective's formula for the groups trained with RL, plus one SFT step
        (3 * B * S * F, forward and backward only) on the expert rows trained with the SFT loss instead of their
        group's G sampled rows (UPT's fallback groups, ReLIFT's burst); ``sft_lengths`` are those rows'
        prompt + expert lengths. A fallback group's G sampled rows are counted as generated, not trained."""
        flops = self.flops(hf_config, generated_prompts, rl_groups, group, seq)
        if sft_lengths:
            flops += sft_step_flops(hf_config, len(sft_lengths), sum(sft_lengths) / len(sft_lengths))
        return flops

    def global_count(self, response_lengths: list[int], max_tokens: int, loss_agg: str = "") -> float:
        """The global denominator of ``loss_agg`` (default: the loss's) over a whole update batch (all ranks):
        response tokens for token-mean, sequences with a response for the seq-mean ones, sequences x max_tokens
        for fixed-length-sum, sequences with a response x max_tokens / TOKEN_SUM_NORM_ROWS for token-sum-norm.
        Each rank divides its sum by this / world size."""
        loss_agg = loss_agg or self.loss_agg
        seqs = sum(1 for n in response_lengths if n > 0)
        if loss_agg == "token-mean":
            return float(max(sum(response_lengths), 1))
        if loss_agg == "fixed-length-sum":
            return float(max(len(response_lengths) * max_tokens, 1))
        if loss_agg == "token-sum-norm":
            return max(seqs, 1) * max_tokens / TOKEN_SUM_NORM_ROWS
        return float(max(seqs, 1))


RL_OBJECTIVES: dict[str, RLObjective] = {}


def register_objective(objective: RLObjective) -> RLObjective:
    """Add an objective to RL_OBJECTIVES under its name; its advantage and loss must be registered."""
    if objective.name in RL_OBJECTIVES:
        raise ValueError(f"RL objective {objective.name!r} is already registered")
    objective.advantage_fn, objective.loss_fn  # noqa: B018  (fail at registration, not mid-run)
    RL_OBJECTIVES[objective.name] = objective
    return objective


def rl_objective(name: str) -> RLObjective:
    """The objective registered as ``name``; ValueError listing the known names otherwise."""
    if name not in RL_OBJECTIVES:
        known = ", ".join(sorted(RL_OBJECTIVES))
        raise ValueError(f"unknown RL objective {name!r}; known: {known}")
    return RL_OBJECTIVES[name]


register_objective(RLObjective(name="grpo", advantage="grpo"))
# The paper's RL (veRL DAPO recipe): clip 0.2 / 0.28, dual clip 10, token-mean, dynamic sampling.
register_objective(
    RLObjective(
        name="dapo",
        advantage="dapo",
        clip_high=0.28,
        clip_ratio_c=10.0,
        dynamic_sampling=True,
        flops=dynamic_sampling_flops,
    )
)
# Dr.GRPO: no std normalisation, no length normalisation (a constant denominator).
register_objective(RLObjective(name="dr_grpo", advantage="dr_grpo", loss_agg="fixed-length-sum"))
