"""Tokenized SFT sets as cached Arrow files (Hugging Face `datasets`): built once per file content and settings,
memory-mapped by every reader.

A build streams the data file through `iter_rows` (the same checks and one-line errors naming file, row and
field as `load_rows`) into an Arrow file, tokenizes it with `Dataset.map(batched=True, num_proc=N)` and checks
the result (a prompt that alone fills max_len is named by its row). The folder then moves to
CACHE_DIR/SPLIT-KEY, KEY a hash of the file's bytes, the tokenizer's files and every setting that changes the
tokens, so the next run with the same inputs starts from it. The controller keeps only the per-row lengths and
trained-token counts (8 bytes a row); learner ranks open the same files (memory-mapped) and read their rows of
each batch by index.

Each stored row: `input_ids` (prompt + response + eos, cut at max_len), `prompt_len` (leading tokens without
loss), `length`, `truncated`, and `row` (the file's line, or 0-based row of a parquet file, for messages).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from switchpoint.data import JSONL_SUFFIXES, iter_rows, render_prompt

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped when the stored layout or the tokenization changes, so older cache folders are not read."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
"""Files of a model folder that can change the tokens (hashed into the cache key)."""

META_FILE = "meta.json"
SMALL_SET_ROWS = 20_000
"""Below this many rows one process tokenizes (starting workers would cost more than it saves)."""


@dataclass
class SftSetSpec:
    """Everything that decides an SFT set's tokens."""

    path: str
    """The data file (.jsonl / .json / .parquet)."""
    split: str
    """Split name for messages and the cache folder (sft_train, sft_val)."""
    prompt_column: str
    """The file's column holding the prompt."""
    response_column: str
    """The file's column holding the expert response."""
    tokenizer_dir: str
    """Model folder whose tokenizer is used."""
    max_len: int
    """Longest sequence kept (longer ones are cut, as `tokenize_sft` does)."""
    prompt_template: str = "{prompt}"
    """Python format string around the prompt (data.prompt_template)."""
    chat_template: bool = False
    """Wrap the templated prompt in the tokenizer's chat template as a user turn (data.chat_template)."""


def _hash_file(digest, path: str) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)


def cache_key(spec: SftSetSpec) -> str:
    """Hash of the data file's bytes, the tokenizer's files and the settings (not the file's path or time)."""
    return spec_key(spec, f"v{FORMAT_VERSION}")


