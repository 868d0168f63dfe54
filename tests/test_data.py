"""Tests for loading expert data files and building SFT token sequences."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from switchpoint.data import format_prompt, load_rows, row_label, tokenize_sft, tokenize_sft_with_stats
from switchpoint.synthetic import write_splits
from switchpoint.tiny_model import build_tokenizer

OURS = {"prompt": "prompt", "response": "response", "answer": "answer"}
REQUIRED = ("prompt", "response", "answer")


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_loads_synthetic_parquet(tmp_path):
    paths = write_splits(tmp_path, difficulty=1, n_sft_train=20, n_sft_val=5, n_rl=5, n_eval=5, seed=0)
    rows = load_rows(paths["sft_train"], columns=OURS, required=REQUIRED, split="sft_train")
    assert rows == pq.read_table(paths["sft_train"]).to_pylist()


def test_jsonl_with_renamed_columns_and_numeric_answer(tmp_path):
    path = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            json.dumps(
                {"question": "Compute 1+2.", "trajectory": " 1+2=3. Answer: 3", "gt": 3, "extra": [1]}
            ),
            "",  # blank lines are skipped
            json.dumps({"question": "Half?", "trajectory": "Answer: 0.5", "gt": 0.5}),
        ],
    )
    columns = {"prompt": "question", "response": "trajectory", "answer": "gt"}
    rows = load_rows(path, columns=columns, required=REQUIRED, split="sft")
    assert rows == [
        {"prompt": "Compute 1+2.", "response": " 1+2=3. Answer: 3", "answer": "3"},
        {"prompt": "Half?", "response": "Answer: 0.5", "answer": "0.5"},
    ]


def test_optional_fields_default_to_empty(tmp_path):
    path = write_jsonl(tmp_path / "rl.jsonl", [json.dumps({"prompt": "p", "answer": "1"})])
    rows = load_rows(path, columns=OURS, required=("prompt", "answer"), split="rl")
    assert rows == [{"prompt": "p", "response": "", "answer": "1"}]
    table = pa.table({"problem": ["p"], "solution": ["7"]})
    pq.write_table(table, tmp_path / "rl.parquet")
    rows = load_rows(
        tmp_path / "rl.parquet",
        columns={"prompt": "problem", "answer": "solution", "response": "r"},
        required=("prompt", "answer"),
        split="rl",
    )
    assert rows == [{"prompt": "p", "response": "", "answer": "7"}]


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValueError, match="no such file") as error:
        load_rows(missing, columns=OURS, required=REQUIRED, split="sft_train")
    assert str(missing) in str(error.value) and "sft_train" in str(error.value)


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,response,answer\n")
    with pytest.raises(ValueError, match=r"unknown extension '\.csv'"):
        load_rows(path, columns=OURS, required=REQUIRED, split="eval")


def test_missing_parquet_column_names_file_column_and_present(tmp_path):
    path = tmp_path / "val.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "response": ["r"]}), path)
    with pytest.raises(ValueError) as error:
        load_rows(path, columns=OURS, required=REQUIRED, split="sft_val")
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and "'answer'" in message and "['prompt', 'response']" in message


def test_missing_jsonl_field_names_line_and_field(tmp_path):
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [json.dumps({"prompt": "p", "response": "r", "answer": "1"}), json.dumps({"prompt": "q"})],
    )
    with pytest.raises(ValueError, match=r"line 2 lacks field 'response'"):
        load_rows(path, columns=OURS, required=REQUIRED, split="sft_train")


def test_bad_json_on_line_3(tmp_path):
    good = json.dumps({"prompt": "p", "response": "r", "answer": "1"})
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, '{"prompt": "p", "response": ', good])
    with pytest.raises(ValueError) as error:
        load_rows(path, columns=OURS, required=REQUIRED, split="sft_train")
    message = str(error.value)
    assert "line 3" in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize(
    "line, pattern",
    [
        ('["not", "an", "object"]', r"line 1 is a JSON list, not an object"),
        ('{"prompt": "p", "response": "r", "answer": ""}', r"line 1, field 'answer'.*empty"),
        ('{"prompt": "p", "response": "r", "answer": null}', r"line 1, field 'answer'.*empty"),
        ('{"prompt": "p", "response": "  ", "answer": "1"}', r"line 1, field 'response'.*empty"),
        ('{"prompt": {"a": 1}, "response": "r", "answer": "1"}', r"line 1, field 'prompt'.*dict"),
        ('{"prompt": "p", "response": "r", "answer": true}', r"line 1, field 'answer'.*bool"),
        ('{"prompt": 5, "response": "r", "answer": "1"}', r"line 1, field 'prompt'.*expected text.*number 5"),
        ('{"prompt": "p", "response": 2.5, "answer": "1"}', r"line 1, field 'response'.*number 2.5"),
    ],
)
def test_malformed_jsonl_rows(tmp_path, line, pattern):
    path = write_jsonl(tmp_path / "m.jsonl", [line])
    with pytest.raises(ValueError, match=pattern):
        load_rows(path, columns=OURS, required=REQUIRED, split="sft_train")


def test_empty_answer_in_parquet_names_the_row(tmp_path):
    path = tmp_path / "rl.parquet"
    table = pa.table({"prompt": ["a", "b", "c"], "response": ["r", "r", "r"], "answer": ["1", "2", ""]})
    pq.write_table(table, path)
    with pytest.raises(ValueError) as error:
        load_rows(path, columns=OURS, required=REQUIRED, split="rl")
    message = str(error.value)
    assert "row (0-based) 2" in message and "'answer'" in message and str(path) in message


def test_numeric_parquet_answers_become_strings(tmp_path):
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": [18, -3]}), path)
    rows = load_rows(
        path, columns={"prompt": "prompt", "answer": "answer"}, required=("prompt", "answer"), split="eval"
    )
    assert [row["answer"] for row in rows] == ["18", "-3"]


def test_format_prompt():
    assert format_prompt({"prompt": "Compute 1+2."}, "Q: {prompt}\nA:") == "Q: Compute 1+2.\nA:"
    assert format_prompt({"prompt": "{x}"}, "{prompt}") == "{x}"  # braces in the prompt are kept
    with pytest.raises(ValueError, match="prompt_template"):
        format_prompt({"prompt": "p"}, "{prompt} {answer}")


def test_tokenize_sft_masks_the_response_and_eos_only():
    tokenizer = build_tokenizer()
    rows = [{"prompt": "Compute 1+2.", "response": " 1+2=3. Answer: 3", "answer": "3"}]
    [example] = tokenize_sft(rows, tokenizer, max_len=64, prompt_template="Q: {prompt}")
    prompt_len = len("Q: Compute 1+2.")
    response_len = len(" 1+2=3. Answer: 3")
    assert len(example["input_ids"]) == prompt_len + response_len + 1
    assert example["loss_mask"] == [0] * prompt_len + [1] * (response_len + 1)
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example["input_ids"][:-1]) == "Q: Compute 1+2. 1+2=3. Answer: 3"
    supervised = [t for t, m in zip(example["input_ids"], example["loss_mask"]) if m]
    assert tokenizer.decode(supervised, skip_special_tokens=True) == " 1+2=3. Answer: 3"


def test_tokenize_sft_truncates_and_counts(caplog):
    tokenizer = build_tokenizer()
    rows = [
        {"prompt": "abc", "response": "de"},  # 3 + 2 + eos = 6 tokens: fits
        {"prompt": "abcd", "response": "efgh"},  # 9 tokens: truncated to 6, keeps "ef"
        {"prompt": "abcde", "response": "xyz"},  # 9 tokens: truncated to 6, keeps "x"
    ]
    with caplog.at_level(logging.WARNING, logger="switchpoint.data"):
        examples, stats = tokenize_sft_with_stats(rows, tokenizer, max_len=6)
    assert (stats.n_rows, stats.n_examples, stats.n_truncated) == (3, 3, 2)
    assert "2 of 3 examples truncated" in caplog.text
    assert all(len(example["input_ids"]) <= 6 for example in examples)
    assert examples[1]["loss_mask"] == [0, 0, 0, 0, 1, 1]
    assert tokenizer.decode(examples[1]["input_ids"]) == "abcdef"


@pytest.mark.parametrize("prompt", ["abcdef", "abcdefgh"])  # exactly max_len, and longer
def test_tokenize_sft_names_a_row_whose_prompt_alone_fills_max_len(prompt):
    tokenizer = build_tokenizer()
    rows = [{"prompt": "abc", "response": "de"}, {"prompt": prompt, "response": "x"}]
    with pytest.raises(
        ValueError, match=rf"SFT row 1: the prompt alone is {len(prompt)} tokens, max_len is 6"
    ):
        tokenize_sft_with_stats(rows, tokenizer, max_len=6)


def test_tokenize_sft_refuses_when_everything_is_truncated():
    tokenizer = build_tokenizer()
    rows = [{"prompt": "abc", "response": "ghij"}] * 3  # 8 tokens each, the prompt alone fits
    with pytest.raises(ValueError, match="max_len=5"):
        tokenize_sft(rows, tokenizer, max_len=5)
    with pytest.raises(ValueError, match="max_len"):
        tokenize_sft(rows, tokenizer, max_len=1)
    with pytest.raises(ValueError, match="response"):
        tokenize_sft([{"prompt": "p", "response": ""}], tokenizer, max_len=16)


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    good = json.dumps({"prompt": "p", "response": "r", "answer": "1"}).encode()
    path.write_bytes(good + b"\n" + b'{"prompt": "caf\xe9", "response": "r", "answer": "1"}\n')
    with pytest.raises(ValueError) as error:
        load_rows(path, columns=OURS, required=REQUIRED, split="sft_train")
    message = str(error.value)
    assert str(path) in message and "line 2 is not UTF-8" in message and "0xe9" in message


def test_utf8_bom_on_line_one_is_accepted(tmp_path):
    path = tmp_path / "rl.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "p", "answer": "1"}).encode() + b"\n")
    assert load_rows(path, columns=OURS, required=("prompt", "answer"), split="rl")[0]["prompt"] == "p"


def test_row_label_counts_jsonl_lines_past_blank_ones(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ["{}", "", "{}", "{}"])
    assert [row_label(path, i) for i in range(3)] == ["line 1", "line 3", "line 4"]
    assert row_label(tmp_path / "a.parquet", 5) == "row (0-based) 5"
