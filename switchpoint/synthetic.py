"""The embedded synthetic task: multi-step integer arithmetic with a programmatic expert.

A problem is a left-to-right chain of additions and subtractions:

    prompt   "Compute 7+5-3."
    response " 7+5=12. 12-3=9. Answer: 9"     (the expert trajectory: one step per operation)
    answer   "9"

Difficulty d (an int >= 1) sets two knobs: the chain has d + 1 operations, and operands are drawn from
[0, 10 ** ceil(d / 2) - 1] (single digits at difficulty 1-2, two digits at 3-4, ...). Running values never
go below zero, so every number in a trajectory is a plain non-negative integer. Difficulty 1 and 2 are
small enough for a ~1M-parameter two-layer transformer to learn on a CPU in a few hundred steps.

Answers are checked by exact string match after `extract_answer` (switchpoint.answers); model output is never
evaluated.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from switchpoint import answers

SPLIT_NAMES = ("sft_train", "sft_val", "rl", "eval")
"""The splits `write_splits` writes, in the order their prompts are drawn."""

ANSWER_MARKER = answers.ANSWER_MARKER
"""The text that precedes the final answer in every expert trajectory."""

# Spaces at most this many prompts are enumerated and sampled uniformly without replacement;
# larger ones are sampled with `make_problem` and de-duplicated.
_ENUMERATE_LIMIT = 200_000


def num_operations(difficulty: int) -> int:
    """The number of + / - operations in a problem of this difficulty."""
    _check_difficulty(difficulty)
    return difficulty + 1


def max_operand(difficulty: int) -> int:
    """The largest operand of a problem of this difficulty (operands range from 0 to this)."""
    _check_difficulty(difficulty)
    return 10 ** ((difficulty + 1) // 2) - 1


def render_problem(operands: list[int], ops: list[str]) -> dict[str, str]:
    """The prompt, expert response and answer for a chain `operands[0] ops[0] operands[1] ...`."""
    if len(operands) != len(ops) + 1 or not ops:
        raise ValueError(f"need one more operand than operations, got {len(operands)} and {len(ops)}")
    expression = str(operands[0])
    steps = []
    value = operands[0]
    for op, operand in zip(ops, operands[1:], strict=True):
        if op == "+":
            new_value = value + operand
        elif op == "-":
            new_value = value - operand
        else:
            raise ValueError(f"unknown operation {op!r}; expected '+' or '-'")
        expression += f"{op}{operand}"
        steps.append(f"{value}{op}{operand}={new_value}.")
        value = new_value
    answer = str(value)
    return {
        "prompt": f"Compute {expression}.",
        "response": " " + " ".join(steps) + f" {ANSWER_MARKER} {answer}",
        "answer": answer,
    }


def make_problem(rng: random.Random, difficulty: int) -> dict[str, str]:
    """One random problem: dict(prompt, response, answer). The running value never goes below zero."""
    top = max_operand(difficulty)
    value = rng.randint(0, top)
    operands = [value]
    ops = []
    for _ in range(num_operations(difficulty)):
        op = rng.choice("+-")
        # A subtraction takes an operand no larger than the running value, keeping it non-negative.
        operand = rng.randint(0, top) if op == "+" else rng.randint(0, min(top, value))
        value = value + operand if op == "+" else value - operand
        ops.append(op)
        operands.append(operand)
    return render_problem(operands, ops)


def max_problem_chars(difficulty: int) -> int:
    """An exact upper bound on len(prompt) + len(response) at this difficulty (all '+', largest operands)."""
    top = max_operand(difficulty)
    n_ops = num_operations(difficulty)
    longest = render_problem([top] * (n_ops + 1), ["+"] * n_ops)
    return len(longest["prompt"]) + len(longest["response"])


def count_problems(difficulty: int) -> int:
    """The number of distinct prompts at this difficulty (chains whose running value stays >= 0).

    Exact for operand ranges up to 99 (difficulty <= 4); beyond that a lower bound (additions-only
    chains), which already exceeds any data set one could request.
    """
    top = max_operand(difficulty)
    n_ops = num_operations(difficulty)
    if top > 99:
        return (top + 1) ** (n_ops + 1)
    # Dynamic programming over the running value: counts[v] = number of chain prefixes ending at v.
    counts = [1] * (top + 1)
    for _ in range(n_ops):
        new_counts = [0] * (len(counts) + top)
        for value, count in enumerate(counts):
            if count == 0:
                continue
            for operand in range(top + 1):
                new_counts[value + operand] += count
            for operand in range(min(top, value) + 1):
                new_counts[value - operand] += count
        counts = new_counts
    return sum(counts)


def _enumerate_chains(top: int, n_ops: int) -> Iterator[tuple[list[int], list[str]]]:
    """Every (operands, ops) chain with operands in [0, top] and a running value that stays >= 0."""

    def extend(operands: list[int], ops: list[str], value: int) -> Iterator[tuple[list[int], list[str]]]:
        if len(ops) == n_ops:
            yield operands, ops
            return
        for operand in range(top + 1):
            yield from extend(operands + [operand], ops + ["+"], value + operand)
        for operand in range(min(top, value) + 1):
            yield from extend(operands + [operand], ops + ["-"], value - operand)

    for first in range(top + 1):
        yield from extend([first], [], first)


def _draw_unique_problems(rng: random.Random, difficulty: int, total: int, space: int) -> list[dict]:
    """`total` problems with distinct prompts, deterministic for the rng's state."""
    if space <= _ENUMERATE_LIMIT:
        chains = list(_enumerate_chains(max_operand(difficulty), num_operations(difficulty)))
        return [render_problem(*chain) for chain in rng.sample(chains, total)]
    problems: dict[str, dict] = {}
    attempts_left = 50 * total + 1000
    while len(problems) < total:
        if attempts_left == 0:
            raise ValueError(
                f"could not draw {total} distinct problems at difficulty {difficulty} "
                f"(about {space} exist); request fewer"
            )
        attempts_left -= 1
        problem = make_problem(rng, difficulty)
        problems.setdefault(problem["prompt"], problem)
    return list(problems.values())


