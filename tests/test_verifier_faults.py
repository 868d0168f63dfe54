"""VerifierPool survives its worker actors dying: real local Ray, real kills (ray.kill and SIGKILL).

Items come from tests/faults.py: `slow` takes a while per item so a worker can be killed mid-batch, and
`kills_its_actor` kills its own actor on every try, the piece the pool must give up on.
"""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray

from actors.verifier import CRASH, OK
from actors.verifier_pool import VerifierPool

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 8


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        address="local",  # always a new local Ray, never a cluster already running here
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT}},
    )
    yield
    ray.shutdown()


def _slow_pool(max_restarts: int) -> VerifierPool:
    # chunk_size 2 and 8 items: four pieces of 2, each 0.6 s, two at a time.
    return VerifierPool(
        num_workers=2,
        kind="tests.faults:slow",
        timeout_s=5.0,
        num_cpus_per_worker=0.1,
        chunk_size=2,
        max_restarts=max_restarts,
    )


def _batch() -> tuple[list[str], list[str]]:
    completions = [f"x {i}" for i in range(BATCH)]
    references = [str(i if i % 2 else -1) for i in range(BATCH)]  # odd items right, even wrong
    return completions, references


def _expected_scores() -> list[float]:
    return [1.0 if i % 2 else 0.0 for i in range(BATCH)]


def _score_while(pool: VerifierPool, kill) -> list:
    """Run pool.score on a batch in a thread and call kill() while the workers are busy with it."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        future = executor.submit(pool.score, *_batch())
        time.sleep(0.3)  # both workers are half-way through their first piece
        kill()
        return future.result(timeout=60)


def _assert_still_serves(pool: VerifierPool) -> None:
    results = pool.score(["y 5", "y 6", "y 7", "y 8"], ["5", "6", "0", "8"])
    assert [r.score for r in results] == [1.0, 1.0, 0.0, 1.0]


def test_worker_killed_by_ray_is_restarted_and_its_piece_rescored(local_ray):
    pool = _slow_pool(max_restarts=3)
    try:
        assert pool.take_fault_events() == []
        results = _score_while(pool, lambda: ray.kill(pool.workers[0], no_restart=False))
        assert [r.status for r in results] == [OK] * BATCH
        assert [r.score for r in results] == _expected_scores()
        [event] = pool.take_fault_events()
        assert event["role"] == "verifier" and event["worker"] == 0
        assert event["action"] == "restarted by Ray"
        assert event["redone"] == "2 items re-scored"
        assert event["error"].split(":")[0] in ("ActorUnavailableError", "ActorDiedError", "RayActorError")
        assert 0.0 < event["seconds_lost"] < 60.0
        assert pool.take_fault_events() == []  # taken means cleared
        assert pool.fault_count == 1
        _assert_still_serves(pool)
    finally:
        pool.shutdown()


def test_worker_process_sigkilled_is_restarted_and_its_piece_rescored(local_ray):
    pool = _slow_pool(max_restarts=3)
    try:
        pid = ray.get(pool.workers[1].pid.remote())
        results = _score_while(pool, lambda: os.kill(pid, signal.SIGKILL))
        assert [r.score for r in results] == _expected_scores()
        assert [r.status for r in results] == [OK] * BATCH
        [event] = pool.take_fault_events()
        assert (event["worker"], event["action"], event["redone"]) == (
            1,
            "restarted by Ray",
            "2 items re-scored",
        )
        assert ray.get(pool.workers[1].pid.remote()) != pid  # a new process in the same actor
        _assert_still_serves(pool)
    finally:
        pool.shutdown()


def test_worker_killed_between_batches_is_reported_at_the_next_batch(local_ray):
    pool = _slow_pool(max_restarts=3)
    try:
        pid = ray.get(pool.workers[0].pid.remote())
        os.kill(pid, signal.SIGKILL)  # idle: no call fails, Ray restarts it in the background
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the restarted process answers
            try:
                if ray.get(pool.workers[0].pid.remote(), timeout=5) != pid:
                    break
            except Exception:
                time.sleep(0.2)
        else:
            pytest.fail(f"the restarted verifier worker (was pid {pid}) did not answer within 60 s")
        results = pool.score(*_batch())
        assert [r.score for r in results] == _expected_scores()
        events = pool.take_fault_events()
        assert [(e["worker"], e["action"], e["redone"]) for e in events] == [
            (0, "restarted by Ray", "nothing")
        ]
        assert str(pid) in events[0]["error"]
        _assert_still_serves(pool)
        assert pool.take_fault_events() == []  # the new process is not counted again
    finally:
        pool.shutdown()


def test_worker_with_no_restarts_left_is_replaced(local_ray):
    pool = _slow_pool(max_restarts=0)
    try:
        dead = pool.workers[0]
        results = _score_while(pool, lambda: ray.kill(dead, no_restart=False))
        assert [r.score for r in results] == _expected_scores()
        [event] = pool.take_fault_events()
        assert (event["worker"], event["action"], event["redone"]) == (0, "replaced", "2 items re-scored")
        assert pool.workers[0] != dead
        _assert_still_serves(pool)
        assert pool.take_fault_events() == []
    finally:
        pool.shutdown()


def test_piece_that_keeps_killing_its_actor_scores_crash_and_the_pool_goes_on(local_ray):
    pool = VerifierPool(
        num_workers=2,
        kind="tests.faults:kills_its_actor",
        timeout_s=5.0,
        num_cpus_per_worker=0.1,
        chunk_size=2,
    )
    try:
        results = pool.score(["x 0", "x 1", "KILLACTOR 2", "x 3"], ["0", "9", "2", "3"])
        assert [r.status for r in results] == [OK, OK, CRASH, CRASH]
        assert [r.score for r in results] == [1.0, 0.0, 0.0, 0.0]
        assert "died 2 times" in results[2].detail
        events = pool.take_fault_events()
        assert [e["redone"] for e in events] == ["2 items scored 0 after 2 failures"] * 2
        assert pool.fault_count == 2 and pool.stats()[CRASH] == 2
        _assert_still_serves(pool)
    finally:
        pool.shutdown()
