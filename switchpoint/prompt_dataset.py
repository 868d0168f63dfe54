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

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass

import pyarrow as pa

from switchpoint.data import iter_rows, render_prompt
from switchpoint.sft_dataset import (
    META_FILE,
    SMALL_SET_ROWS,
    TOKENIZER_FILES,
    _hash_file,
    _row_label,
    _tokenizer,
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
    digest = hashlib.sha256(f"prompts-v{FORMAT_VERSION}".encode())
    settings = {k: v for k, v in asdict(spec).items() if k not in ("path", "tokenizer_dir")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    _hash_file(digest, spec.path)
    for name in TOKENIZER_FILES:
        file = os.path.join(spec.tokenizer_dir, name)
        if os.path.isfile(file):
            digest.update(name.encode())
            _hash_file(digest, file)
    return digest.hexdigest()[:16]


def cached_folder(spec: PromptSetSpec, cache_dir: str) -> str:
    return os.path.join(cache_dir, f"{spec.split}-{cache_key(spec)}")


class PromptSet:
    """An opened prompt set: rows memory-mapped from the cache folder's Arrow files (pyarrow alone)."""

    def __init__(self, folder: str):
        self.folder = folder
        with open(os.path.join(folder, META_FILE)) as f:
            self.meta = json.load(f)
        tables = [
            pa.ipc.open_stream(pa.memory_map(os.path.join(folder, name))).read_all()
            for name in self.meta["files"]
        ]
        self.table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]

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
    from datasets import Dataset, Features, Sequence, Value, disable_progress_bars

    disable_progress_bars()
    tmp = tempfile.mkdtemp(prefix=f"switchpoint-{spec.split}-")
    try:
        n_rows = _write_raw(spec, os.path.join(tmp, "raw.arrow"))
        if n_rows == 0:
            raise ValueError(f"data split {spec.split!r} at {spec.path} has no rows")
        raw = Dataset.from_file(os.path.join(tmp, "raw.arrow"), in_memory=False)
        procs = num_proc or min(8, os.cpu_count() or 1)
        procs = 1 if n_rows < SMALL_SET_ROWS else min(procs, n_rows // 1000)
        if procs > 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        kept = {"answer": Value("string"), "row": Value("int64")}
        if spec.with_response:
            kept["response"] = Value("string")
        features = Features({**kept, "prompt_ids": Sequence(Value("int32")), "prompt_len": Value("int32")})
        tokens = raw.map(
            tokenize_prompts,
            batched=True,
            batch_size=1000,
            num_proc=procs if procs > 1 else None,
            remove_columns=["prompt"],
            fn_kwargs={"spec": asdict(spec)},
            features=features,
            cache_file_name=os.path.join(tmp, "tokens.arrow"),
            new_fingerprint=_map_fingerprint(spec),
            keep_in_memory=False,
        )
        meta = {
            "format": FORMAT_VERSION,
            "files": [os.path.basename(f["filename"]) for f in tokens.cache_files],
            "rows": n_rows,
            "max_prompt_len": int(tokens.data.column("prompt_len").to_numpy().max()),
            "source": spec.path,
            "spec": asdict(spec),
        }
        del raw, tokens
        os.remove(os.path.join(tmp, "raw.arrow"))
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f)
        return tmp, meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _map_fingerprint(spec: PromptSetSpec) -> str:
    """datasets' fingerprint of the map result (given, so it does not hash the function and its arguments)."""
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:16]


def check_fits_model(folder: str, split: str, max_positions: int, model_path: str) -> None:
    """A prompt vLLM cannot generate for (as long as the model's positions, or longer) is named by its row."""
    import numpy as np

    prompts = PromptSet(folder)
    lengths = prompts.column("prompt_len")
    bad = np.flatnonzero(lengths >= max_positions)
    if bad.size:
        i = int(bad[0])
        number = int(prompts.table.column("row")[i].as_py())
        raise ValueError(
            f"{split} file {prompts.path}: {_row_label(prompts.path, number)}: the prompt is {int(lengths[i])} "
            f"tokens, the model takes {max_positions} (max_position_embeddings of {model_path}), so vLLM cannot "
            "generate for it; shorten or drop the row"
        )
