"""One validation set for data selection: runs record which set their losses come from, `analyze --val FILE`
re-measures every scene's SFT checkpoints on one shared file with the learner's measure."""

import json
import os
import shutil

import pytest
import yaml

from cluster import analyze as analyze_cmd
from cluster.shared_val import remeasure_scenes
from plasticity.curves import load_path
from plasticity.selection import val_set_fingerprint
from switchpoint.data import load_rows

pytestmark = pytest.mark.e2e


def test_a_synthetic_scene_validates_on_the_shared_file(tmp_path):
    """data.sft_val_path replaces a synthetic scene's own validation split; the other splits stay its own."""
    from switchpoint.config import load_config
    from switchpoint.prepare import load_splits, load_val_rows

    shared = tmp_path / "val199.jsonl"
    rows = [
        {"prompt": f"Compute {i} + 1.", "response": f"{i} + 1 = {i + 1}. Answer: {i + 1}"} for i in range(5)
    ]
    shared.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [
        "data.n_sft_train=8",
        "data.n_sft_val=4",
        "data.n_rl=4",
        "data.n_eval=4",
        f"data.dir={tmp_path}/d",
    ]
    own_cfg = load_config("configs/micro.yaml", base)
    shared_cfg = load_config("configs/micro.yaml", [*base, f"data.sft_val_path={shared}"])
    own, own_paths = load_splits(own_cfg)
    splits, paths = load_splits(shared_cfg)
    own_val, shared_val = load_val_rows(own_cfg, own_paths), load_val_rows(shared_cfg, paths)
    assert paths["sft_val"] == str(shared) and shared_val == rows
    assert paths["sft_train"] == own_paths["sft_train"] and splits.rl == own.rl and len(own_val) == 4
    assert val_set_fingerprint(shared_val) != val_set_fingerprint(own_val)


def _val_file(summary):
    return summary["data"]["paths"]["sft_val"]


def test_run_records_its_validation_set(micro_run):
    _, _, summary, _ = micro_run
    rows = load_rows(_val_file(summary), columns={}, required=("prompt", "response"), split="sft_val")
    fp = summary["data"]["sft_val_fingerprint"]
    assert fp == val_set_fingerprint(rows) and fp["rows"] == 32 == summary["data"]["sft_val"]
    assert val_set_fingerprint(rows[::-1]) == fp  # a set: row order does not matter
    assert val_set_fingerprint(rows[1:])["sha256"] != fp["sha256"]


def test_remeasure_reproduces_the_learners_validation_losses(micro_run):
    """Re-measured on the run's own validation file, every checkpoint's loss is the one the DeepSpeed learner
    logged at that step: the same weights, tokenization and token mean."""
    run_dir, rows, summary, _ = micro_run
    (scene,) = load_path(run_dir).scenes
    got = remeasure_scenes([scene], _val_file(summary))[scene.name]
    logged = {r["step"]: r["val_loss"] for r in rows if r["phase"] == "sft" and "val_loss" in r}
    assert got["steps"] == sorted(logged) and got["missing_checkpoints"] == 0
    for step, loss in zip(got["steps"], got["val_losses"]):
        assert loss == pytest.approx(logged[step], rel=1e-4), step
    assert got["min_val_loss"] == pytest.approx(min(logged.values()), rel=1e-4)


def test_val_flag_ranks_scenes_on_the_shared_file(micro_run, tmp_path, capsys):
    """Two data scenes that validated on different sets: refused as they are; with --val the ranking follows
    the losses on the shared file, not the recorded ones (the second scene recorded a tiny loss on its own
    easy set, but its only checkpoint is the untrained model)."""
    run_dir, rows, summary, _ = micro_run
    folder = tmp_path / "scenes"
    trained = folder / "trained"
    shutil.copytree(run_dir, trained, ignore=shutil.ignore_patterns("checkpoints", "resume", "tensorboard"))
    os.symlink(os.path.join(run_dir, "checkpoints"), trained / "checkpoints")
    other = folder / "untrained"
    other.mkdir()
    cfg = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))
    cfg["data"]["difficulty"] = 2  # another data scene
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    base = os.path.join(run_dir, "checkpoints", "step_000000")
    own = [{"phase": "sft", "step": s, "val_loss": 0.01 + s / 1e4, "flops": 1e9 * s, "checkpoint": base}
           for s in (0, 10)]  # fmt: skip
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in own))
    (other / "summary.json").write_text(
        json.dumps(
            {"run_name": "untrained", "data": {"sft_val_fingerprint": {"sha256": "0" * 64, "rows": 7}}}
        )
    )
    report = analyze_cmd.analyze(str(folder), plots=False)
    assert report["selection"] is None and "7 rows, sha256 000000000000" in report["selection_refused"]

    assert analyze_cmd.main([str(folder), "--no-plots", "--bootstrap", "0", "--val", _val_file(summary)]) == 0
    printed = capsys.readouterr().out
    report = analyze_cmd.analyze(str(folder), plots=False, val_file=_val_file(summary))
    ranking = report["selection"]["ranking"]
    assert [d["scene"].split("[")[1] for d in ranking] == ["difficulty=1]", "difficulty=2]"]
    val = report["selection_val"]
    logged = [r["val_loss"] for r in rows if r["phase"] == "sft" and "val_loss" in r]
    (trained_scene,) = [k for k in val if "difficulty=1" in k]
    (other_scene,) = [k for k in val if "difficulty=2" in k]
    assert ranking[0]["value"] == pytest.approx(min(logged), rel=1e-4)
    assert ranking[1]["value"] == pytest.approx(logged[0], rel=1e-4)  # step 0 of the micro run, untrained
    assert val[other_scene]["val_losses"][0] == val[other_scene]["val_losses"][1]  # one folder, twice
    assert val[trained_scene]["fingerprint"] == summary["data"]["sft_val_fingerprint"]
    assert "re-measured on" in printed and "data selection refused" not in printed
