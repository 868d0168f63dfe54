"""The study layout's data knobs (data.layout: study): SFT sets that differ only in size or only in difficulty mix,
shared splits byte-identical across them, the pretraining corpus apart from all, bad knobs named."""

import hashlib
import json
import os
import re

import pyarrow.parquet as pq
import pytest

from switchpoint.config import ConfigError, from_dict, load_config
from switchpoint.prepare import split_paths, tiny_model_path
from switchpoint.pretrain import corpus_rows, pretrained_path
from switchpoint.study_data import check_mix, mix_levels
from switchpoint.trunk import trunk_key
from tests.test_synthetic import check_trajectory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = ("sft_val", "rl", "eval")
MIXES = {"easy": [4, 2, 1], "uniform": [1, 1, 1], "hard": [1, 2, 4]}


def study_cfg(data_dir, **data):
    raw = {
        "model": {"build_tiny": True, "tiny": {"max_position_embeddings": 128}},
        "rollout": {"max_tokens": 64},
    }
    raw["data"] = {
        "dir": str(data_dir),
        "layout": "study",
        "shared_mix": [1, 1, 1],
        "n_sft_val": 60,
        "n_rl": 150,
    }
    raw["data"].update({"n_eval": 60, "max_len": 96, "n_sft_train": 256, **data})
    return from_dict(raw)


def rows(path):
    return pq.read_table(path).to_pylist()


def level(row):
    return len(re.findall(r"[+-]", row["prompt"])) - 1  # difficulty d has d + 1 operations


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """{(mix, size): split paths}, each variant written into its own data.dir, so equal files are rebuilt equal."""
    out = {}
    for mix_name, mix in MIXES.items():
        for fraction in (0.125, 0.25, 0.5, 1.0):
            if mix_name != "uniform" and fraction != 1:
                continue
            cfg = study_cfg(
                tmp_path_factory.mktemp(f"{mix_name}{fraction}"), sft_mix=mix, sft_fraction=fraction
            )
            out[mix_name, int(256 * fraction)] = split_paths(cfg)
    return out


def test_shared_splits_are_byte_identical_across_sizes_and_mixes(variants):
    first = next(iter(variants.values()))
    for paths in variants.values():
        for name in SHARED:
            assert digest(paths[name]) == digest(first[name]), name
    assert len({digest(p["sft_train"]) for p in variants.values()}) == len(
        variants
    )  # the SFT sets all differ


def test_smaller_sft_sets_are_prefixes_of_larger_ones(variants):
    sizes = sorted(size for mix, size in variants if mix == "uniform")
    assert sizes == [32, 64, 128, 256]  # the 1/8, 1/4, 1/2, 1 fractions of the largest
    largest = rows(variants["uniform", 256]["sft_train"])
    for size in sizes:
        subset = rows(variants["uniform", size]["sft_train"])
        assert len(subset) == size and subset == largest[:size]
        counts = [sum(level(r) == d for r in subset) for d in (1, 2, 3)]
        assert max(counts) - min(counts) <= 1  # a prefix keeps the mix


def test_a_fraction_of_the_largest_is_that_size_set(variants, tmp_path):
    direct = split_paths(study_cfg(tmp_path, sft_mix=[1, 1, 1], n_sft_train=64))
    assert digest(direct["sft_train"]) == digest(variants["uniform", 64]["sft_train"])


def test_mixes_of_one_size_differ_only_in_difficulty(variants):
    sets = {mix: rows(variants[mix, 256]["sft_train"]) for mix in MIXES}
    for mix, weights in MIXES.items():
        counts = [sum(level(r) == d for r in sets[mix]) for d in (1, 2, 3)]
        assert sum(counts) == 256
        for count, w in zip(counts, weights):
            assert abs(count - 256 * w / sum(weights)) <= 1, (mix, counts)
    # A level's rows come from one order: each mix takes its first k, so a smaller share is a subset of a larger.
    for d in (1, 2, 3):
        per = {mix: [r["prompt"] for r in sets[mix] if level(r) == d] for mix in MIXES}
        shorter, longer = sorted(per.values(), key=len)[0], sorted(per.values(), key=len)[-1]
        assert set(shorter) <= set(longer)
    for r in sets["hard"] + sets["easy"]:
        check_trajectory(r)


