"""Loading curves for the analytics: the paper's reference layout, a pipeline run folder, a folder of runs.

Everything becomes Scenes: one SFT trunk (a curve of validation loss or of performance over SFT compute)
and the RL branches taken from it (performance P in percent over RL compute since the branch point).

- Reference layout (tests/data/README.md, retu_curves.json): P is the count-weighted mean of six benchmarks,
  compute in exaFLOPs; no validation loss.
- Run folder (RUN/metrics.jsonl, RUN/summary.json, RUN/config.yaml): one scene, at most one branch; x is the
  cumulative "flops" of held-out evaluations minus the flops at the switch, y = accuracy * 100.
- Folder of runs: runs branched from one SFT trunk (one scene, a branch per run, keyed by switch step);
  runs on different expert data (their config's data section differs) form one scene per data set, and so
  does a folder of such folders (PATH/SCENE/RUN).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

# The paper's P: benchmark accuracies weighted by their number of problems (2,157 in all).
BENCHMARK_WEIGHTS = {
    "gsm8k": 1317,
    "olympiad_bench": 291,
    "math": 237,
    "minerva": 262,
    "aime": 25,
    "aime25": 25,
}
# SFT exaFLOPs per optimizer step of the reference scenes; others: first non-zero SFT key / 360 steps.
REFERENCE_COMPUTE_PER_STEP = {"general": 1365.76 / 14080, "s1K": 0.57 / 62}
REFERENCE_CHECKPOINT_INTERVAL = 360


@dataclass
class SFTCurve:
    """The SFT trunk of a scene, ordered by step or compute."""

    steps: np.ndarray | None
    """Optimizer steps of the checkpoints (None on the reference curves)."""
    compute: np.ndarray | None
    """Cumulative SFT compute at each checkpoint, in `unit` (None when the run logged none)."""
    val_loss: np.ndarray | None
    """Validation loss on held-out expert trajectories (None on the reference curves)."""
    performance: np.ndarray | None
    """P in percent (the reference curves), None for run folders."""
    unit: str
    """Unit of `compute`."""


@dataclass
class Branch:
    """One RL branch: performance over RL compute since the branch point."""

    scene: str
    checkpoint: int
    """SFT step the branch starts from (the switch step for a run)."""
    x: np.ndarray
    """RL compute since the branch, > 0."""
    p: np.ndarray
    """Performance in percent."""
    p_sft: float
    """Performance at the branch point."""
    unit: str
    """Unit of x."""
    label: str = ""
    """Run name for run folders, '' for the reference curves."""
    branch_compute: float | None = None
    """SFT compute at the branch point, in the unit of the scene's SFT curve."""


@dataclass
class Run:
    """A pipeline run folder as written by actors/run_folder.py."""

    name: str
    path: str
    rows: list[dict]
    summary: dict
    config: dict = field(default_factory=dict)
    """The run's resolved config.yaml ({} when absent)."""

    @property
    def data_key(self) -> str:
        """The config's data section as text: runs sharing it trained on the same expert data ('' if unknown)."""
        data = self.config.get("data")
        return json.dumps(data, sort_keys=True) if data else ""


@dataclass
class Scene:
    name: str
    sft: SFTCurve | None
    branches: list[Branch] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)


@dataclass
class Curves:
    source: str
    """'reference', 'run' or 'runs'."""
    path: str
    scenes: list[Scene]
    notes: list[str] = field(default_factory=list)


def weighted_performance(scores: dict, where: str, weights: dict = BENCHMARK_WEIGHTS) -> float:
    """Count-weighted mean of the benchmark scores (percent)."""
    missing = [b for b in weights if b not in scores]
    if missing:
        raise ValueError(f"{where}: missing benchmark(s) {', '.join(missing)}")
    total = 0.0
    for bench, w in weights.items():
        value = scores[bench]
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: benchmark {bench!r} score is {value!r}, not a finite number")
        total += w * value
    return total / sum(weights.values())


def _float_key(key: str, where: str) -> float:
    try:
        return float(key)
    except ValueError:
        raise ValueError(f"{where}: key {key!r} is not a number") from None


