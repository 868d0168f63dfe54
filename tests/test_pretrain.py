"""The study's base model (model.pretrain): pretrained on a corpus no split contains, it answers some held-out
prompts before any SFT or RL (the random-init model answers none), and it is cached and rebuilt identically."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from switchpoint.config import load_config
from switchpoint.data import load_rows
from switchpoint.hf_eval import accuracy
from switchpoint.prepare import ensure_model, resolve_paths, split_paths, tiny_model_path
from switchpoint.pretrain import INFO_FILE, corpus_rows, pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """configs/study.yaml's base model and splits, built into a temporary folder: (cfg, model folder, paths)."""
    tmp = tmp_path_factory.mktemp("study")
    cfg = load_config(
        os.path.join(REPO, "configs", "study.yaml"), [f"model.path={tmp}/model", f"data.dir={tmp}/data"]
    )
    resolve_paths(cfg)
    return cfg, ensure_model(cfg), split_paths(cfg)


def split_rows(paths, name):
    cols = {"prompt": "prompt", "answer": "answer", "response": "response"}
    return load_rows(paths[name], columns=cols, required=("prompt", "answer"), split=name)


def test_pretrained_base_answers_some_held_out_prompts(study):
    cfg, model, paths = study
    held_out = split_rows(paths, "eval")
    greedy = accuracy(model, held_out, temperature=0.0, max_new_tokens=cfg.rollout.max_tokens)
    sampled = accuracy(
        model, held_out, temperature=cfg.rollout.temperature, samples=2, max_new_tokens=cfg.rollout.max_tokens
    )
    # A real start for pure RL, far from solved (SFT and RL have room above it).
    assert 0.05 < greedy["accuracy"] < 0.6, greedy
    assert 0.03 < sampled["accuracy"] < 0.6, sampled
    assert sampled["with_answer"] > 0.5  # it has the task's format
    random_init = accuracy(tiny_model_path(cfg), held_out[:40], temperature=0.0, max_new_tokens=16)
    assert random_init["accuracy"] == 0 and random_init["with_answer"] == 0  # where pure RL started before


def test_corpus_is_disjoint_from_every_split_and_recorded(study):
    cfg, model, paths = study
    p = cfg.model.pretrain
    corpus = corpus_rows(p.difficulty, p.corpus_size, cfg.run.seed)
    prompts = {r["prompt"] for r in corpus}
    assert len(prompts) == p.corpus_size
    for name in paths:
        assert not prompts & {r["prompt"] for r in split_rows(paths, name)}, name
    info = json.load(open(os.path.join(model, INFO_FILE)))
    assert info["steps"] == p.steps and info["corpus_rows"] == p.corpus_size
    assert info["final_loss"] < info["first_loss"] / 5


def test_cached_folder_is_reused_and_keyed_apart_from_the_random_init(study):
    cfg, model, _ = study
    stamp = os.path.getmtime(os.path.join(model, "model.safetensors"))
    assert ensure_model(cfg) == model and os.path.getmtime(os.path.join(model, "model.safetensors")) == stamp
    assert model != tiny_model_path(cfg) and os.path.isdir(tiny_model_path(cfg))


def test_pretraining_is_deterministic(study, tmp_path):
    cfg, _, _ = study
    rows = corpus_rows(1, 64, seed=0)
    kwargs = dict(steps=3, batch_size=8, lr=3e-3, warmup_steps=1, seed=0)
    for name in ("a", "b"):
        pretrain(tiny_model_path(cfg), str(tmp_path / name), rows, **kwargs)
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    base = load_file(os.path.join(tiny_model_path(cfg), "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], base[k]) for k in a)  # it did train
