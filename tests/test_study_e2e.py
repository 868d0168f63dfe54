"""A tiny study end to end on the real stack (configs/micro_study.yaml: one seed, two SFT sizes, a Stable and a
Severe branch, pure RL and LUFFY from the pretrained base model), killed with SIGKILL inside its first cell's
sweep and resumed: the report folder (REPORT.md with a verdict per claim, results.csv, PNGs), the base model's
non-zero start, and nothing trained twice."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e
REQUIRED = (
    "claim,arm,dataset,seed,switch_step,regime,min_val_loss,p_sft,a_post,a_post_lo,a_post_hi,final_acc,rl_flops,wall_s"
).split(",")


def _env():
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("RAY_ADDRESS", None)
    return env


def _study(args, expect_kill):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.study", *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=1500)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == (-signal.SIGKILL if expect_kill else 0), out[-4000:]
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    kill = "study.datasets.small={data.n_sft_train: 32, faults.inject: [sweep@rl:2]}"
    first = _study(["configs/micro_study.yaml", "--set", f"run.output_dir={out}", "--set", kill], True)
    (folder,) = [out / d for d in os.listdir(out) if d.startswith("study-")]
    time.sleep(5)  # the killed Ray's processes release their ports
    trunks = {t: (folder / "trunks" / t / "metrics.jsonl").read_text() for t in os.listdir(folder / "trunks")}
    second = _study(["--resume", str(folder)], False)
    return folder, first, second, trunks


def test_the_report_has_a_verdict_per_claim_and_the_figures(study):
    folder, first, second, _ = study
    report = (folder / "REPORT.md").read_text()
    for claim in ("C1", "C2", "C3", "C4", "C5"):
        section = report.split(f"## {claim}:", 1)[1].split("\n## ", 1)[0]
        assert "Paper: " in section
        verdicts = [line for line in section.splitlines() if line.startswith("Verdict: ")]
        assert len(verdicts) == 1 and verdicts[0][9:] in ("reproduced", "not reproduced", "inconclusive")
    # One seed: every comparison is inconclusive by rule, whatever the numbers.
    assert report.count("Verdict: inconclusive") == 5
    for png in ("c1_methods.png", "c2_regimes.png", "c3_c4_data.png", "c5_min_val_loss.png"):
        assert os.path.getsize(folder / png) > 10_000
    assert "[study 1/3] small-s0-switch" in first and "ETA" in first
    assert "study done" in second and str(folder) in second


def test_results_csv_has_a_row_per_branch_with_the_claims(study):
    folder = study[0]
    with open(folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(REQUIRED) <= set(rows[0])
    arms = {(r["dataset"], r["arm"]) for r in rows}
    assert {
        ("small", "sequential"),
        ("large", "sequential"),
        ("large", "pure_rl"),
        ("large", "luffy"),
    } <= arms
    assert ("large", "pure_sft") in arms and ("large", "severe:last") in arms
    seq = [r for r in rows if r["arm"] == "sequential"]
    assert all("C3" in r["claim"] and "C5" in r["claim"] for r in seq)
    assert all(float(r["min_val_loss"]) > 0 and int(r["seed"]) == 0 for r in seq)
    branches = [r for r in rows if r["arm"] != "pure_sft" and r["absent"] != "True"]
    assert all(float(r["rl_flops"]) > 0 and float(r["wall_s"]) > 0 for r in branches)
    # The pretrained base model answers some held-out prompts before any SFT: pure RL has a real start.
    (pure_rl,) = [r for r in rows if r["arm"] == "pure_rl"]
    assert int(pure_rl["switch_step"]) == 0 and float(pure_rl["p_sft"]) > 0


def test_the_killed_cell_resumed_and_nothing_trained_twice(study):
    folder, _, _, trunks = study
    record = json.loads((folder / "study.json").read_text())
    assert [c["status"] for c in record["cells"]] == ["done"] * 3 and len(record["resumed"]) == 1
    for name, rows in trunks.items():  # trunks finished before the kill were not trained again
        assert (folder / "trunks" / name / "metrics.jsonl").read_text() == rows
    small = [c for c in record["cells"] if c["dataset"] == "small"][0]
    (branch,) = os.listdir(os.path.join(small["exp_dir"], "branches"))
    summary = json.loads(open(os.path.join(small["exp_dir"], "branches", branch, "summary.json")).read())
    assert [r["rl_step"] for r in summary["resumes"]] == [2]
    rl = [
        json.loads(line) for line in open(os.path.join(small["exp_dir"], "branches", branch, "metrics.jsonl"))
    ]
    assert [r["rl_step"] for r in rl if r["phase"] == "rl" and "rl_step" in r] == [1, 2, 3, 4]
