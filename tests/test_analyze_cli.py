"""`switchpoint analyze` on the paper's curves, on run folders written like the pipeline's, and on folders of
runs; the run plot for runs without RL and without SFT; clear errors on bad input."""

import json
import os

import numpy as np
import pytest

from cluster import analyze as analyze_cmd
from plasticity.ceiling import CeilingSearch, ceiling_curve
from plasticity.flops import dapo_step_flops, sft_step_flops
from plasticity.plots import plot_run

DATA = os.path.join(os.path.dirname(__file__), "data", "retu_curves.json")
TINY = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "vocab_size": 64}  # fmt: skip
SFT_FLOPS = sft_step_flops(TINY, 32, 40.0)
RL_FLOPS = dapo_step_flops(TINY, 40, 16, 8, 30.0)
FAST = CeilingSearch(bootstrap=20)
SHARED_VAL = {"sha256": "5" * 64, "rows": 199}  # every scene validated on one set (the paper's Val-199)


def sft_loss(step, floor=0.8):
    return floor + 1.5 * np.exp(-step / 40) + 0.0006 * max(0.0, step - 225)


def write_run(
    folder,
    name,
    switch_step,
    a_post,
    floor=0.8,
    difficulty=1,
    rl_steps=60,
    seed=0,
    policy="stable",
    patience=None,
    val_fingerprint=SHARED_VAL,
):
    """A run folder with the files and row keys actors/controller.py writes (tiny model, realistic values)."""
    rng = np.random.default_rng(seed)
    path = os.path.join(folder, name)
    os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
    with open(os.path.join(path, "config.yaml"), "w") as f:
        f.write(f"run:\n  name: {name}\ndata:\n  source: synthetic\n  difficulty: {difficulty}\n")
        if patience is not None:
            f.write(f"switch:\n  policy: {policy}\n  patience: {patience}\n  delta: 0.02\n  delta2: 0.1\n")
    rows, flops, val_losses = [], 0.0, []
    for step in range(0, switch_step + 1):
        if step > 0:
            flops += SFT_FLOPS
            rows.append({"phase": "sft", "step": step, "loss": sft_loss(step, floor) - 0.05, "flops": flops})
        if step % 25 == 0:
            val = sft_loss(step, floor)
            val_losses.append([step, val])
            rows.append({"phase": "sft", "step": step, "val_loss": val, "regime": "stable", "flops": flops,
                         "checkpoint": f"checkpoints/step_{step:06d}"})  # fmt: skip
    p_sft = 0.55
    rows.append({"phase": "switch", "step": switch_step, "val_loss": val_losses[-1][1], "regime": "stable"})
    rows.append({"phase": "rl", "step": switch_step, "flops": flops, "accuracy": p_sft})
    sft_flops, acc = flops, p_sft
    for i in range(1, rl_steps + 1):
        flops += RL_FLOPS
        rows.append(
            {"phase": "rl", "step": switch_step + i, "rl_step": i, "reward_mean": 0.4, "flops": flops}
        )
        if i % 5 == 0:
            x = flops - sft_flops
            acc = ceiling_curve(x, 100 * p_sft, a_post, 15 * RL_FLOPS, 1.5) / 100 + rng.normal(0, 0.003)
            rows.append({"phase": "rl", "step": switch_step + i, "flops": flops, "accuracy": float(acc)})
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    switch = {"step": switch_step, "decided_at_step": switch_step, "reason": "plateau", "policy": policy,
              "val_loss": val_losses[-1][1], "regime": "stable", "seconds": 0.2}  # fmt: skip
    summary = {"run_name": name, "policy": policy, "sft_val_losses": val_losses, "switch": switch,
               "accuracy": {"at_switch": p_sft, "final": float(acc)},
               "data": {"sft_val_fingerprint": val_fingerprint}}  # fmt: skip
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump(summary, f)
    return path


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_reference_curves_every_scene_and_checkpoint(tmp_path, capsys):
    out_json = tmp_path / "rows.json"
    assert analyze_cmd.main([DATA, "--json", str(out_json), "--no-plots", "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out_json.read_text())
    expected = {(s, int(c)) for s, branches in json.load(open(DATA))["rl"].items() for c in branches}
    assert {(r["scene"], r["checkpoint"]) for r in rows} == expected and len(rows) == len(expected)
    for r in rows:
        assert {"scene", "checkpoint", "p_sft", "pl_rl", "a_post", "c_mid", "b", "fit_quality"} <= set(r)
        assert r["fit_quality"]["status"] in ("fit", "observed_peak"), r
        assert r["a_post"] == pytest.approx(r["p_sft"] + r["pl_rl"])
    for scene, ckpt in expected:
        assert any(line.startswith(scene) and f" {ckpt} " in line for line in printed.splitlines())
    assert "best SFT performance" in printed and "Pearson" in printed


def test_run_folder(tmp_path):
    run = write_run(str(tmp_path), "tiny", 225, a_post=80.0)
    report = analyze_cmd.analyze(run, FAST, out_dir=str(tmp_path / "out"))
    (row,) = report["branches"]
    assert row["scene"] == "tiny" and row["checkpoint"] == 225 and row["unit"] == "FLOPs"
    assert row["p_sft"] == pytest.approx(55.0)
    assert row["a_post"] == pytest.approx(80.0, abs=2.0)
    assert row["c_mid"] == pytest.approx(15 * RL_FLOPS, rel=0.5)
    (reg,) = report["regimes"]
    assert reg["l_min"] == pytest.approx(sft_loss(225))
    assert reg["runs"][0]["from_step"] == 225 and reg["runs"][0]["label"] == "stable"
    assert any("single run" in n for n in report["notes"])
    names = {os.path.basename(p) for p in report["plots"]}
    assert {"sft_regimes.png", "rl_branches.png", "apost_vs_switch.png", "run_tiny.png"} <= names
    assert all(is_png(p) for p in report["plots"])


def test_folder_of_branches_from_one_trunk(tmp_path, capsys):
    trunk = tmp_path / "trunk"
    for i, (step, a_post) in enumerate([(150, 74.0), (225, 80.0), (300, 76.0)]):
        write_run(str(trunk), f"switch_{step}", step, a_post, seed=i)
    out_json = tmp_path / "rows.json"
    code = analyze_cmd.main(
        [str(trunk), "--json", str(out_json), "--bootstrap", "20", "--out", str(tmp_path / "o")]
    )
    assert code == 0
    rows = json.loads(out_json.read_text())
    assert [r["checkpoint"] for r in rows] == [150, 225, 300]
    assert {r["scene"] for r in rows} == {"trunk"}
    best = max(rows, key=lambda r: r["a_post"])
    assert best["checkpoint"] == 225  # the Stable-regime switch has the highest ceiling, as built
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    (reg,) = report["regimes"]
    assert reg["steps"][-1] == 300  # the trunk is the longest SFT curve among the runs
    assert [c["label"] for c in reg["runs"]] == ["adaptive", "stable", "mild"]
    assert is_png(tmp_path / "o" / "apost_vs_switch.png")
    assert "Stable window steps 175-250" in capsys.readouterr().out


def test_replay_uses_the_runs_switch_config_unless_given(tmp_path):
    trunk = str(tmp_path / "trunk")
    for i, step in enumerate((150, 300)):
        write_run(trunk, f"switch_{step}", step, 75.0, seed=i, patience=3)
    report = analyze_cmd.analyze(trunk, FAST, plots=False)
    (reg,) = report["regimes"]
    assert reg["replay_settings"] == {"delta": 0.02, "delta2": 0.1, "patience": 3}
    assert (
        reg["lines"][0]
        == "replayed with delta 0.02 (run config), delta2 0.1 (run config), patience 3 (run config)"
    )
    # min_loss waits `patience` validations (25 steps apart) past the minimum at 225
    decided = {c["policy"]: c["decided_at"] for c in reg["policies"]}
    given = analyze_cmd.analyze(trunk, FAST, plots=False, patience=2)["regimes"][0]
    assert given["replay_settings"]["patience"] == 2 and "patience 2 (given)" in given["lines"][0]
    assert (
        {c["policy"]: c["decided_at"] for c in given["policies"]}["min_loss"]
        == decided["min_loss"] - 25
        == 275
    )
    # runs that disagree fall back to the paper's default and say so
    write_run(trunk, "switch_225", 225, 75.0, seed=3, patience=4)
    (mixed,) = analyze_cmd.analyze(trunk, FAST, plots=False)["regimes"]
    assert mixed["replay_settings"]["patience"] == 2 and "patience 2 (default)" in mixed["lines"][0]


def test_runs_on_different_expert_data_are_ranked(tmp_path):
    folder = tmp_path / "datasets"
    for d, (floor, a_post) in enumerate([(0.9, 74.0), (0.8, 78.0), (0.7, 81.0)], start=1):
        write_run(str(folder), f"data{d}", 225, a_post, floor=floor, difficulty=d, seed=d)
    report = analyze_cmd.analyze(str(folder), FAST, plots=False)
    assert len({r["scene"] for r in report["branches"]}) == 3
    sel = report["selection"]
    assert sel["quantity"] == "min_val_loss"
    assert [d["scene"] for d in sel["ranking"]] == [
        "datasets[difficulty=3]",
        "datasets[difficulty=2]",
        "datasets[difficulty=1]",
    ]
    assert sel["n_pairs"] == 3 and sel["spearman"] == pytest.approx(-1.0) and sel["pearson"] < -0.9
    assert report["selection_refused"] is None


def test_data_selection_refuses_losses_from_different_validation_sets(tmp_path, capsys):
    """Each data scene validated on its own split (or recorded none): their minimum losses are not comparable,
    so no ranking, and one line names every scene with its validation set."""
    folder = tmp_path / "datasets"
    own = [{"sha256": c * 64, "rows": 200} for c in "ab"] + [None]
    for d, (floor, fp) in enumerate(zip([0.9, 0.8, 0.7], own), start=1):
        write_run(str(folder), f"data{d}", 225, 78.0, floor=floor, difficulty=d, seed=d, val_fingerprint=fp)
    report = analyze_cmd.analyze(str(folder), FAST, plots=False)
    assert report["selection"] is None
    line = report["selection_refused"]
    assert line.startswith("data selection refused:") and "\n" not in line
    for scene, seen in [("difficulty=1", "200 rows, sha256 aaaaaaaaaaaa"), ("difficulty=2", "sha256 bbbb"),
                        ("difficulty=3]: not recorded", "")]:  # fmt: skip
        assert scene in line and seen in line
    assert "--val FILE" in line and "data.sft_val_path" in line
    # Two scenes on the same set and one on another: still refused; the CLI prints the line.
    write_run(str(folder), "data3", 225, 78.0, floor=0.7, difficulty=3, seed=3, val_fingerprint=own[0])
    assert analyze_cmd.main([str(folder), "--no-plots", "--bootstrap", "0"]) == 0
    assert "data selection refused" in capsys.readouterr().out


def test_cli_entry_point(tmp_path, capsys):
    from cluster import cli

    run = write_run(str(tmp_path), "tiny", 225, a_post=80.0)
    assert cli.main(["analyze", run, "--no-plots", "--bootstrap", "0"]) == 0
    assert "tiny" in capsys.readouterr().out


def test_short_branch_is_reported_not_fatal(tmp_path):
    run = write_run(str(tmp_path), "short", 225, a_post=80.0, rl_steps=20)  # 4 evaluations after the switch
    (row,) = analyze_cmd.analyze(run, FAST, plots=False)["branches"]
    assert row["fit_quality"]["status"] == "failed" and "too few points" in row["fit_quality"]["message"]
    assert row["a_post"] is None


def test_plot_run_without_rl_and_without_sft(tmp_path):
    never = [
        {"phase": "sft", "step": s, "val_loss": sft_loss(s), "flops": s * SFT_FLOPS}
        for s in range(0, 400, 25)
    ]
    summary = {"run_name": "never", "switch": None, "accuracy": {"at_switch": None, "final": None}}
    assert is_png(plot_run(never, summary, str(tmp_path / "never.png")))
    rl_only = [{"phase": "sft", "step": 0, "val_loss": 2.3, "flops": 0.0}]
    rl_only += [
        {"phase": "rl", "step": i, "reward_mean": 0.1 * i, "flops": i * RL_FLOPS} for i in range(1, 11)
    ]
    rl_only += [{"phase": "rl", "step": i, "accuracy": 0.05 * i, "flops": i * RL_FLOPS} for i in (0, 5, 10)]
    switch = {"step": 0, "regime": "stable", "val_loss": 2.3, "seconds": 0.1}
    summary = {"run_name": "rl_only", "switch": switch, "accuracy": {"at_switch": 0.0, "final": 0.5}}
    assert is_png(plot_run(rl_only, summary, str(tmp_path / "rl_only.png")))
    no_sft = [r for r in rl_only if r["phase"] == "rl"]
    assert is_png(plot_run(no_sft, summary, str(tmp_path / "no_sft.png")))


def test_errors_are_clear(tmp_path, capsys):
    assert analyze_cmd.main([str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert analyze_cmd.main([str(tmp_path / "empty")]) == 2
    assert "no run folders" in capsys.readouterr().err
    run = write_run(str(tmp_path), "broken", 225, a_post=80.0)
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write("{not json\n")
    assert analyze_cmd.main([run, "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl: line" in err and "not JSON" in err
    bad_curves = tmp_path / "curves.json"
    bad_curves.write_text(json.dumps({"sft": {"a": {"0": {"gsm8k": 50}}}, "rl": {}}))
    assert analyze_cmd.main([str(bad_curves), "--no-plots"]) == 2
    assert "missing benchmark(s)" in capsys.readouterr().err
