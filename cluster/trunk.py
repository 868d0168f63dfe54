"""`switchpoint trunk CONFIG`: train the SFT trunk once (or find it), label its checkpoints, print them.

A trunk is reused whenever a later sweep names it (`tune.trunk`) or has the same SFT settings (the folder
OUTPUT_DIR/trunks/trunk-KEY); it is never trained twice. A folder left without trunk.json by an interrupted
training is moved aside (trunk-KEY.incomplete-TIMESTAMP) and trained anew.
"""

from __future__ import annotations

import copy
import os
import time

from switchpoint.config import Config, ConfigError
from switchpoint.trunk import (
    TRUNK_FILE,
    Trunk,
    build_trunk,
    default_trunk_dir,
    load_trunk,
    settings_diff,
    sft_settings,
    trunk_config,
    trunk_key,
    write_trunk,
)


def check_trunk_matches(trunk: Trunk, cfg: Config) -> None:
    """A branch must come from a trunk trained with its own SFT settings; name every key that differs."""
    if trunk.key != trunk_key(cfg):
        diff = settings_diff(trunk.settings, sft_settings(cfg))
        raise ConfigError(
            f"trunk {trunk.dir} was trained with other SFT settings than this config: "
            + "; ".join(diff[:6])
            + (f" (+{len(diff) - 6} more)" if len(diff) > 6 else "")
        )


def ensure_trunk(cfg: Config, quiet: bool = False) -> tuple[Trunk, bool]:
    """The trunk for cfg's SFT settings: (trunk, trained_now). cfg paths as written (not yet resolved)."""
    path = os.path.abspath(cfg.tune.trunk or default_trunk_dir(cfg))
    if os.path.isfile(os.path.join(path, TRUNK_FILE)):
        trunk = load_trunk(path)
        check_trunk_matches(trunk, cfg)
        if not quiet:
            print(f"trunk: reusing {path} ({len(trunk.checkpoints)} checkpoints)", flush=True)
        return trunk, False
    from actors.run_state import ResumeStates
    from cluster.runner import run_pipeline

    key, settings = trunk_key(cfg), sft_settings(cfg)
    tcfg = trunk_config(copy.deepcopy(cfg))
    resumable = os.path.isfile(os.path.join(path, "config.yaml")) and ResumeStates(path).latest() is not None
    if resumable:
        # An interrupted trunk: SFT goes on from its last resume state instead of starting over.
        if not quiet:
            print(f"trunk: {path} was interrupted; resuming its SFT", flush=True)
        run_dir, _ = run_pipeline(None, quiet=quiet, resume=path)
    else:
        if os.path.isdir(path) and os.listdir(path):
            aside = f"{path}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(path, aside)
            if not quiet:
                print(
                    f"trunk: {path} has no {TRUNK_FILE} and nothing to resume; moved to {aside}", flush=True
                )
        if not quiet:
            print(f"trunk: training SFT to step {cfg.sft.max_steps} into {path}", flush=True)
        run_dir, _ = run_pipeline(tcfg, quiet=quiet, run_dir=path)
    trunk = build_trunk(run_dir, tcfg, key, settings)
    write_trunk(trunk)
    return load_trunk(run_dir), True


def format_trunk(trunk: Trunk) -> str:
    lines = [f"trunk {trunk.dir} (key {trunk.key}; {trunk.stopped or 'complete'})"]
    lines.append(f"{'step':>6} {'val loss':>9} {'online':<9} {'hindsight':<9}")
    for c in trunk.checkpoints:
        lines.append(f"{c.step:>6} {c.val_loss:>9.4f} {c.online_regime:<9} {c.regime:<9}")
    counts = {
        r: sum(c.regime == r for c in trunk.checkpoints) for r in ("adaptive", "stable", "mild", "severe")
    }
    lines.append("checkpoints per hindsight regime: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def cmd_trunk(args) -> int:
    from switchpoint.config import load_config

    if not args.config:
        raise ConfigError("switchpoint trunk needs a CONFIG (e.g. configs/tiny_sweep.yaml)")
    cfg = load_config(args.config, args.set)
    trunk, _ = ensure_trunk(cfg, quiet=args.quiet)
    print(format_trunk(trunk))
    return 0
