"""The study's claims C1-C5 judged from its branch rows: paired differences over seeds with t intervals, and a
verdict each (reproduced, not reproduced, inconclusive). Pure: rows in, tables and verdicts out.

A row is one branch (or the pure-SFT arm of a trunk): dataset, seed, arm, regime, p_sft, a_post (percent),
pl_rl, min_val_loss, sft_rows, curve [(RL FLOPs since the branch, accuracy percent), ...]. Verdict rule, the same
for every comparison: the 95% t interval of the per-seed difference (claimed-better minus other) lies above 0:
reproduced; below 0: not reproduced; straddles 0, or fewer than 2 seeds: inconclusive. A compound claim is
reproduced when every part is, not reproduced when any part is, inconclusive otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"

PAPER = {
    "C1": "SFT889K then RL: A_post 84.0; RL from the base model 72.0; best pure SFT 77.7; synchronized methods "
    "converge early and SRFT is unstable (Qwen2.5-7B, six math benchmarks)",
    "C2": "SFT889K: Stable 84.0 vs Adaptive 80.1-81.0; Easy102K: Mild 78.8 vs Severe 74.4 (plasticity lost); "
    "Hard102K 82.8 and S1K 77.3 both best in Stable",
    "C3": "SFT889K 84.0 > Uniform102K 79.7 > S1K 77.3",
    "C4": "at 102K: Hard 82.8 > Uniform 79.7 > Easy 78.8",
    "C5": "min SFT val loss 0.37/0.40/0.42/0.44/0.51 vs A_post 84.0/82.8/79.7/78.8/77.3 over five sets: "
    "Pearson -0.92, Spearman -1.00",
}


def interval(values: Sequence[float]) -> dict:
    """Mean and 95% t interval over seeds (no interval for one value)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None}
    if len(v) == 1:
        return {"n": 1, "mean": float(v[0]), "lo": None, "hi": None}
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"n": len(v), "mean": float(v.mean()), "lo": float(v.mean() - half), "hi": float(v.mean() + half)}


def verdict(iv: dict) -> str:
    if iv["n"] < 2 or iv["lo"] is None:
        return INCONCLUSIVE
    if iv["lo"] > 0:
        return REPRODUCED
    if iv["hi"] < 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def acc_at(curve: Sequence[Sequence[float]], budget: float) -> float | None:
    """Held-out accuracy at `budget` RL FLOPs, linearly between the evaluations around it (None past the end)."""
    if not curve:
        return None
    x = np.asarray([c[0] for c in curve], dtype=float)
    y = np.asarray([c[1] for c in curve], dtype=float)
    if budget > x[-1] * (1 + 1e-9):
        return None
    return float(np.interp(budget, x, y))


def _by_seed(rows: list[dict], **match) -> dict[int, dict]:
    return {
        r["seed"]: r for r in rows if all(r.get(k) == v for k, v in match.items()) and not r.get("absent")
    }


def compare(better: dict[int, dict], other: dict[int, dict], key: str = "a_post") -> dict:
    """Paired per-seed difference better - other of `key` over the seeds both have."""
    seeds = sorted(
        s for s in better if s in other and better[s].get(key) is not None and other[s].get(key) is not None
    )
    diffs = [better[s][key] - other[s][key] for s in seeds]
    iv = interval(diffs)
    return {"seeds": seeds, "diffs": diffs, **iv, "verdict": verdict(iv)}


def equal_compute(groups: list[dict[int, dict]]) -> dict[int, float]:
    """Per seed, the RL FLOPs every compared arm reached (the smallest final budget among them): the point where
    they are compared at equal compute. Arms without RL (pure SFT) do not bound it."""
    out = {}
    seeds = set().union(*[g.keys() for g in groups]) if groups else set()
    for s in seeds:
        ends = [g[s]["curve"][-1][0] for g in groups if s in g and g[s].get("curve")]
        if ends:
            out[s] = min(ends)
    return out


