"""Entry point for `ray job submit -- python -m cluster.job CONFIG [--set k=v ...]`: the same command, arguments
and output as `switchpoint run`.

Inside a submitted job RAY_ADDRESS is set, so the run joins that cluster; run alone it starts a local Ray.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from cluster.cli_args import add_config, add_quiet, add_set, new_parser, run_command  # noqa: E402

DESCRIPTION = """\
One pipeline: SFT on the expert trajectories, a switch to RL when the switch policy decides (default: in the
SFT Stable regime, switch.policy), then RL with the verifier. Writes a run folder OUTPUT_DIR/NAME-TIMESTAMP
(metrics.jsonl, summary.json, plot.png, checkpoints/, resume/); see docs/run-folder.md.
`switchpoint run` and `python -m cluster.job` (for `ray job submit`) are the same command."""

EXAMPLES = [
    "{prog} configs/tiny.yaml",
    "{prog} configs/tiny.yaml --set switch.policy=step:200 --set rl.steps=20",
    "{prog} --resume runs/tiny-20261127-101500",
    "{prog} configs/tiny_sweep.yaml --from-trunk runs/trunks/trunk-KEY --set switch.policy=step:300",
]


def add_run_arguments(p) -> None:
    add_config(p)
    add_set(p)
    add_quiet(p)
    p.add_argument(
        "--from-trunk",
        metavar="TRUNK_DIR",
        help="skip SFT: start RL from this trunk's checkpoint (switch.policy=step:N names it) with a new optimizer",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its latest complete resume state (SFT or RL), with its own config",
    )


def cmd_run(args) -> int:
    from cluster.runner import print_summary, run_pipeline
    from switchpoint.config import load_config

    if args.resume:
        if args.config or args.set or args.from_trunk:
            raise ValueError(
                "--resume RUN_DIR takes the run's own config.yaml: give no CONFIG, --set or --from-trunk"
            )
        run_dir, summary = run_pipeline(None, quiet=args.quiet, resume=args.resume)
    elif not args.config:
        raise ValueError("give a CONFIG (e.g. configs/tiny.yaml), or --resume RUN_DIR")
    else:
        cfg = load_config(args.config, args.set)
        run_dir, summary = run_pipeline(cfg, quiet=args.quiet, from_trunk=args.from_trunk)
    print_summary(run_dir, summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    prog = "python -m cluster.job"
    parser = new_parser(prog, DESCRIPTION, EXAMPLES)
    add_run_arguments(parser)
    return run_command(cmd_run, parser.parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main())
