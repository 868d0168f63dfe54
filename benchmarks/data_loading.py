"""Loading and tokenizing a large SFT file: time and peak memory on the controller's side until the first SFT
batch is ready, today's path (Python lists in one process) against the Arrow path (switchpoint/sft_dataset.py).

    PYTHONPATH=. .venv/bin/python benchmarks/data_loading.py --rows 1000000 --old-rows 100000

Writes a synthetic math SFT jsonl (responses of a few hundred tokens) and a byte-level BPE tokenizer trained on a
sample of it under --work, then measures each path in a fresh process (peak RSS from getrusage, the process
itself and, separately, its largest child: the map's worker processes):

- lists: what the controller did before: `load_rows` the whole file, `tokenize_sft_with_stats` every row into
  Python lists, first batch of examples. Run on --old-rows rows (a million would need tens of GB here); its
  1M-row figures are extrapolated linearly and marked so. (The driver's input check also read every row into
  Python lists, in its own process, before Ray started; not counted.)
- arrow cold: the build (stream + check rows into Arrow, `Dataset.map(batched, num_proc)`, checks, install into
  the cache), then what the controller does (open, lengths, first batch of indices) and one rank's read of its
  shard. Happens once per data file, tokenizer and settings.
- arrow warm: a later start or resume with the cache in place: hash the file (the cache key), open, first batch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, RANKS, MAX_LEN = 512, 2, 1024


def write_data(path: str, rows: int, seed: int = 0) -> None:
    """Math-style rows: a sum of 3 numbers as prompt, a worked response of ~40 steps (a few hundred tokens)."""
    rng = random.Random(seed)
    with open(path + ".tmp", "w") as f:
        for _ in range(rows):
            a, b, c = rng.randint(1, 999), rng.randint(1, 999), rng.randint(1, 999)
            steps, total = [], a
            for k in range(40):
                x = rng.randint(1, 99)
                steps.append(f"Step {k + 1}: {total} + {x} = {total + x}.")
                total += x
            row = {
                "prompt": f"Compute {a} + {b} + {c}, then keep adding. Put the final answer in \\boxed{{}}.",
                "response": " ".join(steps) + f" The answer is \\boxed{{{total}}}.",
                "answer": str(total),
            }
            f.write(json.dumps(row) + "\n")
    os.replace(path + ".tmp", path)


def build_tokenizer(folder: str, data: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sample = []
    with open(data) as f:
        for _, line in zip(range(20_000), f):
            row = json.loads(line)
            sample.append(row["prompt"] + " " + row["response"])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(sample, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.save_pretrained(folder)


def head(src: str, dst: str, rows: int) -> None:
    if os.path.isfile(dst):
        return
    with open(src) as f, open(dst + ".tmp", "w") as g:
        for _, line in zip(range(rows), f):
            g.write(line)
    os.replace(dst + ".tmp", dst)


def peak() -> dict:
    """Peak RSS of this process and of its largest child, and the CPU seconds of both (CPU time, unlike wall
    time, hardly depends on how busy a shared machine is)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return {
        "peak_rss_mib": round(own.ru_maxrss / 1024),
        "peak_child_rss_mib": round(kids.ru_maxrss / 1024),
        "cpu_s": cpu,
    }


def measure_lists(data: str, tok_dir: str) -> dict:
    from transformers import AutoTokenizer

    from actors.run_state import SFTBatches
    from switchpoint.data import load_rows, tokenize_sft_with_stats

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    base, cpu0 = peak()["peak_rss_mib"], peak()["cpu_s"]
    t0 = time.perf_counter()
    rows = load_rows(
        data,
        columns={"prompt": "prompt", "response": "response"},
        required=("prompt", "response"),
        split="sft_train",
    )
    t_load = time.perf_counter() - t0
    examples, stats = tokenize_sft_with_stats(rows, tokenizer, max_len=MAX_LEN)
    batch = [examples[i] for i in SFTBatches(len(examples), BATCH, 0).next_indices()]
    stacked = {"input_ids": [e["input_ids"] for e in batch], "loss_mask": [e["loss_mask"] for e in batch]}
    total = time.perf_counter() - t0
    tokens = sum(len(e["input_ids"]) for e in examples)
    return {
        "rows": len(rows),
        "tokens": tokens,
        "load_s": t_load,
        "total_s": total,
        "base_rss_mib": base,
        "batch_rows": len(stacked["input_ids"]),
        **peak(),
        "cpu_s": peak()["cpu_s"] - cpu0,
    }


