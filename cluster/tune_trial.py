"""One Tune trial = one RL branch from the trunk; the ceiling stopper that watches the trials.

BranchTrial is a class trainable: its step() runs RL up to the next held-out evaluation and returns the report,
so a stop decided on a report costs no extra compute. The learner ranks, vLLM engines and verifier workers live
in the trial process on the bundles of the trial's placement group; with reuse_actors, Tune hands the same
process the next trial (reset_config), which loads its branch's checkpoint into the live actors.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time

import ray
from ray import tune

from actors.branch import BranchController
from actors.chaos import parse_injections
from actors.placement import Placement
from actors.run_state import ResumeStates
from plasticity.early_stop import CeilingRule, partial_fit
from switchpoint.config import from_dict, set_dotted, to_dict

FIT_KEYS = ("status", "a_post", "a_post_lo", "a_post_hi", "pl_rl", "c_mid", "b", "n_points")


def branch_config(base: dict, trial_config: dict, trial_id: str) -> dict:
    """The trial's full config: the base, the searched keys, and the branch point as switch.policy=step:N."""
    cfg = copy.deepcopy(base)
    for key, value in trial_config.items():
        if key == "branch_step":
            cfg["switch"]["policy"] = f"step:{int(value)}"
        else:
            set_dotted(cfg, key, value)
    cfg["run"]["name"] = f"branch-{trial_id}"
    return to_dict(from_dict(cfg))


class BranchTrial(tune.Trainable):
    """One branch as a Tune trial. Its resume states live in its own run folder (RUN_DIR/resume, the atomic states
    `switchpoint run --resume` uses), written after every `tune.checkpoint_every`-th evaluation and at the end,
    before Tune hears of the result. A trial that starts (fresh, restored by Tuner.restore, or retried) continues
    from the newest of them whatever Tune's experiment snapshot recorded; Tune's own checkpoint is a pointer."""

    def setup(self, config, base=None, trunk_dir=None, exp_dir=None, driver_pgid=None):
        self.base, self.trunk_dir, self.exp_dir, self.driver_pgid = base, trunk_dir, exp_dir, driver_pgid
        self.ctl: BranchController | None = None
        self.kills = [
            step
            for role, _, step in parse_injections(base["faults"]["inject"], sweep=True)
            if role == "sweep"
        ]
        self._configure(config)

    def _configure(self, config) -> None:
        self.branch_cfg = branch_config(self.base, config, self.trial_id)
        self.run_dir = os.path.join(
            self.exp_dir, "branches", f"{self.trial_id}-step{int(config['branch_step'])}"
        )
        self.states = ResumeStates(self.run_dir, keep_last=2)
        self.opened = False

    def _stack(self) -> BranchController:
        if self.ctl is None:
            pg = ray.util.get_current_placement_group()
            cfg = from_dict(self.branch_cfg)
            self.ctl = BranchController(self.branch_cfg, Placement.in_group(pg, cfg) if pg else None)
        return self.ctl

    def _open_or_resume(self) -> None:
        """Continue from the branch's newest own state; start it afresh (and say so) when it has none."""
        ctl = self._stack()
        latest = self.states.latest()
        if latest is not None:
            ctl.restore(latest[0])
            print(f"trial {self.trial_id}: resumed at RL step {ctl.i} from {latest[0]}", flush=True)
        else:
            earlier = os.path.isfile(os.path.join(self.run_dir, "metrics.jsonl"))
            ctl.open(self.branch_cfg, self.run_dir, self.trunk_dir)
            if earlier:  # an attempt that died before its first state: nothing to continue from
                ctl.summary["resumes"] = [{"rl_step": 0, "state": None}]
                print(f"trial {self.trial_id}: no resume state in {self.run_dir}; started afresh", flush=True)
            self._kill_point(0)
        self.opened = True

    def _write_state(self) -> None:
        partial = self.states.begin("rl", self.ctl.i)
        self.ctl.save(partial)
        self.states.commit(partial, {"rl_step": self.ctl.i, "done": self.ctl.done})
        self._kill_point(self.ctl.i)

    def _kill_point(self, rl_step: int) -> None:
        """faults.inject sweep@rl:N (drills): SIGKILL the sweep driver's process group here. The items fire once
        each, in the order given, so a list can reach a later trial: the first not yet fired is the armed one."""
        if not self.kills or self.driver_pgid is None:
            return
        fired = os.path.join(self.exp_dir, "injected_kills.jsonl")
        done = len(open(fired).read().split()) if os.path.isfile(fired) else 0
        if done >= len(self.kills) or self.kills[done] != rl_step:
            return
        with open(fired, "a") as f:
            f.write(f"sweep@rl:{rl_step}\n")
            f.flush()
            os.fsync(f.fileno())
        os.killpg(self.driver_pgid, signal.SIGKILL)

    def step(self) -> dict:
        if not self.opened:
            self._open_or_resume()
        ctl = self.ctl
        ev = ctl.advance()
        evals = ctl.evals
        p_sft = evals[0]["accuracy"]
        fit = partial_fit([e["flops"] for e in evals], [e["accuracy"] for e in evals], p_sft)
        switch = ctl.summary["switch"]
        result = {
            "branch_step": switch["step"],
            "regime": switch["regime"],
            "p_sft": p_sft,
            "accuracy": ev["accuracy"],
            "greedy_accuracy": ev.get("greedy_accuracy"),
            "best_accuracy": max(e["accuracy"] for e in evals),
            "reward": evals[-1]["reward"],
            "rl_step": ctl.i,
            "evals": len(evals) - 1,
            "rl_flops": evals[-1]["flops"],
            "fit_status": fit["status"],
            **{k: fit[k] for k in FIT_KEYS if k != "status"},
            "startup_seconds": ctl.summary.get("startup_seconds"),
            "actors_reused": ctl.summary.get("actors_reused"),
            "run_dir": self.run_dir,
        }
        ctl.summary["fit_so_far"] = fit
        if ctl.done or (len(evals) - 1) % self.base["tune"]["checkpoint_every"] == 0:
            self._write_state()
        if ctl.done:
            ctl.close(stopped_early=False)
            result["done"] = True
        return result

    def save_checkpoint(self, checkpoint_dir: str):
        # The state itself is in the run folder (written in step()); Tune's checkpoint only says which step.
        if self.ctl is None:
            return None
        with open(os.path.join(checkpoint_dir, "branch_pointer.json"), "w") as f:
            json.dump({"run_dir": self.run_dir, "rl_step": self.ctl.i}, f)
        return checkpoint_dir

    def load_checkpoint(self, checkpoint) -> None:
        # Whatever Tune's snapshot recorded, the run folder's newest state is at least as new: continue from it.
        path = checkpoint if isinstance(checkpoint, str) else checkpoint.path
        if self.states.latest() is None and os.path.isfile(os.path.join(path, "branch.json")):
            self._stack().restore(
                path
            )  # a checkpoint of a sweep started before the states moved to the run folder
            self.opened = True
            return
        self._open_or_resume()

    def _close_current(self) -> None:
        if self.ctl is not None and self.ctl.folder is not None:
            self.ctl.close(stopped_early=not self.ctl.done)

    def reset_config(self, new_config) -> bool:
        self._close_current()
        cfg = branch_config(self.base, new_config, self.trial_id)
        if self.ctl is not None and not self.ctl.can_host(cfg):
            self.ctl._shutdown()  # the next trial needs actors of another shape
            return False
        self._configure(new_config)
        return True

    def cleanup(self) -> None:
        if self.ctl is not None:
            self._close_current()
            self.ctl._shutdown()


