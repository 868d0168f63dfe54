"""`switchpoint tune CONFIG` and `python -m cluster.tune CONFIG` (for `ray job submit`): Ray Tune searches
branch points and RL settings on one SFT trunk.

1. Check the `tune:` section (keys, domains, searcher, scheduler) before anything runs.
2. Find the trunk with the same SFT settings, or train it once (`switchpoint trunk`).
3. Each trial is one RL branch (cluster.tune_trial.BranchTrial) on its own placement group; the ceiling stopper
   (or ASHA) ends branches that cannot win. 4. The experiment folder gets the results table, plot, recommendation.
`--resume EXPERIMENT_DIR` continues an interrupted sweep with Tuner.restore.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table: our columns (step, accuracy, ceiling)
# Every evaluation is a small checkpoint (it is what a resumed trial continues from); that is intended.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from cluster.search_space import check_search, make_search_alg, to_param_space  # noqa: E402
from switchpoint.config import Config, ConfigError, from_dict, load_config, to_dict  # noqa: E402

SWEEP_FILE = "sweep.json"


def _scheduler_and_stopper(cfg: Config, exp_dir: str, n_iters: int, quiet: bool):
    from ray.tune.schedulers import ASHAScheduler

    from cluster.tune_trial import CeilingStopper

    t = cfg.tune
    if t.scheduler == "ceiling":
        return None, CeilingStopper(exp_dir, t.min_evals, t.confirm, quiet)
    if t.scheduler == "asha":
        grace = max(1, min(n_iters, t.min_evals) // 2)
        return ASHAScheduler(time_attr="training_iteration", max_t=n_iters, grace_period=grace), None
    return None, None


def _reporter(space_keys: list[str]):
    from ray.tune import CLIReporter

    params = {"branch_step": "branch"}
    params.update({k: k.split(".")[-1] for k in space_keys})
    metrics = {
        "regime": "regime",
        "rl_step": "RL step",
        "accuracy": "acc",
        "a_post": "A_post",
        "a_post_lo": "lo",
        "a_post_hi": "hi",
    }
    return CLIReporter(
        metric_columns=metrics, parameter_columns=params, max_report_frequency=30, sort_by_metric=False
    )


def _trainable(sweep: dict):
    from ray import tune

    from actors.placement import stack_bundles
    from cluster.tune_trial import BranchTrial

    cfg = from_dict(sweep["config"])
    with_params = tune.with_parameters(
        BranchTrial,
        base=sweep["config"],
        trunk_dir=sweep["trunk"],
        exp_dir=sweep["exp_dir"],
        driver_pgid=_driver_group(cfg),
    )
    return tune.with_resources(with_params, tune.PlacementGroupFactory(stack_bundles(cfg), strategy="PACK"))


def _branch_steps(trunk, cfg: Config) -> tuple[list[int], list[dict]]:
    """The trunk steps to branch from, and the regime items with no checkpoint on this trunk: reported and
    skipped, or (tune.strict_branch_points) a ConfigError before any trial."""
    if cfg.tune.strict_branch_points:
        return trunk.select(cfg.tune.branch_points), []
    steps, absent = trunk.select_present(cfg.tune.branch_points)
    for item in absent:
        print(f"warning: {item['message']}; that branch is reported absent, the others run", flush=True)
    if not steps:
        raise ConfigError(
            f"config key 'tune.branch_points': none of {cfg.tune.branch_points} names a checkpoint of trunk "
            f"{trunk.dir}"
        )
    return steps, absent


def _driver_group(cfg: Config) -> int | None:
    """The driver's process group, for faults.inject sweep@rl:N (a drill that SIGKILLs the whole sweep). Only a
    driver that leads its own group may be killed that way: otherwise the kill would reach whoever started it."""
    if not any(str(i).strip().startswith("sweep@") for i in cfg.faults.inject):
        return None
    if os.getpgrp() != os.getpid():
        raise ConfigError(
            "config key 'faults.inject': sweep@rl:N kills the sweep driver's process group, so the driver must "
            "lead its own (start it with setsid)"
        )
    return os.getpgrp()


def _cpus_needed(cfg: Config) -> float:
    from actors.placement import stack_bundles

    return sum(b["CPU"] for b in stack_bundles(cfg)) * cfg.tune.max_concurrent_trials


def _stop_lending_when_crowded(cfg: Config, cores: int) -> bool:
    """Concurrent trials that share cores they do not have: an engine lent its own learners' cores would still
    meet another trial's learners there, and OpenMP threads without a core stall each other. Turns
    rollout.borrow_learner_cpus off for the sweep's trials; True when it did."""
    crowded = cfg.tune.max_concurrent_trials > 1 and _cpus_needed(cfg) > cores
    if cfg.rollout.borrow_learner_cpus and crowded:
        cfg.rollout.borrow_learner_cpus = False
        return True
    return False


