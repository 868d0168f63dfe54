"""The RL and held-out prompt sets (switchpoint/prompt_dataset.py): the RL step reads, from the memory-mapped
Arrow sets, the same prompts (token ids), answers and expert trajectories in the same order as the list path
did (load_splits + format_prompt + encode per row, a shuffled list of rows), on the micro and tiny synthetic
data and on math jsonl with a chat template; one-line errors naming file, line and field; the cache key."""

import json
import os
import random

import pytest
import yaml

from actors.rl_step import RLStepper
from switchpoint import sft_dataset
from switchpoint.config import from_dict
from switchpoint.data import chat_tokenizer_or_none, format_prompt
from switchpoint.prepare import load_splits, prompt_specs, split_paths
from switchpoint.prompt_dataset import (
    PromptSet,
    PromptSetSpec,
    build_prompt_set,
    cache_key,
    cached_folder,
    check_fits_model,
)
from switchpoint.sft_dataset import install
from switchpoint.tiny_model import build_tokenizer
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def builds_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(sft_dataset.tempfile, "tempdir", str(tmp_path))


def config(name: str, tmp_path, **data) -> dict:
    with open(os.path.join(REPO, "configs", name)) as f:
        raw = yaml.safe_load(f)
    raw["data"].update(dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), **data)
    return raw


def old_list_path(cfg, paths, tokenizer):
    """What the controller and RLStepper did before the prompt sets: rows as dicts, each prompt encoded when
    drawn, the sampler a shuffled list of the rows that fit rl.max_prompt_len, popped from its end."""
    splits, _ = load_splits(cfg, paths)
    chat = chat_tokenizer_or_none(tokenizer, cfg.data.chat_template, "x")

    def encode(r):
        return tokenizer.encode(format_prompt(r, cfg.data.prompt_template, chat), add_special_tokens=False)

    rl = splits.rl
    if cfg.rl.max_prompt_len:
        rl = [r for r in rl if len(encode(r)) <= cfg.rl.max_prompt_len]
    rng, order, drawn, total = random.Random(cfg.run.seed + 1), [], [], 2 * len(rl) + 3
    for k in range(total):
        if k == total // 2:  # the resume state the old sampler wrote here: the rest of the order itself
            version, internal, gauss = rng.getstate()
            state = {"rng": [version, list(internal), gauss], "order": list(order), "sft_buffer": []}
        if not order:
            order = list(range(len(rl)))
            rng.shuffle(order)
        drawn.append(rl[order.pop()])
    as_new = [
        {"prompt_ids": encode(r), "answer": r["answer"], "response": r.get("response", "")} for r in drawn
    ]
    evals = [{"prompt_ids": encode(r), "answer": r["answer"], "response": ""} for r in splits.eval]
    return as_new, evals[: cfg.eval.max_prompts], state


