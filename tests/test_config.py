"""Config parsing and the one-line errors for bad input (config keys, model paths, data rows)."""

import json
import os
import subprocess
import sys

import pytest

from switchpoint.config import ConfigError, from_dict, load_config, parse_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cross_key_rules_leave_good_settings_alone():
    cfg = from_dict({"sft": {"max_steps": 0, "eval_every": 20}, "switch": {"policy": "rl_only"}})
    assert cfg.sft.eval_every == 20  # no SFT at all: eval_every is never used, no conflict
    assert from_dict({"rl": {"group_size": 2}}).rl.group_size == 2
    assert from_dict({"rl": {"max_staleness": 1, "old_logprobs": "engine"}}).rl.max_staleness == 1


def test_shipped_configs_parse():
    from switchpoint.study_config import load_study

    for name in os.listdir(os.path.join(REPO, "configs")):
        path = os.path.join(REPO, "configs", name)
        if not name.endswith(".yaml"):
            continue
        if "study:" in open(path).read():  # a study file: its run config and its study section, both checked
            for quick in (False, True):
                load_study(path, quick=quick)
        else:
            load_config(path)


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        os.path.join(REPO, "configs", "tiny.yaml"),
        ["rl.steps=7", "switch.policy=step:40", "learner.lr=1e-4", "model.build_tiny=false"],
    )
    assert cfg.rl.steps == 7 and cfg.switch.policy == "step:40"
    assert cfg.learner.lr == pytest.approx(1e-4) and cfg.model.build_tiny is False
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"rl": {"stepz": 3}}, "'rl.stepz'"),
        ({"modle": {}}, "'modle'"),
        ({"rl": {"steps": "many"}}, "'rl.steps'"),
        ({"rl": {"algorithm": "ppo"}}, "'rl.algorithm'"),
        ({"switch": {"policy": "whenever"}}, "'switch.policy'"),
        ({"switch": {"policy": "step:x"}}, "step:N"),
        ({"learner": {"zero_stage": 4}}, "'learner.zero_stage'"),
        ({"sft": {"batch_size": 3}}, "'sft.batch_size'"),
        ({"data": {"source": "files"}}, "'data.sft_train_path'"),
        ({"data": {"prompt_template": "{question}"}}, "'data.prompt_template'"),
        ({"learner": {"lr": float("inf")}}, "'learner.lr' must be a finite number"),
        (
            {"sft": {"max_steps": 10, "eval_every": 20}},
            "'sft.eval_every' (20) is larger than 'sft.max_steps'",
        ),
        ({"rl": {"algorithm": "dr_grpo", "group_size": 1}}, "'rl.group_size' must be >= 2"),
        ({"verifier": {"timeout_s": 3601}}, "'verifier.timeout_s'"),
        ({"switch": {"delta": -0.01}}, "'switch.delta'"),
        ({"rollout": {"gpu_memory_utilization": 1.5}}, "'rollout.gpu_memory_utilization'"),
        ({"model": {"build_tiny": True}, "data": {"max_len": 200}}, "'data.max_len' (200) is larger"),
        ({"faults": {"actor_max_restarts": -1}}, "'faults.actor_max_restarts'"),
        ({"rl": {"max_staleness": 2, "old_logprobs": "engine"}}, "'rl.max_staleness' must be 0"),
        ({"rl": {"max_staleness": 1}}, "'rl.old_logprobs' must be 'engine' with rl.max_staleness: 1"),
    ],
)
def test_bad_config_names_the_key(raw, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_unknown_key_is_one_line(tmp_path):
    r = _cli("run", os.path.join(REPO, "configs", "micro.yaml"), "--set", "rl.nope=1", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'rl.nope'" in lines[0], r.stderr


def test_cli_missing_model_folder_is_one_line(tmp_path):
    missing = tmp_path / "no-such-model"
    r = _cli(
        "run",
        os.path.join(REPO, "configs", "micro.yaml"),
        "--set",
        f"model.path={missing}",
        "--set",
        "model.build_tiny=false",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "model.path" in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, no empty run folder left behind


def test_cli_malformed_data_row_is_one_line(tmp_path):
    from switchpoint.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model", hidden_size=128, num_attention_heads=2, num_hidden_layers=1)
    good = {"prompt": "Compute 1+2.", "response": " 1+2=3. Answer: 3", "answer": "3"}
    paths = {}
    for split in ("train", "val", "rl", "eval"):
        p = tmp_path / f"{split}.jsonl"
        rows = [json.dumps(good)] * 4
        if split == "rl":
            rows[2] = json.dumps({"prompt": "Compute 2+2.", "answer": ""})  # line 3: empty answer
        p.write_text("\n".join(rows) + "\n")
        paths[split] = p
    r = _cli(
        "run",
        os.path.join(REPO, "configs", "micro.yaml"),
        "--set",
        f"model.path={model}",
        "--set",
        "model.build_tiny=false",
        "--set",
        "data.source=files",
        "--set",
        f"data.sft_train_path={paths['train']}",
        "--set",
        f"data.sft_val_path={paths['val']}",
        "--set",
        f"data.rl_path={paths['rl']}",
        "--set",
        f"data.eval_path={paths['eval']}",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(paths["rl"]) in lines[0] and "line 3" in lines[0] and "answer" in lines[0], lines[0]
