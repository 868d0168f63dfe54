"""SFT trunks: one SFT run whose checkpoints RL branches start from, and the choice of branch points.

A trunk is a normal run folder (switch policy `never`) plus `trunk.json`: every validation checkpoint with its
validation loss, the regime judged online (losses seen so far) and in hindsight (the whole curve). A trunk is
identified by a key hashed from the settings that shape SFT, so a sweep with the same SFT settings finds and
reuses it instead of training it again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

from switchpoint.config import Config, ConfigError, flatten, to_dict

TRUNK_FILE = "trunk.json"
REGIMES = ("adaptive", "stable", "mild", "severe")
PICKS = ("first", "middle", "last", "all")
# Learner keys that act only after the switch: they do not change the trunk.
RL_ONLY_LEARNER_KEYS = ("rl_lr", "rl_betas", "reset_optimizer_at_switch")
# Data keys that say where and how fast the tokens are made, not which tokens: they do not change the trunk.
LOADING_DATA_KEYS = ("cache_dir", "num_proc")
# SFT keys that only measure (held-out accuracy during SFT): the trunk's weights and curve do not depend on them.
MEASURE_ONLY_SFT_KEYS = ("heldout_every",)
# What an SFT row holds of a held-out evaluation (RLStepper.evaluate's keys; pass@k for any k besides).
HELDOUT_KEYS = ("accuracy", "greedy_accuracy", "eval_prompts", "eval_samples", "eval_seconds", "eval_status")


def sft_settings(cfg: Config) -> dict:
    """The settings that shape the SFT trunk, flattened to dotted keys (paths as written in the config)."""
    raw = to_dict(cfg)
    learner = {k: v for k, v in raw["learner"].items() if k not in RL_ONLY_LEARNER_KEYS}
    nested = {
        "run": {"seed": raw["run"]["seed"]},
        "model": raw["model"],
        "data": {k: v for k, v in raw["data"].items() if k not in LOADING_DATA_KEYS},
        "learner": learner,
        "sft": {k: v for k, v in raw["sft"].items() if k not in MEASURE_ONLY_SFT_KEYS},
    }
    flat = flatten(nested)
    # The study knobs at their off values are left out, so trunks trained before they existed keep their keys.
    study_keys = ("data.layout", "data.shared_mix", "data.sft_mix", "data.sft_fraction")
    if [flat[k] for k in study_keys] == ["classic", [], [], 1.0]:
        for key in study_keys:
            del flat[key]
    if flat["model.pretrain.steps"] == 0:
        flat = {k: v for k, v in flat.items() if not k.startswith("model.pretrain.")}
    return flat


def is_trunk_key(key: str) -> bool:
    """Does this dotted config key shape the trunk (so a sweep over one trunk cannot search it)?"""
    top = key.split(".", 1)[0]
    if top in ("model", "data") or key == "run.seed":
        return True
    if top == "sft":
        return key.split(".", 1)[-1] not in MEASURE_ONLY_SFT_KEYS
    return top == "learner" and key.split(".", 1)[-1] not in RL_ONLY_LEARNER_KEYS


def trunk_key(cfg: Config) -> str:
    blob = json.dumps(sft_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_trunk_dir(cfg: Config) -> str:
    """OUTPUT_DIR/trunks/trunk-KEY: found by any config with the same SFT settings, whatever its run name."""
    return os.path.join(cfg.run.output_dir, "trunks", f"trunk-{trunk_key(cfg)}")


def trunk_config(cfg: Config) -> Config:
    """The config a trunk is trained with: the same SFT, policy `never` (no RL), every checkpoint kept (each is a
    branch point)."""
    out = copy.deepcopy(cfg)
    out.switch.policy = "never"
    out.checkpoint.keep_last_hf = 0
    # A sweep's kills of its own driver (faults.inject sweep@rl:N) belong to its branches, not to its SFT.
    out.faults.inject = [i for i in out.faults.inject if not str(i).strip().startswith("sweep@")]
    return out


class AbsentRegime(ConfigError):
    """A branch point names a hindsight regime that has no checkpoint on this trunk."""

    def __init__(self, regime: str, message: str):
        super().__init__(message)
        self.regime = regime


@dataclass
class TrunkCheckpoint:
    step: int
    """SFT step of the checkpoint."""
    val_loss: float
    """Validation loss at this step."""
    regime: str
    """Hindsight regime on the whole trunk curve (the paper's labels)."""
    online_regime: str
    """Regime judged at the time with the losses seen so far (what an online policy knew)."""
    path: str
    """Hugging Face checkpoint folder."""
    flops: float
    """SFT compute up to this step."""
    heldout: dict = field(default_factory=dict)
    """Held-out accuracy measured at this checkpoint during SFT (sft.heldout_every: accuracy, pass@k, ...), as
    its SFT row logged it; {} where none was measured. A branch carries it so its run draws P over SFT compute."""


@dataclass
class Trunk:
    dir: str
    """The trunk's run folder."""
    key: str
    """Hash of the SFT settings."""
    settings: dict
    """The SFT settings the key was made from (dotted keys)."""
    delta: float
    """Stable band used for the labels."""
    delta2: float
    """Severe threshold used for the labels."""
    checkpoints: list[TrunkCheckpoint] = field(default_factory=list)
    """Every validation checkpoint, by step."""
    stopped: str = ""
    """Why SFT stopped (budget, or Severe for N validations)."""

    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    def checkpoint(self, step: int) -> TrunkCheckpoint:
        for c in self.checkpoints:
            if c.step == step:
                return c
        raise ConfigError(
            f"trunk {self.dir} has no checkpoint at step {step}; it has steps {_ranges(self.steps())}"
        )

    def branch_decision(self, switch):
        """Where a branch with these switch settings starts: step:N, or the online policy replayed on the
        trunk's curve (its decision, or the last checkpoint if it never fires)."""
        from plasticity.regimes import Decision, make_policy

        if switch.policy == "never":
            raise ConfigError("a run from a trunk needs a switch policy other than 'never' (switch.policy)")
        policy = make_policy(switch.policy, switch.delta, switch.delta2, switch.patience)
        if switch.policy.startswith("step:"):
            self.checkpoint(policy.at_step)  # a branch starts at that very checkpoint, not the next one
        decision = None
        for c in self.checkpoints:
            decision = policy.observe(c.step, c.val_loss)
            if decision is not None:
                break
        if decision is None:
            last = self.checkpoints[-1].step
            decision = Decision(last, last, "the trunk's last checkpoint (the policy did not fire on it)")
        at = self.checkpoint(decision.from_step).step
        why = f"branch from trunk {os.path.basename(self.dir)} at step {at} ({decision.reason})"
        return Decision(decision.step, at, why)

    def sft_rows(self, up_to: int) -> list[dict]:
        """The trunk's validation rows up to a step, as metrics rows of a run that branched there."""
        return [
            {
                "phase": "sft",
                "step": c.step,
                "val_loss": c.val_loss,
                "regime": c.online_regime,
                "flops": c.flops,
                "checkpoint": c.path,
                **c.heldout,
                "from_trunk": True,
            }
            for c in self.checkpoints
            if c.step <= up_to
        ]

    def losses_up_to(self, step: int) -> list[list]:
        return [[c.step, c.val_loss] for c in self.checkpoints if c.step <= step]

    def select(self, specs: list) -> list[int]:
        """Branch steps named by `tune.branch_points` items (steps, regimes with a pick, or all), in order; a
        ConfigError for an item that names no checkpoint."""
        steps, absent = self.select_present(specs)
        if absent:
            raise ConfigError(absent[0]["message"])
        return steps

    def select_present(self, specs: list) -> tuple[list[int], list[dict]]:
        """(steps, absent): the steps of the items that name checkpoints, and for each regime item that names
        none (a trunk that jumps from Stable to Severe has no Mild checkpoint) {"spec", "regime", "message"}.
        A step the trunk does not have is a mistake in the config, not an absent regime: it raises."""
        out: list[int] = []
        absent: list[dict] = []
        for spec in specs:
            try:
                found = self._select_one(spec)
            except AbsentRegime as e:
                absent.append({"spec": str(spec), "regime": e.regime, "message": str(e)})
                continue
            for step in found:
                if step not in out:
                    out.append(step)
        return out, absent

    def _select_one(self, spec) -> list[int]:
        kind, value = parse_branch_point(spec)
        if kind == "step":
            return [self.checkpoint(value).step]
        if kind == "all":
            return self.steps()
        regime, pick = value
        steps = [c.step for c in self.checkpoints if c.regime == regime]
        if not steps:
            counts = {r: sum(c.regime == r for c in self.checkpoints) for r in REGIMES}
            have = ", ".join(f"{r} {n}" for r, n in counts.items())
            raise AbsentRegime(
                regime,
                f"config key 'tune.branch_points': {spec!r} names no checkpoint; trunk {self.dir} has "
                f"checkpoints per hindsight regime: {have}",
            )
        if pick == "all":
            return steps
        return [{"first": steps[0], "middle": steps[len(steps) // 2], "last": steps[-1]}[pick]]

    def to_json(self) -> dict:
        return asdict(self)


def _ranges(steps: list[int]) -> str:
    if len(steps) <= 6:
        return ", ".join(map(str, steps))
    gap = steps[1] - steps[0]
    return f"{steps[0]}, {steps[1]}, ... {steps[-1]} (every {gap})"


def parse_branch_point(spec) -> tuple[str, object]:
    """('step', N) | ('all', None) | ('regime', (name, pick)); a ConfigError naming the item otherwise."""
    if isinstance(spec, bool):
        spec = str(spec)
    if isinstance(spec, int):
        if spec < 0:
            raise ConfigError(f"config key 'tune.branch_points': step {spec} must be >= 0")
        return "step", spec
    text = str(spec).strip().lower()
    if text.isdigit():
        return "step", int(text)
    if text == "all":
        return "all", None
    regime, _, pick = text.partition(":")
    pick = pick or "all"
    if regime not in REGIMES or pick not in PICKS:
        raise ConfigError(
            f"config key 'tune.branch_points': cannot read {spec!r}; use a step (300), all, or a regime "
            f"({', '.join(REGIMES)}) optionally with :{' / :'.join(PICKS)}"
        )
    return "regime", (regime, pick)


def build_trunk(run_dir: str, cfg: Config, key: str, settings: dict) -> Trunk:
    """Read a finished trunk run folder and label its checkpoints (hindsight labels need the whole curve)."""
    from plasticity.regimes import label_regimes

    rows = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row.get("phase") == "sft" and row.get("val_loss") is not None:
                rows.append(row)
    if not rows:
        raise ValueError(f"trunk run {run_dir} has no validation rows in metrics.jsonl")
    labels = label_regimes([r["val_loss"] for r in rows], cfg.switch.delta, cfg.switch.delta2)
    summary_path = os.path.join(run_dir, "summary.json")
    stopped = ""
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            stopped = json.load(f).get("sft_stop_reason", "")
    ckpts = [
        TrunkCheckpoint(
            step=int(r["step"]),
            val_loss=float(r["val_loss"]),
            regime=label,
            online_regime=r.get("regime", ""),
            path=os.path.join(run_dir, r["checkpoint"]),
            flops=float(r.get("flops") or 0.0),
            heldout={k: v for k, v in r.items() if k in HELDOUT_KEYS or k.startswith("pass@")}
            if r.get("accuracy") is not None
            else {},
        )
        for r, label in zip(rows, labels)
    ]
    return Trunk(run_dir, key, settings, cfg.switch.delta, cfg.switch.delta2, ckpts, stopped)


def write_trunk(trunk: Trunk) -> str:
    path = os.path.join(trunk.dir, TRUNK_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(trunk.to_json(), f, indent=2)
    os.replace(tmp, path)  # a trunk.json on disk always means a complete trunk
    return path


def load_trunk(path: str) -> Trunk:
    manifest = os.path.join(path, TRUNK_FILE)
    if not os.path.isfile(manifest):
        raise FileNotFoundError(
            f"{path} is not a trunk folder (no {TRUNK_FILE}); make one with `switchpoint trunk CONFIG`"
        )
    with open(manifest) as f:
        raw = json.load(f)
    raw["checkpoints"] = [TrunkCheckpoint(**c) for c in raw["checkpoints"]]
    trunk = Trunk(**raw)
    trunk.dir = os.path.abspath(path)  # the folder may have moved since it was written
    for c in trunk.checkpoints:
        c.path = os.path.join(trunk.dir, "checkpoints", os.path.basename(c.path))
    return trunk


def settings_diff(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ, with both values, for an error line."""
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
