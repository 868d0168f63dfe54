"""Loading expert data (synthetic or real) and turning it into SFT token sequences.

Files are .jsonl / .json (one JSON object per line) or .parquet, holding a prompt, an expert
response (trajectory) and a reference answer per row, like the paper's SFT889K / Val-199 / RL62K sets.
The config names the file's columns; rows come back keyed by our field names ("prompt",
"response", "answer") with string values. Every problem with a file raises a one-line ValueError
that names the file and, for a bad row, the row and the field.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

FIELDS = ("prompt", "response", "answer")
"""Our field names; a `columns` mapping sends each to a column name of the file."""

JSONL_SUFFIXES = (".jsonl", ".json")
"""File suffixes read as one JSON object per line."""

PARQUET_SUFFIXES = (".parquet",)
"""File suffixes read with pyarrow."""


def load_rows(
    path: str | Path, *, columns: Mapping[str, str], required: Sequence[str], split: str
) -> list[dict[str, str]]:
    """Read a data file into rows keyed by our field names, every value a str (see `iter_rows`)."""
    return [row for _, row in iter_rows(path, columns=columns, required=required, split=split)]


def iter_rows(
    path: str | Path, *, columns: Mapping[str, str], required: Sequence[str], split: str
) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream a data file as (row number, row): the 1-based line of a jsonl file, the 0-based row of a parquet
    file (as errors name them); rows keyed by our field names, every value a str. The file is checked (exists,
    known extension) at the call, each row as it is read.

    `columns` maps our field names to the file's column names; a field not in `columns` is looked up
    under its own name. Each row holds every field of `required` and `columns`: required ones must be
    present and non-empty; an optional one that is absent or None becomes "". Numbers in the answer column go
    through str() (numeric reference answers); in the prompt or response column they are an error (a column
    mapped to ids or scores, not text).
    """
    path = Path(path)
    where = f"{split} file {path}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    fields = list(dict.fromkeys([*required, *columns]))
    file_columns = {field: columns.get(field, field) for field in fields}
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        records = _read_jsonl(path, where, file_columns, required)
        row_label = "line"
    elif suffix in PARQUET_SUFFIXES:
        records = _read_parquet(path, where, file_columns, required)
        row_label = "row (0-based)"
    else:
        raise ValueError(
            f"{where}: unknown extension {path.suffix!r}; expected one of "
            f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}"
        )

    return _checked_rows(records, where, row_label, fields, file_columns, required)


def _checked_rows(records, where, row_label, fields, file_columns, required):
    for row_number, record in records:
        row = {}
        for field in fields:
            value = record.get(file_columns[field])
            text = _as_text(
                value, where=f"{where}: {row_label} {row_number}, field {field!r}", numbers=field == "answer"
            )
            if field in required and not text.strip():
                raise ValueError(
                    f"{where}: {row_label} {row_number}, field {field!r} "
                    f"(column {file_columns[field]!r}) is missing or empty"
                )
            row[field] = text
        yield row_number, row


def _as_text(value: Any, *, where: str, numbers: bool = True) -> str:
    """A cell as str: strings as they are, numbers via str() when `numbers`, None as ""; anything else is an
    error."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not numbers:
            raise ValueError(
                f"{where}: expected text, got the number {value!r} (numbers are read only as answers)"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: value {value!r} is not a finite number")
        return str(value)
    raise ValueError(f"{where}: expected a string or a number, got {type(value).__name__} {value!r:.60}")


def _read_jsonl(
    path: Path, where: str, file_columns: dict[str, str], required: Sequence[str]
) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) per non-blank line."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                # utf-8-sig on line 1: a byte-order mark some editors write is not part of the JSON.
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{where}: line {line_number} is not UTF-8 text (byte {raw[error.start]:#04x} at "
                    f"column {error.start + 1}); re-encode the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: line {line_number} is not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{where}: line {line_number} is a JSON {type(record).__name__}, not an object "
                    "(the file must hold one JSON object per line)"
                )
            for field in required:
                if file_columns[field] not in record:
                    raise ValueError(
                        f"{where}: line {line_number} lacks field {field!r} (column "
                        f"{file_columns[field]!r}); keys present: {sorted(record)}"
                    )
            yield line_number, record


def _read_parquet(
    path: Path, where: str, file_columns: dict[str, str], required: Sequence[str]
) -> Iterator[tuple[int, dict]]:
    """Yield (0-based row index, record) per row, reading in batches; absent optional columns are omitted."""
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{where}: cannot read as parquet ({error})") from None
    available = parquet.schema_arrow.names
    for field in required:
        if file_columns[field] not in available:
            raise ValueError(
                f"{where}: required column {file_columns[field]!r} (field {field!r}) is missing; "
                f"columns present: {available}"
            )
    wanted = [column for column in dict.fromkeys(file_columns.values()) if column in available]
    row_index = 0
    batches = parquet.iter_batches(columns=wanted, batch_size=65_536)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as error:  # a damaged page or invalid UTF-8 surfaces only while reading
            raise ValueError(f"{where}: cannot read rows from row {row_index} on ({error})") from None
        for record in batch.to_pylist():
            yield row_index, record
            row_index += 1


def row_label(path: str | Path, index: int) -> str:
    """How `load_rows` errors name the row at `index` of the rows it returned: "line N" of a jsonl file
    (blank lines are skipped, so N is counted again), "row (0-based) N" of a parquet file."""
    path = Path(path)
    if path.suffix.lower() not in JSONL_SUFFIXES:
        return f"row (0-based) {index}"
    seen = -1
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if raw.strip():
                seen += 1
                if seen == index:
                    return f"line {line_number}"
    return f"row {index}"


def format_prompt(row: Mapping[str, str], prompt_template: str, chat_tokenizer: Any = None) -> str:
    """The prompt text the model sees: `prompt_template` with {prompt} replaced by the row's prompt; with a
    `chat_tokenizer` (data.chat_template), that text as a user turn in the tokenizer's chat template, ready for
    the assistant's answer."""
    if "prompt" not in row:
        raise ValueError(f"row has no 'prompt' field; fields present: {sorted(row)}")
    return render_prompt(row["prompt"], prompt_template, chat_tokenizer)


