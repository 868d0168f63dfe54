"""PNG plots of runs and analyses. Uses matplotlib's Agg canvas directly, so importing this module never
changes the process's matplotlib backend and works without a display.
"""

from __future__ import annotations

import math
import os

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from plasticity.regimes import ADAPTIVE, MILD, SEVERE, STABLE, label_regimes

REGIME_COLORS = {ADAPTIVE: "#9ecae1", STABLE: "#a1d99b", MILD: "#fdd0a2", SEVERE: "#fc9272"}
DPI = 110


def _save(fig: Figure, out_png: str) -> str:
    folder = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(folder, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out_png, dpi=DPI)  # constrained layout already fits the labels
    return out_png


def _color(i: int, n: int):
    return colormaps["viridis"](0.9 * i / max(1, n - 1))


def _grid(n: int, width: float = 5.2, height: float = 3.6):
    cols = min(3, max(1, n))
    rows = math.ceil(max(1, n) / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(1, n))]
    return fig, axes


def shade_regimes(ax, xs, labels) -> None:
    """Shade each checkpoint's span (midpoint to midpoint) by its regime, with a legend entry per regime."""
    xs = np.asarray(xs, dtype=float)
    if len(xs) == 0:
        return
    mids = (xs[1:] + xs[:-1]) / 2
    edges = np.concatenate([[xs[0]], mids, [xs[-1]]])
    seen = set()
    for i, label in enumerate(labels):
        ax.axvspan(edges[i], edges[i + 1], color=REGIME_COLORS[label], alpha=0.45, lw=0,
                   label=None if label in seen else label)  # fmt: skip
        seen.add(label)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_run(rows: list[dict], summary: dict, out_png: str, delta: float = 0.02, delta2: float = 0.10) -> str:
    """Two panels for one run: SFT validation loss with regimes and the switch; RL reward and accuracy.

    rows: the run's metrics.jsonl lines; summary: its summary.json ("switch" may be None).
    """
    return _save(run_figure(rows, summary, delta, delta2), out_png)


def run_figure(rows: list[dict], summary: dict, delta: float = 0.02, delta2: float = 0.10) -> Figure:
    """The figure of plot_run. Marks where SFT stopped (summary's sft_last_step, with why) and the checkpoint RL
    starts from (switch.step): a policy that rolls back to an earlier checkpoint leaves SFT steps unused."""
    summary = summary or {}
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_sft, ax_rl = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sft = [r for r in rows if r.get("phase") == "sft" and r.get("val_loss") is not None]
    switch = summary.get("switch")
    stopped = _sft_stop(summary)
    if len(sft) >= 1:
        steps = [r["step"] for r in sft]
        losses = [r["val_loss"] for r in sft]
        shade_regimes(ax_sft, steps, label_regimes(losses, delta, delta2))
        ax_sft.plot(steps, losses, "o-", color="k", ms=3, lw=1.2)
        ax_sft.set_yscale("log")  # the regimes live near the minimum, far below the first losses
        ax_sft.set_xlabel("SFT step")
        ax_sft.set_ylabel("validation loss")
        if switch:
            ax_sft.axvline(switch["step"], color="crimson", lw=1.5, ls="--",
                           label=f"RL starts from checkpoint {switch['step']} ({switch.get('regime', '?')})")  # fmt: skip
        if stopped is not None and (not switch or stopped[0] != switch["step"]):
            ax_sft.axvline(
                stopped[0], color="0.25", lw=1.2, ls=":", label=f"SFT stopped @ {stopped[0]} ({stopped[1]})"
            )
        ax_sft.legend(fontsize=7, loc="upper right")
        ax_sft.set_title("SFT: validation loss and regimes (hindsight)")
    else:
        _no_data(ax_sft, "no SFT phase (rl_only)")
    rl = [r for r in rows if r.get("phase") == "rl"]
    reward = [(r["step"], r["reward_mean"]) for r in rl if r.get("reward_mean") is not None]
    acc = [(r["step"], 100 * r["accuracy"]) for r in rl if r.get("accuracy") is not None]
    sft_acc = [(r["step"], 100 * r["accuracy"]) for r in sft if r.get("accuracy") is not None]
    if reward or acc or sft_acc:
        if reward:
            ax_rl.plot(*zip(*reward), color="tab:blue", lw=1, label="reward (mean)")
            ax_rl.set_ylabel("reward")
        ax_acc = ax_rl.twinx()
        if sft_acc:  # sft.heldout_every: the same measure during SFT, on the same global step axis
            ax_acc.plot(*zip(*sft_acc), "o:", color="0.35", ms=4, label="held-out accuracy (SFT)")
        if acc:
            ax_acc.plot(*zip(*acc), "s-", color="tab:green", ms=4, label="held-out accuracy")
        if acc or sft_acc:
            ax_acc.set_ylabel("held-out accuracy (%)")
        # RL step k is logged as global step switch + k: the RL axis starts at the branch checkpoint.
        if switch:
            ax_rl.axvline(switch["step"], color="crimson", lw=1.2, ls="--",
                          label=f"RL starts from SFT checkpoint {switch['step']}")  # fmt: skip
            ax_rl.set_xlabel(f"step (global: RL step k is drawn at {switch['step']} + k)")
            if stopped is not None and stopped[0] > switch["step"]:
                ax_rl.text(0.01, 0.98, f"SFT ran on to step {stopped[0]}; its steps after {switch['step']}\n"
                           "are not used (RL starts from the earlier checkpoint)", transform=ax_rl.transAxes,
                           fontsize=7, va="top", color="0.25")  # fmt: skip
        else:
            ax_rl.set_xlabel("step (global)")
        handles = ax_rl.get_legend_handles_labels()[0] + ax_acc.get_legend_handles_labels()[0]
        ax_rl.legend(handles=handles, fontsize=7, loc="lower right")
        accuracy = summary.get("accuracy") or {}
        if accuracy.get("at_switch") is not None and accuracy.get("final") is not None:
            ax_rl.set_title(
                f"RL: accuracy {100 * accuracy['at_switch']:.1f}% -> {100 * accuracy['final']:.1f}%"
            )
        else:
            ax_rl.set_title("RL")
    else:
        _no_data(ax_rl, "no RL phase (policy never)")
    fig.suptitle(summary.get("run_name", ""), fontsize=10)
    return fig


