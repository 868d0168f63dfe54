"""Tests for the synthetic arithmetic task: expert correctness, difficulty knobs, splits, answer parsing."""

import itertools
import json
import random
import re

import pyarrow.parquet as pq
import pytest

from switchpoint.synthetic import (
    check_answer,
    count_problems,
    extract_answer,
    make_problem,
    max_operand,
    max_problem_chars,
    num_operations,
    write_splits,
)

PROMPT_RE = re.compile(r"^Compute (\d+(?:[+-]\d+)+)\.$")
STEP_RE = re.compile(r"(\d+)([+-])(\d+)=(-?\d+)\.")


def parse_expression(prompt: str) -> tuple[list[int], list[str]]:
    """Operands and operators of a prompt, parsed independently of the module under test."""
    match = PROMPT_RE.match(prompt)
    assert match, prompt
    expression = match.group(1)
    operands = [int(number) for number in re.findall(r"\d+", expression)]
    ops = re.findall(r"[+-]", expression)
    return operands, ops


def check_trajectory(problem: dict) -> None:
    """Assert the response does the prompt's operations left to right, each step right, ending in the answer."""
    operands, ops = parse_expression(problem["prompt"])
    steps = STEP_RE.findall(problem["response"])
    assert len(steps) == len(ops)
    value = operands[0]
    for (left, op, right, result), expected_op, operand in zip(steps, ops, operands[1:]):
        assert (int(left), op, int(right)) == (value, expected_op, operand)
        value = value + operand if op == "+" else value - operand
        assert int(result) == value
        assert value >= 0
    assert problem["answer"] == str(value)
    assert problem["response"].endswith(f"Answer: {value}")


def test_example_format_matches_the_spec():
    rng = random.Random(0)
    problem = make_problem(rng, 2)
    assert problem["prompt"].startswith("Compute ")
    assert problem["response"].startswith(" ")
    assert set(problem) == {"prompt", "response", "answer"}


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_expert_trajectories_are_correct(difficulty):
    rng = random.Random(difficulty)
    for _ in range(300):
        problem = make_problem(rng, difficulty)
        check_trajectory(problem)
        assert check_answer(problem["response"], problem["answer"])
        operands, _ = parse_expression(problem["prompt"])
        assert all(0 <= operand <= max_operand(difficulty) for operand in operands)


def test_difficulty_sets_steps_and_operand_range():
    assert [num_operations(d) for d in (1, 2, 3)] == [2, 3, 4]
    assert [max_operand(d) for d in (1, 2, 3, 4, 5)] == [9, 9, 99, 99, 999]
    rng = random.Random(0)
    for difficulty in (1, 2, 3):
        steps = {make_problem(rng, difficulty)["response"].count("=") for _ in range(50)}
        assert steps == {difficulty + 1}
    two_digit = [make_problem(rng, 3)["prompt"] for _ in range(50)]
    assert any(re.search(r"\d\d", prompt) for prompt in two_digit)


def test_easy_problems_are_short():
    assert max_problem_chars(1) <= 48
    rng = random.Random(1)
    for difficulty in (1, 2):
        limit = max_problem_chars(difficulty)
        for _ in range(300):
            problem = make_problem(rng, difficulty)
            assert len(problem["prompt"]) + len(problem["response"]) <= limit


def test_bad_difficulty_is_refused():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="difficulty"):
            make_problem(random.Random(0), bad)


def test_count_problems_matches_brute_force():
    brute = set()
    for a, b, c in itertools.product(range(10), repeat=3):
        for op1, op2 in itertools.product("+-", repeat=2):
            middle = a + b if op1 == "+" else a - b
            end = middle + c if op2 == "+" else middle - c
            if middle >= 0 and end >= 0:
                brute.add(f"{a}{op1}{b}{op2}{c}")
    assert count_problems(1) == len(brute)


def read_split(path: str) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("difficulty", [1, 3])
def test_write_splits_disjoint_deterministic_and_correct(tmp_path, difficulty):
    sizes = dict(n_sft_train=300, n_sft_val=40, n_rl=100, n_eval=50)
    paths = write_splits(tmp_path / "a", difficulty=difficulty, seed=7, **sizes)
    assert set(paths) == {"sft_train", "sft_val", "rl", "eval"}
    splits = {name: read_split(path) for name, path in paths.items()}
    assert [len(splits[name]) for name in ("sft_train", "sft_val", "rl", "eval")] == list(sizes.values())
    for path in paths.values():
        assert pq.read_schema(path).names == ["prompt", "response", "answer"]
    prompts = [row["prompt"] for rows in splits.values() for row in rows]
    assert len(prompts) == len(set(prompts))  # disjoint across and within splits
    for rows in splits.values():
        for row in rows:
            check_trajectory(row)
            assert check_answer(row["response"], row["answer"])

    again = write_splits(tmp_path / "b", difficulty=difficulty, seed=7, **sizes)
    assert {name: read_split(path) for name, path in again.items()} == splits
    other_seed = write_splits(tmp_path / "c", difficulty=difficulty, seed=8, **sizes)
    assert read_split(other_seed["eval"]) != splits["eval"]

    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["difficulty"] == difficulty
    assert manifest["seed"] == 7
    assert manifest["counts"] == {"sft_train": 300, "sft_val": 40, "rl": 100, "eval": 50}


def test_write_splits_refuses_a_too_small_space(tmp_path):
    space = count_problems(1)
    with pytest.raises(ValueError, match=str(space)):
        write_splits(tmp_path, difficulty=1, n_sft_train=space, n_sft_val=1, n_rl=0, n_eval=0, seed=0)
    # The whole space can be used exactly.
    paths = write_splits(
        tmp_path, difficulty=1, n_sft_train=space - 10, n_sft_val=10, n_rl=0, n_eval=0, seed=0
    )
    assert len(read_split(paths["sft_train"])) == space - 10
    assert len(read_split(paths["rl"])) == 0


def test_write_splits_refuses_bad_counts(tmp_path):
    with pytest.raises(ValueError, match="n_rl"):
        write_splits(tmp_path, difficulty=1, n_sft_train=1, n_sft_val=1, n_rl=-1, n_eval=1, seed=0)
    with pytest.raises(ValueError, match="at least one"):
        write_splits(tmp_path, difficulty=1, n_sft_train=0, n_sft_val=0, n_rl=0, n_eval=0, seed=0)


@pytest.mark.parametrize(
    "text, expected",
    [
        (" 7+5=12. 12-3=9. 9+9=18. Answer: 18", "18"),
        ("Answer: 3. oops, Answer: 4", None),  # two different final answers: none counts
        ("Answer: 4. so, Answer: 4", "4"),  # the same answer twice is fine
        ("Answer:   -3 more words", "-3"),
        ("Answer: 18</s><pad>", "18"),
        ("Answer: 18.", "18"),
        ("Answer:\n7\n", "7"),
        ("no marker here 18", None),
        ("Answer:", None),
        ("Answer:   ", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_check_answer_is_exact():
    assert check_answer(" 1+1=2. 2+1=3. Answer: 3", "3")
    assert check_answer("Answer: 3", " 3 ")
    assert not check_answer("Answer: 30", "3")
    assert not check_answer("Answer: 3", "30")
    assert not check_answer("the answer is 3", "3")
    assert not check_answer("Answer: __import__('os')", "3")
