"""A study folder's report: rows from its cells' sweeps (results.csv), the claims judged (claims.json,
REPORT.md with a section and a verdict line per claim) and the PNGs. Read from the folders only, so it is the
same after a resume and can be written again (`switchpoint study --report-only STUDY_DIR`).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time

from plasticity.curves import load_run
from plasticity.study_claims import PAPER, judge
from plasticity.study_plots import plot_study
from switchpoint.trunk import load_trunk

CSV_COLUMNS = (
    "claim", "arm", "dataset", "seed", "switch_step", "regime", "min_val_loss", "p_sft", "a_post", "a_post_lo",
    "a_post_hi", "final_acc", "rl_flops", "wall_s", "kind", "sft_rows", "pl_rl", "fit_status", "r2_fit",
    "share_observed", "a_post_basis", "absent",
)  # fmt: skip


def _claims_of(row: dict, study: dict) -> str:
    out = []
    if row["dataset"] == study["methods_on"] and row["arm"] in (
        "sequential",
        "pure_sft",
        "pure_rl",
        *study["baselines"],
    ):
        out.append("C1")
    if row["dataset"] in study["regimes_on"] and row["kind"] == "switch":
        out.append("C2")
    if row["arm"] == "sequential":
        out += [
            c
            for c, names in (("C3", study["sizes"]), ("C4", study["difficulties"]))
            if row["dataset"] in names
        ]
        if row["dataset"] in [*study["sizes"], *study["difficulties"]]:
            out.append("C5")
    return " ".join(out)


def _curve(run_dir: str) -> list[list[float]]:
    run = load_run(run_dir)
    evals = [r for r in run.rows if r.get("phase") == "rl" and r.get("accuracy") is not None]
    return [[e["flops"] - evals[0]["flops"], 100 * e["accuracy"]] for e in evals]


def cell_rows(cell: dict, study: dict) -> list[dict]:
    """One row per branch of a finished cell, one per absent branch point, and for a switch cell the pure-SFT
    arm of its trunk (the best held-out accuracy measured during SFT)."""
    exp = cell["exp_dir"]
    with open(os.path.join(exp, "results.json")) as f:
        res = json.load(f)
    with open(os.path.join(exp, "sweep.json")) as f:
        sweep = json.load(f)
    trunk = load_trunk(sweep["trunk"])
    min_val = min(c.val_loss for c in trunk.checkpoints)
    point = {}
    for spec in cell["branch_points"]:
        steps, _ = trunk.select_present([spec])
        for s in steps:
            point.setdefault(s, spec)
    common = {"dataset": cell["dataset"], "seed": cell["seed"], "kind": cell["kind"], "min_val_loss": min_val}
    rows = []
    for r in res["rows"]:
        with open(os.path.join(r["run_dir"], "summary.json")) as f:
            summary = json.load(f)
        if cell["kind"] == "from_base":
            algorithm = r["settings"].get("rl.algorithm", "dapo")
            arm = "pure_rl" if algorithm == "dapo" else algorithm
        else:
            spec = point.get(r["branch_step"], str(r["branch_step"]))
            arm = "sequential" if spec == study["sequential_point"] else spec
        rows.append(
            dict(
                common,
                arm=arm,
                switch_step=r["branch_step"],
                regime=r["regime"],
                p_sft=r["p_sft"],
                # The ceiling a claim compares: Eq. 2's fitted A_post, else (no supportable fit: a flat or too
                # short curve) the best held-out accuracy the branch reached, as the paper takes a collapsing
                # run's peak; a_post_basis says which.
                a_post=r["a_post"] if r["a_post"] is not None else r["best_accuracy"],
                a_post_basis="fit" if r["a_post"] is not None else "peak",
                a_post_lo=r["a_post_lo"],
                a_post_hi=r["a_post_hi"],
                pl_rl=r["pl_rl"],
                final_acc=r["final_accuracy"],
                rl_flops=r["rl_flops"],
                wall_s=r["wall_seconds"],
                sft_rows=(summary.get("data") or {}).get("sft_train"),
                fit_status=r["fit_status"],
                r2_fit=r.get("r2_fit"),
                share_observed=r.get("share_observed"),
                curve=_curve(r["run_dir"]),
            )
        )
    for a in res.get("absent", []):
        rows.append(dict(common, arm=a["spec"], regime=a["regime"], absent=True, fit_status="absent"))
    measured = [c for c in trunk.checkpoints if c.heldout.get("accuracy") is not None]
    if cell["kind"] == "switch" and measured:
        best = max(measured, key=lambda c: c.heldout["accuracy"])
        acc = 100 * best.heldout["accuracy"]
        sft_rows = rows[0]["sft_rows"] if rows else None
        rows.append(
            dict(common, arm="pure_sft", kind="pure_sft", switch_step=best.step, regime=best.regime, p_sft=acc,
                 a_post=acc, final_acc=acc, rl_flops=0.0, sft_rows=sft_rows, fit_status="best SFT checkpoint")
        )  # fmt: skip
    for row in rows:
        row["claim"] = _claims_of(row, study)
    return rows


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def _iv(iv: dict, spec: str = ".1f") -> str:
    if iv["mean"] is None:
        return "-"
    if iv["lo"] is None:
        return f"{iv['mean']:{spec}} (n={iv['n']})"
    return f"{iv['mean']:{spec}} [{iv['lo']:{spec}}, {iv['hi']:{spec}}] (n={iv['n']})"


def _parts(parts: list[dict]) -> list[str]:
    lines = [
        "| comparison | seeds | per-seed differences | mean [95% t interval] | verdict |",
        "|---|---|---|---|---|",
    ]
    for p in parts:
        what = p.get("what") or f"A_post sequential - {p['versus']}"
        diffs = ", ".join(_fmt(d, "+.1f") for d in p["diffs"]) or "-"
        extra = " (informative)" if p.get("informative_only") else ""
        lines.append(f"| {what}{extra} | {len(p['seeds'])} | {diffs} | {_iv(p)} | {p['verdict']} |")
    return lines


def _arms(arms: list[dict], eq: bool = False) -> list[str]:
    head = "| arm | P_sft | A_post | final acc |" + (" acc at equal RL FLOPs |" if eq else "")
    lines = [head, "|---" * (4 + eq) + "|"]
    for a in arms:
        lines.append(
            f"| {a['arm']} | {_iv(a['p_sft'])} | {_iv(a['a_post'])} | {_iv(a['final_acc'])} |"
            + (f" {_iv(a['acc_eq'])} |" if eq else "")
        )
    return lines


def _section(name: str, title: str, claim: dict | None, body: list[str]) -> list[str]:
    lines = [f"## {name}: {title}", "", f"Paper: {PAPER[name]}.", ""]
    if claim is None:
        return lines + ["Not run in this study.", "", "Verdict: inconclusive", ""]
    return lines + body + ["", f"Verdict: {claim['verdict']}", ""]


def report_text(record: dict, rows: list[dict], claims: dict, plots: dict) -> str:
    st = record["study"]
    branches = [r for r in rows if r.get("curve")]
    extrap = [r for r in branches if r.get("share_observed") is not None and r["share_observed"] < 0.8]
    lines = [
        "# switchpoint study: the paper's claims at tiny scale",
        "",
        f"- command: `{record.get('command', '')}`",
        f"- commit: {record.get('commit')}; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; written {time.strftime('%Y-%m-%d %H:%M')}",
        f"- wall time: {record.get('seconds', 0) / 60:.1f} min; seeds {st['seeds']} "
        f"({len(st['seeds'])} a cell){'; quick variant' if record.get('quick') else ''}",
        f"- {len(branches)} RL branches, every one run to its last RL step (no early stopping). Accuracies are "
        "held-out avg@k in percent; intervals are 95% t intervals over seeds of the per-seed values (or "
        "differences, paired by seed). Verdict: reproduced when the interval of the difference the paper "
        "claims lies above 0, not reproduced when it lies below 0, inconclusive otherwise (or with one seed).",
        f"- ceilings: {sum(r.get('a_post_basis') == 'fit' for r in branches)} of {len(branches)} branches have "
        "a fitted A_post (Eq. 2); the others (no supportable fit: flat or too short curves) stand in with their "
        f"best held-out accuracy (results.csv a_post_basis `peak`). {len(extrap)} fitted ceilings rest on less "
        "than 80% of their fitted gain observed (extrapolated; results.csv share_observed, r2_fit).",
        "",
    ]
    c1 = claims["C1"]
    body = []
    if c1:
        body = _arms(c1["arms"], eq=True) + [""] + _parts(c1["parts"])
    lines += _section("C1", "sequential (switch at Stable) beats the other ways to use the data", c1, body)
    c2 = claims["C2"]
    body = []
    for t in c2["tables"]:
        body += (
            [f"Data set {t['dataset']} (rows by hindsight regime of the branch point):", ""]
            + _arms(t["arms"])
            + [""]
        )
    lines += _section(
        "C2",
        "switch in Stable or Mild; Adaptive worse; Severe loses plasticity",
        c2,
        body + _parts(c2["parts"]),
    )
    c3 = claims["C3"]
    lines += _section("C3", "data scale sets the ceiling", c3, _arms(c3["arms"]) + [""] + _parts(c3["parts"]))
    c4 = claims["C4"]
    lines += _section(
        "C4",
        "at equal size, harder SFT data gives a higher ceiling",
        c4,
        _arms(c4["arms"]) + [""] + _parts(c4["parts"]),
    )
    c5 = claims["C5"]
    body = ["| data set | min SFT val loss | A_post |", "|---|---|---|"]
    body += [f"| {d['dataset']} | {_iv(d['min_val_loss'])} | {_iv(d['a_post'])} |" for d in c5["datasets"]]
    body += ["", f"Pearson per seed: {', '.join(_fmt(v, '+.2f') for v in c5['pearson']['per_seed'])}; "
             f"mean {_iv(c5['pearson'])}. Spearman per seed: "
             f"{', '.join(_fmt(v, '+.2f') for v in c5['spearman']['per_seed'])}; mean {_iv(c5['spearman'])}."]  # fmt: skip
    lines += _section("C5", "minimum SFT validation loss predicts A_post", c5, body)
    lines += ["## Figures", ""] + [f"![{k}]({os.path.basename(v)})" for k, v in plots.items()] + [""]
    return "\n".join(lines)


def write_report(study_dir: str) -> str:
    from cluster.study import load_record

    record = load_record(study_dir)
    study = record["study"]
    rows = [r for c in record["cells"] if c["status"] == "done" for r in cell_rows(c, study)]
    claims = judge(rows, study)
    plots = plot_study(rows, study, study_dir)
    with open(os.path.join(study_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in CSV_COLUMNS})
    with open(os.path.join(study_dir, "claims.json"), "w") as f:
        json.dump(claims, f, indent=2)
    path = os.path.join(study_dir, "REPORT.md")
    with open(path, "w") as f:
        f.write(report_text(record, rows, claims, plots))
    return path
