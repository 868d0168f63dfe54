"""Draw the documentation's pictures into docs/img/ (matplotlib only, no display needed).

    python docs/diagrams.py                        # architecture.png, sweep.png, concepts.png
    python docs/diagrams.py --from-sweep EXP_DIR   # also run-plot.png and sweep-results.png from a real sweep

architecture.png: the roles (Controller, LearnerGroup ranks, RolloutWorkers with vLLM, VerifierPool), the messages
between them, the weight sync, and SFT -> switch -> RL. sweep.png: a sweep's trunk and its RL branches as Tune
trials. Both are schematics. concepts.png: the terms of docs/concepts.md drawn on a made-up curve with the project's
own formulas (plasticity.regimes.label_regimes, plasticity.ceiling.ceiling_curve); an illustration, not a
measurement. run-plot.png and sweep-results.png are a real sweep's: the plot of its best branch drawn again with
plasticity.plots.plot_run, and its results.png as written by `switchpoint tune`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from plasticity.ceiling import ceiling_curve  # noqa: E402
from plasticity.plots import REGIME_COLORS, plot_run, shade_regimes  # noqa: E402
from plasticity.regimes import label_regimes  # noqa: E402

IMG = os.path.join(HERE, "img")
DPI = 110
ROLE = {
    "controller": "#fde0dd",
    "learner": "#deebf7",
    "rollout": "#e5f5e0",
    "verifier": "#fff7bc",
    "io": "#f0f0f0",
}


def _save(fig: Figure, name: str) -> str:
    os.makedirs(IMG, exist_ok=True)
    FigureCanvasAgg(fig)
    path = os.path.join(IMG, name)
    fig.savefig(
        path, dpi=DPI, metadata={"Software": None}
    )  # no version stamp: the PNG changes only with the drawing
    return path


def _box(ax, x, y, w, h, title, lines=(), color="#ffffff", title_size=10):
    ax.add_patch(
        FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.15", fc=color, ec="0.25")
    )
    ax.text(x + w / 2, y + h - 0.22, title, ha="center", va="top", fontsize=title_size, weight="bold")
    for i, line in enumerate(lines):
        ax.text(x + w / 2, y + h - 0.6 - 0.27 * i, line, ha="center", va="top", fontsize=7.5, color="0.15")


def _arrow(ax, a, b, text="", color="0.2", style="-|>", ls="-", rad=0.0, tx=0.0, ty=0.0, size=7.5, at=None):
    ax.add_patch(
        FancyArrowPatch(
            a,
            b,
            arrowstyle=style,
            mutation_scale=12,
            color=color,
            lw=1.3,
            ls=ls,
            connectionstyle=f"arc3,rad={rad}",
        )  # fmt: skip
    )
    if text:
        mx, my = at or ((a[0] + b[0]) / 2 + tx, (a[1] + b[1]) / 2 + ty)
        ax.text(mx, my, text, ha="center", va="center", fontsize=size, color=color,
                bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 1})  # fmt: skip


def architecture() -> str:
    fig = Figure(figsize=(13, 8.2))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 8.2)
    ax.axis("off")
    ax.text(6.5, 8.0, "switchpoint: the actors of one run and what they send each other", ha="center", va="top",
            fontsize=13, weight="bold")  # fmt: skip
    _box(ax, 0.2, 5.9, 2.6, 1.5, "driver", ["switchpoint run CONFIG", "or ray job submit --", "python -m cluster.job"],
         ROLE["io"])  # fmt: skip
    _box(ax, 4.6, 5.3, 3.8, 2.1, "Controller", ["named Ray actor, one per run", "the state machine: SFT, switch, RL",
         "switch policy on the val loss", "resume states, faults, run folder"], ROLE["controller"], 11)  # fmt: skip
    _box(ax, 0.2, 1.9, 3.6, 2.5, "LearnerGroup", ["N DeepSpeed ranks (ZeRO 0-3)", "one Ray placement group (PACK)",
         "gloo on CPU, NCCL on GPU", "train_step(batch, objective)", "same processes for SFT and RL"],
         ROLE["learner"], 11)  # fmt: skip
    for i in range(3):
        ax.add_patch(FancyBboxPatch((0.45 + 1.1 * i, 2.05), 0.9, 0.38, boxstyle="round,pad=0.01", fc="white",
                                    ec="0.4"))  # fmt: skip
        ax.text(0.9 + 1.1 * i, 2.24, f"rank {i if i < 2 else 'N-1'}", ha="center", va="center", fontsize=7)
    _box(ax, 4.9, 1.9, 3.3, 2.5, "RolloutWorkers", ["K actors, one vLLM engine each", "generate: n samples per prompt",
         "with log-probs", "greedy check after each sync"], ROLE["rollout"], 11)  # fmt: skip
    _box(ax, 9.3, 1.9, 3.5, 2.5, "VerifierPool", ["M VerifierWorker actors", "exact | math | module:function",
         "each item in a child process", "with a time limit: a hang", "or crash scores 0, with a status"],
         ROLE["verifier"], 11)  # fmt: skip
    _box(ax, 9.4, 5.5, 3.4, 1.9, "run folder", ["config.yaml, metrics.jsonl", "checkpoints/, resume/",
         "summary.json, plot.png", "tensorboard/ (+ Ray metrics)"], ROLE["io"])  # fmt: skip
    _arrow(ax, (2.8, 6.75), (4.6, 6.6), "starts it,\nshows progress")
    _arrow(ax, (8.4, 6.5), (9.4, 6.5), "rows, states")
    _arrow(ax, (5.0, 5.3), (2.6, 4.4), "SFT: train_step(batch, 'sft')\neval_loss(val set)\nRL: train_step(groups, 'rl')",
           rad=0.1, tx=-0.45, ty=0.1)  # fmt: skip
    _arrow(ax, (6.3, 5.3), (6.3, 4.4), "generate(prompts, n)", tx=0.05)
    _arrow(ax, (6.9, 4.4), (6.9, 5.3), "completions,\nlog-probs", tx=0.55)
    _arrow(ax, (8.4, 5.45), (10.0, 4.4), "score(completions,\nreferences)", at=(8.75, 4.75))
    _arrow(ax, (11.2, 4.4), (8.4, 5.85), "rewards", at=(10.45, 4.95))
    _arrow(ax, (3.8, 2.6), (4.9, 2.6), "weight sync", color="#3182bd", ls="--", ty=0.22)
    ax.text(4.35, 2.15, "object store | disk |\ncollective (NCCL/gloo)", ha="center", va="top", fontsize=6.5,
            color="#3182bd")  # fmt: skip
    # The phases along the bottom.
    y = 0.35
    phases = [
        (0.2, 4.3, "SFT", "#c6dbef", "train on expert trajectories; every sft.eval_every steps:\nval loss, "
         "regime, HF checkpoint, resume state"),
        (4.6, 3.7, "switch (hot swap)", "#fcbba1", "policy decides; RL from the checkpoint it picks;\n"
         "set_objective('rl'), new AdamW; sync; P_sft"),
        (8.4, 4.4, "RL", "#c7e9c0", "generate -> verify -> advantages -> train -> sync;\n"
         "held-out accuracy every rl.eval_every RL steps"),
    ]  # fmt: skip
    for x, w, name, color, text in phases:
        ax.add_patch(FancyBboxPatch((x, y), w, 1.05, boxstyle="round,pad=0.02", fc=color, ec="0.4"))
        ax.text(x + 0.12, y + 0.88, name, fontsize=9.5, weight="bold", va="top")
        ax.text(x + 0.12, y + 0.55, text, fontsize=7.3, va="top")
    _arrow(ax, (4.5, y + 0.5), (4.62, y + 0.5))
    _arrow(ax, (8.3, y + 0.5), (8.42, y + 0.5))
    return _save(fig, "architecture.png")


def _toy_sft_curve():
    """A made-up SFT validation-loss curve with the paper's shape: descent, a minimum, a rising tail."""
    steps = np.arange(0, 620, 20)
    loss = 0.32 + 2.2 * np.exp(-steps / 55.0) + 7e-7 * np.clip(steps - 300, 0, None) ** 2
    return steps, loss


