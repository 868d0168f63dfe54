"""`switchpoint` command line: run a pipeline, train a trunk, sweep branch points with Ray Tune, analyze runs."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _cmd_run(args) -> int:
    from cluster.runner import print_summary, run_pipeline
    from switchpoint.config import load_config

    if args.resume:
        if args.config or args.set or args.from_trunk:
            raise ValueError(
                "--resume RUN_DIR takes the run's own config.yaml: give no CONFIG, --set or --from-trunk"
            )
        run_dir, summary = run_pipeline(None, quiet=args.quiet, resume=args.resume)
    elif not args.config:
        raise ValueError("switchpoint run needs a CONFIG (or --resume RUN_DIR)")
    else:
        cfg = load_config(args.config, args.set)
        run_dir, summary = run_pipeline(cfg, quiet=args.quiet, from_trunk=args.from_trunk)
    print_summary(run_dir, summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchpoint", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="SFT on expert trajectories, switch at the chosen regime, then RL")
    run.add_argument("config", nargs="?", help="YAML run config (see configs/)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set rl.steps=20 (repeatable)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.add_argument(
        "--from-trunk",
        metavar="TRUNK_DIR",
        help="skip SFT: start RL from this trunk's checkpoint (switch.policy=step:N names it) with a new optimizer",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its latest complete resume state (SFT or RL), with its own config",
    )
    run.set_defaults(func=_cmd_run)

    from cluster import trunk, tune

    tr = sub.add_parser("trunk", help="train (or find) the SFT trunk of a config: checkpoints with regimes")
    tr.add_argument("config", help="YAML config")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    tr.add_argument("--quiet", action="store_true", help="no progress line")
    tr.set_defaults(func=trunk.cmd_trunk)
    tn = sub.add_parser("tune", help="Ray Tune search of branch points and RL settings on one SFT trunk")
    tune.add_arguments(tn, config_flag=False)
    tn.set_defaults(func=tune.cmd_tune)
    st = sub.add_parser(
        "study",
        help="the paper's claims C1-C5 tested on this stack: trunks and RL branches per data set and seed, a report",
        description="Runs the study grid (configs/study.yaml) as Ray Tune sweeps and writes REPORT.md, results.csv "
        "and PNGs into the study folder. Example: switchpoint study configs/study.yaml --quick",
    )
    from cluster import study

    study.add_arguments(st, config_flag=False)
    st.set_defaults(func=study.cmd_study)
    from cluster import analyze

    analyze.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from actors.fault_events import FaultLimitError
    from switchpoint.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FaultLimitError as e:
        print(f"switchpoint: stopped: {e}", file=sys.stderr)
        return 3
    except (ConfigError, ValueError, FileNotFoundError) as e:
        # Bad input: one line naming the key, path or row. Anything else keeps its traceback.
        print(f"switchpoint: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