STOP_WORDS = (
    ("switch.policy", "the switch policy decided"),
    ("stop requested", "stop requested"),
    ("Severe", "Severe rule"),
    ("SFT budget", "budget"),
)


def _sft_stop(summary: dict) -> tuple[int, str] | None:
    """Where SFT stopped and why, in a few words: (summary's sft_last_step, its sft_stop_reason shortened)."""
    last = summary.get("sft_last_step")
    if last is None:
        return None
    reason = summary.get("sft_stop_reason") or ""
    return int(last), next((short for key, short in STOP_WORDS if reason.startswith(key)), reason[:30] or "?")


def plot_sft_scenes(scenes: list, regimes: dict, out_png: str) -> str:
    """One panel per scene: validation loss with hindsight regimes shaded (run folders), or SFT performance
    with the branch points marked (reference curves, which have no loss)."""
    fig, axes = _grid(len(scenes))
    for ax, scene in zip(axes, scenes):
        sft = scene.sft
        ax.set_title(scene.name, fontsize=9)
        if sft is None:
            _no_data(ax, "no SFT curve")
            continue
        if sft.val_loss is not None:
            ax.plot(sft.steps, sft.val_loss, "o-", color="k", ms=3, lw=1.2)
            ax.set_yscale("log")
            for b in scene.branches:
                ax.axvline(b.checkpoint, color="crimson", lw=0.8, ls="--")
            ax.set_xlabel("SFT step")
            ax.set_ylabel("validation loss")
            if scene.name in regimes:  # hindsight labels need at least two checkpoints
                shade_regimes(ax, sft.steps, regimes[scene.name].labels)
                ax.legend(fontsize=7, loc="upper right")
        else:
            ax.plot(sft.compute, sft.performance, "o-", color="k", ms=2, lw=1)
            pts = [(b.branch_compute, b.p_sft) for b in scene.branches if b.branch_compute is not None]
            if pts:
                ax.plot(*zip(*pts), "D", color="crimson", ms=5, label="RL branch points")
                ax.legend(fontsize=7, loc="lower right")
            ax.set_xlabel(f"SFT compute ({sft.unit})")
            ax.set_ylabel("P (%)")
    return _save(fig, out_png)


