"""Tests for actors/verifier.py on a real local Ray with real math-verify.

Faults come from tests/faults.py: each faulty function misbehaves only on completions carrying its marker
(HANG, CRASH, EXIT, RAISE), so one batch mixes healthy and faulty items.
"""

import os
import time

import pytest
import ray

from actors.verifier import (
    CRASH,
    ERROR,
    NO_ANSWER,
    OK,
    STATUSES,
    TIMEOUT,
    VerifierWorker,
    VerifierWorkerActor,
    VerifyResult,
    extract_final_answer,
    verify_exact,
)
from actors.verifier_pool import VerifierPool
from switchpoint.synthetic import check_answer, extract_answer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def local_ray():
    # Workers start in the driver's directory with its sys.path; PYTHONPATH makes "tests.faults" importable
    # there however pytest was launched.
    ray.init(
        address="local",  # always a new local Ray, never a cluster already running here
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def exact_pool(local_ray):
    pool = VerifierPool(num_workers=2, kind="exact", timeout_s=5.0, chunk_size=2)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def math_pool(local_ray):
    pool = VerifierPool(num_workers=1, kind="math", timeout_s=10.0)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def faults_pool(local_ray):
    pool = VerifierPool(num_workers=2, kind="tests.faults:mixed", timeout_s=1.0, chunk_size=4)
    yield pool
    pool.shutdown()


def _process_is_gone(pid: int) -> bool:
    """True when pid no longer runs (exited, or a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the total is 12.\nAnswer: 12", "12"),
        ("Answer:  7 apples", "7"),  # first token only
        ("Answer: 18.", "18"),  # a sentence-ending period is not part of the answer
        ("Answer: 18</s><pad>", "18"),
        ("the result is \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),  # nested braces
        ("Answer: \\boxed{5}", "5"),
        ("\\boxed{7} so Answer: 7. Answer: 7", "7"),  # the same answer repeated is one answer
        ("Answer: 3 is wrong. Answer:  7 apples", None),  # several different answers: none
        ("\\boxed{3} or \\boxed{2} or \\boxed{1}", None),
        ("Answer: 18 or 19", None),
        ("Answer: 18, 19", None),
        ("\\boxed{1} then Answer: 2", None),
        ("Answer: 18\x00", None),  # control characters: refused, never stripped
        ("Answer:   ", None),
        ("\\boxed{unclosed", None),
        ("no marker at all", None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_bad_kinds_are_rejected_at_construction():
    with pytest.raises(ValueError, match=r"unknown verifier kind 'regex'.*'exact', 'math'"):
        VerifierPool(num_workers=1, kind="regex")
    with pytest.raises(ValueError, match="cannot import module 'no_such_package.module'"):
        VerifierPool(num_workers=1, kind="no_such_package.module:verify")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        VerifierPool(num_workers=1, kind="tests.faults:missing")
    with pytest.raises(ValueError, match="num_workers"):
        VerifierPool(num_workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        VerifierWorker("exact", timeout_s=0)


def test_worker_rejects_malformed_batches():
    worker = VerifierWorker("exact", timeout_s=1.0)
    try:
        with pytest.raises(ValueError, match="2 completions but 1 references"):
            worker.score(["Answer: 1", "Answer: 2"], ["1"])
        with pytest.raises(ValueError, match=r"references\[1\] is int"):
            worker.score(["Answer: 1", "Answer: 2"], ["1", 2])
        assert worker.score([], []) == []
    finally:
        worker.shutdown()


def test_exact_pool_scores_right_wrong_and_missing_answers(exact_pool):
    before = exact_pool.stats()
    completions = ["3 + 4 = 7\nAnswer: 7", "Answer: 8", "I am not sure.", "\\boxed{42}", " Answer: 5 "]
    references = ["7", "7", "7", "42", " 5\n"]
    results = exact_pool.score(completions, references)
    assert [r.status for r in results] == [OK, OK, NO_ANSWER, OK, OK]
    assert [r.score for r in results] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert results[1].detail == "answer='8'"
    after = exact_pool.stats()
    assert {status: after[status] - before[status] for status in STATUSES} == {
        OK: 4,
        NO_ANSWER: 1,
        ERROR: 0,
        TIMEOUT: 0,
        CRASH: 0,
    }
    # A batch larger than workers x chunk still comes back complete and in order.
    many = exact_pool.score([f"Answer: {i}" for i in range(50)], [str(i if i % 3 else -1) for i in range(50)])
    assert [r.score for r in many] == [0.0 if i % 3 == 0 else 1.0 for i in range(50)]
    assert exact_pool.score([], []) == []


def test_math_pool_accepts_equivalent_forms(math_pool):
    completions = [
        "Half of it: \\boxed{0.5}",
        "The answer is $\\frac{2}{4}$",
        "\\boxed{0.6}",
        "so the final answer is \\boxed{2}",
        "I cannot tell.",
    ]
    references = ["\\frac{1}{2}", "0.5", "\\frac{1}{2}", "\\sqrt{4}", "3"]
    results = math_pool.score(completions, references)
    assert [r.score for r in results] == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert [r.status for r in results] == [OK, OK, OK, OK, NO_ANSWER]


def test_unparsable_math_reference_is_an_error(math_pool):
    [result] = math_pool.score(["\\boxed{1}"], [" "])
    assert result.status == ERROR and "has no answer math-verify can parse" in result.detail


def test_pool_refuses_work_after_shutdown(local_ray):
    pool = VerifierPool(num_workers=1, kind="exact", num_cpus_per_worker=0.1)
    assert pool.score(["Answer: 1"], ["1"])[0].score == 1.0
    pool.shutdown()
    pool.shutdown()  # idempotent
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.score(["Answer: 1"], ["1"])


def test_hanging_and_crashing_items_score_zero_and_the_pool_goes_on(faults_pool):
    before = faults_pool.stats()
    completions = ["x 1", "HANG", "x 2", "CRASH", "x 3", "EXIT", "x 4", "x 9", "HANG", "x 6"]
    references = ["1", "1", "2", "2", "3", "3", "4", "5", "6", "6"]
    started = time.monotonic()
    results = faults_pool.score(completions, references)
    elapsed = time.monotonic() - started
    assert [r.status for r in results] == [OK, TIMEOUT, OK, CRASH, OK, CRASH, OK, OK, TIMEOUT, OK]
    assert [r.score for r in results] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert "SIGSEGV" in results[3].detail and "exit code 3" in results[5].detail
    assert elapsed < 120.0  # a hang guard, not a speed check: two 1 s timeouts end it, a stall never would
    # Still usable afterwards, on every worker.
    again = faults_pool.score([f"y {i}" for i in range(8)], [str(i) for i in range(8)])
    assert [r.score for r in again] == [1.0] * 8
    after = faults_pool.stats()
    assert after[TIMEOUT] - before[TIMEOUT] == 2
    assert after[CRASH] - before[CRASH] == 2
    assert after[OK] - before[OK] == 6 + 8
    assert set(after) == set(STATUSES)


def test_raising_verifier_gives_error_status_with_message(faults_pool):
    results = faults_pool.score(["RAISE now", "z 5"], ["1", "5"])
    assert results[0].status == ERROR and results[0].score == 0.0
    assert results[0].detail.startswith("RuntimeError: deliberate verifier failure")
    assert results[1] == VerifyResult(1.0, OK, "")


def test_non_numeric_return_is_an_error(local_ray):
    worker = VerifierWorker("tests.faults:not_a_number", timeout_s=2.0)
    try:
        [result] = worker.score(["anything"], ["1"])
    finally:
        worker.shutdown()
    assert result.status == ERROR and result.score == 0.0 and "returned str" in result.detail


@pytest.mark.parametrize("pool_fixture", ["exact_pool", "math_pool"])
def test_model_output_is_never_executed(request, tmp_path, pool_fixture):
    pool = request.getfixturevalue(pool_fixture)
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"Answer: __import__('os').system('touch {marker}')",
        f"\\boxed{{__import__('os').system('touch {marker}')}}",
        f"The final answer is $exec(\"open('{marker}', 'w')\")$",
    ]
    results = pool.score(payloads, ["3"] * len(payloads))
    assert not marker.exists()
    assert all(r.score == 0.0 and r.status in (OK, NO_ANSWER) for r in results)


def test_hung_child_dies_with_its_actor(local_ray):
    worker = VerifierWorkerActor.remote("tests.faults:hang", 60.0)
    child_pid = ray.get(worker.child_pid.remote())
    assert child_pid is not None and not _process_is_gone(child_pid)
    worker.score.remote(["HANG"], ["1"])  # blocks the actor for up to 60 s
    time.sleep(1.0)
    ray.kill(worker)
    deadline = time.monotonic() + 15.0
    while not _process_is_gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _process_is_gone(child_pid)


HEDGES = [
    "Answer: 18 or 19",
    "\\boxed{19} or \\boxed{18}",
    "Answer: 19. Answer: 18",
    "\\boxed{18} Answer: 17",
]


@pytest.mark.parametrize("pool_fixture", ["exact_pool", "math_pool"])
def test_hedged_answers_score_zero_and_plain_ones_score(request, pool_fixture):
    pool = request.getfixturevalue(pool_fixture)
    plain = ["9+9=18. Answer: 18.", "\\boxed{18}", "Answer: 18 Answer: 18", "Answer: \\boxed{18}"]
    results = pool.score(HEDGES + plain, ["18"] * (len(HEDGES) + len(plain)))
    assert [r.score for r in results] == [0.0] * len(HEDGES) + [1.0] * len(plain)
    assert all(r.status == NO_ANSWER and "several different final answers" in r.detail for r in results[:4])


def test_synthetic_task_and_exact_verifier_agree():
    texts = HEDGES + [
        "Answer: 18.",
        " 9+9=18. Answer: 18",
        "Answer: 18</s>",
        "\\boxed{18}",
        "18",
        "Answer: 18\x00",
    ]
    for text in texts:
        assert check_answer(text, "18") == (verify_exact(text, "18").score == 1.0), text
        assert extract_answer(text) == extract_final_answer(text)
