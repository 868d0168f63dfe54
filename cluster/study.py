"""`switchpoint study CONFIG` (and `python -m cluster.study CONFIG`): the paper's claims C1-C5 tested on
the real stack at tiny scale.

The study is a list of cells, each a Ray Tune sweep on the shared-trunk machinery (cluster.tune.run_sweep): per
data set and seed one SFT trunk (trained once, kept under STUDY/trunks/), branched at the sequential recipe's
switch point (and, for C2's data sets, once per regime); on C1's data set a second cell branches the base model
(trunk step 0) once per RL method (pure RL and the synchronized baselines). Cells run one after another with a
progress line and an ETA; `--resume STUDY_DIR` skips the finished ones, resumes the interrupted sweep from its
trials' own states and trains no finished trunk again. The report (REPORT.md, results.csv, PNGs) is written from
the cells' folders at the end (cluster.study_report), and again by `--report-only`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from switchpoint.config import ConfigError, set_dotted, to_dict  # noqa: E402
from switchpoint.study_config import StudyConfig, dataset_config, load_study  # noqa: E402

STUDY_FILE = "study.json"
SWITCH, FROM_BASE = "switch", "from_base"


@dataclass
class Cell:
    dataset: str
    seed: int
    kind: str
    """switch: branches from the data set's trunk at the switch points; from_base: from step 0, one per method."""
    branch_points: list
    space: dict = field(default_factory=dict)
    status: str = "pending"
    exp_dir: str = ""
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.dataset}-s{self.seed}-{self.kind}"

    @property
    def branches(self) -> int:
        return len(self.branch_points) * max([len(v) for v in self.space.values()] or [1])


def plan_cells(study: StudyConfig) -> list[Cell]:
    """Seed-major, so a stopped study has every claim's first seed before its second."""
    cells = []
    for seed in study.seeds:
        for name in study.dataset_names():
            points = [study.sequential_point]
            if name in study.regimes_on:
                points += [p for p in study.regime_points if p != study.sequential_point]
            cells.append(Cell(name, seed, SWITCH, points))
            if name == study.methods_on:
                algorithms = ["dapo", *study.baselines]  # dapo from the base model: pure RL
                cells.append(Cell(name, seed, FROM_BASE, [0], {"rl.algorithm": algorithms}))
    return cells


def cell_config(base: dict, study: StudyConfig, cell: Cell, study_dir: str):
    """The cell's sweep config: its data set and seed, trunk folder, branch points and methods, no early stop
    (every branch runs its RL to the end, so each ceiling is fitted on the same compute)."""
    raw = to_dict(dataset_config(base, study.datasets[cell.dataset], cell.seed))
    for key, value in {
        "run.name": cell.name,
        "run.output_dir": os.path.join(study_dir, "cells"),
        "tune.trunk": os.path.join(study_dir, "trunks", f"{cell.dataset}-s{cell.seed}"),
        "tune.branch_points": list(cell.branch_points),
        "tune.space": copy.deepcopy(cell.space),
        "tune.search_alg": "grid",
        "tune.scheduler": "fifo",
        "tune.num_samples": 1,
        "tune.strict_branch_points": False,
    }.items():
        set_dotted(raw, key, value)
    from switchpoint.config import from_dict

    return from_dict(raw)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=_repo())
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=_repo())
        return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def _repo() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(study_dir: str, record: dict) -> None:
    tmp = os.path.join(study_dir, STUDY_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, os.path.join(study_dir, STUDY_FILE))


