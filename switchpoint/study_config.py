"""The `study:` section of a study config (configs/study.yaml): which data sets, seeds and arms test the paper's
claims C1-C5. The rest of the file is an ordinary run config, the base every cell of the study starts from.

A data set is a name and the config keys that make it (e.g. `data.sft_fraction: 0.25`); the claims name data
sets by those names. `--quick` replaces the listed fields with the `quick:` section's values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import yaml

from switchpoint.config import (
    Config,
    ConfigError,
    build_section,
    from_dict,
    merge,
    parse_overrides,
    set_dotted,
    to_dict,
)
from switchpoint.trunk import parse_branch_point

REGIME_POINTS = ("adaptive:middle", "stable:last", "mild:middle", "severe:last")
BASELINES = ("luffy", "srft", "upt", "prefix_rft", "relift")


@dataclass
class StudyConfig:
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    """run.seed of each repetition: every cell (trunk and branches) runs once per seed; intervals are over seeds."""
    datasets: dict = field(default_factory=dict)
    """name -> {config key: value}: the overrides that make each SFT data set (same validation, RL and held-out
    sets for all). At least the data sets the claims below name."""
    sizes: list = field(default_factory=list)
    """C3: data set names from the smallest to the largest SFT set (one difficulty mix)."""
    difficulties: list = field(default_factory=list)
    """C4: data set names of equal size from the easiest to the hardest mix."""
    regimes_on: list = field(default_factory=list)
    """C2: data sets whose trunk is branched in every regime (the largest and the smallest)."""
    regime_points: list = field(default_factory=lambda: list(REGIME_POINTS))
    """C2: the branch points, one per regime (tune.branch_points items); an absent regime is reported."""
    sequential_point: str = "stable:last"
    """The sequential recipe's branch point (the paper's: Stable) on every data set."""
    methods_on: str = ""
    """C1: the data set on which sequential is compared with pure SFT, pure RL and the synchronized baselines."""
    baselines: list = field(default_factory=lambda: list(BASELINES))
    """C1: rl.algorithm of each synchronized baseline, each run from the base model (trunk step 0)."""
    quick: dict = field(default_factory=dict)
    """`--quick`: study fields (and `set:` config keys) replaced for the short run, e.g. {seeds: [0]}."""

    def dataset_names(self) -> list[str]:
        """Every data set a claim uses, in a stable order (sizes, difficulties, the rest)."""
        names = [*self.sizes, *self.difficulties, *self.regimes_on, self.methods_on]
        return list(dict.fromkeys(n for n in names if n))


def split_study(raw: dict) -> tuple[dict, dict]:
    """(run config mapping, study mapping) of a study file's top level."""
    raw = dict(raw)
    study = raw.pop("study", None)
    if not isinstance(study, dict):
        raise ConfigError("a study config needs a `study:` mapping (see configs/study.yaml)")
    return raw, study


def load_study(
    path: str, overrides: list[str] | None = None, quick: bool = False
) -> tuple[dict, StudyConfig]:
    """Read a study file: (base run config as a checked mapping, study settings). `--set` keys under `study.`
    change the study, the others the base config."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"study config not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"study config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    base, study_raw = split_study(raw)
    if quick:  # the quick variant's fields first, so a --set still wins
        q = dict(study_raw.get("quick") or {})
        merge(base, parse_overrides([f"{k}={v}" for k, v in (q.pop("set", None) or {}).items()]))
        study_raw.update(q)
    extra = parse_overrides(overrides or [])
    merge(study_raw, extra.pop("study", {}))
    base = to_dict(from_dict(merge(base, extra)))  # checked, every key present (data sets set them by name)
    study = build_section(StudyConfig, study_raw, "study.")
    check_study(base, study)
    return base, study


def check_study(base: dict, study: StudyConfig) -> None:
    """Every problem with a study's settings, named, before anything runs (each data set's config included)."""
    if not study.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in study.seeds):
        raise ConfigError(
            f"config key 'study.seeds' must be a non-empty list of integers, got {study.seeds!r}"
        )
    if len(set(study.seeds)) != len(study.seeds):
        raise ConfigError(f"config key 'study.seeds' repeats a seed: {study.seeds}")
    for key in ("sizes", "difficulties", "regimes_on"):
        for name in getattr(study, key):
            if name not in study.datasets:
                raise ConfigError(
                    f"config key 'study.{key}' names data set {name!r}, which study.datasets does not define "
                    f"(defined: {', '.join(study.datasets) or 'none'})"
                )
    if study.methods_on and study.methods_on not in study.datasets:
        raise ConfigError(
            f"config key 'study.methods_on' names data set {study.methods_on!r}, not in study.datasets"
        )
    for item in [*study.regime_points, study.sequential_point]:
        kind, value = parse_branch_point(item)
        if kind != "regime" or value[1] == "all":
            raise ConfigError(
                f"config key 'study.regime_points'/'study.sequential_point': {item!r} must name one checkpoint "
                "of a regime (e.g. stable:last)"
            )
    for name, overrides in study.datasets.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"config key 'study.datasets.{name}' must map config keys to values")
        try:
            dataset_config(base, overrides, study.seeds[0])
        except ConfigError as e:
            raise ConfigError(f"study data set {name!r}: {e}") from None
    from trainers import RL_OBJECTIVES

    for algorithm in study.baselines:
        if algorithm not in RL_OBJECTIVES:
            raise ConfigError(
                f"config key 'study.baselines': {algorithm!r} is not an rl.algorithm "
                f"({', '.join(sorted(RL_OBJECTIVES))})"
            )


def dataset_config(base: dict, overrides: dict, seed: int) -> Config:
    """The checked run config of one data set and seed."""
    raw = copy.deepcopy(base)
    for key, value in overrides.items():
        try:
            set_dotted(raw, key, value)
        except (KeyError, TypeError):
            raise ConfigError(f"unknown config key {key!r}") from None
    set_dotted(raw, "run.seed", seed)
    return from_dict(raw)