def write_splits(
    out_dir: str | Path,
    *,
    difficulty: int,
    n_sft_train: int,
    n_sft_val: int,
    n_rl: int,
    n_eval: int,
    seed: int,
) -> dict[str, str]:
    """Write the four prompt-disjoint splits as parquet files plus manifest.json; return split -> path.

    Every split has the columns prompt, response, answer (RL and eval keep the expert response so all
    splits share one schema). The same arguments always give the same files.
    """
    counts = {"sft_train": n_sft_train, "sft_val": n_sft_val, "rl": n_rl, "eval": n_eval}
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"n_{name} must be a non-negative int, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    total = sum(counts.values())
    if total == 0:
        raise ValueError("write_splits: all split sizes are 0; request at least one problem")
    space = count_problems(difficulty)
    if total > space:
        raise ValueError(
            f"difficulty {difficulty} has only {space} distinct problems, but the splits ask for "
            f"{total} disjoint ones ({counts}); lower the counts or raise the difficulty"
        )

    problems = _draw_unique_problems(random.Random(seed), difficulty, total, space)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("prompt", pa.string()), ("response", pa.string()), ("answer", pa.string())])
    paths = {}
    start = 0
    for name in SPLIT_NAMES:
        rows = problems[start : start + counts[name]]
        start += counts[name]
        table = pa.Table.from_pylist(rows, schema=schema)
        path = out / f"{name}.parquet"
        pq.write_table(table, path)
        paths[name] = str(path)

    manifest = {
        "task": "synthetic_arithmetic",
        "difficulty": difficulty,
        "num_operations": num_operations(difficulty),
        "max_operand": max_operand(difficulty),
        "max_problem_chars": max_problem_chars(difficulty),
        "problem_space": space,
        "seed": seed,
        "counts": counts,
        "files": {name: Path(path).name for name, path in paths.items()},
        "columns": ["prompt", "response", "answer"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return paths


def extract_answer(text: str) -> str | None:
    """The final answer of `text` ("Answer: N" or \\boxed{N}); None when there is none or several different.

    The verifiers use the same extractor (switchpoint.answers), so the task and the reward agree.
    """
    return answers.extract_final_answer(text)


def check_answer(completion: str, reference: str) -> bool:
    """True when the final answer of `completion` equals `reference` exactly (after strip)."""
    return answers.matches_reference(answers.extract_final_answer(completion), reference)


def _check_difficulty(difficulty: int) -> None:
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty < 1:
        raise ValueError(f"difficulty must be an int >= 1, got {difficulty!r}")