def plot_branches(scenes: list, fits: dict, out_png: str) -> str:
    """One panel per scene: each RL branch's points, its fitted Eq. 2 curve and its ceiling A_post."""
    fig, axes = _grid(len(scenes))
    for ax, scene in zip(axes, scenes):
        ax.set_title(scene.name, fontsize=9)
        if not scene.branches:
            _no_data(ax, "no RL branches")
            continue
        colors = [_color(i, len(scene.branches)) for i in range(len(scene.branches))]
        for color, b in zip(colors, scene.branches):
            name = f"{b.checkpoint}" + (f" {b.label}" if b.label and len(scene.branches) > 1 else "")
            fit = fits.get((scene.name, b.checkpoint, b.label))
            ax.plot(b.x, b.p, ".", color=color, ms=3, alpha=0.6)
            if fit is None or fit.status == "failed":
                ax.plot([], [], ".", color=color, label=f"{name}: no ceiling")
                continue
            xs = np.linspace(0, float(np.max(b.x)), 200)
            ax.plot(xs, fit.predict(xs), "-", color=color, lw=1.3, label=f"{name}: A={fit.a_post:.1f}")
            ax.axhline(fit.a_post, color=color, lw=0.8, ls=":")
        # Keep collapsed evaluations from squashing the curves: the y range follows the bulk of the points.
        values = np.concatenate([b.p for b in scene.branches] + [[b.p_sft for b in scene.branches]])
        tops = [
            f.a_post for f in (fits.get((scene.name, b.checkpoint, b.label)) for b in scene.branches) if f
        ]
        low = min(np.percentile(values, 2), min(b.p_sft for b in scene.branches))
        high = max([float(np.max(values))] + [t for t in tops if math.isfinite(t)])
        ax.set_ylim(low - 1, high + 1)
        ax.set_xlabel(f"RL compute since branch ({scene.branches[0].unit})")
        ax.set_ylabel("P (%)")
        ax.legend(fontsize=6, loc="lower right", ncol=2)
    return _save(fig, out_png)


def plot_apost_vs_switch(scenes: list, fits: dict, out_png: str) -> str:
    """Per scene: A_post (with its bootstrap interval) and P_sft against the switch point."""
    fig, axes = _grid(len(scenes), 4.6, 3.4)
    for ax, scene in zip(axes, scenes):
        ax.set_title(scene.name, fontsize=9)
        use_compute = all(b.branch_compute is not None for b in scene.branches)
        pts = []
        for b in scene.branches:
            fit = fits.get((scene.name, b.checkpoint, b.label))
            if fit is not None and fit.status != "failed":
                pts.append((b.branch_compute if use_compute else b.checkpoint, fit, b.p_sft))
        if not pts:
            _no_data(ax, "no fitted ceiling")
            continue
        xs = [p[0] for p in pts]
        a = np.array([p[1].a_post for p in pts])
        lo = np.array([p[1].a_post_ci[0] if p[1].a_post_ci else p[1].a_post for p in pts])
        hi = np.array([p[1].a_post_ci[1] if p[1].a_post_ci else p[1].a_post for p in pts])
        ax.errorbar(xs, a, yerr=[a - lo, hi - a], fmt="o-", color="tab:red", ms=4, capsize=2, label="A_post")
        ax.plot(xs, [p[2] for p in pts], "x--", color="0.3", lw=0.8, label="P_sft")
        unit = scene.sft.unit if scene.sft is not None else ""
        ax.set_xlabel(f"switch point: SFT compute ({unit})" if use_compute else "switch point: SFT step")
        ax.set_ylabel("P (%)")
        ax.legend(fontsize=7)
    return _save(fig, out_png)