def test_splits_and_pretraining_corpus_are_disjoint(variants):
    shared = {name: {r["prompt"] for r in rows(variants["uniform", 256][name])} for name in SHARED}
    assert len(shared["sft_val"]) == 60 and len(shared["rl"]) == 150 and len(shared["eval"]) == 60
    assert not (
        shared["sft_val"] & shared["rl"]
        or shared["sft_val"] & shared["eval"]
        or shared["rl"] & shared["eval"]
    )
    everything = set().union(*shared.values())
    sft_rows = set()
    for (
        paths
    ) in variants.values():  # SFT variants overlap each other by design (nested), never a shared split
        sft = {r["prompt"] for r in rows(paths["sft_train"])}
        assert not sft & everything
        sft_rows |= sft
    everything |= sft_rows
    corpus = corpus_rows(difficulty=1, corpus_size=600, seed=0)
    assert len({r["prompt"] for r in corpus}) == 600 and all(level(r) == 1 for r in corpus)
    assert not {r["prompt"] for r in corpus} & everything


def test_keys_separate_variants_and_share_the_base_model(tmp_path):
    a = study_cfg(tmp_path, sft_mix=[4, 2, 1])
    b = study_cfg(tmp_path, sft_mix=[1, 2, 4])
    c = study_cfg(tmp_path, sft_mix=[4, 2, 1], n_sft_train=128)
    pa, pb, pc = split_paths(a), split_paths(b), split_paths(c)
    assert len({pa["sft_train"], pb["sft_train"], pc["sft_train"]}) == 3
    assert pa["rl"] == pb["rl"] == pc["rl"]  # one shared folder per shared setting
    assert len({trunk_key(a), trunk_key(b), trunk_key(c)}) == 3
    for cfg in (a, b, c):
        cfg.model.pretrain.steps = 200
    assert pretrained_path(a, tiny_model_path(a)) == pretrained_path(
        c, tiny_model_path(c)
    )  # one base for all
    a.model.pretrain.corpus_size = 500
    assert pretrained_path(a, tiny_model_path(a)) != pretrained_path(c, tiny_model_path(c))


def test_classic_layout_files_of_tiny_yaml_are_unchanged(tmp_path):
    cfg = load_config(os.path.join(REPO, "configs", "tiny.yaml"), [f"data.dir={tmp_path}"])
    paths = split_paths(cfg)
    assert os.path.basename(os.path.dirname(paths["rl"])) == "d1_n300_v200_r1000_e200_s0"
    # Row contents as main wrote them before the study layout existed (published figures used these files).
    pinned = {"sft_train": "d307f7fb22914ffc", "sft_val": "4a919f78ee213c5f", "rl": "d295f704568380b8"}
    pinned["eval"] = "6f0c193b679a990f"
    for name, want in pinned.items():
        assert hashlib.sha256(json.dumps(rows(paths[name])).encode()).hexdigest()[:16] == want, name


def test_mix_sequence_is_prefix_stable_and_balanced():
    long = mix_levels([4, 2, 1], 700)
    assert mix_levels([4, 2, 1], 70) == long[:70]
    for n in range(1, 700):
        for d, w in zip((1, 2, 3), (4, 2, 1)):
            assert abs(long[:n].count(d) - n * w / 7) <= 1
    assert mix_levels([0, 1], 5) == [2] * 5
    with pytest.raises(ValueError, match="at least one weight > 0"):
        check_mix([0, 0], "m")