def render_prompt(prompt: str, prompt_template: str, chat_tokenizer: Any = None) -> str:
    """`format_prompt` for a prompt string."""
    try:
        text = prompt_template.format_map({"prompt": prompt})
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"prompt_template {prompt_template!r} is invalid ({error!r}); it may only use {{prompt}} "
            "(write literal braces as {{ and }})"
        ) from None
    if chat_tokenizer is None:
        return text
    return chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def chat_tokenizer_or_none(tokenizer: Any, chat_template: bool, where: str) -> Any:
    """The tokenizer when data.chat_template is on (a ValueError naming `where` if it has no chat template),
    else None: what `format_prompt` takes."""
    if not chat_template:
        return None
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"config key 'data.chat_template' is true but the tokenizer in {where} has no chat template "
            "(chat_template in tokenizer_config.json or chat_template.jinja); set data.chat_template false"
        )
    return tokenizer


@dataclass
class SftTokenizeStats:
    """What happened while tokenizing SFT rows."""

    n_rows: int
    """Rows given."""
    n_examples: int
    """Examples returned (one per row)."""
    n_truncated: int
    """Examples cut to max_len (their end, eos included, is lost)."""


def tokenize_sft_with_stats(
    rows: Sequence[Mapping[str, str]], tokenizer: Any, *, max_len: int, prompt_template: str = "{prompt}"
) -> tuple[list[dict[str, list[int]]], SftTokenizeStats]:
    """Like `tokenize_sft`, also returning the truncation counts."""
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
    if "{prompt}" not in prompt_template:
        raise ValueError(f"prompt_template {prompt_template!r} must contain {{prompt}}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos token; SFT targets end with eos")

    examples = []
    n_truncated = 0
    for index, row in enumerate(rows):
        if not row.get("response"):
            raise ValueError(f"SFT row {index} has no 'response' field or it is empty")
        # Prompt and response are encoded separately, as at RL time where the prompt is encoded alone.
        prompt_ids = tokenizer.encode(format_prompt(row, prompt_template), add_special_tokens=False)
        response_ids = [*tokenizer.encode(row["response"], add_special_tokens=False), eos_id]
        input_ids = prompt_ids + response_ids
        loss_mask = [0] * len(prompt_ids) + [1] * len(response_ids)
        if len(prompt_ids) >= max_len:
            # Cutting would leave no response token: a silent drop would hide a wrong max_len or template.
            raise ValueError(
                f"SFT row {index}: the prompt alone is {len(prompt_ids)} tokens, max_len is {max_len}; "
                "no response token would be trained on"
            )
        if len(input_ids) > max_len:
            n_truncated += 1
            input_ids, loss_mask = input_ids[:max_len], loss_mask[:max_len]
        examples.append({"input_ids": input_ids, "loss_mask": loss_mask})

    stats = SftTokenizeStats(n_rows=len(rows), n_examples=len(examples), n_truncated=n_truncated)
    if rows and n_truncated == len(rows):
        raise ValueError(f"all {len(rows)} SFT examples are longer than max_len={max_len}; raise max_len")
    if n_truncated:
        logger.warning(
            "tokenize_sft: %d of %d examples truncated to max_len=%d (their ends, eos included, are not trained on)",
            n_truncated,
            len(rows),
            max_len,
        )
    return examples, stats


def tokenize_sft(
    rows: Sequence[Mapping[str, str]], tokenizer: Any, *, max_len: int, prompt_template: str = "{prompt}"
) -> list[dict[str, list[int]]]:
    """Token ids and loss masks for SFT: template(prompt) + response + eos, loss on response and eos only.

    Sequences longer than max_len are cut at max_len (counted and logged). Raises ValueError naming the row
    when a prompt alone fills max_len, and when every row is too long.
    """
    examples, _ = tokenize_sft_with_stats(rows, tokenizer, max_len=max_len, prompt_template=prompt_template)
    return examples
