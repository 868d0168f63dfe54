"""A sweep's results: one row per branch (ceiling fit on its whole curve), a PNG, the recommended branch point.

Read from the branch run folders (EXP/branches/*), the trunk and the stopper's records, so the table is the
same whether the sweep ran in one go or was resumed. Accuracies are in percent, as in `switchpoint analyze`.
"""

from __future__ import annotations

import csv
import json
import os

from plasticity.ceiling import FAILED, MIN_POINTS, CeilingFit, CeilingSearch, fit_ceiling
from plasticity.curves import load_run, run_branch
from plasticity.early_stop import MIN_PARTIAL_POINTS, PARTIAL_SEARCH
from switchpoint.config import flatten, get_dotted
from switchpoint.trunk import load_trunk

RESULTS = "results"
COLUMNS = (
    "trial", "branch_step", "regime", "regime_online", "settings_label", "p_sft", "pl_rl", "a_post", "a_post_lo",
    "a_post_hi", "c_mid", "b", "fit_status", "final_accuracy", "best_accuracy", "rl_steps", "rl_flops",
    "wall_seconds", "startup_seconds", "actors_reused", "stopped_early", "stop_reason", "resumed_at", "run_dir",
)  # fmt: skip


def _fit(branch) -> CeilingFit | None:
    full = CeilingSearch()
    search = full if len(branch.x) >= full.min_heldout + MIN_POINTS - 2 else PARTIAL_SEARCH
    if len(branch.x) < MIN_PARTIAL_POINTS:
        return None
    try:
        return fit_ceiling(branch.x, branch.p, branch.p_sft, search)
    except ValueError:
        return None


def _stops(exp_dir: str) -> dict:
    path = os.path.join(exp_dir, "early_stops.jsonl")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return {r["trial"]: r for r in (json.loads(line) for line in f if line.strip())}


def branch_rows(exp_dir: str, searched: list[str]) -> list[dict]:
    folder = os.path.join(exp_dir, "branches")
    stops = _stops(exp_dir)
    rows = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        run_dir = os.path.join(folder, name)
        if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
            continue
        run = load_run(run_dir)
        branch = run_branch(run, "sweep")
        sw = run.summary.get("switch") or {}
        trial = name.split("-step")[0]
        settings = {k: get_dotted(run.config, k) for k in searched}
        evals = [r for r in run.rows if r.get("phase") == "rl" and r.get("accuracy") is not None]
        fit = _fit(branch) if branch is not None else None
        ok = fit is not None and fit.status != FAILED
        stop = stops.get(trial)
        row = {
            "trial": trial,
            "branch_step": sw.get("step"),
            "regime": sw.get("regime"),
            "regime_online": sw.get("regime_online"),
            "settings": settings,
            "settings_label": ", ".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items()) or "branch",
            "p_sft": 100 * evals[0]["accuracy"] if evals else None,
            "pl_rl": fit.pl_rl if ok else None,
            "a_post": fit.a_post if ok else None,
            "a_post_lo": fit.a_post_ci[0] if ok and fit.a_post_ci else None,
            "a_post_hi": fit.a_post_ci[1] if ok and fit.a_post_ci else None,
            "c_mid": fit.c_mid if ok else None,
            "r2_fit": fit.r2_fit if ok else None,
            # How much of the fitted gain the branch has shown: near 1 the ceiling is observed, not extrapolated.
            "share_observed": fit.max_gain / fit.pl_rl if ok and fit.pl_rl > 0 else None,
            "b": fit.b if ok else None,
            "fit_status": fit.status if fit is not None else "too_few_points",
            "fit_message": fit.message
            if fit is not None
            else f"{len(evals) - 1} evaluations after the branch",
            "final_accuracy": 100 * evals[-1]["accuracy"] if evals else None,
            "best_accuracy": 100 * max(r["accuracy"] for r in evals) if evals else None,
            "rl_steps": run.summary.get("rl_steps_done"),
            "rl_flops": (evals[-1]["flops"] - evals[0]["flops"]) if evals else 0.0,
            "wall_seconds": run.summary.get("wall_seconds"),
            "startup_seconds": run.summary.get("startup_seconds"),
            "actors_reused": run.summary.get("actors_reused"),
            "stopped_early": stop is not None or bool(run.summary.get("stopped_early")),
            "stop_reason": stop["reason"] if stop else None,
            "stop_record": stop,
            # Where each restart of the trial continued: "-" a fresh start (no state yet), else the RL step.
            "resumed_at": " ".join(
                "-" if r["state"] is None else str(r["rl_step"]) for r in run.summary.get("resumes", [])
            ),
            "run_dir": run_dir,
        }
        rows.append(row)
    return sorted(rows, key=lambda r: (r["branch_step"] is None, r["branch_step"], r["settings_label"]))


def recommend(rows: list[dict]) -> dict | None:
    """The branch with the highest fitted ceiling (the best final accuracy when none could be fitted), and the
    branches whose interval overlaps it (not distinguishable with this much data)."""
    fitted = [r for r in rows if r["a_post"] is not None]
    if fitted:
        best = max(fitted, key=lambda r: r["a_post"])
        basis = "highest fitted ceiling A_post"
    else:
        done = [r for r in rows if r["final_accuracy"] is not None]
        if not done:
            return None
        best = max(done, key=lambda r: r["final_accuracy"])
        basis = "no branch could be fitted: best final accuracy"
    lo = best["a_post_lo"]
    ties = [
        r["trial"]
        for r in fitted
        if r is not best and lo is not None and r["a_post_hi"] is not None and r["a_post_hi"] >= lo
    ]
    return {
        "trial": best["trial"],
        "branch_step": best["branch_step"],
        "regime": best["regime"],
        "settings": best["settings"],
        "a_post": best["a_post"],
        "a_post_ci": [best["a_post_lo"], best["a_post_hi"]],
        "basis": basis,
        "overlapping": ties,
    }


