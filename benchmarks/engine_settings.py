"""What a vLLM CPU engine's settings do to one RL step's generation (the tiny default's shape).

One engine in this process (no Ray), the same prompts and per-prompt seeds for every setting, so every setting
generates exactly the same tokens; each row is the best and the median of --reps calls after a warm-up call.
Settings: vLLM's own per-token detokenizer on or off (RolloutWorker decodes each completion once instead: see
actors/rollout.py) and intra-op threads 1 or 2; prompt counts: prompts_per_step (one DAPO round) and the 3x of a
generation batch in one call.

    python benchmarks/engine_settings.py [--model DIR] [--prompts 16,48] [--threads 1,2] [--reps 4]

--model defaults to the tiny default's model folder (random init: every completion runs to max_tokens); a
checkpoint after SFT (runs/.../checkpoints/step_N) gives the step's real completion lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(
    model: str, threads: int, prompts: list[int], reps: int, max_tokens: int, group: int
) -> list[dict]:
    """In a fresh process per thread count: torch's thread count is fixed once vLLM has started."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    sys.path.insert(0, ROOT)
    from switchpoint.synthetic import make_problem

    tok = AutoTokenizer.from_pretrained(model)
    import random

    rng = random.Random(0)
    ids = [tok.encode(make_problem(rng, 1)["prompt"], add_special_tokens=False) for _ in range(max(prompts))]
    llm = LLM(
        model=model,
        dtype="float32",
        enforce_eager=True,
        max_model_len=128,
        enable_prefix_caching=False,
        logprobs_mode="processed_logprobs",
        seed=0,
    )
    rows = []
    for detok in (True, False):
        for n in prompts:
            times, tokens = [], 0
            for rep in range(reps + 1):
                params = [
                    SamplingParams(
                        n=group,
                        temperature=1.0,
                        max_tokens=max_tokens,
                        logprobs=0,
                        seed=1000 * rep + j,
                        detokenize=detok,
                        flat_logprobs=not detok,
                    )
                    for j in range(n)
                ]
                t0 = time.perf_counter()
                outs = llm.generate([{"prompt_token_ids": p} for p in ids[:n]], params, use_tqdm=False)
                if not detok:  # what RolloutWorker does instead
                    [tok.decode(c.token_ids, skip_special_tokens=True) for o in outs for c in o.outputs]
                if rep:  # the first call warms up
                    times.append(time.perf_counter() - t0)
                    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
            rows.append(
                {
                    "threads": threads,
                    "engine_detokenizer": detok,
                    "prompts": n,
                    "sequences": n * group,
                    "tokens": tokens,
                    "best_s": min(times),
                    "median_s": statistics.median(times),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "artifacts", "tiny", "model"))
    ap.add_argument("--prompts", default="16,48")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    prompts = [int(x) for x in a.prompts.split(",")]
    if a.child:
        print("ROWS " + json.dumps(measure(a.model, a.child, prompts, a.reps, a.max_tokens, a.group)))
        return
    if not os.path.isdir(a.model):
        sys.exit(
            f"no model folder at {a.model}: run `make demo` once (it builds the tiny model) or pass --model"
        )
    rows = []
    for threads in [int(x) for x in a.threads.split(",")]:
        cmd = [sys.executable, __file__, "--child", str(threads), "--model", a.model, "--prompts", a.prompts]
        cmd += ["--reps", str(a.reps), "--max-tokens", str(a.max_tokens), "--group", str(a.group)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows += json.loads(out.split("ROWS ", 1)[1])
    base = {(r["prompts"]): r["best_s"] for r in rows if r["threads"] == 1 and r["engine_detokenizer"]}
    print(
        f"model {a.model}, {a.group} samples a prompt, <= {a.max_tokens} new tokens, load {os.getloadavg()[0]:.1f}"
    )
    print(
        "| threads | vLLM detokenizer | prompts | sequences | tokens | best s | median s | tokens/s | speed-up vs 1 thread, detokenizer on |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['threads']} | {'on' if r['engine_detokenizer'] else 'off'} | {r['prompts']} | "
            f"{r['sequences']} | {r['tokens']} | {r['best_s']:.2f} | {r['median_s']:.2f} | "
            f"{r['tokens'] / r['best_s']:.0f} | {base[r['prompts']] / r['best_s']:.2f}x |"
        )


if __name__ == "__main__":
    main()