STUDY = {"layout": "study", "shared_mix": [1, 1, 1], "max_len": 96}
TINY = {"build_tiny": True, "tiny": {"max_position_embeddings": 128}}


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"data": {"layout": "mixed"}}, "data.layout"),
        ({"data": {"sft_mix": [1, 1]}}, "data.sft_mix"),
        ({"data": {"shared_mix": [1]}}, "data.shared_mix"),
        ({"data": {**STUDY, "shared_mix": []}}, "data.shared_mix"),
        ({"data": {**STUDY, "shared_mix": [1, -1]}}, "data.shared_mix"),
        ({"data": {**STUDY, "sft_mix": [0, 0]}}, "data.sft_mix"),
        ({"data": {**STUDY, "sft_mix": ["hard"]}}, "data.sft_mix"),
        ({"data": {**STUDY, "sft_mix": [1] * 9}}, "data.sft_mix"),
        (
            {
                "data": {
                    **STUDY,
                    "source": "files",
                    "sft_train_path": "a",
                    "sft_val_path": "b",
                    "rl_path": "c",
                    "eval_path": "d",
                }
            },
            "data.layout",
        ),  # fmt: skip
        ({"data": {**STUDY, "n_rl": 0}}, "data.n_rl"),
        ({"data": {"sft_fraction": 0.5}}, "data.sft_fraction"),
        ({"data": {**STUDY, "sft_fraction": 0}}, "data.sft_fraction"),
        ({"data": {**STUDY, "sft_fraction": 1.5}}, "data.sft_fraction"),
        ({"data": {**STUDY, "sft_fraction": 0.001, "n_sft_train": 100}}, "data.sft_fraction"),
        ({"data": {**STUDY, "sft_mix": [1], "n_sft_train": 2500}}, "data.n_sft_train"),
        ({"data": {**STUDY, "shared_mix": [1], "n_rl": 2600}}, "data.n_rl"),
        ({"model": TINY, "data": {**STUDY, "max_len": 64}, "rollout": {"max_tokens": 64}}, "data.max_len"),
        ({"model": TINY, "data": STUDY, "rollout": {"max_tokens": 40}}, "rollout.max_tokens"),
        (
            {
                "model": {**TINY, "tiny": {"max_position_embeddings": 50}},
                "rollout": {"max_tokens": 40},
                "data": {**STUDY, "shared_mix": [1], "max_len": 48, "n_rl": 100, "n_sft_train": 100},
            },
            "model.tiny.max_position_embeddings",
        ),  # fmt: skip
        ({"model": {**TINY, "pretrain": {"steps": 10}}}, "model.pretrain.steps"),
        ({"model": {"pretrain": {"steps": 10}}, "data": STUDY}, "model.pretrain.steps"),
        ({"model": {**TINY, "pretrain": {"steps": -1}}}, "model.pretrain.steps"),
        ({"model": {**TINY, "pretrain": {"lr": 0}}}, "model.pretrain.lr"),
        (
            {
                "model": {**TINY, "pretrain": {"steps": 10, "difficulty": 3}},
                "data": STUDY,
                "rollout": {"max_tokens": 64},
            },
            "model.pretrain.difficulty",
        ),  # fmt: skip
        (
            {
                "model": {**TINY, "pretrain": {"steps": 10, "corpus_size": 2300}},
                "data": STUDY,
                "rollout": {"max_tokens": 64},
            },
            "model.pretrain.corpus_size",
        ),  # fmt: skip
    ],
)
def test_bad_study_knobs_are_refused_naming_the_key(raw, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        from_dict(raw)


def test_study_yaml_parses_and_fits():
    cfg = load_config(os.path.join(REPO, "configs", "study.yaml"))
    assert cfg.data.layout == "study" and cfg.model.pretrain.steps > 0 and cfg.model.build_tiny
    for (
        mix
    ) in MIXES.values():  # the study's difficulty variants fit its lengths and levels at the largest size
        load_config(os.path.join(REPO, "configs", "study.yaml"), [f"data.sft_mix={mix}"])
