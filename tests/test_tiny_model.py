"""Tests for the character tokenizer and the tiny Llama checkpoint folder."""

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from switchpoint.synthetic import make_problem
from switchpoint.tiny_model import HEAD_DIM, build_tiny_model, build_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=3)


def task_strings() -> list[str]:
    rng = random.Random(0)
    texts = []
    for difficulty in (1, 2, 3):
        for _ in range(20):
            problem = make_problem(rng, difficulty)
            texts += [problem["prompt"], problem["response"], problem["prompt"] + problem["response"]]
    return texts + ["  two  spaces ", "Question: {x}\nAnswer:\n", "~!@#$%^&*()_+`-=[]\\;',./"]


def test_tokenizer_round_trips_task_strings_character_by_character():
    tokenizer = build_tokenizer()
    for text in task_strings():
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == len(text)  # one token per character, digits included
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_tokenizer_specials_and_no_automatic_bos():
    tokenizer = build_tokenizer()
    assert [
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ] == [
        0,
        1,
        2,
        3,
    ]
    assert tokenizer.encode("12", add_special_tokens=True) == tokenizer.encode("12", add_special_tokens=False)
    ids = tokenizer.encode("7</s>", add_special_tokens=False)
    assert ids[-1] == tokenizer.eos_token_id and len(ids) == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == "7"


def test_tokenizer_extra_chars_extend_the_vocab():
    base = build_tokenizer()
    extended = build_tokenizer(extra_chars="éπé")
    assert len(extended) == len(base) + 2
    assert base.unk_token_id in base.encode("π", add_special_tokens=False)
    assert extended.decode(extended.encode("π=3.14é", add_special_tokens=False)) == "π=3.14é"
    with pytest.raises(ValueError, match="extra_chars"):
        build_tokenizer(extra_chars=["x"])


def test_model_folder_loads_as_a_real_checkpoint(model_dir):
    files = {path.name for path in Path(model_dir).iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= files

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.config
    assert config.head_dim == HEAD_DIM == 64
    assert config.vocab_size == len(tokenizer)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 2, 2)
    assert not config.tie_word_embeddings
    assert (config.eos_token_id, config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.dtype == torch.float32
    assert json.loads((Path(model_dir) / "generation_config.json").read_text())["eos_token_id"] == 2

    text = "Compute 7+5-3. 7+5=12."
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, len(text), len(tokenizer))
    assert torch.isfinite(logits).all()


def test_same_seed_same_weights_different_seed_different(model_dir, tmp_path):
    reference = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    same = build_tiny_model(tmp_path / "same", seed=3)
    other = build_tiny_model(tmp_path / "other", seed=4)
    same_state = AutoModelForCausalLM.from_pretrained(same).state_dict()
    other_state = AutoModelForCausalLM.from_pretrained(other).state_dict()
    assert all(torch.equal(reference[name], same_state[name]) for name in reference)
    assert not torch.equal(reference["model.embed_tokens.weight"], other_state["model.embed_tokens.weight"])


def test_existing_folder_needs_overwrite(tmp_path):
    folder = tmp_path / "m"
    build_tiny_model(
        folder, hidden_size=64, num_attention_heads=1, num_key_value_heads=1, intermediate_size=64
    )
    with pytest.raises(ValueError, match="overwrite"):
        build_tiny_model(folder)
    build_tiny_model(folder, num_hidden_layers=1, overwrite=True)
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 1


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"hidden_size": 100}, "hidden_size"),
        ({"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4}, "hidden_size"),
        ({"num_attention_heads": 2, "num_key_value_heads": 3}, "num_key_value_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"intermediate_size": -1}, "intermediate_size"),
        ({"max_position_embeddings": 2.5}, "max_position_embeddings"),
    ],
)
def test_bad_shapes_are_refused(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_tiny_model(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_grouped_query_attention_shape_builds(tmp_path):
    folder = build_tiny_model(
        tmp_path / "gqa", hidden_size=256, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1
    )
    config = json.loads((Path(folder) / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 64)
