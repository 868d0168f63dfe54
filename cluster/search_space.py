"""The `tune:` section read into a Ray Tune search space, with one-line errors before any trial starts.

Domains are written as text and parsed here (never evaluated): `choice([a, b])`, `grid([a, b])`, `uniform(lo, hi)`,
`loguniform(lo, hi)`, `quniform(lo, hi, q)`, `qloguniform(lo, hi, q)`, `randint(lo, hi)`, `lograndint(lo, hi)`;
a YAML list is a grid; a plain value is fixed.
"""

from __future__ import annotations

import copy
import re

import yaml

from switchpoint.config import Config, ConfigError, flatten, from_dict, get_key, set_dotted, to_dict
from switchpoint.trunk import is_trunk_key, parse_branch_point

DOMAINS = {
    "choice": 1,
    "grid": 1,
    "uniform": 2,
    "loguniform": 2,
    "quniform": 3,
    "qloguniform": 3,
    "randint": 2,
    "lograndint": 2,
}
BASIC = ("grid", "random")
_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)
# Keys a branch cannot change: where outputs go, the branch point itself (tune.branch_points) and the sweep.
NOT_SEARCHABLE = ("run.name", "run.output_dir", "switch.policy")


def _number(v):
    if isinstance(v, str):
        try:
            return float(v)  # YAML 1.1 reads 1e-4 as text
        except ValueError:
            return v
    return v


def parse_domain(key: str, value) -> tuple[str, list]:
    """(kind, args): kind is a DOMAINS name or 'fixed'; lists become grids."""
    where = f"config key 'tune.space.{key}'"
    if isinstance(value, list):
        return "grid", [_number(v) for v in value]
    if isinstance(value, str):
        m = _CALL.match(value)
        if m:
            name, body = m.group(1), m.group(2)
            if name not in DOMAINS:
                raise ConfigError(f"{where}: unknown domain {name!r}; known: {', '.join(DOMAINS)}")
            try:
                args = yaml.safe_load(f"[{body}]")
            except yaml.YAMLError:
                raise ConfigError(f"{where}: cannot read the arguments of {value!r}") from None
            if len(args) != DOMAINS[name]:
                raise ConfigError(f"{where}: {name}() takes {DOMAINS[name]} argument(s), got {value!r}")
            if name in ("choice", "grid"):
                if not isinstance(args[0], list) or not args[0]:
                    raise ConfigError(f"{where}: {name}() takes one non-empty list, e.g. {name}([1, 2])")
                return name, [_number(v) for v in args[0]]
            args = [_number(a) for a in args]
            if not all(isinstance(a, (int, float)) for a in args) or not args[0] < args[1]:
                raise ConfigError(f"{where}: {value!r} needs numbers with low < high")
            if name.startswith("log") or name.startswith("qlog"):
                if args[0] <= 0:
                    raise ConfigError(f"{where}: {value!r} needs low > 0 on a log scale")
            return name, args
    return "fixed", [_number(value)]


def _values_to_check(kind: str, args: list) -> list:
    if kind in ("grid", "choice", "fixed"):
        return list(args)
    if kind in ("randint", "lograndint"):
        return [int(args[0]), int(args[1]) - 1]
    return [args[0], args[1]]


def check_search(cfg: Config) -> dict[str, tuple[str, list]]:
    """Validate the `tune:` section; returns {dotted key: (kind, args)}. Raises ConfigError naming the item."""
    t = cfg.tune
    if not t.branch_points:
        raise ConfigError("config key 'tune.branch_points' is empty; name at least one step, regime or all")
    for spec in t.branch_points:
        kind, value = parse_branch_point(spec)
        if kind == "step":
            if value % cfg.sft.eval_every and value != cfg.sft.max_steps:
                raise ConfigError(
                    f"config key 'tune.branch_points': step {value} has no checkpoint; trunks save one every "
                    f"sft.eval_every={cfg.sft.eval_every} steps"
                )
            if value > cfg.sft.max_steps:
                raise ConfigError(
                    f"config key 'tune.branch_points': step {value} is past sft.max_steps={cfg.sft.max_steps}"
                )
    make_search_alg(t.search_alg)
    base = to_dict(cfg)
    specs = {}
    for key, value in flatten(t.space).items():
        try:
            get_key(cfg, key)
        except AttributeError:
            raise ConfigError(f"config key 'tune.space.{key}': {key!r} is not a config key") from None
        if key.startswith("tune.") or key in NOT_SEARCHABLE:
            raise ConfigError(f"config key 'tune.space.{key}': {key!r} cannot be searched")
        if is_trunk_key(key):
            raise ConfigError(
                f"config key 'tune.space.{key}': {key!r} shapes the SFT trunk; a sweep branches one trunk "
                "(search RL settings, or run one sweep per trunk)"
            )
        kind, args = parse_domain(key, value)
        for v in _values_to_check(kind, args):
            trial = copy.deepcopy(base)
            set_dotted(trial, key, v)
            try:
                from_dict(trial)
            except ConfigError as e:
                raise ConfigError(f"config key 'tune.space.{key}': value {v!r}: {e}") from None
        specs[key] = (kind, args)
    return specs


def make_search_alg(name: str):
    """None for grid/random (Tune's basic variant generator), else the named Tune searcher."""
    if name in BASIC:
        return None
    from ray.tune.search import SEARCH_ALG_IMPORT, create_searcher

    known = [k for k in SEARCH_ALG_IMPORT if k not in ("variant_generator", "random")]
    if name not in known:
        raise ConfigError(
            f"config key 'tune.search_alg': unknown searcher {name!r}; use grid, random or one of "
            f"{', '.join(known)}"
        )
    try:
        return create_searcher(name)
    except (ImportError, AssertionError) as e:
        raise ConfigError(
            f"config key 'tune.search_alg': searcher {name!r} needs its package ({str(e).splitlines()[0]})"
        ) from None


def to_param_space(cfg: Config, branch_steps: list[int], specs: dict[str, tuple[str, list]]) -> dict:
    """Tune's param_space: branch_step plus every searched key (dotted names, set on the config per trial)."""
    from ray import tune

    grid = cfg.tune.search_alg == "grid"

    def listed(values):
        return tune.grid_search(values) if grid else tune.choice(values)

    space = {"branch_step": listed(list(branch_steps))}
    for key, (kind, args) in specs.items():
        if kind == "fixed":
            space[key] = args[0]
        elif kind == "grid":
            space[key] = listed(args)
        elif kind == "choice":
            space[key] = tune.choice(args)
        else:
            space[key] = getattr(tune, kind)(*args)
    return space
