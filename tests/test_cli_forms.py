"""One CLI style: `switchpoint run/trunk/tune/study` and `python -m cluster.job/tune/study` take the same CONFIG
argument and flags; `--config CONFIG` still works with a deprecation note; every command's --help has a
description, shown defaults and an example. Fast: parsers in-process, three short subprocesses that stop at a bad
key before Ray starts."""

import argparse
import os
import subprocess
import sys

import pytest

from cluster import cli, job, study, tune
from cluster.cli_args import new_parser, run_command
from tests.conftest import REPO

COMMANDS = ["run", "trunk", "tune", "study", "analyze"]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _module_parser(module) -> argparse.ArgumentParser:
    """The parser `python -m cluster.X` builds (its main builds it the same way)."""
    parser = new_parser(
        f"python -m cluster.{module.__name__.split('.')[-1]}", module.DESCRIPTION, module.EXAMPLES
    )
    (job.add_run_arguments if module is job else module.add_arguments)(parser)
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    """Every argument: its flags (or positional name), nargs and default."""
    return {
        (a.option_strings[0] if a.option_strings else a.metavar or a.dest): (a.nargs, a.default)
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction)
    }


@pytest.mark.parametrize("name, module", [("run", job), ("tune", tune), ("study", study)])
def test_switchpoint_and_python_m_take_the_same_arguments(name, module):
    assert _options(_subparsers()[name]) == _options(_module_parser(module))


def test_job_has_from_trunk_and_quiet_like_run():
    opts = _options(_module_parser(job))
    assert {"CONFIG", "--config", "--set", "--quiet", "--from-trunk", "--resume"} <= set(opts)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_a_description_defaults_and_an_example(name):
    parser = _subparsers()[name]
    text = parser.format_help()
    assert parser.description and len(parser.description) > 80
    assert "examples:" in text and f"switchpoint {name} " in text.split("examples:")[1]
    text = " ".join(text.split())  # help lines wrap with the terminal
    if name == "analyze":
        assert "(default: 200)" in text and "(default: zero)" in text
    else:
        assert "CONFIG" in text and "--set KEY=VALUE" in text and "--quiet" in text
    assert "(default: None)" not in text  # empty defaults say nothing


@pytest.mark.parametrize("module", [job, tune, study])
def test_module_help_names_itself_in_its_examples(module):
    text = _module_parser(module).format_help()
    prog = f"python -m cluster.{module.__name__.split('.')[-1]}"
    assert text.startswith(f"usage: {prog}") and f"  {prog} configs/" in text


def test_eps_help_names_its_choices():
    action = next(a for a in _subparsers()["analyze"]._actions if "--eps" in a.option_strings)
    assert sorted(action.choices) == ["free", "search", "zero"]
    assert all(choice in action.help for choice in action.choices) and "both" in action.help


@pytest.mark.parametrize("argv", [["configs/micro.yaml"], ["--config", "configs/micro.yaml"]])
def test_both_config_forms_reach_the_command(argv, capsys):
    parser = _subparsers()["tune"]
    args = parser.parse_args([*argv, "--set", "rl.steps=2"])
    seen = {}
    assert run_command(lambda a: seen.setdefault("config", a.config) and 0, args, "switchpoint tune") == 0
    assert seen["config"] == "configs/micro.yaml" and args.set == ["rl.steps=2"]
    err = capsys.readouterr().err
    assert ("deprecated" in err) == ("--config" in argv)


def test_two_different_configs_are_refused(capsys):
    args = _subparsers()["run"].parse_args(["configs/micro.yaml", "--config", "configs/tiny.yaml"])
    assert run_command(lambda a: 0, args, "switchpoint run") == 2
    assert "two configs given" in capsys.readouterr().err


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_same_bad_key_gives_the_same_line_in_every_form():
    """A bad key stops before Ray starts, with one line; `--config` says it is deprecated but still works."""
    forms = {
        "switchpoint run": _cli("cluster.cli", "run", "configs/micro.yaml", "--set", "nosuch.key=1"),
        "python -m cluster.job": _cli("cluster.job", "configs/micro.yaml", "--set", "nosuch.key=1"),
        "python -m cluster.job --config": _cli(
            "cluster.job", "--config", "configs/micro.yaml", "--set", "nosuch.key=1"
        ),
    }
    lines = set()
    for form, r in forms.items():
        assert r.returncode == 2, (form, r.stderr[-2000:])
        errors = [line for line in r.stderr.splitlines() if line.startswith("switchpoint: error:")]
        assert len(errors) == 1 and "unknown config key 'nosuch'" in errors[0], (form, r.stderr[-2000:])
        lines.add(errors[0])
        assert ("--config is deprecated" in r.stderr) == form.endswith("--config")
    assert len(lines) == 1


def test_every_key_counted_by_every_says_what_it_counts():
    from docs.config_reference import field_docs

    docs = field_docs()
    counted = {
        (cls, name): text
        for cls, fields in docs.items()
        for name, text in fields.items()
        if name.endswith("_every")
    }
    assert len(counted) == 5
    for (cls, name), text in counted.items():
        assert text.startswith("Counts "), (cls, name, text)