def load_record(study_dir: str) -> dict:
    path = os.path.join(study_dir, STUDY_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{study_dir} is not a study folder (no {STUDY_FILE})")
    with open(path) as f:
        return json.load(f)


def _sweep_folder(cell: Cell, study_dir: str) -> str | None:
    """The cell's experiment folder if its sweep got as far as writing one (a resumable sweep)."""
    folder = os.path.join(study_dir, "cells")
    names = (
        sorted(n for n in os.listdir(folder) if n.startswith(cell.name + "-sweep-"))
        if os.path.isdir(folder)
        else []
    )
    ok = [n for n in names if os.path.isfile(os.path.join(folder, n, "sweep.json"))]
    return os.path.join(folder, ok[-1]) if ok else None


def _eta(cells: list[Cell], t_spent: float) -> str:
    """Remaining time by branches: the finished cells' seconds per branch (trunks included) times those left."""
    done = [c for c in cells if c.status == "done"]
    left = sum(c.branches for c in cells if c.status != "done")
    if not done or not left:
        return "ETA -" if left else "ETA 0 min"
    per_branch = sum(c.seconds for c in done) / sum(c.branches for c in done)
    return f"ETA {per_branch * left / 60:.0f} min"


def run_study(
    base: dict | None, study: StudyConfig | None, out_dir: str, quick: bool, resume: str | None, quiet: bool
) -> str:
    from cluster.study_report import write_report
    from cluster.tune import run_sweep

    if resume:
        study_dir = os.path.abspath(resume)
        record = load_record(study_dir)
        base, study = record["config"], StudyConfig(**record["study"])
        cells = [Cell(**c) for c in record["cells"]]
        record.setdefault("resumed", []).append({"at": time.time(), "commit": _commit()})
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        study_dir = os.path.abspath(os.path.join(out_dir, f"study{'-quick' if quick else ''}-{stamp}"))
        os.makedirs(study_dir)
        cells = plan_cells(study)
        record = {
            "config": base,
            "study": asdict(study),
            "quick": quick,
            "command": "switchpoint study " + " ".join(sys.argv[1:]),
            "commit": _commit(),
            "started": time.time(),
            "cells": [],
        }
    total = len(cells)
    print(
        f"study folder: {study_dir}\n{total} cells, {sum(c.branches for c in cells)} RL branches, "
        f"seeds {study.seeds}",
        flush=True,
    )
    t_run = time.time()
    spent = record.get("seconds", 0.0)
    for n, cell in enumerate(cells, 1):
        if cell.status == "done":
            continue
        print(
            f"[study {n}/{total}] {cell.name}: {cell.branches} branch(es) at {cell.branch_points}"
            f"{' x ' + str(cell.space) if cell.space else ''}; elapsed {(spent + time.time() - t_run) / 60:.0f} "
            f"min, {_eta(cells, spent)}",
            flush=True,
        )
        t0 = time.time()
        existing = _sweep_folder(cell, study_dir)
        if existing and os.path.isfile(os.path.join(existing, "results.json")) and cell.status == "running":
            # The sweep ended (its results are written) but the study was stopped before it noted so.
            exp_dir = existing
        elif existing:
            exp_dir, _ = run_sweep(quiet=quiet, resume=existing)
        else:
            cell.status = "running"
            record["cells"] = [asdict(c) for c in cells]
            _save(study_dir, record)
            exp_dir, _ = run_sweep(cell_config(base, study, cell, study_dir), quiet=quiet)
        cell.status, cell.exp_dir = "done", exp_dir
        cell.seconds += time.time() - t0
        record["cells"] = [asdict(c) for c in cells]
        record["seconds"] = spent + time.time() - t_run
        _save(study_dir, record)
    record["seconds"] = spent + time.time() - t_run
    record["finished"] = time.time()
    _save(study_dir, record)
    report = write_report(study_dir)
    print(f"study done in {record['seconds'] / 60:.1f} min: {report}", flush=True)
    return study_dir


def cmd_study(args) -> int:
    from cluster.cli_args import take_config
    from cluster.study_report import write_report

    take_config(args, "switchpoint study")
    if args.report_only:
        print(write_report(os.path.abspath(args.report_only)))
        return 0
    if args.resume:
        if args.config or args.set or args.quick:
            raise ConfigError(
                "--resume STUDY_DIR takes the study's own settings: give no CONFIG, --set or --quick"
            )
        run_study(None, None, "", False, args.resume, args.quiet)
        return 0
    if not args.config:
        raise ConfigError("switchpoint study needs CONFIG (e.g. configs/study.yaml), or --resume STUDY_DIR")
    base, study = load_study(args.config, args.set, quick=args.quick)
    run_study(base, study, args.output_dir or base["run"]["output_dir"], args.quick, None, args.quiet)
    return 0


DESCRIPTION = """\
The paper's claims C1-C5 tested on this stack: per data set and seed one SFT trunk and RL branches (Ray Tune
sweeps), run one after another with progress and an ETA, then REPORT.md, results.csv and PNGs in the study folder
(docs/study/ holds the checked-in report). `switchpoint study` and `python -m cluster.study` are the same command."""

EXAMPLES = [
    "{prog} configs/study.yaml",
    "{prog} configs/study.yaml --quick",
    "{prog} --resume runs/study-20261127-101500",
    "{prog} --report-only runs/study-20261127-101500",
]


def add_arguments(p: argparse.ArgumentParser, config_flag: bool = False) -> None:
    """CONFIG first (--config still works, deprecated), as every switchpoint command; config_flag is unused and
    kept for callers of the old signature."""
    from cluster.cli_args import add_config, add_quiet, add_set

    add_config(p, "study config (a run config with a study: section), e.g. configs/study.yaml")
    add_set(p, " (study.* too)")
    p.add_argument(
        "--quick", action="store_true", help="the short variant (the config's study.quick section)"
    )
    p.add_argument("--resume", metavar="STUDY_DIR", help="continue an interrupted study")
    p.add_argument("--report-only", metavar="STUDY_DIR", help="write the report of a study folder again")
    p.add_argument("--output-dir", help="where the study folder goes (unset: the config's run.output_dir)")
    add_quiet(p, "only the study's own progress lines")


def main(argv: list[str] | None = None) -> int:
    from cluster.cli_args import new_parser, run_command

    prog = "python -m cluster.study"
    parser = new_parser(prog, DESCRIPTION, EXAMPLES)
    add_arguments(parser)
    return run_command(cmd_study, parser.parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main())