def arrow_path(cfg, model_dir, paths, old_state):
    """The RL step over the Arrow sets: every prompt drawn in the same number of steps, resumed half way from
    its state through JSON (as state.json holds it); resumed from the old sampler's state too."""
    sets = {}
    for name, spec in prompt_specs(cfg, model_dir, paths).items():
        sets[name] = PromptSet(install(build_prompt_set(spec)[0], cached_folder(spec, cfg.data.cache_dir)))
    stepper = RLStepper(cfg, None, [], None, None, {}, sets)
    total = 2 * len(stepper.rl_index) + 3
    drawn = stepper._next_prompts(total // 2)
    state = json.loads(json.dumps(stepper.get_state()))
    assert "order" not in state and len(json.dumps(state)) < 10_000  # the pass is shuffled again, not stored
    resumed = RLStepper(cfg, None, [], None, None, {}, sets)
    resumed.set_state(state)
    rest = resumed._next_prompts(total - total // 2)
    from_old = RLStepper(cfg, None, [], None, None, {}, sets)
    from_old.set_state(old_state)
    assert from_old._next_prompts(total - total // 2) == rest
    drawn += rest
    return drawn, stepper.eval_set.rows(range(stepper.n_eval)), sets


@pytest.mark.parametrize(
    "name, sets",
    [
        ("micro.yaml", ["rl.algorithm=luffy"]),  # an expert objective: RL rows carry the expert trajectory
        ("tiny.yaml", ["rl.max_prompt_len=20", "data.prompt_template=Q: {prompt}\nA:"]),  # 20: every prompt
    ],
)
def test_synthetic_rows_are_those_of_the_list_path(tmp_path, name, sets):
    raw = config(name, tmp_path)
    for pair in sets:
        key, value = pair.split("=", 1)
        section, field = key.split(".")
        raw[section][field] = value if not value.isdigit() else int(value)
    cfg = from_dict(raw)
    tok_dir = str(tmp_path / "tok")
    build_tokenizer().save_pretrained(tok_dir)
    paths = split_paths(cfg)
    assert paths["rl"].endswith(".parquet")  # the synthetic task writes parquet files
    old_rl, old_eval, old_state = old_list_path(cfg, paths, build_tokenizer())
    new_rl, new_eval, prompt_sets = arrow_path(cfg, tok_dir, paths, old_state)
    assert new_rl == old_rl and new_eval == old_eval
    assert len(RLStepper(cfg, None, [], None, None, {}, prompt_sets).rl_index) == len(prompt_sets["rl"])
    assert all(r["response"] for r in new_rl) == (cfg.rl.algorithm == "luffy")


def test_math_jsonl_with_chat_template(tmp_path):
    from transformers import AutoTokenizer

    from tests.test_user_model import build_user_folder, user_config

    paths = build_user_folder(tmp_path)
    raw = user_config(paths, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    chat = [
        [{"role": "user", "content": json.loads(line)["problem"]}]
        for line in paths["rl"].read_text().splitlines()
    ]
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chat]
    lengths = sorted(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)
    # The expert kept, and rl.max_prompt_len leaving out the longer prompts (the sampler's positions change).
    raw["rl"].update(algorithm="srft", max_prompt_len=lengths[-1] - 1)
    assert lengths[0] < lengths[-1]
    cfg = from_dict(raw)
    files = split_paths(cfg)
    old_rl, old_eval, old_state = old_list_path(cfg, files, tokenizer)
    new_rl, new_eval, sets = arrow_path(cfg, str(paths["model"]), files, old_state)
    assert new_rl == old_rl and new_eval == old_eval
    assert 0 < len(RLStepper(cfg, None, [], None, None, {}, sets).rl_index) < len(sets["rl"])
    assert tokenizer.decode(new_rl[0]["prompt_ids"]).startswith("<|im_start|>user\nCompute ")
    assert "\\boxed{" in new_rl[0]["response"]


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def spec(tmp_path, path, **kw):
    tok_dir = tmp_path / "tok"
    if not tok_dir.exists():
        build_tokenizer().save_pretrained(tok_dir)
    names = {"prompt_column": "prompt", "answer_column": "answer", "response_column": "response"}
    return PromptSetSpec(path=path, split="rl", tokenizer_dir=str(tok_dir), **names, **kw)


GOOD = {"prompt": "Compute 1+2.", "answer": 3, "response": "1+2=3"}


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"prompt": "p"}, "rl file {path}: line 3 lacks field 'answer' (column 'answer')"),
        (
            {"prompt": 5, "answer": "5", "response": "r"},
            "rl file {path}: line 3, field 'prompt': expected text, got the number 5",
        ),
        (
            {"prompt": "p", "answer": [3], "response": "r"},
            "rl file {path}: line 3, field 'answer': expected a string or a number",
        ),
        ({"prompt": "p", "answer": "1", "response": " "}, "line 3, field 'response' (column 'response') is"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, bad, needle):
    path = write(tmp_path / "rl.jsonl", [GOOD, "", bad])
    with pytest.raises(ValueError) as error:
        build_prompt_set(spec(tmp_path, path, with_response=True))
    assert needle.format(path=path) in str(error.value) and "\n" not in str(error.value)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("switchpoint-")]  # the half-built set is gone


def test_prompt_longer_than_the_model_and_an_empty_file(tmp_path):
    path = write(tmp_path / "rl.jsonl", [GOOD, "", {"prompt": "x" * 40, "answer": "1"}])
    folder, meta = build_prompt_set(spec(tmp_path, path))
    assert meta["rows"] == 2 and PromptSet(folder).rows([1])[0]["answer"] == "1"
    check_fits_model(folder, "rl", 41, "M")
    with pytest.raises(
        ValueError, match=f"rl file {path}: line 3: the prompt is 40 tokens, the model takes 40 "
    ):
        check_fits_model(folder, "rl", 40, "M")
    empty = write(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match=f"data split 'rl' at {empty} has no rows"):
        build_prompt_set(spec(tmp_path, empty))


def test_cache_key_follows_content_and_settings(tmp_path):
    a = write(tmp_path / "a.jsonl", [GOOD] * 3)
    b = write(tmp_path / "b.jsonl", [GOOD] * 3)
    key = cache_key(spec(tmp_path, a))
    assert cache_key(spec(tmp_path, b)) == key  # the bytes, not the path
    for change in ({"with_response": True}, {"chat_template": True}, {"prompt_template": "Q: {prompt}"}):
        assert cache_key(spec(tmp_path, a, **change)) != key, change
    write(tmp_path / "b.jsonl", [GOOD] * 2)
    assert cache_key(spec(tmp_path, b)) != key
