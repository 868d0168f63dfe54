"""Loading an RL prompt file on the controller's side: the list path (every row a Python dict, as the Controller
held them before) against the Arrow prompt sets (switchpoint/prompt_dataset.py), up to the first RL step's rows.

    PYTHONPATH=. .venv/bin/python benchmarks/rl_loading.py --rows 100000

Writes math-style jsonl (a prompt, an answer and a worked expert response of a few hundred tokens a row) and a
byte-level BPE tokenizer (benchmarks/data_loading.py's) under --work, then measures each path in a fresh process:
time, peak RSS (getrusage) and the RSS still held after the load (anonymous memory, and file pages of the
memory-mapped Arrow files, which the kernel can drop), each less the process's RSS after its imports.

- lists: `load_splits` (rl and eval rows as dicts), the sampler over them, the first step's prompts encoded (the
  old RLStepper encoded each drawn row).
- arrow cold: build (stream + check rows, batched tokenizing map) and install the RL and eval sets, open them,
  RLStepper over them, the first step's rows read by index (in a run the driver builds them before Ray starts).
- arrow warm: a later start or resume: hash the files (cache keys), open, RLStepper, first step's rows.

Both are run with rl.algorithm dapo (prompt and answer) and luffy (the expert response kept as well).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS_PER_STEP = 32


def rss() -> dict:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    kib = {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")}
    return {"rss": kib["VmRSS"] / 1024, "anon": kib["RssAnon"] / 1024, "file": kib["RssFile"] / 1024}


def config(work: str, algorithm: str, rl: str, ev: str):
    from switchpoint.config import from_dict

    return from_dict(
        {
            "data": {"source": "files", "sft_train_path": rl, "sft_val_path": rl, "rl_path": rl, "eval_path": ev,
                     "cache_dir": os.path.join(work, "cache")},
            "rl": {"algorithm": algorithm, "prompts_per_step": PROMPTS_PER_STEP},
        }
    )  # fmt: skip


def measure(kind: str, work: str, algorithm: str, rl: str, ev: str, tok_dir: str) -> dict:
    import datasets  # noqa: F401  (imported before the clock starts, as in the controller)
    import numpy as np  # noqa: F401
    from transformers import AutoTokenizer

    from actors.rl_step import RLStepper
    from switchpoint.data import format_prompt
    from switchpoint.prepare import load_splits, prompt_specs
    from switchpoint.prompt_dataset import PromptSet, build_prompt_set, cached_folder
    from switchpoint.sft_dataset import install, is_complete

    cfg = config(work, algorithm, rl, ev)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    paths = {"rl": rl, "eval": ev}
    base, peak0 = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if kind == "lists":
        splits, _ = load_splits(cfg, paths)
        rng, order = __import__("random").Random(1), list(range(len(splits.rl)))
        rng.shuffle(order)
        rows = [splits.rl[order.pop()] for _ in range(PROMPTS_PER_STEP)]
        ids = [tokenizer.encode(format_prompt(r, "{prompt}"), add_special_tokens=False) for r in rows]
        n = len(splits.rl)
        held = splits
    else:
        sets = {}
        for name, spec in prompt_specs(cfg, tok_dir, paths).items():
            folder = cached_folder(spec, cfg.data.cache_dir)
            if not is_complete(folder):
                install(build_prompt_set(spec, cfg.data.num_proc)[0], folder)
            sets[name] = PromptSet(folder)
        stepper = RLStepper(cfg, None, [], None, tokenizer, {}, sets)
        ids = stepper._encode(stepper._next_prompts(PROMPTS_PER_STEP))
        n = len(sets["rl"])
        held = stepper
    total = time.perf_counter() - t0
    after = rss()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert held is not None and len(ids) == PROMPTS_PER_STEP
    return {
        "kind": kind,
        "algorithm": algorithm,
        "rows": n,
        "seconds": round(total, 2),
        "peak_rss_growth_mib": round(peak - max(peak0, base["rss"])),
        "held_rss_mib": round(after["rss"] - base["rss"]),
        "held_anon_mib": round(after["anon"] - base["anon"]),
        "held_file_mib": round(after["file"] - base["file"]),
        "base_rss_mib": round(base["rss"]),
    }


def write_rl(path: str, rows: int, seed: int) -> None:
    from benchmarks.data_loading import write_data

    write_data(path, rows, seed)  # prompt, a worked response (~40 steps), answer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--eval-rows", type=int, default=1_000)
    p.add_argument("--work", default=os.path.join(REPO, "artifacts", "bench_rl_loading"))
    p.add_argument("--child", nargs="+")
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(*a.child)))
        return
    os.makedirs(a.work, exist_ok=True)
    rl, ev = os.path.join(a.work, f"rl_{a.rows}.jsonl"), os.path.join(a.work, f"eval_{a.eval_rows}.jsonl")
    if not os.path.isfile(rl):
        write_rl(rl, a.rows, 0)
    if not os.path.isfile(ev):
        write_rl(ev, a.eval_rows, 1)
    tok_dir = os.path.join(a.work, "tokenizer")
    if not os.path.isdir(tok_dir):
        from benchmarks.data_loading import build_tokenizer

        build_tokenizer(tok_dir, rl)
    import shutil

    print(
        f"{rl}: {os.path.getsize(rl) / 2**20:.0f} MiB; uptime {os.popen('uptime').read().strip()}", flush=True
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    for algorithm in ("dapo", "luffy"):
        for kind in ("lists", "arrow cold", "arrow warm"):
            if kind == "arrow cold":
                shutil.rmtree(os.path.join(a.work, "cache"), ignore_errors=True)
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind.split()[0] if kind == "lists" else kind.replace(" ", "_"),
                 a.work, algorithm, rl, ev, tok_dir],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode:
                raise RuntimeError(out.stderr[-3000:])
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["kind"] = kind
            print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
