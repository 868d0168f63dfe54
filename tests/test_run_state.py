"""Resume states on disk (atomic, pruned), the SFT batch order's saved position, SFT checkpoint retention, and
the run folder reading back a metrics file cut short by a kill."""

import json
import os
import random

import pytest

from actors.run_folder import RunFolder
from actors.run_state import PARTIAL, ResumeStates, SFTBatches, hf_checkpoints_to_drop
from switchpoint.config import Config


def _save(states: ResumeStates, phase: str, step: int) -> str:
    partial = states.begin(phase, step)
    os.makedirs(states.learner_path(partial))
    with open(os.path.join(states.learner_path(partial), "weights"), "w") as f:
        f.write(str(step))
    return states.commit(partial, {"phase": phase, "step": step})


def test_latest_is_the_newest_complete_state_and_old_ones_are_pruned(tmp_path):
    states = ResumeStates(str(tmp_path), keep_last=2)
    assert states.latest() is None
    for step in (10, 20, 30):
        _save(states, "sft", step)
    _save(states, "rl", 0)
    path, state = states.latest()
    assert state == {"phase": "rl", "step": 0} and path.endswith("00004-rl-000000")
    assert sorted(os.listdir(tmp_path / "resume")) == ["00003-sft-000030", "00004-rl-000000"]


def test_a_save_killed_half_way_is_never_picked_and_is_cleaned_up(tmp_path):
    states = ResumeStates(str(tmp_path), keep_last=2)
    _save(states, "sft", 10)
    # A kill after the learner wrote its part but before state.json: only the partial folder exists.
    partial = states.begin("sft", 20)
    os.makedirs(states.learner_path(partial))
    assert states.latest()[1]["step"] == 10
    # A kill while state.json was being written: the .tmp file is there, the folder still partial.
    with open(os.path.join(partial, "state.json.tmp"), "w") as f:
        f.write('{"phase": "sf')
    assert states.latest()[1]["step"] == 10
    # The next complete save removes what the kill left and numbers on from the last complete state.
    final = _save(states, "sft", 30)
    assert os.path.basename(final) == "00002-sft-000030"
    assert not [n for n in os.listdir(tmp_path / "resume") if n.startswith(PARTIAL)]


def test_sft_batches_resume_mid_epoch_exactly(tmp_path):
    whole = SFTBatches(10, 4, seed=3)
    expected = [whole.next_indices() for _ in range(9)]
    first = SFTBatches(10, 4, seed=3)
    for _ in range(4):
        first.next_indices()
    saved = json.loads(json.dumps(first.get_state()))  # through JSON, as in state.json
    resumed = SFTBatches(10, 4, seed=3)
    resumed.set_state(saved)
    assert [resumed.next_indices() for _ in range(5)] == expected[4:]


def test_sft_batches_keep_the_order_of_earlier_runs():
    # The order runs had before batches became resumable: epochs of shuffles from Random(seed), cut in order.
    rng, order, old = random.Random(0), [], []
    for _ in range(7):
        if len(order) < 6:
            more = list(range(16))
            rng.shuffle(more)
            order += more
        old.append(order[:6])
        order = order[6:]
    batches = SFTBatches(16, 6, seed=0)
    assert [batches.next_indices() for _ in range(7)] == old


@pytest.mark.parametrize("n, batch", [(10, 4), (12, 4), (5, 7)])
def test_sft_batches_resumed_after_any_batch_draw_what_the_uninterrupted_order_draws(n, batch):
    """Saved after every batch (mid-epoch, at an epoch's end, batches larger than an epoch), through JSON."""
    whole = SFTBatches(n, batch, seed=11)
    expected = [whole.next_indices() for _ in range(12)]
    for k in range(12):
        first = SFTBatches(n, batch, seed=11)
        for _ in range(k):
            first.next_indices()
        resumed = SFTBatches(n, batch, seed=11)
        resumed.set_state(json.loads(json.dumps(first.get_state())))
        assert [resumed.next_indices() for _ in range(12 - k)] == expected[k:], k
        # A state written from a resumed order resumes the same way again.
        again = SFTBatches(n, batch, seed=11)
        again.set_state(json.loads(json.dumps(resumed.get_state())))
        assert again.get_state() == resumed.get_state()


def test_sft_batches_state_size_does_not_grow_with_the_rows():
    sizes = {}
    for n in (1_000, 100_000):
        batches = SFTBatches(n, 64, seed=0)
        for _ in range(3):
            batches.next_indices()
        sizes[n] = len(json.dumps(batches.get_state()))
    # The RNG state (625 words) and two counters; the order it replaced took ~6 bytes a row.
    assert sizes[100_000] - sizes[1_000] < 64 and sizes[100_000] < 10_000, sizes