def run_sweep(cfg: Config | None = None, quiet: bool = False, resume: str | None = None) -> tuple[str, dict]:
    """Run (or resume) a sweep; returns (experiment folder, results report)."""
    from ray import tune

    from actors.chaos import parse_injections
    from cluster.resources import check_resources
    from cluster.runner import init_ray
    from cluster.sweep_results import write_results
    from cluster.trunk import ensure_trunk
    from switchpoint.prepare import resolve_paths

    t0 = time.time()
    if resume:
        sweep = load_sweep(resume)
        cfg = from_dict(sweep["config"])
        exp_dir = sweep["exp_dir"] = os.path.abspath(resume)
    else:
        specs = check_search(cfg)  # every search-space problem stops here, before a trunk or a trial
        parse_injections(cfg.faults.inject, sweep=True)  # a malformed faults.inject item, named
        _driver_group(cfg)
        trunk, trained = ensure_trunk(cfg, quiet)
        steps, absent = _branch_steps(trunk, cfg)
        cfg = resolve_paths(cfg)
        if _stop_lending_when_crowded(cfg, os.cpu_count() or 1) and not quiet:
            print(
                "rollout.borrow_learner_cpus off: the concurrent trials need more CPUs than this machine has"
            )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        exp_dir = os.path.join(cfg.run.output_dir, f"{cfg.run.name}-sweep-{stamp}")
        os.makedirs(exp_dir)
        sweep = {
            "config": to_dict(cfg),
            "trunk": trunk.dir,
            "trunk_trained_now": trained,
            "trunk_seconds": time.time() - t0 if trained else 0.0,
            "branch_steps": steps,
            "absent": absent,
            "exp_dir": exp_dir,
            "started": time.time(),
        }
        with open(os.path.join(exp_dir, SWEEP_FILE), "w") as f:
            json.dump(sweep, f, indent=2)
    t = cfg.tune
    n_iters = -(-cfg.rl.steps // cfg.rl.eval_every)
    init_ray(cfg, need_cpus=_cpus_needed(cfg))
    check_resources(cfg, rl=True)  # one trial's whole stack must fit, or the sweep would wait forever
    if not quiet:
        print(f"experiment folder: {exp_dir}\nbranch points: {sweep['branch_steps']}", flush=True)
    t_sweep = time.time()
    if resume:
        tuner = tune.Tuner.restore(exp_dir, _trainable(sweep), resume_unfinished=True, resume_errored=True)
    else:
        scheduler, stopper = _scheduler_and_stopper(cfg, exp_dir, n_iters, quiet)
        tuner = tune.Tuner(
            _trainable(sweep),
            param_space=to_param_space(cfg, sweep["branch_steps"], specs),
            tune_config=tune.TuneConfig(
                metric="accuracy",
                mode="max",
                search_alg=make_search_alg(t.search_alg),
                scheduler=scheduler,
                num_samples=t.num_samples,
                max_concurrent_trials=t.max_concurrent_trials,
                reuse_actors=t.reuse_actors,
            ),
            run_config=tune.RunConfig(
                name=os.path.basename(exp_dir),
                storage_path=os.path.dirname(exp_dir),
                stop=stopper,
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=2, checkpoint_frequency=t.checkpoint_every
                ),
                failure_config=tune.FailureConfig(max_failures=1),
                progress_reporter=None if quiet else _reporter(sorted(specs)),
                verbose=0 if quiet else 1,
            ),
        )
    grid = tuner.fit()
    errors = [str(r.error) for r in grid if r.error is not None]
    report = write_results(exp_dir, sweep_seconds=time.time() - t_sweep, errors=errors)
    return exp_dir, report


def load_sweep(exp_dir: str) -> dict:
    path = os.path.join(exp_dir, SWEEP_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{exp_dir} is not a sweep folder (no {SWEEP_FILE})")
    with open(path) as f:
        return json.load(f)


def cmd_tune(args) -> int:
    from cluster.sweep_results import format_results

    if args.resume:
        exp_dir, report = run_sweep(quiet=args.quiet, resume=args.resume)
    else:
        if not args.config:
            raise ConfigError("switchpoint tune needs CONFIG (or --resume EXPERIMENT_DIR)")
        exp_dir, report = run_sweep(load_config(args.config, args.set), quiet=args.quiet)
    print(format_results(report))
    return 0


DESCRIPTION = """\
Ray Tune search of branch points and RL settings on one SFT trunk: SFT runs once (or an existing trunk with the
same SFT settings is reused), then every RL branch (a trunk checkpoint x the tune.space settings) is a trial; the
ceiling stopper ends branches that cannot win. Writes OUTPUT_DIR/NAME-sweep-TIMESTAMP with results.csv/.json,
results.png and the recommended branch point; see docs/sweeps.md.
`switchpoint tune` and `python -m cluster.tune` (for `ray job submit`) are the same command."""

EXAMPLES = [
    "{prog} configs/tiny_sweep.yaml",
    "{prog} configs/micro_sweep.yaml --set 'tune.branch_points=[20, 40, 60]' --set tune.scheduler=fifo",
    "{prog} --resume runs/tiny_sweep-sweep-20261127-101500",
]


def add_arguments(p: argparse.ArgumentParser, config_flag: bool = False) -> None:
    """CONFIG first (--config still works, deprecated), as every switchpoint command; config_flag is unused and
    kept for callers of the old signature."""
    from cluster.cli_args import add_config, add_quiet, add_set

    add_config(p, "YAML config with a tune: section (see configs/)")
    add_set(p)
    p.add_argument("--resume", metavar="EXPERIMENT_DIR", help="continue an interrupted sweep")
    add_quiet(p, "no progress table")


def main(argv: list[str] | None = None) -> int:
    from cluster.cli_args import new_parser, run_command

    prog = "python -m cluster.tune"
    parser = new_parser(prog, DESCRIPTION, EXAMPLES)
    add_arguments(parser)
    return run_command(cmd_tune, parser.parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main())
