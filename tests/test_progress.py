"""The terminal progress line: what a user watching a run reads."""

from cluster.runner import _progress_line


def state(phase, step, **last):
    return {"phase": phase, "step": step, "sft_max_steps": 600, "rl_steps": 64, "elapsed": 12.0, "last": last}


def test_sft_line_shows_the_latest_validation_and_its_regime():
    line = _progress_line(state("sft", 120, loss=0.5, val_loss=0.25, regime="adaptive"))
    assert "SFT 120/600" in line and "val 0.2500 (adaptive)" in line and "switched" not in line


def test_rl_line_shows_the_branch_point_not_the_stale_sft_validation():
    last = dict(loss=0.01, val_loss=0.0635, regime="severe", reward=0.7, accuracy=0.72)
    last.update(switch_step=300, switch_regime="stable", switch_val_loss=0.052)
    line = _progress_line(state("rl", 10, **last))
    assert "RL 10/64" in line and "switched@300 (val 0.0520, stable)" in line
    assert "severe" not in line and "reward 0.700" in line and "held-out acc 0.720" in line


def test_actor_log_writes_each_phase_first_line_whatever_the_timer(caplog):
    # A timer that never fires within the test (1 hour): every line below comes from the phase changes, the
    # event and the final stop, as on a machine where a whole phase fits between two periodic ticks.
    from actors.progress import RUN_LOGGER, ActorLog

    s = {**state("starting", 0), "events": []}
    log = ActorLog(lambda: dict(s, events=list(s["events"])), interval_s=3600)
    log.log.propagate = True  # caplog reads the root logger's handlers
    try:
        with caplog.at_level("INFO", logger=RUN_LOGGER):
            log.start()
            for step in range(1, 4):
                s.update(phase="sft", step=step)
                log.phase("sft")
            s["events"].append("resumed from 00002-rl-000000")
            for step in range(1, 3):
                s.update(phase="rl", step=step)
                log.phase("rl")
            log.stop()
    finally:
        log.log.propagate = False
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split("]", 1)[1].split()[0] for line in lines if line.startswith("[")] == ["SFT", "RL", "RL"]
    assert "SFT 1/600" in lines[0] and "resumed from 00002-rl-000000" in lines
    assert "RL 1/64" in lines[-2] and "RL 2/64" in lines[-1]  # the phase's first step, then the final line
