"""`switchpoint analyze PATH`: Plasticity-Ceiling analytics of a run folder, a folder of runs, a sweep's experiment
folder (its table and recommendation first), a curves file.

For every RL branch: P_sft, PL_rl, A_post, C_mid, B and fit quality (terminal table, `--json FILE`). For
every SFT curve with validation loss: hindsight regimes, the Stable window, and where the online switch
policies (and the runs themselves) switched. Across data sets: the data-selection ranking and its
correlation with A_post. PNG plots go to --out (default: PATH/analysis, or ./analysis_<name> for a file).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from plasticity.ceiling import FAILED, CeilingFit, CeilingSearch, fit_ceiling
from plasticity.curves import Curves, Scene, load_path
from plasticity.regime_analysis import analyze_sft_curve, compare_policies, describe, judge_switch
from plasticity.selection import (
    BEST_SFT_P,
    MIN_VAL_LOSS,
    VAL_FINGERPRINT_KEY,
    describe_fingerprint,
    rank_datasets,
    shared_val_refusal,
)

EPS_MODES = {"zero": (False,), "free": (True,), "search": (False, True)}


def _finite(v):
    """JSON-safe: NaN/inf -> None, recursively."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def branch_row(scene: Scene, branch, fit: CeilingFit) -> dict:
    """One JSON object per branch: the ceiling, its parameters and the quality of the fit."""
    s = fit.settings
    quality = {
        "status": fit.status,
        "r2_fit": fit.r2_fit,
        "r2_heldout": fit.r2_heldout,
        "rmse_fit": fit.rmse_fit,
        "rmse_heldout": fit.rmse_heldout,
        "score": fit.score,
        "n_points": fit.n_points,
        "n_fit": s.n_fit if s else None,
        "robust": s.robust if s else None,
        "outlier_threshold": s.outlier_threshold if s and s.robust else None,
        "trim_fraction": s.trim_fraction if s and s.robust else None,
        "free_eps": s.free_eps if s else None,
        "n_outliers": len(fit.outliers),
        "message": fit.message,
    }
    row = {
        "scene": scene.name,
        "checkpoint": branch.checkpoint,
        "run": branch.label or None,
        "p_sft": fit.p_sft,
        "pl_rl": fit.pl_rl,
        "a_post": fit.a_post,
        "c_mid": fit.c_mid,
        "b": fit.b,
        "eps": fit.eps,
        "a_post_ci": fit.a_post_ci,
        "pl_rl_ci": fit.pl_rl_ci,
        "unit": branch.unit,
        "fit_quality": quality,
    }
    return _finite(row)


def _fit_branch(branch, search: CeilingSearch) -> CeilingFit:
    try:
        return fit_ceiling(branch.x, branch.p, branch.p_sft, search)
    except ValueError as e:  # one bad branch must not stop the analysis of the others
        nan = float("nan")  # no parameters, no fit quality: only the reason
        return CeilingFit(
            FAILED, branch.p_sft, *[nan] * 10, n_points=len(branch.x), max_gain=nan, message=str(e)
        )


REPLAY_DEFAULTS = {"delta": 0.02, "delta2": 0.10, "patience": 2}


def _replay_settings(scene, given: dict) -> tuple[dict, str]:
    """Thresholds and patience for a scene: as given on the command line, else the runs' own switch config (so
    a replay judges the policy the runs actually used), else the paper's defaults."""
    from_runs = [run.config.get("switch") or {} for run in scene.runs]
    settings, source = {}, {}
    for key, default in REPLAY_DEFAULTS.items():
        seen = {sw[key] for sw in from_runs if key in sw}
        if given.get(key) is not None:
            settings[key], source[key] = given[key], "given"
        elif len(seen) == 1:
            settings[key], source[key] = seen.pop(), "run config"
        else:  # no config, or runs that disagree
            settings[key], source[key] = default, "default"
    text = ", ".join(f"{k} {settings[k]:g} ({source[k]})" for k in REPLAY_DEFAULTS)
    return settings, text