def load_reference(
    path: str, weights: dict = BENCHMARK_WEIGHTS, compute_per_step: dict | None = None
) -> Curves:
    """A curves file in the reference layout: {"sft": {SCENE: ...}, "rl": {SCENE: {STEP: ...}}}."""
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("sft"), dict)
        or not isinstance(data.get("rl"), dict)
    ):
        raise ValueError(f"{path}: expected an object with 'sft' and 'rl' sections (reference layout)")
    per_step = {**REFERENCE_COMPUTE_PER_STEP, **(compute_per_step or {})}
    scenes = []
    for name in sorted(set(data["sft"]) | set(data["rl"])):
        if name not in data["sft"]:
            raise ValueError(f"{path}: scene {name!r} has RL branches but no SFT curve")
        sft_points = sorted(
            (
                _float_key(k, f"{path}: sft/{name}"),
                weighted_performance(v, f"{path}: sft/{name}/{k}", weights),
            )
            for k, v in data["sft"][name].items()
        )
        compute, perf = (np.array(c) for c in zip(*sft_points))
        if name in per_step:
            step_compute = per_step[name]
        else:
            nonzero = compute[compute > 0]
            if not len(nonzero):
                raise ValueError(f"{path}: scene {name!r} has no SFT compute > 0 to infer compute per step")
            step_compute = float(nonzero[0]) / REFERENCE_CHECKPOINT_INTERVAL
        scene = Scene(name, SFTCurve(None, compute, None, perf, "EFLOPs"))
        for step_key, branch in sorted(data["rl"].get(name, {}).items(), key=lambda kv: float(kv[0])):
            where = f"{path}: rl/{name}/{step_key}"
            step = int(_float_key(step_key, where))
            at = int(np.argmin(np.abs(compute - step * step_compute)))  # nearest SFT key, as the paper does
            pts = sorted(
                (_float_key(k, where), weighted_performance(v, f"{where}/{k}", weights))
                for k, v in branch.items()
            )
            x, p = (np.array(c) for c in zip(*pts)) if pts else (np.array([]), np.array([]))
            scene.branches.append(Branch(name, step, x, p, float(perf[at]), "EFLOPs", "", float(compute[at])))
        scenes.append(scene)
    note = "reference curves: P = count-weighted mean of " + ", ".join(weights) + "; compute in exaFLOPs"
    return Curves("reference", path, scenes, [note])


# ---- pipeline run folders ---------------------------------------------------------------------------------


def is_run_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "metrics.jsonl"))


def _read_rows(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i} is not JSON ({e})") from None
            if not isinstance(row, dict) or "phase" not in row or "step" not in row:
                raise ValueError(f"{path}: line {i} needs an object with 'phase' and 'step'")
            rows.append(row)
    return rows


def _read_config(run_dir: str) -> dict:
    """RUN/config.yaml as a dict; {} when the run has none."""
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        return {}
    import yaml

    with open(cfg_path) as f:
        try:
            cfg = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{cfg_path}: not YAML ({e})") from None
    return cfg if isinstance(cfg, dict) else {}


def load_run(run_dir: str) -> Run:
    """Read RUN/metrics.jsonl (required), RUN/summary.json and RUN/config.yaml (optional)."""
    if not is_run_folder(run_dir):
        raise ValueError(f"{run_dir}: not a run folder (no metrics.jsonl)")
    rows = _read_rows(os.path.join(run_dir, "metrics.jsonl"))
    summary: dict = {}
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            try:
                summary = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{summary_path}: not JSON ({e})") from None
    name = summary.get("run_name") or os.path.basename(os.path.normpath(run_dir))
    return Run(name, run_dir, rows, summary, _read_config(run_dir))


def run_sft_curve(run: Run) -> SFTCurve | None:
    """SFT validation loss of a run over steps (and FLOPs when logged)."""
    pts = [r for r in run.rows if r.get("phase") == "sft" and r.get("val_loss") is not None]
    if not pts:
        return None
    steps = np.array([r["step"] for r in pts], dtype=float)
    loss = np.array([r["val_loss"] for r in pts], dtype=float)
    flops = [r.get("flops") for r in pts]
    compute = np.array(flops, dtype=float) if all(v is not None for v in flops) else None
    return SFTCurve(steps, compute, loss, None, "FLOPs")