def test_sft_batches_resume_from_a_state_that_holds_the_order():
    """States written before the order was drawn again held the rest of the order itself; they still resume."""
    whole = SFTBatches(10, 4, seed=3)
    expected = [whole.next_indices() for _ in range(9)]
    rng, order = random.Random(3), []  # the old writer's state after 4 batches
    for _ in range(4):
        if len(order) < 4:
            more = list(range(10))
            rng.shuffle(more)
            order += more
        order = order[4:]
    version, internal, gauss = rng.getstate()
    resumed = SFTBatches(10, 4, seed=3)
    resumed.set_state({"rng": [version, list(internal), gauss], "order": order})
    assert [resumed.next_indices() for _ in range(2)] == expected[4:6]
    again = SFTBatches(10, 4, seed=3)  # saved again while still in that order
    again.set_state(json.loads(json.dumps(resumed.get_state())))
    assert [again.next_indices() for _ in range(3)] == expected[6:]


@pytest.mark.parametrize(
    "losses, keep_last, dropped",
    [
        # keep_last 0 keeps everything
        ([1.0, 0.5, 0.4, 0.45, 0.5], 0, []),
        # newest 2 kept (30, 40), the minimum (20) kept, the rest dropped
        ([1.0, 0.6, 0.40, 0.5, 0.6, 0.7], 2, [0, 10, 30]),
        # the latest checkpoint inside the Stable band of the minimum (30: 0.405 <= 1.02 * 0.40) is a
        # rollback target of the stable policy: kept
        ([1.0, 0.6, 0.40, 0.405, 0.5, 0.6, 0.7], 2, [0, 10, 40]),
    ],
)
def test_checkpoint_retention_keeps_branch_points(losses, keep_last, dropped):
    val_losses = [[10 * i, x] for i, x in enumerate(losses)]
    assert hf_checkpoints_to_drop(val_losses, 0.02, keep_last, set()) == dropped


def test_run_folder_reads_back_rows_and_drops_a_line_cut_by_a_kill(tmp_path):
    folder = RunFolder(str(tmp_path), Config())
    folder.log({"phase": "sft", "step": 1, "loss": 2.0})
    folder.log({"phase": "sft", "step": 2, "loss": 1.5})
    folder.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"phase": "sft", "step": 3, "lo')  # the write a SIGKILL interrupted
    again = RunFolder(str(tmp_path), Config())
    assert [r["step"] for r in again.rows] == [1, 2]
    again.replace_rows(again.rows[:1])
    again.log({"phase": "sft", "step": 2, "loss": 1.4})
    again.close()
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 2.0), (2, 1.4)]


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from cluster.cli import main

    rc = main(argv)
    return rc, capsys.readouterr().err


def test_resume_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    rc, err = _cli(["run", "--resume", str(tmp_path)], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "no config.yaml" in err and str(tmp_path) in err


def test_resume_of_a_finished_run_is_refused(tmp_path, capsys):
    from switchpoint.config import dump_yaml

    (tmp_path / "config.yaml").write_text(dump_yaml(Config()))
    (tmp_path / "summary.json").write_text(json.dumps({"accuracy": {"final": 0.8}, "stopped_early": False}))
    before = sorted(os.listdir(tmp_path))
    rc, err = _cli(["run", "--resume", str(tmp_path)], capsys)
    assert rc == 2 and "finished already" in err
    assert sorted(os.listdir(tmp_path)) == before


def test_resume_takes_no_other_config(tmp_path, capsys):
    rc, err = _cli(["run", "configs/micro.yaml", "--resume", str(tmp_path)], capsys)
    assert rc == 2 and "own config.yaml" in err


def test_a_malformed_fault_injection_is_named(capsys):
    rc, err = _cli(["run", "configs/micro.yaml", "--set", "faults.inject=[learner@train:3]"], capsys)
    assert rc == 2 and "faults.inject" in err and "learner@train:3" in err


def test_a_sweep_kill_is_refused_outside_a_sweep_and_outside_rl(capsys):
    rc, err = _cli(["run", "configs/micro.yaml", "--set", "faults.inject=[sweep@rl:3]"], capsys)
    assert rc == 2 and "'sweep@rl:3'" in err and "only in `switchpoint tune`" in err
    rc, err = _cli(["tune", "configs/micro_sweep.yaml", "--set", "faults.inject=[sweep@sft:3]"], capsys)
    assert rc == 2 and "'sweep@sft:3'" in err and "timed by RL steps" in err