class CeilingStopper(tune.Stopper):
    """Tune's side of plasticity.early_stop.CeilingRule: feeds it every report, records every stop.

    The rule's state lives in EXP/ceiling_stopper.json (not in the pickled stopper), so a resumed sweep knows
    the branches that finished before the interruption; each stop is a line of EXP/early_stops.jsonl."""

    def __init__(self, exp_dir: str, min_evals: int, confirm: int, quiet: bool = False):
        self.exp_dir, self.min_evals, self.confirm, self.quiet = exp_dir, min_evals, confirm, quiet
        self.rule: CeilingRule | None = None

    def __getstate__(self):
        return dict(self.__dict__, rule=None)  # always reload the state file after unpickling

    @property
    def state_path(self) -> str:
        return os.path.join(self.exp_dir, "ceiling_stopper.json")

    def _rule(self) -> CeilingRule:
        if self.rule is None:
            if os.path.isfile(self.state_path):
                with open(self.state_path) as f:
                    self.rule = CeilingRule.from_dict(json.load(f))
            else:
                self.rule = CeilingRule(self.min_evals, self.confirm)
        return self.rule

    def __call__(self, trial_id: str, result: dict) -> bool:
        if "evals" not in result:
            return False
        rule = self._rule()
        fit = {k: result.get(k) for k in FIT_KEYS if k != "status"}
        fit["status"] = result.get("fit_status")
        record = rule.observe(trial_id, int(result["evals"]), float(result["best_accuracy"]), fit)
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rule.to_dict(), f)
        os.replace(tmp, self.state_path)
        if record is None or result.get("done"):
            return False
        record.update(
            branch_step=result["branch_step"],
            regime=result["regime"],
            rl_step=result["rl_step"],
            rl_flops=result["rl_flops"],
            accuracy=result["accuracy"],
            time=time.time(),
        )
        with open(os.path.join(self.exp_dir, "early_stops.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if not self.quiet:
            print(
                f"ceiling stopper: stop {trial_id} (branch step {result['branch_step']}, "
                f"{result['regime']}) at RL step {result['rl_step']}: {record['reason']}",
                flush=True,
            )
        return True

    def stop_all(self) -> bool:
        return False