def _regimes(curves: Curves, replay: dict, policies) -> tuple[dict, list[dict]]:
    summaries, out = {}, []
    for scene in curves.scenes:
        sft = scene.sft
        if sft is None or sft.val_loss is None or len(sft.steps) < 2:
            continue
        settings, settings_text = replay[scene.name]
        summary = analyze_sft_curve(
            sft.steps, sft.val_loss, sft.compute, settings["delta"], settings["delta2"]
        )
        summaries[scene.name] = summary
        replays = compare_policies(summary, policies, **settings)
        actual = []
        for run in scene.runs:
            switch = run.summary.get("switch")
            if switch and any(abs(s - switch["step"]) < 1e-9 for s in summary.steps):
                policy = f"run {run.name} ({run.summary.get('policy', '?')})"
                actual.append(judge_switch(summary, switch["step"], policy, switch.get("reason", "")))
        out.append(
            {
                "scene": scene.name,
                **summary.to_dict(),
                "policies": [c.to_dict() for c in replays],
                "runs": [c.to_dict() for c in actual],
                "replay_settings": settings,
                "lines": [f"replayed with {settings_text}"] + [describe(c) for c in replays + actual],
            }
        )
    return summaries, out


def _selection(curves: Curves, fits: dict, val_file: str | None = None) -> tuple:
    """(the data-selection report or None, why it was refused or None, the re-measured losses or None)."""
    with_loss = [s for s in curves.scenes if s.sft and s.sft.val_loss is not None]
    remeasured = None
    if val_file and not with_loss:
        raise ValueError(
            f"--val re-measures SFT checkpoints: {curves.path} has no run with validation losses"
        )
    if val_file:
        from cluster.shared_val import remeasure_scenes

        remeasured = remeasure_scenes(with_loss, val_file)
        values, quantity = {k: v["min_val_loss"] for k, v in remeasured.items()}, MIN_VAL_LOSS
    elif with_loss:
        if len(with_loss) > 1:  # ranking compares losses across scenes: they need one validation set
            refusal = shared_val_refusal(
                {
                    s.name: [(r.summary.get("data") or {}).get(VAL_FINGERPRINT_KEY) for r in s.runs]
                    for s in with_loss
                }
            )
            if refusal:
                return None, refusal, None
        values, quantity = {s.name: float(min(s.sft.val_loss)) for s in with_loss}, MIN_VAL_LOSS
    else:
        values = {s.name: float(max(s.sft.performance)) for s in curves.scenes if s.sft is not None}
        quantity = BEST_SFT_P
    if not values:
        return None, None, None
    # Branches from step 0 are RL on the base model: they say nothing about the expert data.
    a_post = {
        s.name: [fits[(s.name, b.checkpoint, b.label)].a_post for b in s.branches if b.checkpoint > 0]
        for s in curves.scenes
    }
    report = rank_datasets(values, a_post, quantity)
    report.notes.append("branches from step 0 (RL on the base model) are left out of A_post")
    if remeasured:
        fp = next(iter(remeasured.values()))["fingerprint"]
        report.notes.append(
            f"validation losses re-measured on {val_file} ({describe_fingerprint(fp)}) at every SFT checkpoint"
        )
    return report, None, remeasured


def analyze(
    path: str,
    search: CeilingSearch | None = None,
    out_dir: str | None = None,
    plots: bool = True,
    delta: float | None = None,
    delta2: float | None = None,
    patience: int | None = None,
    policies=("stable", "mild", "min_loss"),
    val_file: str | None = None,
) -> dict:
    """Run the whole analysis of PATH; returns the report (JSON-ready) and writes plots to out_dir.

    delta, delta2, patience: None takes them from the runs' switch config when they agree, else 0.02 / 0.10 / 2.
    val_file: re-measure every scene's SFT checkpoints on this validation file for the data selection."""
    t0 = time.perf_counter()
    curves = load_path(path)
    search = search or CeilingSearch()
    fits, rows = {}, []
    for scene in curves.scenes:
        for branch in scene.branches:
            fit = _fit_branch(branch, search)
            fits[(scene.name, branch.checkpoint, branch.label)] = fit
            rows.append(branch_row(scene, branch, fit))
    given = {"delta": delta, "delta2": delta2, "patience": patience}
    replay = {scene.name: _replay_settings(scene, given) for scene in curves.scenes}
    summaries, regimes = _regimes(curves, replay, policies)
    selection, refused, remeasured = _selection(curves, fits, val_file)
    notes = list(curves.notes)
    if curves.source == "run" and curves.scenes[0].branches:
        notes.append("single run: its SFT curve ends at the switch, so hindsight labels see only that part")
    report = {
        "path": path,
        "source": curves.source,
        "branches": rows,
        "regimes": regimes,
        "selection": selection.to_dict() if selection else None,
        "selection_refused": refused,
        "selection_val": remeasured,
        "notes": notes,
        "plots": [],
    }
    if plots:
        report["plots"] = _plots(curves, fits, summaries, selection, out_dir or default_out_dir(path), replay)
    report["seconds"] = time.perf_counter() - t0
    return _finite(report)