def spec_key(spec, version: str) -> str:
    """A cache key for any set spec (a dataclass with `path` and `tokenizer_dir`): version tag, every other
    setting, the data file's bytes and the tokenizer's files."""
    digest = hashlib.sha256(version.encode())
    settings = {k: v for k, v in asdict(spec).items() if k not in ("path", "tokenizer_dir")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    _hash_file(digest, spec.path)
    for name in TOKENIZER_FILES:
        file = os.path.join(spec.tokenizer_dir, name)
        if os.path.isfile(file):
            digest.update(name.encode())
            _hash_file(digest, file)
    return digest.hexdigest()[:16]


def open_folder(folder: str) -> tuple[dict, pa.Table]:
    """A cache folder's meta.json and its Arrow files as one memory-mapped table (pyarrow alone)."""
    with open(os.path.join(folder, META_FILE)) as f:
        meta = json.load(f)
    tables = [
        pa.ipc.open_stream(pa.memory_map(os.path.join(folder, name))).read_all() for name in meta["files"]
    ]
    return meta, pa.concat_tables(tables) if len(tables) > 1 else tables[0]


class SftSet:
    """An opened tokenized set: rows memory-mapped from the cache folder's Arrow files (read with pyarrow alone,
    so the controller and the learner ranks never import `datasets`)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.meta, self.table = open_folder(folder)

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str):
        """A numeric column as a numpy array (lengths, prompt_len: 4 bytes a row)."""
        return self.table.column(name).to_numpy()

    def trained_tokens(self):
        """Per row, the tokens the SFT loss counts: response and eos within max_len (position 0 never has a
        target, as the learner's shifted loss has it)."""
        import numpy as np

        return self.column("length") - np.maximum(self.column("prompt_len"), 1)

    def examples(self, indices: list[int]) -> dict[str, list[list[int]]]:
        """input_ids and loss_mask lists of these rows, in this order (what LearnerRank.train_step takes)."""
        if not indices:
            return {"input_ids": [], "loss_mask": []}
        # Row by row: Table.take would first join the chunks of the whole column (a copy of every token).
        ids, prompt_len, length = (self.table.column(c) for c in ("input_ids", "prompt_len", "length"))
        rows = {"input_ids": [ids[i].as_py() for i in indices]}
        shape = [(prompt_len[i].as_py(), length[i].as_py()) for i in indices]
        masks = [[0] * p + [1] * (n - p) for p, n in shape]
        return {"input_ids": rows["input_ids"], "loss_mask": masks}


def _row_label(path: str, number: int) -> str:
    return f"line {number}" if Path(path).suffix.lower() in JSONL_SUFFIXES else f"row (0-based) {number}"


def _write_raw(spec: SftSetSpec, out: str, batch_rows: int = 8192) -> int:
    """Stream the file's checked rows into an Arrow file (prompt, response, row number); returns the row count."""
    schema = pa.schema([("prompt", pa.string()), ("response", pa.string()), ("row", pa.int64())])
    rows = iter_rows(
        spec.path,
        columns={"prompt": spec.prompt_column, "response": spec.response_column},
        required=("prompt", "response"),
        split=spec.split,
    )
    n = 0
    with pa.OSFile(out, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        prompts, responses, numbers = [], [], []
        for number, row in rows:
            prompts.append(row["prompt"])
            responses.append(row["response"])
            numbers.append(number)
            if len(prompts) == batch_rows:
                writer.write_batch(pa.record_batch([prompts, responses, numbers], schema=schema))
                n += len(prompts)
                prompts, responses, numbers = [], [], []
        if prompts or not n:
            writer.write_batch(pa.record_batch([prompts, responses, numbers], schema=schema))
            n += len(prompts)
    return n


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(folder: str):
    if folder not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[folder] = AutoTokenizer.from_pretrained(folder)
    return _TOKENIZERS[folder]


def tokenize_batch(batch: dict, *, spec: dict) -> dict:
    """datasets.map function: template(prompt) + response + eos, cut at max_len; the prompt is encoded alone,
    as at RL time. Module level so worker processes can run it."""
    tokenizer = _tokenizer(spec["tokenizer_dir"])
    prompts = [
        render_prompt(p, spec["prompt_template"], tokenizer if spec["chat_template"] else None)
        for p in batch["prompt"]
    ]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(batch["response"], add_special_tokens=False)["input_ids"]
    eos, max_len = tokenizer.eos_token_id, spec["max_len"]
    out: dict[str, list] = {"input_ids": [], "prompt_len": [], "length": [], "truncated": []}
    for p, r in zip(prompt_ids, response_ids):
        ids = p + r
        ids.append(eos)
        cut = len(ids) > max_len
        ids = ids[:max_len]
        out["input_ids"].append(ids)
        out["prompt_len"].append(len(p))
        out["length"].append(len(ids))
        out["truncated"].append(cut)
    return out


def build_set(
    spec, write_raw, tokenize, columns: dict, dropped: list[str], summarize, version: int, num_proc: int
):
    """The build every set shares: rows checked into raw.arrow in a new folder under the system temp dir
    (`write_raw(spec, path) -> rows`), tokenized by a batched `datasets` map (worker processes for large files)
    into `columns`, `summarize(tokens)` added to meta.json (it may raise on what it finds). Returns (folder, meta);
    the folder is removed on any error. `install` moves it into the cache."""
    from datasets import Dataset, Features, disable_progress_bars

    disable_progress_bars()  # a run's console shows its own progress; the map's bars would bury it
    tmp = tempfile.mkdtemp(prefix=f"switchpoint-{spec.split}-")
    try:
        n_rows = write_raw(spec, os.path.join(tmp, "raw.arrow"))
        if n_rows == 0:
            raise ValueError(f"data split {spec.split!r} at {spec.path} has no rows")
        raw = Dataset.from_file(os.path.join(tmp, "raw.arrow"), in_memory=False)
        procs = num_proc or min(8, os.cpu_count() or 1)
        procs = 1 if n_rows < SMALL_SET_ROWS else min(procs, n_rows // 1000)
        if procs > 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # each worker encodes on one thread
        tokens = raw.map(
            tokenize,
            batched=True,
            batch_size=1000,
            num_proc=procs if procs > 1 else None,
            remove_columns=dropped,
            fn_kwargs={"spec": asdict(spec)},
            features=Features(columns),
            cache_file_name=os.path.join(tmp, "tokens.arrow"),
            # Given, so datasets does not hash the function and its arguments.
            new_fingerprint=hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[
                :16
            ],
            keep_in_memory=False,
        )
        meta = {
            "format": version,
            "files": [os.path.basename(f["filename"]) for f in tokens.cache_files],
            "rows": n_rows,
            **summarize(tokens),
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


def build_sft_set(spec: SftSetSpec, num_proc: int = 0) -> tuple[str, dict]:
    """Tokenize spec's file into a new folder under the system temp dir; returns (folder, meta). Bad rows raise
    one ValueError naming the file and row. `install` moves the folder into the cache."""
    from datasets import Sequence, Value

    if _tokenizer(spec.tokenizer_dir).eos_token_id is None:
        raise ValueError(f"the tokenizer in {spec.tokenizer_dir} has no eos token; SFT targets end with eos")

    def summarize(tokens) -> dict:
        _check(spec, tokens)
        return {
            "truncated": int(tokens.data.column("truncated").to_numpy(zero_copy_only=False).sum()),
            "tokens": int(tokens.data.column("length").to_numpy().sum()),
        }

    columns = {
        "row": Value("int64"),
        "input_ids": Sequence(Value("int32")),
        "prompt_len": Value("int32"),
        "length": Value("int32"),
        "truncated": Value("bool"),
    }
    tmp, meta = build_set(
        spec, _write_raw, tokenize_batch, columns, ["prompt", "response"], summarize, FORMAT_VERSION, num_proc
    )
    if meta["truncated"]:
        logger.warning(
            "%s: %d of %d examples truncated to max_len=%d (their ends, eos included, are not trained on)",
            spec.split,
            meta["truncated"],
            meta["rows"],
            spec.max_len,
        )
    return tmp, meta


def first_too_long(table, path: str, limit: int) -> tuple[int, str] | None:
    """(prompt length, "line N"/"row N" of the file) of the first row whose prompt_len is >= limit, or None."""
    import numpy as np

    lengths = table.column("prompt_len").to_numpy()
    bad = np.flatnonzero(lengths >= limit)
    if not bad.size:
        return None
    i = int(bad[0])
    return int(lengths[i]), _row_label(path, int(table.column("row")[i].as_py()))


def _check(spec: SftSetSpec, tokens) -> None:
    """A prompt that alone fills max_len (no response token to train on) names its row; all rows cut too."""

    too_long = first_too_long(tokens.data, spec.path, spec.max_len)
    if too_long:
        length, where = too_long
        raise ValueError(
            f"{spec.split} file {spec.path}: {where}: the prompt alone is "
            f"{length} tokens and config key 'data.max_len' is {spec.max_len}, so no response token "
            "would be trained on; raise data.max_len or shorten the prompt"
        )
    if bool(tokens.data.column("truncated").to_numpy(zero_copy_only=False).all()):
        raise ValueError(
            f"{spec.split} file {spec.path}: all {len(tokens)} examples are longer than config key "
            f"'data.max_len' ({spec.max_len}); raise data.max_len"
        )


def cached_folder(spec: SftSetSpec, cache_dir: str) -> str:
    """Where spec's set lives in the cache (complete once its meta.json is there)."""
    return os.path.join(cache_dir, f"{spec.split}-{cache_key(spec)}")


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, META_FILE))


def install(built: str, folder: str) -> str:
    """Move a built set into its cache folder (a concurrent run that got there first wins; ours is dropped)."""
    if is_complete(folder):
        shutil.rmtree(built, ignore_errors=True)
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = f"{folder}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.move(built, staging)  # a rename on the same filesystem, a copy otherwise
    try:
        os.rename(staging, folder)
    except OSError:  # another run installed the same set meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return folder