def measure_arrow(data: str, tok_dir: str, cache: str, num_proc: int) -> dict:
    import datasets  # noqa: F401  (imported before the clock starts, as in the driver)
    import numpy as np
    import transformers  # noqa: F401

    from actors.run_state import SFTBatches
    from switchpoint.sft_dataset import SftSet, SftSetSpec, build_sft_set, cached_folder, install, is_complete

    base, cpu0 = peak()["peak_rss_mib"], peak()["cpu_s"]
    spec = SftSetSpec(
        path=data,
        split="sft_train",
        prompt_column="prompt",
        response_column="response",
        tokenizer_dir=tok_dir,
        max_len=MAX_LEN,
    )
    t0 = time.perf_counter()
    folder = cached_folder(spec, cache)
    t_key = time.perf_counter() - t0
    built = not is_complete(folder)
    if built:
        tmp, _ = build_sft_set(spec, num_proc)
        install(tmp, folder)
    t_build = time.perf_counter() - t0
    sft = SftSet(folder)
    lengths, trained = sft.column("length"), sft.trained_tokens()
    idx = SFTBatches(len(lengths), BATCH, 0).next_indices()
    global_tokens, mean_len = int(trained[idx].sum()), float(np.mean(lengths[idx]))
    total = time.perf_counter() - t0
    t1 = time.perf_counter()
    shard = sft.examples(idx[0::RANKS])  # what one learner rank reads for its half of the batch
    t_rank = time.perf_counter() - t1
    return {
        "rows": len(sft),
        "tokens": int(lengths.sum()),
        "built": built,
        "key_s": t_key,
        "build_s": t_build,
        "total_s": total,
        "rank_read_s": t_rank,
        "rank_rows": len(shard["input_ids"]),
        "base_rss_mib": base,
        "global_tokens": global_tokens,
        "mean_len": mean_len,
        **peak(),
        "cpu_s": peak()["cpu_s"] - cpu0,
    }


def run_child(kind: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the file the Arrow path loads")
    p.add_argument("--old-rows", type=int, default=100_000, help="rows today's path loads (the file's head)")
    p.add_argument("--target", type=int, default=1_000_000, help="row count the table extrapolates to")
    p.add_argument("--num-proc", type=int, default=0)
    p.add_argument("--work", default=os.path.join(REPO, "artifacts", "bench_data_loading"))
    p.add_argument("--child", nargs="+")
    a = p.parse_args()
    if a.child:
        kind, *args = a.child
        res = (
            measure_lists(*args)
            if kind == "lists"
            else measure_arrow(args[0], args[1], args[2], int(args[3]))
        )
        print(json.dumps(res))
        return
    os.makedirs(a.work, exist_ok=True)
    data = os.path.join(a.work, f"sft_{a.rows}.jsonl")
    t = time.perf_counter()
    if not os.path.isfile(data):
        write_data(data, a.rows)
    print(f"data {data}: {os.path.getsize(data) / 2**20:.0f} MiB ({time.perf_counter() - t:.0f} s to write)")
    tok_dir = os.path.join(a.work, "tokenizer")
    if not os.path.isdir(tok_dir):
        build_tokenizer(tok_dir, data)
    old = os.path.join(a.work, f"sft_{a.old_rows}.jsonl")
    head(data, old, a.old_rows)
    cache = os.path.join(a.work, "cache")
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    print(f"uptime before: {os.popen('uptime').read().strip()}", flush=True)
    results = {"arrow cold": run_child("arrow", data, tok_dir, cache, str(a.num_proc))}
    print(json.dumps(results["arrow cold"]), flush=True)
    results["arrow warm"] = run_child("arrow", data, tok_dir, cache, str(a.num_proc))
    print(json.dumps(results["arrow warm"]), flush=True)
    results["lists"] = run_child("lists", old, tok_dir)
    print(json.dumps(results["lists"]), flush=True)
    print(f"uptime after: {os.popen('uptime').read().strip()}")
    lists, cold = results["lists"], results["arrow cold"]
    scale = a.target / lists["rows"]
    print(
        f"\n{a.rows:,} SFT rows, {cold['tokens'] / a.rows:.0f} tokens a row on average, "
        f"batch {BATCH}, {RANKS} ranks\n"
    )
    print(
        "| path | rows measured | time to first batch | CPU time | peak RSS (process) | peak RSS (largest child) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("arrow cold", "arrow warm"):
        r = results[name]
        print(
            f"| {name} | {r['rows']:,} | {r['total_s']:.1f} s | {r['cpu_s']:.1f} s | {r['peak_rss_mib']} MiB | "
            f"{r['peak_child_rss_mib']} MiB |"
        )
    if a.target != a.rows:
        s = a.target / a.rows
        print(
            f"| arrow cold, {a.target:,} EXTRAPOLATED x{s:g} (time only) | (not run) | "
            f"{cold['total_s'] * s:.0f} s | {cold['cpu_s'] * s:.0f} s | - | - |"
        )
    print(
        f"| lists (today) | {lists['rows']:,} | {lists['total_s']:.1f} s | {lists['cpu_s']:.1f} s | "
        f"{lists['peak_rss_mib']} MiB | - |"
    )
    grown = lists["base_rss_mib"] + (lists["peak_rss_mib"] - lists["base_rss_mib"]) * scale
    print(
        f"| lists (today), {a.target:,} EXTRAPOLATED x{scale:g} (linear) | (not run) | "
        f"{lists['total_s'] * scale:.0f} s | {lists['cpu_s'] * scale:.0f} s | {grown:.0f} MiB | - |"
    )
    print(
        f"\none rank's read of its {results['arrow warm']['rank_rows']} rows: "
        f"{results['arrow warm']['rank_read_s'] * 1000:.0f} ms; cache key (hash of the file) "
        f"{results['arrow warm']['key_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