def sweep() -> str:
    fig = Figure(figsize=(12.5, 5.6), layout="constrained")
    ax, ax_b = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    steps, loss = _toy_sft_curve()
    labels = label_regimes(loss)
    shade_regimes(ax, steps, labels)
    ax.plot(steps, loss, "o-", color="k", ms=3, lw=1.2)
    ax.set_yscale("log")
    chosen = {"adaptive": 100, "stable": 300, "mild": 440, "severe": 580}
    for step in chosen.values():
        i = int(np.where(steps == step)[0][0])
        ax.plot([step], [loss[i]], "D", color="crimson", ms=7)
        ax.annotate(f"branch @ {step}", (step, loss[i]), xytext=(0, 14), textcoords="offset points", ha="center",
                    fontsize=7.5, color="crimson")  # fmt: skip
    ax.set_xlabel("SFT step of the trunk (one HF checkpoint per validation)")
    ax.set_ylabel("trunk's validation loss")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("1. trunk: SFT once (switch.policy never), regimes in hindsight\n"
                 "2. tune.branch_points pick checkpoints (by step or regime)", fontsize=9.5)  # fmt: skip
    x = np.linspace(0, 10, 60)
    settings = {  # made-up (P_sft, A_post, C_mid, B): a schematic of what the sweep measures
        "adaptive": (20, 45, 3.0, 1.6),
        "stable": (70, 80, 2.0, 1.8),
        "mild": (74, 78, 2.5, 1.5),
        "severe": (68, 72, 2.0, 1.5),
    }
    for regime, (p, a, c, b) in settings.items():
        color = REGIME_COLORS[regime]
        y = ceiling_curve(x, p, a, c, b)
        stop = 34 if regime in ("adaptive", "severe") else len(x)
        ax_b.plot(x[:stop], y[:stop], "-", color="0.2", lw=1)
        ax_b.plot(x[:stop], y[:stop], "-", color=color, lw=5, alpha=0.6,
                  label=f"branch @ {chosen[regime]} ({regime})")  # fmt: skip
        if stop < len(x):
            ax_b.plot([x[stop - 1]], [y[stop - 1]], "x", color="black", ms=10, mew=2)
        else:
            ax_b.axhline(a, color=color, lw=1, ls=":")
    ax_b.plot([], [], "x", color="black", ms=8, mew=2, label="stopped early (ceiling stopper)")
    ax_b.set_xlabel("RL compute since the branch point")
    ax_b.set_ylabel("held-out accuracy")
    ax_b.legend(fontsize=7, loc="lower right")
    ax_b.set_title("3. each branch is a Ray Tune trial: RL from its checkpoint, new optimizer\n"
                   "4. fit the ceiling A_post per branch; stop branches that cannot win", fontsize=9.5)  # fmt: skip
    fig.suptitle("A sweep (switchpoint tune): one SFT trunk, RL branches as trials -- a schematic, not a "
                 "measurement; a real one: results.png", fontsize=10.5)  # fmt: skip
    return _save(fig, "sweep.png")