def run_branch(run: Run, scene: str) -> Branch | None:
    """The RL branch of a run: held-out accuracy over RL FLOPs since the switch (steps if no FLOPs logged)."""
    switch = run.summary.get("switch")
    if not switch:
        switch = next((r for r in run.rows if r.get("phase") == "switch"), None)
    evals = [r for r in run.rows if r.get("phase") == "rl" and r.get("accuracy") is not None]
    if not switch or not evals:
        return None
    step = int(switch["step"])
    at_switch = (run.summary.get("accuracy") or {}).get("at_switch")
    if at_switch is None:
        at_switch = evals[0]["accuracy"]  # the first RL-phase evaluation is taken at the switch
    use_flops = all(r.get("flops") is not None for r in evals)
    origin = float(evals[0]["flops"]) if use_flops else float(step)
    xs = np.array([(r["flops"] if use_flops else r["step"]) for r in evals], dtype=float) - origin
    acc = np.array([r["accuracy"] for r in evals], dtype=float) * 100
    keep = xs > 0  # x = 0 is the branch point itself, P_sft
    # SFT compute of the checkpoint branched from (a min_loss rollback starts before the last SFT step).
    at = [r["flops"] for r in run.rows if r.get("phase") == "sft" and r.get("step") == step and "flops" in r]
    unit = "FLOPs" if use_flops else "RL steps"
    return Branch(
        scene, step, xs[keep], acc[keep], float(at_switch) * 100, unit, run.name, at[-1] if at else None
    )


def _scene_from_runs(name: str, runs: list[Run]) -> Scene:
    # The trunk: the longest SFT curve among the runs (a later switch saw more of it).
    curves = [c for c in (run_sft_curve(r) for r in runs) if c is not None]
    trunk = max(curves, key=lambda c: len(c.steps)) if curves else None
    scene = Scene(name, trunk, runs=list(runs))
    for run in runs:
        branch = run_branch(run, name)
        if branch is not None:
            scene.branches.append(branch)
    scene.branches.sort(key=lambda b: (b.checkpoint, b.label))
    return scene


def _group_by_data(folder_name: str, runs: list[Run]) -> list[Scene]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.data_key, []).append(run)
    if len(groups) == 1:
        return [_scene_from_runs(folder_name, runs)]
    # Name each data set by the data settings that differ between the groups.
    parsed = {key: (json.loads(key) if key else {}) for key in groups}
    differing = sorted(
        {k for d in parsed.values() for k in d if len({str(p.get(k)) for p in parsed.values()}) > 1}
    )
    scenes = []
    for key, members in groups.items():
        label = (
            ",".join(f"{k}={os.path.basename(str(parsed[key].get(k)))}" for k in differing) or "unknown data"
        )
        scenes.append(_scene_from_runs(f"{folder_name}[{label}]", members))
    return scenes


def load_runs(folder: str) -> Curves:
    """A folder of run folders, or of scene folders that each hold run folders."""
    subdirs = sorted(
        os.path.join(folder, d) for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
    )
    direct = [load_run(d) for d in subdirs if is_run_folder(d)]
    folder_name = os.path.basename(os.path.normpath(folder))
    scenes = _group_by_data(folder_name, direct) if direct else []
    for d in subdirs:
        if is_run_folder(d):
            continue
        inner = sorted(os.path.join(d, e) for e in os.listdir(d) if is_run_folder(os.path.join(d, e)))
        if inner:
            scenes += _group_by_data(os.path.basename(d), [load_run(e) for e in inner])
    if not scenes:
        raise ValueError(f"{folder}: no run folders (with metrics.jsonl) in it or in its subfolders")
    return Curves("runs", folder, scenes)


def load_path(path: str) -> Curves:
    """A curves file (reference layout), a run folder, or a folder of runs."""
    if os.path.isfile(path):
        return load_reference(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if is_run_folder(path):
        run = load_run(path)
        return Curves("run", path, [_scene_from_runs(run.name, [run])])
    return load_runs(path)
