"""What every switchpoint command line shares, so `switchpoint run/trunk/tune/study` and `python -m cluster.job /
cluster.tune / cluster.study` take the same arguments: CONFIG as the first argument (`--config CONFIG` still works,
with a deprecation note), `--set KEY=VALUE`, `--quiet`; the help layout (a description, every default shown, an
example); and how an error ends a command (one line, exit 2; a fault limit exit 3)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and examples keep their line breaks; every option's default is shown, except the empty ones
    (None, an empty list, a flag that is off), which say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)


def add_parser(
    subparsers, name: str, help: str, description: str, examples: list[str]
) -> argparse.ArgumentParser:
    """A subcommand with a description, shown defaults and its examples (written with `{prog}`)."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=examples_text(f"switchpoint {name}", examples),
        formatter_class=HelpFormatter,
    )


def new_parser(prog: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    """The parser of a `python -m cluster.*` entry point, laid out as its `switchpoint` subcommand."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=examples_text(prog, examples),
        formatter_class=HelpFormatter,
    )


def examples_text(prog: str, examples: list[str]) -> str:
    return "examples:\n" + "\n".join("  " + e.format(prog=prog) for e in examples)


def add_config(p: argparse.ArgumentParser, what: str = "YAML run config (see configs/)") -> None:
    """CONFIG as the first argument; `--config CONFIG` kept for old scripts (take_config says it is deprecated)."""
    p.add_argument("config", nargs="?", metavar="CONFIG", help=what)
    p.add_argument(
        "--config",
        dest="config_flag",
        metavar="CONFIG",
        help="deprecated spelling of CONFIG (still works; give the config as the first argument)",
    )


def add_set(p: argparse.ArgumentParser, extra: str = "") -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key{extra}, e.g. --set rl.steps=20 (repeatable)",
    )


def add_quiet(p: argparse.ArgumentParser, what: str = "no progress line") -> None:
    p.add_argument("--quiet", action="store_true", help=what)


def take_config(args: argparse.Namespace, prog: str) -> None:
    """Fold the deprecated `--config CONFIG` into args.config, with a note on stderr; both forms at once must
    name the same file."""
    flag = getattr(args, "config_flag", None)
    if not flag:
        return
    if args.config and args.config != flag:
        raise ValueError(
            f"two configs given ({args.config} and --config {flag}): give one, as the first argument"
        )
    print(
        f"{prog}: --config is deprecated; give the config as the first argument: {prog} {flag} [options]",
        file=sys.stderr,
    )
    args.config = flag


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    """Run a parsed command; a bad config, file or value ends it with one `switchpoint: error:` line (exit 2), a
    run stopped by its fault limit with `switchpoint: stopped:` (exit 3). Anything else keeps its traceback."""
    from actors.fault_events import FaultLimitError
    from switchpoint.config import ConfigError

    try:
        take_config(args, prog)
        return func(args)
    except FaultLimitError as e:
        print(f"switchpoint: stopped: {e}", file=sys.stderr)
        return 3
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"switchpoint: error: {e}", file=sys.stderr)
        return 2
