"""RL step time, split into generate / verify / train / weight sync / other, and generated tokens per second.

Runs the real pipeline on a config (default: configs/tiny.yaml) with a short SFT (so completions have realistic
lengths) and a few RL steps, then prints figures from the run's metrics.jsonl.

    python benchmarks/rl_step.py [CONFIG] [--sft-steps 200] [--rl-steps 10] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

PARTS = ("generate", "verify", "train", "weight_sync", "other")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="configs/tiny.yaml")
    ap.add_argument("--sft-steps", type=int, default=200)
    ap.add_argument("--rl-steps", type=int, default=10)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()

    from cluster.runner import run_pipeline
    from switchpoint.config import load_config

    overrides = [
        f"switch.policy=step:{args.sft_steps}",
        f"sft.max_steps={args.sft_steps}",
        f"rl.steps={args.rl_steps}",
        f"rl.eval_every={args.rl_steps}",
        "run.name=bench-rl-step",
        *args.set,
    ]
    cfg = load_config(args.config, overrides)
    run_dir, summary = run_pipeline(cfg, quiet=True)
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    steps = [r for r in rows if r["phase"] == "rl" and "timing" in r]
    # The first step pays one-off warm-up costs; report it apart.
    warm, rest = steps[0], steps[1:] or steps
    totals = [sum(r["timing"][p] for p in PARTS) for r in rest]
    print(
        f"config {args.config}  ({len(rest)} timed RL steps after 1 warm-up; "
        f"{cfg.rl.prompts_per_step} prompts x {cfg.rl.group_size} samples, {cfg.rl.algorithm}, "
        f"{cfg.learner.num_ranks} learner ranks, {cfg.rollout.num_workers} vLLM engine(s))"
    )
    print(f"{'part':<12}{'mean s':>10}{'median s':>10}{'share':>8}")
    for p in PARTS:
        vals = [r["timing"][p] for r in rest]
        print(
            f"{p:<12}{statistics.mean(vals):>10.3f}{statistics.median(vals):>10.3f}"
            f"{sum(vals) / sum(totals):>8.1%}"
        )
    print(f"{'step total':<12}{statistics.mean(totals):>10.3f}{statistics.median(totals):>10.3f}")
    gen_tok = sum(r["gen_tokens"] for r in rest)
    gen_s = sum(r["timing"]["generate"] for r in rest)
    print(
        f"generated tokens/s (generate phase): {gen_tok / gen_s:,.0f}   per whole step: "
        f"{gen_tok / sum(totals):,.0f}"
    )
    print(f"warm-up step: {sum(warm['timing'][p] for p in PARTS):.3f}s   run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
