"""Write the tiny data set of configs/example_own_data.yaml (examples/own_data/*.jsonl).

Source: switchpoint's own synthetic generator (switchpoint.synthetic.write_splits: multi-step arithmetic with a
programmatic expert, difficulty 1, seed 7), written as jsonl under the column names a user's data set might
use (question / solution / final_answer), so the config shows `data.columns` at work. Which columns each file
needs: docs/own-data.md. Run from the repository root:

    python examples/own_data/make_data.py
"""

from __future__ import annotations

import json
import os
import tempfile

import pyarrow.parquet as pq

from switchpoint.synthetic import write_splits

HERE = os.path.dirname(os.path.abspath(__file__))
COUNTS = {"sft_train": 48, "sft_val": 16, "rl": 32, "eval": 16}
COLUMNS = {"prompt": "question", "response": "solution", "answer": "final_answer"}
KEEP = {
    "sft_train": ("prompt", "response"),  # SFT: the prompt and the expert trajectory
    "sft_val": ("prompt", "response"),
    "rl": ("prompt", "response", "answer"),  # the response only for luffy, srft, upt, prefix_rft, relift
    "eval": ("prompt", "answer"),
}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_splits(tmp, difficulty=1, seed=7, **{f"n_{k}": v for k, v in COUNTS.items()})
        for split, path in paths.items():
            rows = pq.read_table(path).to_pylist()
            out = os.path.join(HERE, f"{split}.jsonl")
            with open(out, "w") as f:
                for row in rows:
                    f.write(json.dumps({COLUMNS[k]: row[k] for k in KEEP[split]}) + "\n")
            print(f"{out}: {len(rows)} rows")


if __name__ == "__main__":
    main()
