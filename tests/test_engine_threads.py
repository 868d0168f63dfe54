"""How many threads a CPU engine starts with (rollout.borrow_learner_cpus): an on-policy run on one node lends
the engines the learner ranks' CPUs, which wait through every engine call. The run itself is checked in
tests/test_pipeline_e2e.py (2 threads on a 2-core machine) and tests/test_async_rl.py (1: the learners train
while the engine samples ahead)."""

from actors.placement import engine_threads
from cluster.tune import _stop_lending_when_crowded
from switchpoint.config import load_config


def cfg(*sets):
    return load_config("configs/micro.yaml", ["learner.cpus_per_rank=1", *sets])  # 2 ranks, 1 engine


def test_the_engine_takes_the_ranks_cpus_up_to_the_cores():
    assert engine_threads(cfg(), alive_nodes=1, cores=2) == 2
    assert engine_threads(cfg(), alive_nodes=1, cores=16) == 3  # its own + 2 ranks
    assert engine_threads(cfg(), alive_nodes=1, cores=1) == 0  # nothing to lend: its own reservation
    # Two engines share the ranks' CPUs and the cores.
    assert engine_threads(cfg("rollout.num_workers=2"), alive_nodes=1, cores=16) == 2
    assert engine_threads(cfg("rollout.num_workers=2", "learner.num_ranks=4"), alive_nodes=1, cores=4) == 2


def test_no_lending_where_the_learners_may_be_busy_or_elsewhere():
    assert (
        engine_threads(cfg("rl.max_staleness=1", "rl.old_logprobs=engine"), 1, 16) == 0
    )  # they train meanwhile
    assert engine_threads(cfg(), alive_nodes=2, cores=16) == 0  # the ranks may be on another node
    assert engine_threads(cfg("rollout.borrow_learner_cpus=false"), 1, 16) == 0
    assert engine_threads(cfg("rollout.threads=5"), 1, 16) == 5  # an explicit count wins


def test_config_rejects_a_non_boolean_borrow_setting():
    import pytest

    with pytest.raises(Exception, match="rollout.borrow_learner_cpus"):
        cfg("rollout.borrow_learner_cpus=sometimes")


def test_concurrent_trials_on_too_few_cores_stop_lending():
    alone = cfg("tune.max_concurrent_trials=1")
    assert not _stop_lending_when_crowded(alone, cores=2) and alone.rollout.borrow_learner_cpus
    crowded = cfg("tune.max_concurrent_trials=2")
    assert _stop_lending_when_crowded(crowded, cores=2) and not crowded.rollout.borrow_learner_cpus
    roomy = cfg("tune.max_concurrent_trials=2")
    assert not _stop_lending_when_crowded(roomy, cores=64) and roomy.rollout.borrow_learner_cpus
