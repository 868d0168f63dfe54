"""`switchpoint` command line: run a pipeline, train a trunk, sweep branch points with Ray Tune, run the study,
analyze runs. Each command takes CONFIG (or a folder) as its first argument; `python -m cluster.job`,
`cluster.tune` and `cluster.study` are the same commands for `ray job submit`."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from cluster.cli_args import (  # noqa: E402
    HelpFormatter,
    add_config,
    add_parser,
    add_quiet,
    add_set,
    examples_text,
    run_command,
)

EXAMPLES = [
    "{prog} run configs/tiny.yaml                  # the embedded default (make demo)",
    "{prog} run configs/example_own_data.yaml      # your own data: see docs/own-data.md",
    "{prog} tune configs/tiny_sweep.yaml           # sweep the switch point (make sweep)",
    "{prog} analyze runs/tiny-20261127-101500",
    "{prog} run --help                             # every command has its own help",
]

TRUNK_DESCRIPTION = """\
Train the SFT trunk of a config once (switch.policy never, a Hugging Face checkpoint at every validation), or find
the one already trained with the same SFT settings (OUTPUT_DIR/trunks/trunk-KEY), and print its checkpoints with
their validation loss and regimes (online and in hindsight). Sweeps and `switchpoint run --from-trunk` branch RL
from it; see docs/sweeps.md."""

TRUNK_EXAMPLES = [
    "{prog} configs/tiny_sweep.yaml",
    "{prog} configs/micro_sweep.yaml --set sft.stop_after_severe=3",
]


def _cmd_run(args) -> int:
    from cluster.job import cmd_run

    return cmd_run(args)


def build_parser():
    import argparse

    from cluster import job

    parser = argparse.ArgumentParser(
        prog="switchpoint",
        description=__doc__,
        epilog=examples_text("switchpoint", EXAMPLES),
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = add_parser(
        sub,
        "run",
        "SFT on expert trajectories, switch at the chosen regime, then RL",
        job.DESCRIPTION,
        job.EXAMPLES,
    )
    job.add_run_arguments(run)
    run.set_defaults(func=_cmd_run)

    from cluster import trunk, tune

    tr = add_parser(
        sub,
        "trunk",
        "train (or find) the SFT trunk of a config: checkpoints with regimes",
        TRUNK_DESCRIPTION,
        TRUNK_EXAMPLES,
    )
    add_config(tr, "YAML config (its SFT settings define the trunk)")
    add_set(tr)
    add_quiet(tr)
    tr.set_defaults(func=trunk.cmd_trunk)
    tn = add_parser(
        sub,
        "tune",
        "Ray Tune search of branch points and RL settings on one SFT trunk",
        tune.DESCRIPTION,
        tune.EXAMPLES,
    )
    tune.add_arguments(tn)
    tn.set_defaults(func=tune.cmd_tune)
    from cluster import study

    st = add_parser(
        sub,
        "study",
        "the paper's claims C1-C5 tested on this stack: trunks and RL branches per data set and seed, a report",
        study.DESCRIPTION,
        study.EXAMPLES,
    )
    study.add_arguments(st)
    st.set_defaults(func=study.cmd_study)
    from cluster import analyze

    analyze.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args, f"switchpoint {args.command}")


if __name__ == "__main__":
    sys.exit(main())
