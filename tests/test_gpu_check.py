"""benchmarks/gpu_check.py's CPU dry run (--cpu --tiny), so the GPU check cannot rot between GPU visits: every
section runs, its JSON has the keys and sane figures; one section is made to hang, and its time box kills it while
the run goes on in a new process."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks.gpu_check_model import TINY
from benchmarks.gpu_check_paper import zero_state_bytes
from benchmarks.gpu_check_report import summarize
from plasticity.flops import attention_flops_per_token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = ("qwen2.5-1.5b", "qwen2-0.5b")
HUNG = "variants:qwen2.5-1.5b"
RUNS = ("sft", "logprobs", "dapo", "sft_ragged")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    env = dict(os.environ, GPU_CHECK_FAULT=f"{HUNG}=hang", PYTHONPATH=ROOT)
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--cpu", "--tiny", "--out", str(out), "--budget-s", "300",
           "--box", f"{HUNG}=2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])  # the summary, printed as JSON
    data = json.loads(out.read_text())
    assert printed == json.loads(json.dumps(data["summary"]))
    return data


def test_every_section_ran_and_the_hung_one_was_killed(report):
    status = {name: s["status"] for name, s in report["sections"].items()}
    assert status.pop(HUNG) == "timeout"
    assert "killed" in report["sections"][HUNG]["error"]
    expected = {"env", "peak_matmul", "weight_sync", "paper_fit", *(f"{k}:{s}" for k in ("step", "max_micro")
                                                                     for s in SHAPES)}  # fmt: skip
    assert status == dict.fromkeys(expected, "ok")  # the sections after the hung one ran in a new child
    assert report["summary"]["failed_sections"] == [HUNG]
    assert report["seconds"] < report["budget_s"]
    env = report["env"]
    assert env["device"] == "cpu" and env["torch"] and report["deepspeed_used"] is False


def test_steps_report_speed_mfu_and_the_same_loss_as_the_plain_step(report):
    peak = report["sections"]["peak_matmul"]["result"]["peak_flops"]
    assert peak > 0
    for shape in SHAPES:
        rec = report["sections"][f"step:{shape}"]["result"]
        runs = rec["runs"]
        for impl in ("project", "baseline"):
            for run in RUNS:
                r = runs[f"{impl}_{run}"]
                assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["tokens"] > 0
                assert (
                    0 < r["mfu"] < 5 and r["mfu_paper_flops"] > r["mfu"]
                )  # the paper also counts the embedding
                assert r["computed_tokens"] >= r["tokens"]
        # Same weights, rows and loss math: the project's SFT and DAPO losses are the plain step's.
        assert abs(runs["project_sft"]["loss"] - math.log(TINY["vocab_size"])) < 1.0
        assert runs["project_sft"]["loss"] == pytest.approx(runs["baseline_sft"]["loss"], abs=1e-2)
        assert runs["project_dapo"]["loss"] == pytest.approx(runs["baseline_dapo"]["loss"], abs=1e-2)
        # Length grouping pads less than arrival order on ragged rows; no padding on equal rows.
        assert runs["project_sft"]["computed_tokens"] == runs["project_sft"]["tokens"]
        assert runs["project_sft_ragged"]["computed_tokens"] <= runs["baseline_sft_ragged"]["computed_tokens"]
        # FLOPs: 6 N per token plus 3 x the attention's forward FLOPs per token (plasticity/flops.py).
        n, seq, rows = rec["matmul_params"], rec["seq"], rec["rows"]
        attention = 3 * seq * attention_flops_per_token(TINY, seq)
        assert runs["project_sft"]["model_flops"] == pytest.approx(rows * (6 * n * seq + attention))
        assert f"{shape}/project_sft" in report["summary"]["runs"]


def test_max_micro_weight_sync_and_paper_fit(report):
    for shape in SHAPES:
        rec = report["sections"][f"max_micro:{shape}"]["result"]
        for impl in ("project", "baseline"):
            assert rec[impl]["largest"] >= 1 and rec[impl]["complete"]
        assert report["summary"]["max_micro"][shape]["project"] == rec["project"]["largest"]
    sync = report["sections"]["weight_sync"]["result"]
    assert sync["unpacked_equal"] and sync["bytes"] > 0 and sync["buckets"] >= 1
    for key in ("pack_device", "unpack_copy_device", "pack_host", "state_dict_host"):
        assert sync[key]["bytes_per_s"] > 0
    paper = report["sections"]["paper_fit"]["result"]
    assert paper["params"] == 7_615_616_512  # Qwen2.5-7B built on the meta device
    assert (paper["ranks"], paper["zero_stage"], paper["micro_batch"]) == (8, 3, 1)
    assert paper["lengths"] == {"sft": 12000, "rl": 1024 + 8192}
    totals = [paper["states_per_rank_by_stage"][str(s)]["total"] for s in range(4)]
    assert totals == sorted(totals, reverse=True) and totals[3] == 16 * paper["params"] / 8
    for phase in ("sft", "rl"):
        verdict = paper["phases"][phase]
        assert verdict["activations"]["per_layer_bytes"] > 0 and verdict["per_rank_bytes"] > totals[3]
        assert isinstance(verdict["fits_80gib"], bool)
    assert set(report["summary"]["paper_fit"]) == {"sft", "rl"}


def test_zero_accounting_by_hand():
    n, ranks = 1000, 4
    assert zero_state_bytes(n, 0, ranks)["total"] == 16 * n
    assert zero_state_bytes(n, 1, ranks)["total"] == 4 * n + 12 * n / ranks
    assert zero_state_bytes(n, 2, ranks)["total"] == 2 * n + 14 * n / ranks
    assert zero_state_bytes(n, 3, ranks)["total"] == 16 * n / ranks


def test_summary_mfu_against_the_measured_and_the_data_sheet_peak():
    run = {"step_s": 2.0, "model_flops": 8e14, "paper_flops": 9e14, "tokens_per_s": 1.0}
    sections = {
        "peak_matmul": {"status": "ok", "result": {"peak_flops": 8e14}},
        "step:qwen2.5-1.5b": {"status": "ok", "result": {"runs": {"project_sft": dict(run),
                                                                  "baseline_sft": dict(run, step_s=2.5)}}},
        "weight_sync": {"status": "error", "result": None},
    }  # fmt: skip
    summary = summarize(sections, {"gpu": "NVIDIA H200"})
    got = summary["runs"]["qwen2.5-1.5b/project_sft"]
    assert got["mfu"] == pytest.approx(0.5) and got["speedup_vs_baseline"] == pytest.approx(1.25)
    assert sections["step:qwen2.5-1.5b"]["result"]["runs"]["project_sft"]["mfu_vs_spec"] == pytest.approx(
        4e14 / 989e12
    )
    assert summary["target"]["met"] is True and summary["failed_sections"] == ["weight_sync"]