def with_acc_at(group: dict[int, dict], budgets: dict[int, float]) -> dict[int, dict]:
    """The group's rows with `acc_eq`: accuracy at the seed's equal-compute budget (pure SFT: its accuracy)."""
    out = {}
    for s, r in group.items():
        curve = r.get("curve")
        acc = r.get("final_acc") if not curve else (acc_at(curve, budgets[s]) if s in budgets else None)
        out[s] = dict(r, acc_eq=acc)
    return out


def _arm_summary(name: str, group: dict[int, dict]) -> dict:
    return {
        "arm": name,
        "a_post": interval([r.get("a_post") for r in group.values()]),
        "acc_eq": interval([r.get("acc_eq") for r in group.values()]),
        "final_acc": interval([r.get("final_acc") for r in group.values()]),
        "p_sft": interval([r.get("p_sft") for r in group.values()]),
    }


def claim_c1(rows: list[dict], dataset: str, others: Sequence[str]) -> dict:
    """Sequential beats each other arm (pure SFT, pure RL, each baseline) on A_post at equal RL compute."""
    seq = _by_seed(rows, dataset=dataset, arm="sequential")
    arms = {name: _by_seed(rows, dataset=dataset, arm=name) for name in others}
    budgets = equal_compute([seq, *arms.values()])
    seq = with_acc_at(seq, budgets)
    arms = {k: with_acc_at(v, budgets) for k, v in arms.items()}
    parts = []
    for name, group in arms.items():
        part = {"versus": name, **compare(seq, group), "acc_eq_diff": compare(seq, group, "acc_eq")}
        parts.append(part)
    return {
        "claim": "C1",
        "dataset": dataset,
        "arms": [_arm_summary("sequential", seq)] + [_arm_summary(k, v) for k, v in arms.items()],
        "parts": parts,
        "verdict": combine([p["verdict"] for p in parts]),
    }


def _best_of(groups: list[dict[int, dict]], key: str) -> dict[int, dict]:
    """Per seed, the row with the higher `key` among the groups (Stable or Mild, whichever the seed has)."""
    out: dict[int, dict] = {}
    for g in groups:
        for s, r in g.items():
            if r.get(key) is not None and (s not in out or r[key] > out[s][key]):
                out[s] = r
    return out


def claim_c2(rows: list[dict], datasets: Sequence[str]) -> dict:
    """Per data set: max(Stable, Mild) beats Adaptive and Severe on A_post; Severe has less plasticity (PL_rl)
    than Stable. Rows are grouped by their hindsight regime."""
    parts, tables = [], []
    for ds in datasets:
        by = {
            reg: _by_seed(rows, dataset=ds, regime=reg, kind="switch")
            for reg in ("adaptive", "stable", "mild", "severe")
        }
        best = _best_of([by["stable"], by["mild"]], "a_post")
        tables.append({"dataset": ds, "arms": [_arm_summary(reg, g) for reg, g in by.items()]})
        for reg in ("adaptive", "severe"):
            parts.append(
                {
                    "dataset": ds,
                    "versus": reg,
                    "what": "A_post max(Stable, Mild) - " + reg,
                    **compare(best, by[reg]),
                }
            )
        parts.append(
            {
                "dataset": ds,
                "versus": "severe",
                "what": "PL_rl Stable - Severe",
                **compare(by["stable"], by["severe"], "pl_rl"),
            }
        )
    return {
        "claim": "C2",
        "tables": tables,
        "parts": parts,
        "verdict": combine([p["verdict"] for p in parts]),
    }


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    return float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0])


def claim_c3(rows: list[dict], sizes: Sequence[str]) -> dict:
    """A_post rises with SFT set size: per seed the slope of A_post over log2(rows), and largest - smallest."""
    groups = {ds: _by_seed(rows, dataset=ds, arm="sequential") for ds in sizes}
    seeds = sorted(set().union(*[g.keys() for g in groups.values()])) if groups else []
    slopes = []
    for s in seeds:
        pts = [
            (math.log2(g[s]["sft_rows"]), g[s].get("a_post"))
            for g in groups.values()
            if s in g and g[s].get("sft_rows")
        ]
        slopes.append(_slope([p[0] for p in pts], [p[1] for p in pts]))
    iv = interval(slopes)
    parts = [
        {
            "what": "slope of A_post per doubling of the SFT set",
            "seeds": seeds,
            "diffs": slopes,
            **iv,
            "verdict": verdict(iv),
        }
    ]
    if len(sizes) >= 2:
        parts.append(
            {"what": f"A_post {sizes[-1]} - {sizes[0]}", **compare(groups[sizes[-1]], groups[sizes[0]])}
        )
    return {"claim": "C3", "arms": [_arm_summary(ds, g) for ds, g in groups.items()], "parts": parts,
            "verdict": combine([p["verdict"] for p in parts])}  # fmt: skip


