"""Held-out evaluation metrics: unbiased pass@k and avg@k over sampled answers.

Scores come from the verifier, one per sample: 1.0 right, 0.0 wrong (bools work too).
For pass@k a sample counts as correct when its score is at least CORRECT_THRESHOLD, so
partial-credit scores count only when they are at least half right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CORRECT_THRESHOLD = 0.5


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n - c, k) / C(n, k), computed as a stable product.
    """
    if n < 1:
        raise ValueError(f"pass_at_k: n (samples) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c (correct samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    probability_all_wrong = math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
    return 1.0 - probability_all_wrong


def _prompt_scores(correct: Sequence[Sequence[bool | float]]) -> list[list[float]]:
    """Scores as floats, with a clear error for an empty prompt or a score outside [0, 1]."""
    if len(correct) == 0:
        raise ValueError("evaluation needs at least one prompt, got none")
    prompts = []
    for prompt_index, samples in enumerate(correct):
        if len(samples) == 0:
            raise ValueError(f"prompt {prompt_index} has no samples")
        scores = [float(score) for score in samples]
        for sample_index, score in enumerate(scores):
            if not 0.0 <= score <= 1.0:
                raise ValueError(
                    f"prompt {prompt_index}, sample {sample_index}: score must be in [0, 1], got {score}"
                )
        prompts.append(scores)
    return prompts


def avg_at_k(correct: Sequence[Sequence[bool | float]]) -> float:
    """avg@k: mean score of a prompt's samples, averaged over prompts.

    With the same number of samples per prompt (the usual case) this is the plain mean
    over all samples of all prompts; with unequal counts every prompt weighs the same.
    """
    prompts = _prompt_scores(correct)
    return sum(sum(scores) / len(scores) for scores in prompts) / len(prompts)


def summarize_eval(correct_per_prompt: list[list[float]], ks: Sequence[int] = (1,)) -> dict:
    """Evaluation summary of per-prompt sample scores.

    Returns {"avg@k": avg_at_k, "pass@1": .., "pass@<k>" for each k in ks, "n_prompts": ..,
    "samples_per_prompt": the smallest sample count}. pass@k is the unbiased estimator
    averaged over prompts; every prompt needs at least max(ks) samples.
    """
    prompts = _prompt_scores(correct_per_prompt)
    for k in ks:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"ks must hold positive integers, got {k!r}")
    wanted_ks = sorted({1, *ks})
    summary: dict = {"avg@k": avg_at_k(prompts)}
    for k in wanted_ks:
        total = 0.0
        for prompt_index, scores in enumerate(prompts):
            if len(scores) < k:
                raise ValueError(
                    f"pass@{k} needs {k} samples per prompt; prompt {prompt_index} has {len(scores)}"
                )
            n_correct = sum(score >= CORRECT_THRESHOLD for score in scores)
            total += pass_at_k(len(scores), n_correct, k)
        summary[f"pass@{k}"] = total / len(prompts)
    summary["n_prompts"] = len(prompts)
    summary["samples_per_prompt"] = min(len(scores) for scores in prompts)
    return summary
