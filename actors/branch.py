"""BranchController: RL branches from an SFT trunk, one after another on the same live actors (a Tune trial).

The Controller's own pieces (switch from a trunk checkpoint, held-out evaluation, RL steps) driven one
evaluation interval at a time, so a Tune trial reports after each and can be stopped between them. The learner
ranks, vLLM engines and verifier workers start once; the next branch loads its checkpoint into them.
"""

from __future__ import annotations

import json
import os
import time

from actors.controller import Controller
from actors.placement import Placement
from actors.run_folder import RunFolder
from switchpoint.config import from_dict, to_dict
from switchpoint.trunk import load_trunk

# Settings the live actors were built with: a branch that changes any of them needs new actors.
STACK_KEYS = ("model", "data", "rollout", "verifier")
STACK_LEARNER_KEYS = ("num_ranks", "cpus_per_rank", "gpus_per_rank", "zero_stage", "torch_threads")


def stack_signature(cfg_dict: dict) -> dict:
    sig = {k: cfg_dict[k] for k in STACK_KEYS}
    sig["learner"] = {k: cfg_dict["learner"][k] for k in STACK_LEARNER_KEYS}
    sig["seed"] = cfg_dict["run"]["seed"]
    sig["rl_max_staleness"] = cfg_dict["rl"]["max_staleness"]  # the engines' thread count depends on it
    return sig


