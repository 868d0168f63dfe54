"""Pure tensor math of SFT and RL: losses, advantages, dynamic sampling, evaluation metrics.

No Ray, no vLLM, no files: everything here takes tensors (or lists of scores) and
returns tensors and plain dicts, so the learner actors and the tests share one code path.
"""

from trainers.advantages import (
    ADVANTAGE_ESTIMATORS,
    get_advantage_estimator,
    register_advantage_estimator,
)
from trainers.evaluation import CORRECT_THRESHOLD, avg_at_k, pass_at_k, summarize_eval
from trainers.objectives import RL_OBJECTIVES, RLObjective, rl_objective
from trainers.policy_loss import POLICY_LOSSES, get_policy_loss, register_policy_loss, token_logprobs
from trainers.sampling import keep_informative_groups
from trainers.sft import sft_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "CORRECT_THRESHOLD",
    "POLICY_LOSSES",
    "RL_OBJECTIVES",
    "RLObjective",
    "avg_at_k",
    "get_advantage_estimator",
    "get_policy_loss",
    "keep_informative_groups",
    "pass_at_k",
    "register_advantage_estimator",
    "register_policy_loss",
    "rl_objective",
    "sft_loss",
    "summarize_eval",
    "token_logprobs",
]
