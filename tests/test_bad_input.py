"""Bad input through the real CLI entry: exit code 2, exactly one `switchpoint: error:` line naming the key,
file, row or path, no traceback, and every file already on disk left as it was. Nothing here starts Ray, an
engine or training: each check runs before Ray does.
"""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.cli import main
from switchpoint.tiny_model import build_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(REPO, "configs", "micro.yaml")
GOOD = {"prompt": "Compute 1+2.", "response": " 1+2=3. Answer: 3", "answer": "3"}
SPLITS = {"sft_train": "train", "sft_val": "val", "rl": "rl", "eval": "eval"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(
        tmp_path_factory.mktemp("model") / "tiny", hidden_size=128, num_attention_heads=2, num_hidden_layers=1
    )


def snapshot(*roots) -> dict:
    """Every file under the roots with its content hash: what 'nothing on disk changed' compares."""
    out = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
            out[folder] = "dir"
    return out


def write_data(folder, rows_by_split=None) -> list[str]:
    """Four good jsonl splits (a split's rows replaced by rows_by_split); returns the --set arguments."""
    rows_by_split = rows_by_split or {}
    sets = ["data.source=files"]
    for key, name in SPLITS.items():
        path = folder / f"{name}.jsonl"
        rows = rows_by_split.get(name, [json.dumps(GOOD)] * 4)
        path.write_bytes(b"".join((r if isinstance(r, bytes) else r.encode()) + b"\n" for r in rows))
        sets.append(f"data.{key}_path={path}")
    return sets


def run_cli(capfd, tmp_path, sets, roots=()) -> str:
    """switchpoint run micro.yaml --set ... from tmp_path; asserts the one-line refusal; returns that line.
    capfd, not capsys: log handlers libraries bound to the real stdout/stderr at import are caught too."""
    (tmp_path / "earlier-run").mkdir(exist_ok=True)
    (tmp_path / "earlier-run" / "metrics.jsonl").write_text('{"step": 1}\n')  # work done before: must survive
    before = snapshot(tmp_path, *roots)
    argv = ["run", MICRO, "--quiet"]
    for s in sets:
        argv += ["--set", s]
    capfd.readouterr()
    rc = main(argv)
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert out.strip() == "", out  # --quiet: nothing else on the console, no library chatter either
    assert len(lines) == 1 and lines[0].startswith("switchpoint: error: "), err
    assert "Traceback" not in err
    assert snapshot(tmp_path, *roots) == before  # nothing written, nothing removed, no empty run folder
    return lines[0]


CONFIG_CASES = [
    (["rl.steps=many"], "config key 'rl.steps' must be an integer, got 'many'"),
    (["learner.lr=-0.1"], "config key 'learner.lr' must be > 0, got -0.1"),
    (["learner.lr=.nan"], "config key 'learner.lr' must be a finite number, got nan"),
    (["rl.nope=1"], "unknown config key 'rl.nope'"),
    (["sft.eval_every=100"], "config key 'sft.eval_every' (100) is larger than 'sft.max_steps' (60)"),
    (["verifier.timeout_s=86400"], "config key 'verifier.timeout_s' is 86400 s; at most 600 s"),
    (
        ["rl.algorithm=grpo", "rl.group_size=1"],
        "config key 'rl.group_size' must be >= 2 for rl.algorithm grpo",
    ),
    (
        ["data.max_len=512"],
        "config key 'data.max_len' (512) is larger than the model's max_position_embeddings (128",
    ),
    (["checkpoint.keep_last_states=0"], "config key 'checkpoint.keep_last_states' must be > 0, got 0"),
    (["checkpoint.rl_every=-5"], "config key 'checkpoint.rl_every' must be >= 0, got -5"),
    (["faults.max_faults=-1"], "config key 'faults.max_faults' must be >= 0, got -1"),
    (["switch.delta=0.2"], "config keys 'switch.delta' (0.2) and 'switch.delta2' (0.1) must satisfy"),
    (["rollout.max_tokens=200"], "config key 'rollout.max_tokens' (200) leaves no room for a prompt"),
    (["run.report_to=[tensorboard, mlflow]"], "config key 'run.report_to' names 'mlflow'; each entry one of"),
]


@pytest.mark.parametrize("sets, needle", CONFIG_CASES, ids=[c[0][-1] for c in CONFIG_CASES])
def test_bad_config(capfd, tmp_path, monkeypatch, sets, needle):
    monkeypatch.chdir(tmp_path)
    line = run_cli(capfd, tmp_path, sets)
    assert needle in line, line


def test_wandb_asked_for_but_not_installed(capfd, tmp_path, monkeypatch):
    # The package made unimportable here (None in sys.modules is how Python marks a module that cannot load),
    # so the case runs whether or not the wandb extra is installed.
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.chdir(tmp_path)
    line = run_cli(capfd, tmp_path, ["run.report_to=[tensorboard, wandb]"])
    assert "config key 'run.report_to' names wandb, but the wandb package is not installed" in line, line


def test_config_file_errors(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: {steps: 3\n")
    assert main(["run", str(bad)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"config file {bad} is not valid YAML" in err, err


def _bad_rows(case):
    long_prompt = json.dumps({**GOOD, "prompt": "Compute " + "1+" * 40 + "1."})
    return {
        "missing column": (
            "rl",
            [json.dumps({"prompt": "p"})],
            "rl file {path}: line 1 lacks field 'answer'",
        ),
        "empty file": ("eval", [], "data split 'eval' at {path} has no rows"),
        "non-UTF-8": (
            "val",
            [b'{"prompt": "caf\xe9"}'],
            "sft_val file {path}: line 1 is not UTF-8 text (byte 0xe9",
        ),
        "int prompt": (
            "rl",
            [json.dumps(GOOD), json.dumps({"prompt": 7, "answer": "7"})],
            "line 2, field 'prompt'",
        ),
        "null prompt": (
            "train",
            [json.dumps({**GOOD, "prompt": None})],
            "line 1, field 'prompt' (column 'prompt')",
        ),
        "list answer": (
            "eval",
            [json.dumps({**GOOD, "answer": [3]})],
            "eval file {path}: line 1, field 'answer'",
        ),
        "prompt > max_len": (
            "train",
            [json.dumps(GOOD), "", long_prompt],
            "sft_train file {path}: line 3: the prompt alone is 90 tokens and config key 'data.max_len' is 64",
        ),
        "prompt > model": (
            "rl",
            [json.dumps({**GOOD, "prompt": "x" * 130})],
            "rl file {path}: line 1: the prompt is 130 tokens, the model takes 128",
        ),
    }[case]


@pytest.mark.parametrize(
    "case",
    ["missing column", "empty file", "non-UTF-8", "int prompt", "null prompt", "list answer"]
    + ["prompt > max_len", "prompt > model"],
)
def test_bad_data_file(capfd, tmp_path, monkeypatch, model_dir, case):
    monkeypatch.chdir(tmp_path)
    split, rows, needle = _bad_rows(case)
    sets = write_data(tmp_path, {split: rows}) + [f"model.path={model_dir}", "model.build_tiny=false"]
    line = run_cli(capfd, tmp_path, sets, roots=[model_dir])
    assert needle.format(path=tmp_path / f"{split}.jsonl") in line, line


def test_damaged_parquet(capfd, tmp_path, monkeypatch, model_dir):
    monkeypatch.chdir(tmp_path)
    sets = write_data(tmp_path) + [f"model.path={model_dir}", "model.build_tiny=false"]
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"prompt": ["a"] * 3, "answer": ["1"] * 3}), path)
    path.write_bytes(path.read_bytes()[:-20])  # footer cut off
    line = run_cli(capfd, tmp_path, sets + [f"data.eval_path={path}"], roots=[model_dir])
    assert f"eval file {path}: cannot read as parquet" in line, line


def _broken_model(src, dst, case):
    shutil.copytree(src, dst)
    config = dst / "config.json"
    hf = json.loads(config.read_text())
    if case == "no config.json":
        config.unlink()
    elif case == "config.json not JSON":
        config.write_text("{not json")
    elif case == "no architectures":
        config.write_text(json.dumps({k: v for k, v in hf.items() if k != "architectures"}))
    elif case == "unknown architecture":
        config.write_text(json.dumps({**hf, "architectures": ["FooBarForCausalLM"]}))
    elif case == "pooling-only architecture":
        config.write_text(json.dumps({**hf, "architectures": ["BertModel"]}))
    elif case == "no weights":
        for p in dst.glob("*.safetensors"):
            p.unlink()
    elif case == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (dst / name).unlink(missing_ok=True)
    elif case == "no eos token":
        tc = json.loads((dst / "tokenizer_config.json").read_text())
        tc.pop("eos_token", None)
        (dst / "tokenizer_config.json").write_text(json.dumps(tc))
        sm = dst / "special_tokens_map.json"
        if sm.exists():
            sm.write_text(
                json.dumps({k: v for k, v in json.loads(sm.read_text()).items() if k != "eos_token"})
            )


MODEL_CASES = {
    "no config.json": "has no config.json: not a Hugging Face model folder (config key 'model.path')",
    "config.json not JSON": "config.json cannot be read as JSON",
    "no architectures": "config.json has no 'architectures' list",
    "unknown architecture": "architecture FooBarForCausalLM is not one vLLM can generate with",
    "pooling-only architecture": "architecture BertModel is not one vLLM can generate with",
    "no weights": "has no weights (*.safetensors or pytorch_model*.bin)",
    "no tokenizer": "has no tokenizer files",
    "no eos token": "has no eos token",
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_folder(capfd, tmp_path, monkeypatch, model_dir, case):
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "model"
    _broken_model(model_dir, broken, case)
    sets = write_data(tmp_path) + [f"model.path={broken}", "model.build_tiny=false"]
    line = run_cli(capfd, tmp_path, sets)
    assert MODEL_CASES[case] in line and str(broken) in line, line


def _read_only(folder) -> bool:
    """Make folder unwritable (chmod, or the immutable flag for root); False when this machine allows neither."""
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK) and os.geteuid() != 0:
        return True
    subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    try:
        (folder / ".probe").touch()
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


def test_read_only_output_dir(capfd, tmp_path, monkeypatch, model_dir):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "old-runs"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    sets = write_data(tmp_path) + [
        f"model.path={model_dir}",
        "model.build_tiny=false",
        f"run.output_dir={out}",
    ]
    if not _read_only(out):
        # Root on a filesystem without the immutable flag: the mount's refusal is simulated on the probe write,
        # as the full-disk case below does (the error path is the same).
        import switchpoint.checks

        def read_only_mount(fd):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(switchpoint.checks.os, "fsync", read_only_mount)
    try:
        line = run_cli(capfd, tmp_path, sets, roots=[model_dir])
    finally:
        subprocess.run(["chattr", "-i", str(out)], capture_output=True)
        out.chmod(0o755)
    assert line.startswith(f"switchpoint: error: output folder {out} is not writable (")
    assert "config key 'run.output_dir'" in line and (out / "summary.json").read_text() == "{}"


def test_full_disk_output_dir(capfd, tmp_path, monkeypatch, model_dir):
    """A full disk, simulated: no tmpfs can be mounted here without privileges, so the probe write's fsync
    fails with ENOSPC on purpose (the error path is the same as a real full disk's)."""
    import switchpoint.checks

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(switchpoint.checks.os, "fsync", full)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    sets = write_data(tmp_path) + [
        f"model.path={model_dir}",
        "model.build_tiny=false",
        f"run.output_dir={out}",
    ]
    out.mkdir()
    line = run_cli(capfd, tmp_path, sets, roots=[model_dir])
    assert line == f"switchpoint: error: output folder {out} is not writable (No space left on device); " + (
        "config key 'run.output_dir'"
    )


def test_console_shows_one_line_only(tmp_path, model_dir):
    """The installed `switchpoint` command in a fresh process: pytest's own log handlers would hide a library
    warning that Python prints on stderr (vLLM warns while its registry is imported), so look at the real stream."""
    broken = tmp_path / "model"
    _broken_model(model_dir, broken, "unknown architecture")
    argv = [os.path.join(os.path.dirname(sys.executable), "switchpoint"), "run", MICRO, "--quiet"]
    for s in write_data(tmp_path) + [f"model.path={broken}", "model.build_tiny=false"]:
        argv += ["--set", s]
    r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        f"switchpoint: error: {broken}/config.json: architecture FooBarForCausalLM is not one vLLM can generate "
        f"with (vllm.model_executor.models.ModelRegistry); model folder {broken} (config key 'model.path')"
    ]
