"""RL step time, split into generate / verify / train / weight sync / other, and generated tokens per second.

Runs the real pipeline on a config (default: configs/tiny.yaml) with a short SFT (so completions have realistic
lengths) and a few RL steps, then prints figures from the run's metrics.jsonl.

    python benchmarks/rl_step.py [CONFIG] [--sft-steps 200] [--rl-steps 10] [--set key=value ...]

--grow: how the step grows with prompts per step, group size and completion length (1x, 2x, 4x of each, the
others at 1x), GRPO with one update per step, on the config's model shape at random init (RL from the base
model: its completions run long, so a longer cap means longer completions) in one Ray session:

    python benchmarks/rl_step.py --grow [--rl-steps 4] [--prompts 16 --group 8 --new-tokens 40] [--factors 2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from benchmarks.cpu_watch import StepCPU  # noqa: E402

PARTS = ("generate", "verify", "train", "weight_sync", "other")


def step_seconds(timing: dict) -> float:
    """A step's wall time: measured (`step_wall`; the parts overlap with rl.max_staleness: 1), else their sum."""
    return timing.get("step_wall") or sum(timing[p] for p in PARTS)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="configs/tiny.yaml")
    ap.add_argument("--sft-steps", type=int, default=200)
    ap.add_argument("--rl-steps", type=int, default=10)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--grow", action="store_true", help="the growth table instead of one run")
    ap.add_argument("--prompts", type=int, default=16, help="--grow: prompts per step at 1x")
    ap.add_argument("--group", type=int, default=8, help="--grow: group size at 1x")
    ap.add_argument("--new-tokens", type=int, default=40, help="--grow: completion cap at 1x")
    ap.add_argument(
        "--factors", type=lambda v: [int(x) for x in v.split(",")], default=[2, 4], help="--grow: e.g. 2,4"
    )
    args = ap.parse_args()
    if args.grow:
        return grow(args)

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
    watch = StepCPU(os.path.abspath(cfg.run.output_dir), cfg.run.name)
    run_dir, summary = run_pipeline(cfg, quiet=True)
    cpu = watch.stop()[1:]
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    steps = [r for r in rows if r["phase"] == "rl" and "timing" in r]
    # The first step pays one-off warm-up costs; report it apart.
    warm, rest = steps[0], steps[1:] or steps
    totals = [step_seconds(r["timing"]) for r in rest]
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
    if cpu:
        print(
            "CPU seconds per step (load-robust): "
            + ", ".join(f"{k} {statistics.mean(c[k] for c in cpu):.2f}" for k in cpu[0])
            + f", total {statistics.mean(sum(c.values()) for c in cpu):.2f}"
        )
    print(f"warm-up step: {step_seconds(warm['timing']):.3f}s   run folder: {run_dir}")
    return 0


def grow(args) -> int:
    """One pipeline per point, RL only from the random-init model; mean parts over the steps after warm-up."""
    from cluster.runner import run_pipeline
    from switchpoint.config import load_config

    base = {"prompts": args.prompts, "group": args.group, "new_tokens": args.new_tokens}
    points = [("1x", dict(base))]
    for knob in ("prompts", "group", "new_tokens"):
        for f in args.factors:
            points.append((f"{knob} {f}x", {**base, knob: base[knob] * f}))
    table = []
    for label, p in points:
        cfg = load_config(
            args.config,
            [
                "switch.policy=rl_only",
                "rl.algorithm=grpo",
                "rl.minibatches=1",
                f"rl.prompts_per_step={p['prompts']}",
                f"rl.group_size={p['group']}",
                f"rollout.max_tokens={p['new_tokens']}",
                # room for prompt + the longest cap (a different random-init model than the default's)
                f"model.tiny.max_position_embeddings={max(128, 2 * max(args.factors) * args.new_tokens)}",
                f"rl.steps={args.rl_steps + 1}",
                f"rl.eval_every={args.rl_steps + 1}",
                "eval.max_prompts=16",
                "eval.samples=1",
                "run.name=bench-grow",
                *args.set,
            ],
        )
        watch = StepCPU(os.path.abspath(cfg.run.output_dir), cfg.run.name)
        run_dir, _ = run_pipeline(cfg, quiet=True)
        cpu = watch.stop()[1:]
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        steps = [r for r in rows if r["phase"] == "rl" and "timing" in r][1:]
        mean = {q: statistics.mean(r["timing"][q] for r in steps) for q in PARTS}
        for k in ("learner", "engine"):
            mean[f"cpu_{k}"] = statistics.mean(c[k] for c in cpu) if cpu else float("nan")
        mean["step"] = statistics.mean(step_seconds(r["timing"]) for r in steps)
        mean["tokens"] = statistics.mean(r["gen_tokens"] for r in steps)
        table.append((label, p, mean))
        print(f"[grow] {label}: {mean['step']:.2f}s  ({run_dir})", flush=True)
    ref = table[0][2]
    print(f"\ngrowth, GRPO one update per step, {args.rl_steps} timed steps per point, config {args.config}")
    print(
        f"{'point':<15}{'P':>4}{'G':>4}{'T':>5}{'tokens':>8}{'step s':>8}{'x1x':>6}"
        + "".join(f"{q[:8]:>9}" for q in PARTS)
        + f"{'gen x':>7}{'train x':>8}{'cpu eng':>8}{'cpu lrn':>8}"
    )
    for label, p, m in table:
        print(
            f"{label:<15}{p['prompts']:>4}{p['group']:>4}{p['new_tokens']:>5}{m['tokens']:>8.0f}"
            f"{m['step']:>8.2f}{m['step'] / ref['step']:>6.2f}"
            + "".join(f"{m[q]:>9.3f}" for q in PARTS)
            + f"{m['generate'] / ref['generate']:>7.2f}{m['train'] / ref['train']:>8.2f}"
            + f"{m['cpu_engine']:>8.2f}{m['cpu_learner']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