def write_results(exp_dir: str, sweep_seconds: float | None = None, errors: list[str] | None = None) -> dict:
    from plasticity.plots import plot_sweep

    with open(os.path.join(exp_dir, "sweep.json")) as f:
        sweep = json.load(f)
    searched = sorted(flatten(sweep["config"]["tune"]["space"]))
    rows = branch_rows(exp_dir, searched)
    trunk = load_trunk(sweep["trunk"])
    absent = sweep.get("absent", [])
    rec = recommend(rows)
    totals = {
        "branches": len(rows),
        "stopped_early": sum(r["stopped_early"] for r in rows),
        "rl_flops": sum(r["rl_flops"] or 0.0 for r in rows),
        "rl_steps": sum(r["rl_steps"] or 0 for r in rows),
        "branch_wall_seconds": sum(r["wall_seconds"] or 0.0 for r in rows),
        "trunk_seconds": sweep.get("trunk_seconds", 0.0),
    }
    previous = os.path.join(exp_dir, f"{RESULTS}.json")
    if sweep_seconds is None and os.path.isfile(previous):  # re-read by analyze: keep the measured wall time
        with open(previous) as f:
            sweep_seconds = json.load(f).get("totals", {}).get("sweep_seconds")
    if sweep_seconds is not None:
        totals["sweep_seconds"] = sweep_seconds
    report = {
        "exp_dir": exp_dir,
        "trunk": trunk.dir,
        "scheduler": sweep["config"]["tune"]["scheduler"],
        "searched": searched,
        "rows": rows,
        "absent": absent,  # branch points naming a regime this trunk has no checkpoint of: not run
        "recommended": rec,
        "totals": totals,
        "errors": errors or [],
    }
    trunk_curve = {
        "steps": trunk.steps(),
        "val_losses": [c.val_loss for c in trunk.checkpoints],
        "regimes": [c.regime for c in trunk.checkpoints],
    }
    report["plot"] = plot_sweep(rows, trunk_curve, rec, os.path.join(exp_dir, f"{RESULTS}.png"))
    with open(os.path.join(exp_dir, f"{RESULTS}.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    with open(os.path.join(exp_dir, f"{RESULTS}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS) + [f"set:{k}" for k in searched])
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {**{k: r[k] for k in COLUMNS}, **{f"set:{k}": r["settings"][k] for k in searched}}
            )
        for a in absent:  # a row marked absent: the branch point was asked for and has no checkpoint
            writer.writerow({"regime": a["regime"], "fit_status": "absent", "stop_reason": a["message"]})
    return report


def _n(v, fmt=".1f"):
    return "-" if v is None else format(v, fmt)


def format_results(report: dict) -> str:
    head = (
        f"{'branch':>6} {'regime':<9} {'settings':<22} {'P_sft':>6} {'A_post':>6} {'interval':>13} "
        f"{'final':>6} {'RL steps':>8} {'stopped':<8}"
    )
    lines = [f"sweep {report['exp_dir']} (trunk {report['trunk']})", head, "-" * len(head)]
    for r in report["rows"]:
        ci = f"{r['a_post_lo']:.1f}-{r['a_post_hi']:.1f}" if r["a_post_lo"] is not None else "-"
        lines.append(
            f"{_n(r['branch_step'], 'd'):>6} {r['regime'] or '-':<9} {r['settings_label'][:22]:<22} "
            f"{_n(r['p_sft']):>6} {_n(r['a_post']):>6} {ci:>13} {_n(r['final_accuracy']):>6} "
            f"{_n(r['rl_steps'], 'd'):>8} {'yes' if r['stopped_early'] else 'no':<8}"
        )
        if r["a_post"] is None:
            lines.append(f"{'':>8}^ {r['fit_status']}: {r['fit_message']}")
    for a in report.get("absent", []):
        lines.append(f"{'-':>6} {a['regime']:<9} absent: {a['spec']} names no checkpoint on this trunk")
    t = report["totals"]
    lines.append(
        f"accuracy in percent; {t['branches']} branches, {t['stopped_early']} stopped early, "
        f"RL compute {t['rl_flops']:.3g} FLOPs in {t['rl_steps']} RL steps"
        + (f", sweep wall {t['sweep_seconds']:.0f} s" if "sweep_seconds" in t else "")
    )
    rec = report["recommended"]
    if rec:
        ci = rec["a_post_ci"]
        ci_text = f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci[0] is not None else ""
        a = f"A_post {rec['a_post']:.1f}{ci_text}" if rec["a_post"] is not None else rec["basis"]
        lines.append(
            f"recommended branch point: step {rec['branch_step']} ({rec['regime']}) "
            f"{', '.join(f'{k}={v}' for k, v in rec['settings'].items())} - {a}; {rec['basis']}"
        )
        if rec["overlapping"]:
            lines.append(f"  not separable from it (intervals overlap): {', '.join(rec['overlapping'])}")
    for e in report.get("errors", []):
        lines.append(f"trial error: {e.splitlines()[0][:200]}")
    lines.append(f"table: {os.path.join(report['exp_dir'], RESULTS)}.csv / .json; plot: {report['plot']}")
    return "\n".join(lines)
