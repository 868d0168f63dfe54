"""The sweep's pieces without a cluster: the `tune:` section's checks, branch points on a trunk, the ceiling rule."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cluster.search_space import check_search, parse_domain
from plasticity.ceiling import ceiling_curve
from plasticity.early_stop import CeilingRule, partial_fit
from plasticity.regimes import label_regimes
from switchpoint.config import Config, ConfigError, load_config
from switchpoint.trunk import Trunk, TrunkCheckpoint, is_trunk_key, trunk_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SWEEP = os.path.join(REPO, "configs", "tiny_sweep.yaml")
MICRO_SWEEP = os.path.join(REPO, "configs", "micro_sweep.yaml")


def test_sweep_configs_parse_and_share_the_trunk_of_their_run_config():
    tiny_sweep, tiny = load_config(TINY_SWEEP), load_config(os.path.join(REPO, "configs", "tiny.yaml"))
    assert tiny_sweep.tune.branch_points and check_search(tiny_sweep)
    # Same SFT settings, so `switchpoint trunk configs/tiny.yaml` trains the trunk the tiny sweep branches from.
    assert trunk_key(tiny_sweep) == trunk_key(tiny)
    micro = load_config(os.path.join(REPO, "configs", "micro.yaml"))
    assert trunk_key(load_config(MICRO_SWEEP)) == trunk_key(micro)
    assert trunk_key(load_config(MICRO_SWEEP, ["learner.rl_lr=0.1"])) == trunk_key(micro)  # RL-only key
    assert trunk_key(load_config(MICRO_SWEEP, ["learner.lr=0.1"])) != trunk_key(micro)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("tune.space={learner.nope: [1, 2]}", "'learner.nope' is not a config key"),
        ("tune.space={learner.lr: [0.1, 0.2]}", "shapes the SFT trunk"),
        ("tune.space={sft.max_steps: [10]}", "shapes the SFT trunk"),
        ("tune.space={switch.policy: [stable]}", "cannot be searched"),
        ("tune.space={learner.rl_lr: 'lognormal(1, 2)'}", "unknown domain 'lognormal'"),
        ("tune.space={learner.rl_lr: 'loguniform(0, 1)'}", "low > 0"),
        ("tune.space={learner.rl_lr: 'uniform(2, 1)'}", "low < high"),
        ("tune.space={rl.algorithm: 'choice([dapo, ppo])'}", "value 'ppo'"),
        ("tune.search_alg=simulated_annealing", "unknown searcher 'simulated_annealing'"),
        ("tune.branch_points=[warm]", "cannot read 'warm'"),
        ("tune.branch_points=[stable:best]", "cannot read 'stable:best'"),
        ("tune.branch_points=[35]", "step 35 has no checkpoint"),
        ("tune.branch_points=[]", "'tune.branch_points' is empty"),
        ("tune.scheduler=hyperband", "'tune.scheduler'"),
    ],
)
def test_bad_search_space_is_named(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        check_search(load_config(MICRO_SWEEP, [override]))
    assert needle in str(e.value)


def test_domains_parse_without_eval():
    assert parse_domain("k", "loguniform(1e-5, 1e-3)") == ("loguniform", [1e-5, 1e-3])
    assert parse_domain("k", "choice([dapo, dr_grpo])") == ("choice", ["dapo", "dr_grpo"])
    assert parse_domain("k", [1e-4, 3e-4]) == ("grid", [1e-4, 3e-4])
    with pytest.raises(ConfigError, match="unknown domain '__import__'"):  # parsed as text, never run
        parse_domain("k", "__import__('os').system('x')")
    assert is_trunk_key("learner.warmup_steps") and not is_trunk_key("learner.rl_lr")


def test_bad_search_space_stops_the_cli_before_anything_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run(
        [sys.executable, "-m", "cluster.tune", MICRO_SWEEP, "--set", f"run.output_dir={tmp_path}",
         "--set", "tune.space={rl.nope: [1]}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "'tune.space.rl.nope'" in r.stderr
    assert list(tmp_path.iterdir()) == []  # no trunk, no experiment folder


def _trunk_from_curve(seed: str) -> Trunk:
    """A trunk manifest over a real measured tiny SFT curve (tests/data/tiny_sft_curves.json)."""
    with open(os.path.join(REPO, "tests", "data", "tiny_sft_curves.json")) as f:
        curve = json.load(f)["curves"][seed]
    steps, losses = [int(s) for s, _ in curve], [v for _, v in curve]
    labels = label_regimes(losses)
    ckpts = [TrunkCheckpoint(s, v, r, "", f"/t/step_{s:06d}", 0.0) for s, v, r in zip(steps, losses, labels)]
    return Trunk("/t", "k", {}, 0.02, 0.10, ckpts)


def test_branch_points_from_regimes_steps_and_all():
    trunk = _trunk_from_curve("seed0")
    by = {r: [c.step for c in trunk.checkpoints if c.regime == r] for r in ("adaptive", "stable", "mild")}
    expected = list(dict.fromkeys([by["stable"][0], by["stable"][-1]]))  # one item when first == last
    assert trunk.select(["stable:first", "stable:last"]) == expected
    assert trunk.select(["mild"]) == by["mild"]
    assert trunk.select(["adaptive:middle"]) == [by["adaptive"][len(by["adaptive"]) // 2]]
    assert trunk.select([by["stable"][0], "stable:first"]) == [by["stable"][0]]  # no duplicates
    assert trunk.select(["all"]) == trunk.steps()
    with pytest.raises(ConfigError, match="has no checkpoint at step 30"):
        trunk.select([30])


def test_regime_without_checkpoints_is_named():
    trunk = _trunk_from_curve("seed4")  # this seed jumps from Stable straight to Severe: no Mild checkpoint
    assert not any(c.regime == "mild" for c in trunk.checkpoints)
    with pytest.raises(ConfigError, match="'mild:first' names no checkpoint.*mild 0"):
        trunk.select(["mild:first"])


def test_an_absent_regime_is_reported_and_the_other_branches_run(capsys):
    from cluster.tune import _branch_steps

    trunk = _trunk_from_curve("seed4")
    stable = [c.step for c in trunk.checkpoints if c.regime == "stable"][-1]
    cfg = Config()
    cfg.tune.branch_points = ["stable:last", "mild:middle"]
    steps, absent = _branch_steps(trunk, cfg)
    assert steps == [stable] and [(a["spec"], a["regime"]) for a in absent] == [("mild:middle", "mild")]
    assert (
        "warning: config key 'tune.branch_points': 'mild:middle' names no checkpoint"
        in capsys.readouterr().out
    )
    cfg.tune.strict_branch_points = True  # a config may still ask for strictness
    with pytest.raises(ConfigError, match="'mild:middle' names no checkpoint"):
        _branch_steps(trunk, cfg)
    cfg.tune.strict_branch_points = False
    cfg.tune.branch_points = ["mild:first"]  # nothing left to run: an error, not an empty sweep
    with pytest.raises(ConfigError, match="none of .* names a checkpoint"):
        _branch_steps(trunk, cfg)
    with pytest.raises(ConfigError, match="has no checkpoint at step 30"):  # a wrong step is still a mistake
        trunk.select_present([30])


def _branch(a_post, p_sft=0.3, n=12, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e12, 3e13, n)
    p = ceiling_curve(x, p_sft, a_post, 3e12, 2.0) + rng.normal(0, noise, n)
    return list(x), list(p)


def _feed(rule, trial, x, p, p_sft=0.3, upto=None):
    out = None
    for k in range(1, (upto or len(x)) + 1):
        fit = partial_fit(x[:k], p[:k], p_sft)
        rec = rule.observe(trial, k, max(p[:k]), fit)
        out = out or (rec and dict(rec, at=k))
    return out


def test_ceiling_rule_stops_a_branch_that_cannot_reach_the_best():
    rule = CeilingRule(min_evals=6, confirm=2)
    x, p = _branch(0.8)
    assert _feed(rule, "good", x, p) is None
    x, p = _branch(0.45, seed=1)
    rec = _feed(rule, "poor", x, p)
    assert rec is not None and rec["at"] in (7, 8)  # needs 6 evaluations, then the condition twice in a row
    assert rec["fit"]["a_post_hi"] < rec["reference"] and "good" in rec["reference_from"]
    # The state survives a round trip through JSON (a resumed sweep keeps what it knew).
    again = CeilingRule.from_dict(json.loads(json.dumps(rule.to_dict())))
    assert again.branches["poor"].stopped and again.reference("x")[0] == rule.reference("x")[0]


def test_ceiling_rule_never_stops_on_one_noisy_point_or_the_best_branch():
    rule = CeilingRule(min_evals=6, confirm=2)
    x, p = _branch(0.8)
    _feed(rule, "good", x, p)
    x, p = _branch(0.8, seed=2)
    p[7] = 0.1  # one broken evaluation
    assert _feed(rule, "twin", x, p) is None
    first = CeilingRule(min_evals=6, confirm=2)
    x, p = _branch(0.45)
    assert _feed(first, "alone", x, p) is None  # nothing to compare with
    short = CeilingRule(min_evals=6, confirm=2)
    _feed(short, "good", *_branch(0.8))
    assert _feed(short, "poor", *_branch(0.45, seed=1), upto=5) is None  # too few evaluations yet


def test_trunk_stops_after_n_severe_validations():
    from plasticity.regimes import online_regime, severe_for

    with open(os.path.join(REPO, "tests", "data", "tiny_sft_curves.json")) as f:
        curve = [v for _, v in json.load(f)["curves"]["seed4"]]
    seen = [online_regime(curve[: i + 1]) for i in range(len(curve))]
    first = next(i for i in range(len(seen)) if severe_for(seen[: i + 1], 2))
    assert seen[first - 1 : first + 1] == ["severe", "severe"]  # two in a row, the first time
    assert not severe_for(seen, 0) and not severe_for(["severe", "mild"], 1)


def test_asha_is_available_by_name(tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    from cluster.tune import _scheduler_and_stopper
    from cluster.tune_trial import CeilingStopper

    asha, stop = _scheduler_and_stopper(
        load_config(MICRO_SWEEP, ["tune.scheduler=asha"]), str(tmp_path), 6, True
    )
    assert isinstance(asha, ASHAScheduler) and stop is None
    none, ceiling = _scheduler_and_stopper(load_config(MICRO_SWEEP), str(tmp_path), 6, True)
    assert none is None and isinstance(ceiling, CeilingStopper)


def test_a_branch_replays_its_switch_policy_on_the_trunk():
    trunk = _trunk_from_curve("seed0")
    tiny = load_config(os.path.join(REPO, "configs", "tiny.yaml"))
    stable = trunk.branch_decision(tiny.switch)  # the default policy, patience 4, on the whole trunk
    assert stable.from_step == 300 and trunk.checkpoint(300).regime == "stable"
    assert "branch from trunk" in stable.reason
    tiny.switch.policy = "step:140"
    assert trunk.branch_decision(tiny.switch).from_step == 140
    rows = trunk.sft_rows(140)
    assert [r["step"] for r in rows] == list(range(0, 141, 20)) and all(r["from_trunk"] for r in rows)
    tiny.switch.policy = "never"
    with pytest.raises(ConfigError, match="switch.policy"):
        trunk.branch_decision(tiny.switch)
