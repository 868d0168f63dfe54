"""The tokenized SFT sets (switchpoint/sft_dataset.py): the same tokens as the list path, a cache keyed by the
file's content and the settings, one-line errors naming the row, the parallel map, the chat template."""

import json
import os
from types import SimpleNamespace

import pytest

from actors.learner_group import LearnerGroup
from switchpoint import sft_dataset
from switchpoint.data import chat_tokenizer_or_none, load_rows, render_prompt, tokenize_sft
from switchpoint.sft_dataset import SftSet, SftSetSpec, build_sft_set, cache_key, cached_folder, install
from switchpoint.tiny_model import build_tokenizer

ROWS = [
    {"q": f"Compute {a}+{b}.", "sol": f" {a}+{b}={a + b}. Answer: {a + b}", "answer": str(a + b)}
    for a in range(7)
    for b in range(6)
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True)
def no_leftover_builds(tmp_path, monkeypatch):
    """Builds go to this test's tmp_path, not the system temp dir (a failed build removes its own)."""
    monkeypatch.setattr(sft_dataset.tempfile, "tempdir", str(tmp_path))


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def spec_for(path, tok_dir, **kw):
    return SftSetSpec(
        path=path,
        split="sft_train",
        prompt_column="q",
        response_column="sol",
        tokenizer_dir=tok_dir,
        **{"max_len": 37, "prompt_template": "Q: {prompt}\nA:", **kw},
    )


def test_same_tokens_as_the_list_path_and_truncation(tmp_path, tok_dir):
    path = write(tmp_path / "train.jsonl", ROWS)
    folder, meta = build_sft_set(spec_for(path, tok_dir))
    sft = SftSet(folder)
    rows = load_rows(
        path, columns={"prompt": "q", "response": "sol"}, required=("prompt", "response"), split="x"
    )
    expected = tokenize_sft(rows, build_tokenizer(), max_len=37, prompt_template="Q: {prompt}\nA:")
    got = sft.examples(list(range(len(ROWS))))
    assert got["input_ids"] == [e["input_ids"] for e in expected]
    assert got["loss_mask"] == [e["loss_mask"] for e in expected]
    assert list(sft.trained_tokens()) == [sum(e["loss_mask"][1:]) for e in expected]
    n_cut = sum(
        len(e["input_ids"]) == 37 and e["input_ids"][-1] != build_tokenizer().eos_token_id for e in expected
    )
    assert meta["truncated"] == n_cut > 0 and meta["rows"] == len(ROWS)
    picked = sft.examples([5, 0])  # any order, as a rank reads its shard
    assert picked["input_ids"] == [expected[5]["input_ids"], expected[0]["input_ids"]]


def test_cache_key_follows_content_and_settings(tmp_path, tok_dir):
    a = write(tmp_path / "a.jsonl", ROWS)
    b = write(tmp_path / "b.jsonl", ROWS)  # same bytes elsewhere: same key
    key = cache_key(spec_for(a, tok_dir))
    assert cache_key(spec_for(b, tok_dir)) == key
    assert cache_key(spec_for(a, tok_dir, max_len=30)) != key
    assert cache_key(spec_for(a, tok_dir, prompt_template="{prompt}")) != key
    write(tmp_path / "b.jsonl", ROWS[:-1])
    assert cache_key(spec_for(b, tok_dir)) != key
    cache = tmp_path / "cache"
    spec = spec_for(a, tok_dir)
    folder = install(build_sft_set(spec)[0], cached_folder(spec, str(cache)))
    assert folder == cached_folder(spec, str(cache)) and os.listdir(cache) == [os.path.basename(folder)]
    # A second build of the same set (another run got there first) leaves the installed one as it was.
    files = sorted(os.listdir(folder))
    again = build_sft_set(spec)[0]
    assert (
        install(again, folder) == folder and not os.path.exists(again) and sorted(os.listdir(folder)) == files
    )


@pytest.mark.parametrize(
    "bad, needle",
    [
        (
            {"q": "p", "sol": None},
            "sft_train file {path}: line 3, field 'response' (column 'sol') is missing or empty",
        ),
        (
            {"q": 5, "sol": "x"},
            "sft_train file {path}: line 3, field 'prompt': expected text, got the number 5",
        ),
        (
            {"q": "x" * 40, "sol": "y"},
            "sft_train file {path}: line 3: the prompt alone is 46 tokens and config key ",
        ),
        ("{not json", "sft_train file {path}: line 3 is not valid JSON"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, tok_dir, bad, needle):
    path = write(tmp_path / "train.jsonl", [ROWS[0], ROWS[1], bad])
    with pytest.raises(ValueError) as error:
        build_sft_set(spec_for(path, tok_dir))
    assert needle.format(path=path) in str(error.value) and "\n" not in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["train.jsonl"]  # the half-built set is gone


def test_every_row_cut_is_refused(tmp_path, tok_dir):
    path = write(tmp_path / "train.jsonl", ROWS[:3])
    with pytest.raises(ValueError, match=r"all 3 examples are longer than config key 'data.max_len' \(20\)"):
        build_sft_set(spec_for(path, tok_dir, max_len=20))


def test_parallel_map_gives_the_same_set(tmp_path, tok_dir, monkeypatch):
    path = write(tmp_path / "train.jsonl", ROWS * 50)  # 2,100 rows
    one = SftSet(build_sft_set(spec_for(path, tok_dir))[0])
    monkeypatch.setattr(sft_dataset, "SMALL_SET_ROWS", 0)
    folder, meta = build_sft_set(spec_for(path, tok_dir), num_proc=2)
    two = SftSet(folder)
    assert len(meta["files"]) == 2  # one Arrow file per worker, read as one set
    rows = list(range(0, 2100, 7))
    assert two.examples(rows) == one.examples(rows)
    assert list(two.column("length")) == list(one.column("length"))


def test_chat_template(tok_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    assert chat_tokenizer_or_none(tokenizer, False, "x") is None
    with pytest.raises(
        ValueError, match="config key 'data.chat_template' is true but the tokenizer in model folder M"
    ):
        chat_tokenizer_or_none(tokenizer, True, "model folder M")
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    tokenizer.chat_template += "{% if add_generation_prompt %}<assistant>{% endif %}"
    chat = chat_tokenizer_or_none(tokenizer, True, "x")
    assert render_prompt("1+2?", "Q: {prompt}", chat) == "<user>Q: 1+2?<assistant>"


def test_rows_are_sharded_round_robin_with_padding():
    group = SimpleNamespace(world_size=2)
    assert LearnerGroup.shard_rows(group, [4, 9, 1, 7]) == [[4, 1], [9, 7]]
    assert LearnerGroup.shard_rows(group, [4, 9, 1]) == [[4, 1], [9, -1]]  # -1: a padding row without loss