def concepts() -> str:
    fig = Figure(figsize=(12.5, 4.8), layout="constrained")
    ax, ax_b = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    steps, loss = _toy_sft_curve()
    delta, delta2 = 0.02, 0.10
    labels = label_regimes(loss, delta, delta2)
    shade_regimes(ax, steps, labels)
    ax.plot(steps, loss, "o-", color="k", ms=3, lw=1.2)
    l_min = float(loss.min())
    for factor, text in (
        (1.0, "L_min"),
        (1 + delta, "(1 + delta) L_min"),
        (1 + delta2, "(1 + delta2) L_min"),
    ):
        ax.axhline(factor * l_min, color="0.3", lw=0.8, ls="--")
        ax.text(steps[1], factor * l_min, text, fontsize=7, va="bottom", color="0.2")
    ax.set_ylim(0.9 * l_min, 1.35 * l_min)
    ax.set_xlabel("SFT step")
    ax.set_ylabel("SFT validation loss L")
    ax.legend(fontsize=7, loc="upper center", ncol=4)
    ax.set_title("SFT regimes (labels in hindsight, on the whole curve)", fontsize=10)
    p_sft, a_post, c_mid, b = 60.0, 80.0, 3.0, 2.0
    x = np.linspace(0.001, 12, 300)
    ax_b.plot(x, ceiling_curve(x, p_sft, a_post, c_mid, b), color="tab:green", lw=2,
              label="P(x) = P_sft + (A_post - P_sft) / (1 + (C_mid / x)^B)")  # fmt: skip
    ax_b.axhline(a_post, color="tab:red", ls=":", lw=1)
    ax_b.axhline(p_sft, color="0.3", ls=":", lw=1)
    ax_b.text(11.8, a_post + 0.4, "A_post: the ceiling", ha="right", fontsize=8, color="tab:red")
    ax_b.text(11.8, p_sft + 0.4, "P_sft: accuracy at the switch", ha="right", fontsize=8, color="0.2")
    ax_b.annotate("", (0.6, a_post), (0.6, p_sft), arrowprops={"arrowstyle": "<->", "color": "tab:purple"})
    ax_b.text(0.8, a_post - 3, "PL_rl = A_post - P_sft\n(plasticity left for RL)", fontsize=8,
              color="tab:purple", va="center")  # fmt: skip
    half = (a_post + p_sft) / 2
    ax_b.plot([c_mid], [half], "o", color="tab:blue")
    ax_b.annotate("C_mid: compute at half the gain\nB: how steep the rise is", (c_mid, half), xytext=(25, -30),
                  textcoords="offset points", fontsize=8, color="tab:blue",
                  arrowprops={"arrowstyle": "->", "color": "tab:blue"})  # fmt: skip
    ax_b.set_xlabel("RL compute since the switch (x)")
    ax_b.set_ylabel("held-out accuracy P (%)")
    ax_b.set_ylim(p_sft - 4, a_post + 4)
    ax_b.legend(fontsize=7.5, loc="lower right")
    ax_b.set_title("Plasticity-Ceiling fit of one RL branch (the paper's Eq. 2)", fontsize=10)
    fig.suptitle("The terms on made-up curves (drawn with the project's own label_regimes and ceiling_curve); "
                 "not a measurement", fontsize=10)  # fmt: skip
    return _save(fig, "concepts.png")


def from_sweep(exp_dir: str) -> list[str]:
    """run-plot.png (the recommended branch's run plot, drawn again with today's plot_run) and sweep-results.png
    (the sweep's results.png) from a finished `switchpoint tune` experiment folder."""
    with open(os.path.join(exp_dir, "results.json")) as f:
        results = json.load(f)
    trial = (results.get("recommended") or {}).get("trial") or ""
    folders = sorted(os.listdir(os.path.join(exp_dir, "branches")))
    branch = os.path.join(
        exp_dir, "branches", next((f for f in folders if trial and f.startswith(trial)), folders[-1])
    )
    with open(os.path.join(branch, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(branch, "summary.json")) as f:
        summary = json.load(f)
    os.makedirs(IMG, exist_ok=True)
    out = [plot_run(metrics, summary, os.path.join(IMG, "run-plot.png"))]
    out.append(shutil.copyfile(os.path.join(exp_dir, "results.png"), os.path.join(IMG, "sweep-results.png")))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--from-sweep", metavar="EXP_DIR", help="also draw run-plot.png and sweep-results.png"
    )
    args = parser.parse_args(argv)
    paths = [architecture(), sweep(), concepts()]
    if args.from_sweep:
        paths += from_sweep(args.from_sweep)
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
