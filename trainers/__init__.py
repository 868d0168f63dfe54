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
from trainers.objectives import RL_OBJECTIVES, RLObjective, register_objective, rl_objective
from trainers.policy_loss import (
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    aggregate_token_loss,
    get_policy_loss,
    register_policy_loss,
    token_logprobs,
)
from trainers.sampling import keep_informative_groups
from trainers.sft import sft_loss

# Objectives kept in files of their own register themselves on import (one file + this line per algorithm).
import trainers.luffy  # noqa: E402,F401  isort: skip
import trainers.prefix_rft  # noqa: E402,F401  isort: skip
import trainers.relift  # noqa: E402,F401  isort: skip
import trainers.srft  # noqa: E402,F401  isort: skip
import trainers.upt  # noqa: E402,F401  isort: skip

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "CORRECT_THRESHOLD",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "RL_OBJECTIVES",
    "RLObjective",
    "aggregate_token_loss",
    "avg_at_k",
    "get_advantage_estimator",
    "get_policy_loss",
    "keep_informative_groups",
    "pass_at_k",
    "register_advantage_estimator",
    "register_objective",
    "register_policy_loss",
    "rl_objective",
    "sft_loss",
    "summarize_eval",
    "token_logprobs",
]