def plot_selection(report, out_png: str) -> str:
    """The data-selection quantity (minimum validation loss or best SFT P) against A_post, per data set."""
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    pts = [(d.value, d.a_post, d.scene) for d in report.ranking if d.a_post is not None]
    for value, a_post, scene in pts:
        ax.plot(value, a_post, "o", color="tab:purple")
        ax.annotate(scene, (value, a_post), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if not pts:
        _no_data(ax, "no data set with a fitted ceiling")
    label = "minimum validation loss" if report.quantity == "min_val_loss" else "best SFT P (%)"
    ax.set_xlabel(label)
    ax.set_ylabel("A_post (%)")
    corr = (
        f"Pearson {report.pearson:.2f}, Spearman {report.spearman:.2f}"
        if report.pearson is not None and report.spearman is not None
        else "correlation needs 3 data sets"
    )
    ax.set_title(f"Data selection: {label} vs ceiling ({corr})", fontsize=9)
    return _save(fig, out_png)


def plot_sweep(rows: list[dict], trunk: dict, recommended: dict | None, out_png: str) -> str:
    """A_post (with its interval) against the branch step, one series per searched setting; the trunk's
    hindsight regimes shaded, its validation loss on a second axis, stopped branches marked with x."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    shade_regimes(ax, trunk["steps"], trunk["regimes"])
    loss_ax = ax.twinx()
    loss_ax.plot(trunk["steps"], trunk["val_losses"], color="0.35", lw=0.9, label="trunk val loss")
    loss_ax.set_ylabel("SFT validation loss (log)")
    loss_ax.set_yscale("log")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("settings_label") or "branch", []).append(r)
    for i, (label, members) in enumerate(sorted(groups.items())):
        color = _color(i, len(groups))
        members = sorted(members, key=lambda r: r["branch_step"])
        pts = [r for r in members if r.get("a_post") is not None]
        if pts:
            xs = [r["branch_step"] for r in pts]
            a = np.array([r["a_post"] for r in pts])
            lo = np.array([r["a_post_lo"] if r.get("a_post_lo") is not None else r["a_post"] for r in pts])
            hi = np.array([r["a_post_hi"] if r.get("a_post_hi") is not None else r["a_post"] for r in pts])
            ax.errorbar(xs, a, yerr=[a - lo, hi - a], fmt="o-", color=color, ms=5, capsize=3, label=label)
        unfitted = [r for r in members if r.get("a_post") is None and r.get("final_accuracy") is not None]
        ax.plot([r["branch_step"] for r in unfitted], [r["final_accuracy"] for r in unfitted], "o", mfc="none",
                mec=color, ms=7)  # fmt: skip
        for r in members:
            y = r["a_post"] if r.get("a_post") is not None else r.get("final_accuracy")
            if r.get("stopped_early") and y is not None:
                ax.plot([r["branch_step"]], [y], "x", color="black", ms=9, mew=2)
        ax.plot([r["branch_step"] for r in members], [r["p_sft"] for r in members], ".:", color=color, lw=0.8)
    if any(r.get("stopped_early") for r in rows):
        ax.plot([], [], "x", color="black", ms=8, mew=2, label="stopped early")
    if recommended and recommended.get("a_post") is not None:
        ax.plot([recommended["branch_step"]], [recommended["a_post"]], "*", color="gold", mec="black", ms=16,
                label="recommended", zorder=5)  # fmt: skip
    ax.plot([], [], ".:", color="0.3", label="P_sft (dotted)")
    if any(r.get("a_post") is None for r in rows):
        ax.plot([], [], "o", mfc="none", mec="0.3", label="no ceiling fit: final accuracy")
    ax.set_xlabel("branch point: SFT step of the trunk checkpoint")
    ax.set_ylabel("held-out accuracy (%): A_post with interval")
    ax.set_zorder(loss_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Ceiling of each RL branch against its branch point", fontsize=10)
    return _save(fig, out_png)


def plot_p_over_compute(rows: list[dict], summary: dict, out_png: str) -> str:
    """Held-out accuracy P over cumulative compute (SFT FLOPs, then SFT + RL FLOPs) for one run that measured P
    during SFT (sft.heldout_every): the SFT and RL parts of one curve, the switch marked."""
    summary = summary or {}
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for phase, style, color in (("sft", "o:", "0.35"), ("rl", "s-", "tab:green")):
        pts = [(r["flops"], 100 * r["accuracy"]) for r in rows
               if r.get("phase") == phase and r.get("accuracy") is not None and r.get("flops") is not None]  # fmt: skip
        if pts:
            ax.plot(*zip(*pts), style, color=color, ms=4, label=f"{phase.upper()} phase")
    switch = summary.get("switch")
    at = [
        r["flops"] for r in rows if r.get("phase") == "rl" and r.get("accuracy") is not None and "flops" in r
    ]
    if switch and at:
        ax.axvline(at[0], color="crimson", lw=1.2, ls="--", label=f"switch @ SFT step {switch['step']}")
    ax.set_xlabel("compute (FLOPs, SFT + RL)")
    ax.set_ylabel("held-out accuracy P (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{summary.get('run_name', '')}: P over SFT + RL compute", fontsize=9)
    return _save(fig, out_png)