def claim_c4(rows: list[dict], difficulties: Sequence[str]) -> dict:
    """At equal size, harder SFT data gives a higher ceiling: hardest - easiest, and each step up the mix."""
    groups = {ds: _by_seed(rows, dataset=ds, arm="sequential") for ds in difficulties}
    parts = []
    if len(difficulties) >= 2:
        hard, easy = difficulties[-1], difficulties[0]
        parts.append({"what": f"A_post {hard} - {easy}", **compare(groups[hard], groups[easy])})
        for lo, hi in zip(difficulties, difficulties[1:]):
            if (lo, hi) != (easy, hard):
                part = {"what": f"A_post {hi} - {lo}", **compare(groups[hi], groups[lo])}
                parts.append(dict(part, informative_only=True))
    main = [p["verdict"] for p in parts if not p.get("informative_only")]
    return {
        "claim": "C4",
        "arms": [_arm_summary(ds, g) for ds, g in groups.items()],
        "parts": parts,
        "verdict": combine(main),
    }


def _corr(fn: Callable, xs: Sequence[float], ys: Sequence[float]) -> float | None:
    pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    if len(pts) < 3 or len({p[0] for p in pts}) < 2 or len({p[1] for p in pts}) < 2:
        return None
    return float(fn([p[0] for p in pts], [p[1] for p in pts])[0])


def claim_c5(rows: list[dict], datasets: Sequence[str]) -> dict:
    """Across data sets, lower minimum SFT validation loss goes with higher A_post: per seed the Pearson and
    Spearman correlation over the data sets; reproduced when the Pearson interval lies below 0."""
    groups = {ds: _by_seed(rows, dataset=ds, arm="sequential") for ds in datasets}
    seeds = sorted(set().union(*[g.keys() for g in groups.values()])) if groups else []
    pearson, spearman = [], []
    for s in seeds:
        pts = [(g[s]["min_val_loss"], g[s].get("a_post")) for g in groups.values() if s in g]
        pearson.append(_corr(stats.pearsonr, [p[0] for p in pts], [p[1] for p in pts]))
        spearman.append(_corr(stats.spearmanr, [p[0] for p in pts], [p[1] for p in pts]))
    piv, siv = interval(pearson), interval(spearman)
    v = verdict(interval([-p for p in pearson if p is not None]))  # the claim is a negative correlation
    means = [
        {
            "dataset": ds,
            "min_val_loss": interval([r["min_val_loss"] for r in g.values()]),
            "a_post": interval([r.get("a_post") for r in g.values()]),
        }
        for ds, g in groups.items()
    ]
    return {"claim": "C5", "pearson": {**piv, "per_seed": pearson}, "spearman": {**siv, "per_seed": spearman},
            "datasets": means, "verdict": v}  # fmt: skip


def judge(rows: list[dict], study: dict) -> dict:
    """Every claim from the rows and the study settings (StudyConfig as a dict)."""
    others = ["pure_sft", "pure_rl", *study["baselines"]]
    c5_sets = list(dict.fromkeys([*study["sizes"], *study["difficulties"]]))
    return {
        "C1": claim_c1(rows, study["methods_on"], others) if study["methods_on"] else None,
        "C2": claim_c2(rows, study["regimes_on"]),
        "C3": claim_c3(rows, study["sizes"]),
        "C4": claim_c4(rows, study["difficulties"]),
        "C5": claim_c5(rows, c5_sets),
    }
