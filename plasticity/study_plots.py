"""The study's PNGs, in the paper's figure shapes: performance over RL compute per method (C1), A_post by switch
regime (C2), A_post over data size and difficulty (C3, C4), A_post over minimum SFT validation loss (C5).
Rows as in plasticity.study_claims (accuracies in percent); one point per seed, the seed mean with its interval.
"""

from __future__ import annotations

import os

import numpy as np

from plasticity.plots import REGIME_COLORS, _color, _grid, _save
from plasticity.study_claims import interval

REGIMES = ("adaptive", "stable", "mild", "severe")


def _errorbar(ax, x, values, **kw):
    iv = interval(values)
    if iv["mean"] is None:
        return
    err = None if iv["lo"] is None else [[iv["mean"] - iv["lo"]], [iv["hi"] - iv["mean"]]]
    ax.errorbar([x], [iv["mean"]], yerr=err, fmt="o", capsize=4, **kw)


def plot_methods(rows: list[dict], dataset: str, arms: list[str], out_png: str) -> str:
    """C1: held-out accuracy over RL FLOPs since the branch, one line per seed and method; pure SFT dashed."""
    fig, (ax,) = _grid(1, 7.5, 4.4)
    for i, arm in enumerate(arms):
        color = _color(i, len(arms))
        for n, r in enumerate(r for r in rows if r["dataset"] == dataset and r["arm"] == arm):
            label = arm if n == 0 else None
            if r.get("curve"):
                x = [max(c[0], 1.0) for c in r["curve"]]
                ax.plot(x, [c[1] for c in r["curve"]], "-", color=color, alpha=0.7, lw=1.2, label=label)
            elif r.get("a_post") is not None:
                ax.axhline(r["a_post"], color=color, ls="--", lw=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("RL compute since the branch (FLOPs)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"C1: methods on {dataset} (one line per seed)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out_png)


def plot_regimes(rows: list[dict], datasets: list[str], out_png: str) -> str:
    """C2: A_post by the branch's hindsight regime, per data set (seeds as dots, mean with 95% interval)."""
    fig, axes = _grid(len(datasets), 4.6, 3.6)
    for ax, ds in zip(axes, datasets):
        for i, reg in enumerate(REGIMES):
            vals = [
                r["a_post"]
                for r in rows
                if r["dataset"] == ds and r.get("kind") == "switch" and r["regime"] == reg
            ]
            vals = [v for v in vals if v is not None]
            ax.scatter([i] * len(vals), vals, color=REGIME_COLORS[reg], edgecolor="k", s=18, zorder=3)
            _errorbar(ax, i + 0.15, vals, color="k")
        ax.set_xticks(range(len(REGIMES)), REGIMES)
        ax.set_ylabel("A_post (%)")
        ax.set_title(f"C2: switch regime, {ds}")
    return _save(fig, out_png)


def plot_data(rows: list[dict], sizes: list[str], difficulties: list[str], out_png: str) -> str:
    """C3 and C4: A_post of the sequential recipe over SFT set size (log scale) and over difficulty mix."""
    fig, (a3, a4) = _grid(2, 4.8, 3.6)
    for ds in sizes:
        vals = [
            r for r in rows if r["dataset"] == ds and r["arm"] == "sequential" and r.get("a_post") is not None
        ]
        if vals:
            n = vals[0]["sft_rows"]
            a3.scatter([n] * len(vals), [r["a_post"] for r in vals], color="#777", s=14)
            _errorbar(a3, n, [r["a_post"] for r in vals], color="k")
    a3.set_xscale("log", base=2)
    a3.set_xlabel("SFT rows")
    a3.set_ylabel("A_post (%)")
    a3.set_title("C3: data scale")
    for i, ds in enumerate(difficulties):
        vals = [
            r["a_post"]
            for r in rows
            if r["dataset"] == ds and r["arm"] == "sequential" and r.get("a_post") is not None
        ]
        a4.scatter([i] * len(vals), vals, color="#777", s=14)
        _errorbar(a4, i + 0.1, vals, color="k")
    a4.set_xticks(range(len(difficulties)), difficulties)
    a4.set_ylabel("A_post (%)")
    a4.set_title("C4: difficulty at equal size")
    return _save(fig, out_png)


def plot_loss(rows: list[dict], datasets: list[str], out_png: str) -> str:
    """C5: A_post over the trunk's minimum SFT validation loss (shared validation set), per data set."""
    fig, (ax,) = _grid(1, 5.6, 4.0)
    for i, ds in enumerate(datasets):
        pts = [
            (r["min_val_loss"], r["a_post"])
            for r in rows
            if r["dataset"] == ds and r["arm"] == "sequential" and r.get("a_post") is not None
        ]
        if not pts:
            continue
        color = _color(i, len(datasets))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, s=16, label=ds)
        mx, my = float(np.mean([p[0] for p in pts])), float(np.mean([p[1] for p in pts]))
        ax.scatter([mx], [my], color=color, edgecolor="k", s=60, marker="D")
    ax.set_xlabel("minimum SFT validation loss")
    ax.set_ylabel("A_post (%)")
    ax.set_title("C5: min val loss vs ceiling (dots: seeds, diamonds: means)")
    ax.legend(fontsize=7)
    return _save(fig, out_png)


def plot_study(rows: list[dict], study: dict, folder: str) -> dict[str, str]:
    arms = ["sequential", "pure_sft", "pure_rl", *study["baselines"]]
    c5 = list(dict.fromkeys([*study["sizes"], *study["difficulties"]]))
    out = {}
    if study["methods_on"]:
        out["C1"] = plot_methods(rows, study["methods_on"], arms, os.path.join(folder, "c1_methods.png"))
    out["C2"] = plot_regimes(rows, study["regimes_on"] or [], os.path.join(folder, "c2_regimes.png"))
    out["C3_C4"] = plot_data(
        rows, study["sizes"], study["difficulties"], os.path.join(folder, "c3_c4_data.png")
    )
    out["C5"] = plot_loss(rows, c5, os.path.join(folder, "c5_min_val_loss.png"))
    return out
