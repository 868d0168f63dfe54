"""Entry point for `ray job submit -- python -m cluster.job --config CONFIG [--set k=v ...]`.

Inside a submitted job RAY_ADDRESS is set, so the run joins that cluster; run alone it starts a local Ray.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.job")
    parser.add_argument("--config", help="YAML run config")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run (its own config)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    args = parser.parse_args(argv)

    from actors.fault_events import FaultLimitError
    from cluster.runner import print_summary, run_pipeline
    from switchpoint.config import ConfigError, load_config

    try:
        if args.resume:
            if args.config or args.set:
                raise ValueError(
                    "--resume RUN_DIR takes the run's own config.yaml: give no --config or --set"
                )
            run_dir, summary = run_pipeline(None, resume=args.resume)
        elif not args.config:
            raise ValueError("give --config CONFIG (or --resume RUN_DIR)")
        else:
            run_dir, summary = run_pipeline(load_config(args.config, args.set))
    except FaultLimitError as e:
        print(f"switchpoint: stopped: {e}", file=sys.stderr)
        return 3
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"switchpoint: error: {e}", file=sys.stderr)
        return 2
    print_summary(run_dir, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
