"""Reliability drill: a config run uninterrupted, run again with kill -9 of the whole run (once in SFT, once in
RL) and `--resume` after each, and once more with actor faults injected; prints how the three compare.

    python benchmarks/resume_drill.py configs/tiny.yaml --sft-kill 150 --rl-kill 12 \\
        --faults learner@sft:130,rollout@rl:5,verifier@rl:6,learner@rl:15 [--out runs/drill]

"kill -9 of the whole run" kills every process of its local Ray (driver, GCS, raylet, each actor) at once, as a
lost node would. Figures: wall time of each run, the rows compared against the uninterrupted run (largest
difference of loss, validation loss, reward, accuracy), switch step and final accuracy, each fault's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("loss", "val_loss", "reward_mean", "accuracy", "flops")


def rows_of(run_dir: str) -> list[dict]:
    out = []
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        for line in open(path):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def processes_of(ray_tmp: str) -> list[int]:
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def start(args: list[str], ray_tmp: str, log) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO, RAY_TMPDIR=ray_tmp)
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "cluster.cli", "run", "--quiet", *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_when(proc, ray_tmp: str, run_dir_of, until) -> str:
    while proc.poll() is None:
        run_dir = run_dir_of()
        if run_dir and until(rows_of(run_dir)):
            for _ in range(3):
                for pid in processes_of(ray_tmp):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            proc.wait()
            return run_dir
        time.sleep(0.1)
    raise SystemExit(f"the run ended (rc {proc.returncode}) before the kill point")


def only_dir(folder: str) -> str | None:
    dirs = os.listdir(folder) if os.path.isdir(folder) else []
    return os.path.join(folder, dirs[0]) if dirs else None


def compare(rows: list[dict], ref: list[dict]) -> dict:
    def training(rs):
        return [r for r in rs if r["phase"] in ("sft", "switch", "rl")]

    a, b = training(rows), training(ref)
    same_steps = [(r["phase"], r["step"]) for r in a] == [(r["phase"], r["step"]) for r in b]
    worst = {k: 0.0 for k in FIELDS}
    for x, y in zip(a, b):
        for k in FIELDS:
            if isinstance(y.get(k), (int, float)) and isinstance(x.get(k), (int, float)):
                worst[k] = max(worst[k], abs(x[k] - y[k]) / max(1.0, abs(y[k])))
    return {"rows": len(a), "reference_rows": len(b), "same_steps": same_steps, "max_rel_diff": worst}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--sft-kill", type=int, required=True, help="kill once an SFT row of this step is written")
    p.add_argument("--rl-kill", type=int, required=True, help="kill once this RL step's row is written")
    p.add_argument("--faults", default="", help="faults.inject items, comma-separated (empty: skip that run)")
    p.add_argument("--out", default=None, help="folder for the three runs (default: a new temporary one)")
    args = p.parse_args()
    out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="drill-"))
    ray_tmp = tempfile.mkdtemp(prefix="sp-drill-", dir="/tmp")
    os.makedirs(out, exist_ok=True)
    log = open(os.path.join(out, "drill.log"), "a")
    figures: dict = {}

    def timed_run(name: str, extra: list[str]) -> str:
        folder = os.path.join(out, name)
        t0 = time.time()
        proc = start([args.config, "--set", f"run.output_dir={folder}", *extra], ray_tmp, log)
        if proc.wait() != 0:
            raise SystemExit(f"{name} run failed; see {out}/drill.log")
        figures[name] = {"wall_s": time.time() - t0}
        return only_dir(folder)

    print(f"drill folder {out}", flush=True)
    ref_dir = timed_run("reference", [])
    ref_rows, ref_summary = rows_of(ref_dir), json.load(open(os.path.join(ref_dir, "summary.json")))
    print(f"reference   {figures['reference']['wall_s']:.0f}s", flush=True)

    folder = os.path.join(out, "killed")
    t0 = time.time()
    proc = start([args.config, "--set", f"run.output_dir={folder}"], ray_tmp, log)
    run_dir = kill_when(
        proc,
        ray_tmp,
        lambda: only_dir(folder),
        lambda rs: any(r["phase"] == "sft" and r["step"] >= args.sft_kill for r in rs),
    )
    proc = start(["--resume", run_dir], ray_tmp, log)
    kill_when(proc, ray_tmp, lambda: run_dir, lambda rs: any(r.get("rl_step", 0) >= args.rl_kill for r in rs))
    proc = start(["--resume", run_dir], ray_tmp, log)
    if proc.wait() != 0:
        raise SystemExit(f"the resumed run failed; see {out}/drill.log")
    figures["killed"] = {"wall_s": time.time() - t0}
    runs = {"killed": run_dir}
    if args.faults:
        runs["faults"] = timed_run("faults", ["--set", f"faults.inject=[{args.faults}]"])

    print(
        f"\n{'run':<10} {'wall s':>7} {'rows':>5} {'same steps':>10} {'max rel diff (loss, val, reward, acc)':>40} "
        f"{'switch':>6} {'final acc':>9}"
    )
    print(
        f"{'reference':<10} {figures['reference']['wall_s']:7.0f} {len([r for r in ref_rows if r['phase'] in ('sft', 'switch', 'rl')]):5d} "
        f"{'-':>10} {'-':>40} {ref_summary['switch']['step']:6d} {ref_summary['accuracy']['final']:9.4f}"
    )
    for name, run_dir in runs.items():
        rows, summary = rows_of(run_dir), json.load(open(os.path.join(run_dir, "summary.json")))
        c = compare(rows, ref_rows)
        d = c["max_rel_diff"]
        diffs = f"{d['loss']:.1e} {d['val_loss']:.1e} {d['reward_mean']:.1e} {d['accuracy']:.1e}"
        print(
            f"{name:<10} {figures[name]['wall_s']:7.0f} {c['rows']:5d} {str(c['same_steps']):>10} {diffs:>40} "
            f"{summary['switch']['step']:6d} {summary['accuracy']['final']:9.4f}"
        )
        for r in rows:
            if r["phase"] == "resume":
                print(f"    resumed from {r['from']}")
            if r["phase"] == "fault":
                print(
                    f"    fault: {r['role']} {r['worker']} during {r['during']} step {r['step']}: {r['action']}; "
                    f"{r['redone']}; {r['seconds_lost']:.1f}s lost"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
