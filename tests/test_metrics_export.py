"""Run figures where people watch them: TensorBoard files in the run folder (read back with tensorboard's
EventAccumulator), metric names Ray accepts. The series on Ray's metrics endpoint and the clean job log are checked
on the submitted job of tests/test_two_nodes.py (one job for both: CI time)."""

import os

import pytest

from actors.metrics_export import SERIES, VALID_NAME, scalars

pytestmark = pytest.mark.e2e


def test_metric_names_pass_rays_rule():
    names = [s[0] for s in SERIES] + ["switchpoint_phase"]
    assert all(VALID_NAME.match(n) for n in names) and len(set(names)) == len(names)
    assert not VALID_NAME.match("switchpoint.sft-loss")  # the rule itself: Ray drops such names


def test_tensorboard_holds_the_metrics_series(micro_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, rows, _, _ = micro_run
    events = EventAccumulator(os.path.join(run_dir, "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()

    def series(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    def from_rows(phase, key):
        return [(r["step"], r[key]) for r in rows if r["phase"] == phase and r.get(key) is not None]

    for tag, phase, key in [
        ("sft/loss", "sft", "loss"),
        ("sft/val_loss", "sft", "val_loss"),
        ("sft/accuracy", "sft", "accuracy"),  # sft.heldout_every in configs/micro.yaml
        ("rl/accuracy", "rl", "accuracy"),
        ("rl/reward_mean", "rl", "reward_mean"),
    ]:
        want = from_rows(phase, key)
        got = series(tag)
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag  # float32 in events
    assert series("rl/timing/generate")  # nested dicts are flattened
    assert "plot" in events.Tags()["images"]


def test_scalars_flatten_rows():
    row = {"phase": "rl", "step": 3, "regime": "mild", "timing": {"train": 0.5}, "skipped": "x", "ok": True}
    assert scalars(row) == {"rl/regime": 2.0, "rl/timing/train": 0.5}


def wandb_history(run_dir: str) -> list[dict]:
    """The history records of the offline run under run_dir/wandb, read from its .wandb file (LevelDB-log
    framing: 32 KiB blocks of [crc32 4][length 2][type 1][data]; types full=1, first=2, middle=3, last=4; a
    7-byte header first), each record a wandb Record protobuf."""
    import glob
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    data, pos, pending, history = open(path, "rb").read(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items})
    return history


def test_wandb_offline_run_holds_the_metrics_series(micro_run, tmp_path):
    pytest.importorskip("wandb")  # the optional `wandb` extra
    from actors.metrics_export import MetricsExport

    _, rows, _, _ = micro_run
    export = MetricsExport(str(tmp_path / "run"), ["wandb"], {"run": {"name": "micro"}})
    for row in rows:
        export.export(row)
    export.close()
    history = wandb_history(str(tmp_path / "run"))
    assert len(history) == len(rows)
    for row, logged in zip(rows, history):
        assert logged["step"] == (row.get("step") or 0)
        want = scalars(row)
        assert {k: logged[k] for k in want} == pytest.approx(want)