def _plots(curves, fits, summaries, selection, out_dir, replay: dict) -> list[str]:
    from plasticity import plots

    scenes = curves.scenes
    written = [
        plots.plot_sft_scenes(scenes, summaries, os.path.join(out_dir, "sft_regimes.png")),
        plots.plot_branches(scenes, fits, os.path.join(out_dir, "rl_branches.png")),
        plots.plot_apost_vs_switch(scenes, fits, os.path.join(out_dir, "apost_vs_switch.png")),
    ]
    if selection is not None:
        written.append(plots.plot_selection(selection, os.path.join(out_dir, "selection.png")))
    for scene in scenes:
        settings, _ = replay[scene.name]
        for run in scene.runs:
            png = os.path.join(out_dir, f"run_{run.name}.png")
            written.append(plots.plot_run(run.rows, run.summary, png, settings["delta"], settings["delta2"]))
            if any(r.get("phase") == "sft" and r.get("accuracy") is not None for r in run.rows):
                png = os.path.join(out_dir, f"run_{run.name}_p_over_compute.png")
                written.append(plots.plot_p_over_compute(run.rows, run.summary, png))
    return written


def default_out_dir(path: str) -> str:
    if os.path.isdir(path):
        return os.path.join(path, "analysis")
    return os.path.join(os.getcwd(), "analysis_" + os.path.splitext(os.path.basename(path))[0])


