"""RL and held-out prompt sets as cached Arrow files, built like the SFT sets (switchpoint/sft_dataset.py).

A build streams the file through `iter_rows` (the same checks and one-line errors naming file, row and field as
`load_rows`) into an Arrow file and tokenizes the prompts in a batched `Dataset.map`: prompt_template, then the
tokenizer's chat template when data.chat_template is on, encoded without special tokens, exactly as the RL step
encoded each row before. The folder is installed as CACHE_DIR/SPLIT-KEY (KEY over the file's bytes, the
tokenizer's files and the settings that change the tokens). The controller keeps the row count and its sampling
order; it reads the rows of a step from the memory-mapped table by index (`PromptSet.rows`).

Each stored row: `prompt_ids` (the templated prompt's token ids), `prompt_len`, `answer` (reference answer as
text), `response` (the expert trajectory, only in sets built `with_response`), `row` (the file's line, or
0-based row of a parquet file, for messages).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa

from switchpoint.data import iter_rows, render_prompt
from switchpoint.sft_dataset import (
    _tokenizer,
    build_set,
    first_too_long,
    open_folder,
    spec_key,
)

FORMAT_VERSION = 1
"""Bumped when the stored layout or the tokenization changes, so older cache folders are not read."""


@dataclass
class PromptSetSpec:
    """Everything that decides a prompt set's rows and tokens."""

    path: str
    """The data file (.jsonl / .json / .parquet)."""
    split: str
    """Split name for messages and the cache folder (rl, eval)."""
    prompt_column: str
    """The file's column holding the prompt."""
    answer_column: str
    """The file's column holding the reference answer."""
    response_column: str
    """The file's column holding the expert trajectory (read only `with_response`)."""
    tokenizer_dir: str
    """Model folder whose tokenizer is used."""
    with_response: bool = False
    """Read and keep the expert trajectory (required, non-empty): objectives that put it in RL groups."""
    prompt_template: str = "{prompt}"
    """Python format string around the prompt (data.prompt_template)."""
    chat_template: bool = False
    """Wrap the templated prompt in the tokenizer's chat template as a user turn (data.chat_template)."""


def cache_key(spec: PromptSetSpec) -> str:
    """Hash of the data file's bytes, the tokenizer's files and the settings (not the file's path or time)."""
    return spec_key(spec, f"prompts-v{FORMAT_VERSION}")


def cached_folder(spec: PromptSetSpec, cache_dir: str) -> str:
    return os.path.join(cache_dir, f"{spec.split}-{cache_key(spec)}")


class PromptSet:
    """An opened prompt set: rows memory-mapped from the cache folder's Arrow files (pyarrow alone)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.meta, self.table = open_folder(folder)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def path(self) -> str:
        return self.meta["source"]

    def column(self, name: str):
        """A numeric column as a numpy array (prompt_len, row: a few bytes a row)."""
        return self.table.column(name).to_numpy()

    def rows(self, indices) -> list[dict]:
        """These rows, in this order, as {"prompt_ids", "answer", "response"} ("" without an expert)."""
        # Row by row: Table.take would first join the chunks of the whole column (a copy of every token).
        ids, answer = self.table.column("prompt_ids"), self.table.column("answer")
        response = self.table.column("response") if "response" in self.table.column_names else None
        return [
            {
                "prompt_ids": ids[i].as_py(),
                "answer": answer[i].as_py(),
                "response": response[i].as_py() if response is not None else "",
            }
            for i in (int(i) for i in indices)
        ]


def _write_raw(spec: PromptSetSpec, out: str, batch_rows: int = 8192) -> int:
    """Stream the file's checked rows into an Arrow file; returns the row count."""
    fields = ["prompt", "answer"] + (["response"] if spec.with_response else [])
    columns = {"prompt": spec.prompt_column, "answer": spec.answer_column, "response": spec.response_column}
    schema = pa.schema([(f, pa.string()) for f in fields] + [("row", pa.int64())])
    rows = iter_rows(
        spec.path, columns={f: columns[f] for f in fields}, required=tuple(fields), split=spec.split
    )
    n = 0
    with pa.OSFile(out, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        batch: dict[str, list] = {name: [] for name in schema.names}

        def flush():
            writer.write_batch(pa.record_batch([batch[name] for name in schema.names], schema=schema))
            for values in batch.values():
                values.clear()

        for number, row in rows:
            for f in fields:
                batch[f].append(row[f])
            batch["row"].append(number)
            if len(batch["row"]) == batch_rows:
                n += batch_rows
                flush()
        if batch["row"] or not n:
            n += len(batch["row"])
            flush()
    return n


def tokenize_prompts(batch: dict, *, spec: dict) -> dict:
    """datasets.map function: template (and chat template) around each prompt, encoded without special tokens.
    Module level so worker processes can run it."""
    tokenizer = _tokenizer(spec["tokenizer_dir"])
    chat = tokenizer if spec["chat_template"] else None
    texts = [render_prompt(p, spec["prompt_template"], chat) for p in batch["prompt"]]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return {"prompt_ids": ids, "prompt_len": [len(p) for p in ids]}


def build_prompt_set(spec: PromptSetSpec, num_proc: int = 0) -> tuple[str, dict]:
    """Check and tokenize spec's file into a new folder under the system temp dir; returns (folder, meta). Bad rows
    raise one ValueError naming the file and row. `sft_dataset.install` moves the folder into the cache."""
    from datasets import Sequence, Value

    columns = {"answer": Value("string"), "row": Value("int64")}
    if spec.with_response:
        columns["response"] = Value("string")
    columns.update(prompt_ids=Sequence(Value("int32")), prompt_len=Value("int32"))

    def summarize(tokens) -> dict:
        return {"max_prompt_len": int(tokens.data.column("prompt_len").to_numpy().max())}

    return build_set(
        spec, _write_raw, tokenize_prompts, columns, ["prompt"], summarize, FORMAT_VERSION, num_proc
    )


def check_fits_model(folder: str, split: str, max_positions: int, model_path: str) -> None:
    """A prompt vLLM cannot generate for (as long as the model's positions, or longer) is named by its row."""
    prompts = PromptSet(folder)
    too_long = first_too_long(prompts.table, prompts.path, max_positions)
    if too_long:
        length, where = too_long
        raise ValueError(
            f"{split} file {prompts.path}: {where}: the prompt is {length} "
            f"tokens, the model takes {max_positions} (max_position_embeddings of {model_path}), so vLLM cannot "
            "generate for it; shorten or drop the row"
        )
