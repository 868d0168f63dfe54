"""Replay the ceiling stopper on the full curves of a finished sweep that stopped nothing (scheduler fifo).

    python benchmarks/stopper_replay.py EXPERIMENT_DIR [--min-evals 6] [--confirm 2] [--order trial|regime]

Trials ran one after another, so the stopper sees them in trial order; a stopped branch's curve is a prefix of its
full curve (branches are deterministic per seed), so the replay tells what the rule would have saved, and which
branch it would have recommended, for other settings or orders without running the sweep again. Prints the RL
compute kept (steps and FLOPs) against the full sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plasticity.early_stop import CeilingRule, partial_fit  # noqa: E402

REGIME_ORDER = {"stable": 0, "mild": 1, "severe": 2, "adaptive": 3}


def load_branches(exp_dir: str) -> list[dict]:
    out = []
    folder = os.path.join(exp_dir, "branches")
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        with open(os.path.join(folder, name, "summary.json")) as f:
            summary = json.load(f)
        evals = [r for r in rows if r.get("phase") == "rl" and r.get("accuracy") is not None]
        steps = [r for r in rows if r.get("phase") == "rl" and r.get("rl_step")]
        flops0 = evals[0]["flops"]
        out.append(
            {
                "name": name,
                "regime": summary["switch"]["regime"],
                "x": [e["flops"] - flops0 for e in evals],
                "acc": [e["accuracy"] for e in evals],
                "step_flops": [r["flops"] - flops0 for r in steps],
            }
        )
    return out


def replay(branches: list[dict], min_evals: int, confirm: int) -> tuple[list[dict], float, float]:
    rule = CeilingRule(min_evals, confirm)
    used_steps = used_flops = 0.0
    for b in branches:
        n = len(b["x"])
        stop_at = n - 1
        for k in range(1, n):
            fit = partial_fit(b["x"][: k + 1], b["acc"][: k + 1], b["acc"][0])
            if rule.observe(b["name"], k, max(b["acc"][: k + 1]), fit) is not None:
                stop_at = k
                break
        b["stopped_at"] = stop_at if stop_at < n - 1 else None
        b["best_seen"] = max(b["acc"][: stop_at + 1])
        used_steps += stop_at / (n - 1)
        used_flops += b["x"][stop_at]
    return branches, used_steps / len(branches), used_flops / sum(b["x"][-1] for b in branches)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("exp_dir")
    p.add_argument("--min-evals", type=int, default=6)
    p.add_argument("--confirm", type=int, default=2)
    p.add_argument("--order", choices=("trial", "regime"), default="trial")
    args = p.parse_args()
    branches = load_branches(args.exp_dir)
    if args.order == "regime":
        branches.sort(key=lambda b: REGIME_ORDER.get(b["regime"], 9))
    branches, step_share, flops_share = replay(branches, args.min_evals, args.confirm)
    for b in branches:
        where = f"stopped after eval {b['stopped_at']}" if b["stopped_at"] else "ran to the end"
        print(f"{b['name']:<32} {b['regime']:<9} final {b['acc'][-1]:.4f}  {where}")
    print(
        f"RL compute kept: {step_share:.2f} of the steps, {flops_share:.2f} of the FLOPs (order {args.order})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