def _num(v, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def format_report(report: dict) -> str:
    """The terminal table and the regime / selection lines."""
    names = [
        r["scene"] + (f"/{r['run']}" if r["run"] and r["run"] != r["scene"] else "")
        for r in report["branches"]
    ]
    w = min(40, max([len(n) for n in names] + [12]))
    head = (
        f"{'scene':<{w}} {'ckpt':>6} {'status':<13} {'P_sft':>6} {'PL_rl':>6} {'A_post':>6} {'95% CI':>13} "
    )
    head += f"{'C_mid':>9} {'B':>5} {'R2 fit':>6} {'R2 held':>7} {'RMSE held':>9} {'N fit':>7}"
    lines = [head, "-" * len(head)]
    for name, r in zip(names, report["branches"]):
        q = r["fit_quality"]
        ci = f"{r['a_post_ci'][0]:.1f}-{r['a_post_ci'][1]:.1f}" if r["a_post_ci"] else "-"
        n_fit = f"{q['n_fit']}/{q['n_points']}" if q["n_fit"] else f"-/{q['n_points']}"
        cells = [
            f"{name[:w]:<{w}}", f"{r['checkpoint']:>6}", f"{q['status']:<13}", f"{_num(r['p_sft']):>6}",
            f"{_num(r['pl_rl']):>6}", f"{_num(r['a_post']):>6}", f"{ci:>13}", f"{_num(r['c_mid'], '.3g'):>9}",
            f"{_num(r['b']):>5}", f"{_num(q['r2_fit']):>6}", f"{_num(q['r2_heldout']):>7}",
            f"{_num(q['rmse_heldout']):>9}", f"{n_fit:>7}",
        ]  # fmt: skip
        lines.append(" ".join(cells))
        if q["status"] != "fit":
            lines.append(f"{'':>{w + 7}}^ {q['message']}")
    if not report["branches"]:
        lines.append("no RL branches (no run switched to RL)")
    units = sorted({r["unit"] for r in report["branches"]})
    if units:
        lines.append(f"P in percent; C_mid in {', '.join(units)} of RL compute since the branch")
    for reg in report["regimes"]:
        lo, hi = reg["stable_window"]
        lines.append(
            f"\nSFT regimes of {reg['scene']}: L_min {reg['l_min']:.4g} at step {reg['argmin_step']:g}; "
            f"Stable window steps {lo:g}-{hi:g}; final checkpoint {reg['final_regime']}"
        )
        lines += ["  " + line for line in reg["lines"]]
    sel = report["selection"]
    if sel and len(sel["ranking"]) > 1:
        lines.append("\nData selection (" + "; ".join(sel["notes"]) + ")")
        for d in sel["ranking"]:
            lines.append(f"  {d['rank']}. {d['scene']:<{w}} {d['value']:.4g}  A_post {_num(d['a_post'])}")
        if sel["pearson"] is not None:
            rho = _num(sel["spearman"], ".3f")
            lines.append(f"  Pearson {sel['pearson']:.3f}, Spearman {rho} ({sel['n_pairs']} data sets)")
    if report.get("selection_refused"):
        lines.append("\n" + report["selection_refused"])
    lines += [f"note: {n}" for n in report["notes"]]
    lines += [f"plot: {p}" for p in report["plots"]]
    lines.append(f"analysis took {report['seconds']:.1f} s")
    return "\n".join(lines)


DESCRIPTION = """\
Plasticity-Ceiling analytics of finished runs: for every RL branch P_sft, PL_rl, A_post (with a bootstrap
interval), C_mid, B and the fit quality; for every SFT curve the hindsight regimes and where the switch policies
would have switched; across data sets the data-selection ranking. PATH is a run folder, a folder of runs, a sweep's
experiment folder (its table and recommendation first) or a curves file. See docs/concepts.md for the terms."""

EXAMPLES = [
    "{prog} runs/tiny-20261127-101500",
    "{prog} runs/tiny_sweep-sweep-20261127-101500",
    "{prog} runs/ --val data/val.jsonl --json analysis.json",
    "{prog} tests/data/retu_curves.json --eps search --no-plots",
]


def add_parser(subparsers) -> None:
    """Register `analyze` on an argparse subparsers object."""
    from cluster.cli_args import add_parser as add_sub

    p = add_sub(
        subparsers,
        "analyze",
        "ceiling fits, regimes and data selection of runs or curves",
        DESCRIPTION,
        EXAMPLES,
    )
    p.add_argument("path", help="a run folder, a folder of runs, or a curves file (reference layout)")
    p.add_argument("--json", metavar="FILE", help="write one object per branch to FILE")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the PNG plots and report.json (unset: PATH/analysis, or ./analysis_NAME)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the A_post interval")
    p.add_argument(
        "--eps",
        choices=sorted(EPS_MODES),
        default="zero",
        help="the ceiling fit's offset eps at the branch point: zero (eps = 0), free (fitted, eps >= 0), or search (both, the better fit per branch)",
    )
    p.add_argument(
        "--gap-weight", type=float, default=0.2, help="w in R2_held - w * max(0, R2_fit - R2_held)"
    )
    runs_or = "unset: the runs' switch config, else"
    p.add_argument("--delta", type=float, help=f"Stable band: L <= (1 + delta) * L_min ({runs_or} 0.02)")
    p.add_argument("--delta2", type=float, help=f"Severe: L >= (1 + delta2) * L_min ({runs_or} 0.10)")
    p.add_argument("--patience", type=int, help=f"patience of the replayed switch policies ({runs_or} 2)")
    p.add_argument(
        "--policies", default="stable,mild,min_loss", help="switch policies to replay, comma-separated"
    )
    p.add_argument(
        "--val",
        metavar="FILE",
        help="data selection: re-measure every scene's SFT checkpoints on this one validation file (jsonl/parquet)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the analysis for parsed arguments; returns the exit code."""
    if os.path.isfile(os.path.join(args.path, "sweep.json")):
        # A Tune sweep: its table and recommendation, then the usual analysis of its branch run folders.
        from cluster.sweep_results import format_results, write_results

        print(format_results(write_results(args.path)) + "\n")
        args.out = args.out or os.path.join(args.path, "analysis")
        args.path = os.path.join(args.path, "branches")
    search = CeilingSearch(bootstrap=args.bootstrap, free_eps=EPS_MODES[args.eps], gap_weight=args.gap_weight)
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    out_dir = args.out or default_out_dir(args.path)
    report = analyze(
        args.path,
        search,
        out_dir,
        not args.no_plots,
        args.delta,
        args.delta2,
        args.patience,
        policies,
        args.val,
    )
    print(format_report(report))
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report["branches"], f, indent=2)
        print(f"json: {args.json}")
    if not args.no_plots:
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.analyze", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["analyze", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"switchpoint analyze: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