class BranchController(Controller):
    def __init__(self, cfg_dict: dict, placement: Placement | None = None):
        t0 = time.time()
        super().__init__(cfg_dict, run_dir="", placement=placement)
        self.signature = stack_signature(to_dict(self.cfg))
        pg = self.placement.pg
        self.placement_info = {
            "placement_group": pg.id.hex() if pg is not None else None,
            "bundles": {r: list(getattr(self.placement, r)) for r in ("learner", "rollout", "verifier")},
        }
        self._prepare_data()
        self._start_actors()
        self.folder: RunFolder | None = None
        self.t_free = t0  # when the stack was last free for a new branch (for the start-up figure)
        self.branches = 0
        self.p_sft_cache: dict[str, dict] = {}

    def can_host(self, cfg_dict: dict) -> bool:
        """Can the live actors run a branch with this full config (branch_config's: same model, data, engines,
        learner layout)?"""
        return stack_signature(cfg_dict) == self.signature

    # ---- one branch ------------------------------------------------------------------------------------------
    def _begin(self, cfg_dict: dict, run_dir: str, trunk_dir: str) -> None:
        self.cfg = from_dict(cfg_dict)
        self.run_dir, self.trunk = run_dir, load_trunk(trunk_dir)
        self.stop_requested = False
        self.state.update(phase="branch", step=0, rl_steps=self.cfg.rl.steps, last={}, started=time.time())
        self.folder = RunFolder(run_dir, self.cfg)
        self.folder.replace_rows([])  # a branch restarted without a checkpoint starts its folder afresh
        self.summary = {
            "run_name": os.path.basename(run_dir),
            "policy": self.cfg.switch.policy,
            "switch": None,
            "accuracy": {"at_switch": None, "final": None},
            "sft_val_losses": [],
            "data": self.data_info,
            "optimizer_reset_at_switch": True,
            "actors_reused": self.branches > 0,
            "placement": self.placement_info,
        }
        self._branch_helpers()
        self.branches += 1

    def open(self, cfg_dict: dict, run_dir: str, trunk_dir: str) -> dict:
        """Start a branch: trunk checkpoint into the learner (new optimizer), weights into the engines, P_sft."""
        t0 = time.time()
        self._begin(cfg_dict, run_dir, trunk_dir)
        decision, flops, val_losses = self._from_trunk()
        t1 = time.time()
        self.summary["switch"] = self._switch(decision, val_losses, 0.0)
        t2 = time.time()
        # P_sft depends only on the checkpoint and the evaluation settings (fixed seeds): a later branch from the
        # same checkpoint (another RL setting) reuses the measurement instead of evaluating the same weights again.
        key = json.dumps(
            [self.trunk.dir, decision.from_step, to_dict(self.cfg)["eval"], self.cfg.rollout.max_tokens]
        )
        cached = self.p_sft_cache.get(key)
        acc0 = self._eval(
            decision.from_step, flops, dict(cached, reused_from=cached["measured_in"]) if cached else None
        )
        if cached is None:
            self.p_sft_cache[key] = dict(acc0, measured_in=os.path.basename(run_dir))
        # Where a trial's start-up goes: Tune's hand-over, reading the trunk, weights in (+ greedy check), P_sft.
        self.summary["startup_parts"] = {
            "before_open": t0 - self.t_free,
            "folder_and_trunk": t1 - t0,
            "load_sync_and_check": t2 - t1,
            "p_sft_eval": time.time() - t2,
        }
        self.summary["accuracy"]["at_switch"] = acc0["accuracy"]
        self.summary["eval_at_switch"] = acc0
        self.i, self.branch_flops, self.rl_flops, self.last_eval = 0, flops, flops, acc0
        self.evals = [{"rl_step": 0, "flops": 0.0, "accuracy": acc0["accuracy"], "reward": None}]
        return acc0

    @property
    def done(self) -> bool:
        return self.i >= self.cfg.rl.steps

    def advance(self) -> dict:
        """RL steps up to the next held-out evaluation (or the last step); returns the evaluation."""
        switch_step = self.summary["switch"]["step"]
        while not self.done:
            if self.i == 0:
                # End of the previous branch's last step (or of actor start-up) to this branch's first RL step.
                self.summary["startup_seconds"] = time.time() - self.t_free
            self.i += 1
            ev = self._rl_step(self.i, switch_step)
            if ev is not None:
                self.last_eval = ev
                self.evals.append(
                    {
                        "rl_step": self.i,
                        "flops": self.rl_flops - self.branch_flops,
                        "accuracy": ev["accuracy"],
                        "reward": self.state["last"].get("reward"),
                    }
                )
                break
        self.t_free = time.time()
        self.summary["accuracy"]["final"] = self.last_eval["accuracy"]
        self.summary["eval_final"] = self.last_eval
        self.summary["rl_steps_done"] = self.i
        self.folder.write_json("summary.json", self.summary)  # always current, also if the trial is cut
        return self.last_eval

    def close(self, **extra) -> dict:
        """Finish the branch's run folder (summary with what the sweep knows of it, plot)."""
        if self.folder is None:
            return {}
        s = self.summary
        s.update(extra)
        s["rl_timing_mean"] = self.stepper.mean_timing()
        s["wall_seconds"] = time.time() - self.state["started"]
        s["actor_pids"] = {"at_start": self.pids, "at_end": self._pids()}
        self.folder.write_json("summary.json", s)
        s["plot"] = self.folder.plot(s, self.cfg.switch.delta, self.cfg.switch.delta2)
        self.folder.write_json("summary.json", s)
        self.folder.close()
        self.folder = None
        self.t_free = time.time()
        return s

    # ---- resume ----------------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Everything a resumed branch needs: weights and optimizer (DeepSpeed), RL step, sampler, rows."""
        self.learner.save_state(os.path.join(path, "learner"))
        state = {
            "cfg": to_dict(self.cfg),
            "run_dir": self.run_dir,
            "trunk_dir": self.trunk.dir,
            "i": self.i,
            "branch_flops": self.branch_flops,
            "rl_flops": self.rl_flops,
            "last_eval": self.last_eval,
            "evals": self.evals,
            "summary": self.summary,
            "rows": self.folder.rows,
            "stepper": self._sampler_state(),
            "wall_seconds": time.time() - self.state["started"],
        }
        with open(os.path.join(path, "branch.json"), "w") as f:
            json.dump(state, f)

    def restore(self, path: str) -> dict:
        """Continue a branch from save(): same run folder, rows up to the checkpoint, the same next prompts."""
        with open(os.path.join(path, "branch.json")) as f:
            state = json.load(f)
        self._begin(state["cfg"], state["run_dir"], state["trunk_dir"])
        self.summary = state["summary"]
        self.summary["resumed_at_rl_step"] = state["i"]
        self.summary.setdefault("resumes", []).append(
            {"rl_step": state["i"], "state": os.path.basename(path)}
        )
        # The wall clock goes on from the attempt that wrote the state (the kill's gap not counted).
        self.state["started"] = time.time() - state.get("wall_seconds", 0.0)
        self.folder.replace_rows(state["rows"])
        self.stepper.set_state(state["stepper"])
        self.learner.set_objective("rl", self._rl_settings(), reset_optimizer=True)
        self.learner.load_state(os.path.join(path, "learner"))
        self.sync.sync(self.learner, self.workers, state["i"])
        self.i, self.branch_flops, self.rl_flops = state["i"], state["branch_flops"], state["rl_flops"]
        self.last_eval, self.evals = state["last_eval"], state["evals"]
        self.t_free = time.time()
        return self.last_eval
