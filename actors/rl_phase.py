"""The controller's RL phase: RL steps after the switch (on-policy, or with rollouts sampled one step ahead,
rl.max_staleness), the weight sync after each, held-out evaluations, RL checkpoints and resume states.

A base of Controller (actors/controller.py); it uses the controller's stepper, learner, engines, sync and folder.
"""

from __future__ import annotations

import os
import time


class RLPhase:
    def _eval(self, step: int, flops: float, res: dict | None = None) -> dict:
        """Held-out evaluation, logged as a metrics row (res: one already measured on these same weights)."""
        self._phase("held-out eval")
        res = res or self._on_rollouts("held-out evaluation", self.stepper.evaluate)
        self._drain_verifier_faults()
        self.folder.log(
            {
                "phase": "rl",
                "step": step,
                "flops": flops,
                "seconds": time.time() - self.state["started"],
                **{k: v for k, v in res.items() if k != "per_prompt"},
            }
        )
        self.state["last"].update(accuracy=res["accuracy"])
        return res

    def _rl(self, switch_step: int) -> dict:
        """RL steps from self.i + 1 on; a resume state at every held-out evaluation (or checkpoint.rl_every)."""
        every = self.cfg.checkpoint.rl_every
        while self.i < self.cfg.rl.steps and not self.stop_requested:
            self.i += 1
            ev = self._rl_step(self.i, switch_step)
            if ev is not None:
                self.last_eval = ev
            if (every and self.i % every == 0) or (not every and ev is not None):
                self._save_state("rl", self.i)
        return self.last_eval

    def _rl_step(self, i: int, switch_step: int) -> dict | None:
        """RL step i after the switch; returns the held-out evaluation when one is due."""
        cfg = self.cfg
        self.state.update(phase="rl", step=i)
        self._inject("rl", i)
        t0 = time.perf_counter()
        if self.ahead is None:
            row = self.stepper.learn(self._collect(i))
        else:
            row = self._rl_step_ahead(i)
        self._drain_verifier_faults()
        sync = self._on_rollouts(
            f"weight sync after RL step {i}",
            lambda: self.sync.sync(self.learner, self.workers, switch_step + i),
        )
        row["timing"]["weight_sync"] = sync["seconds"]
        row["timing"]["step_wall"] = time.perf_counter() - t0  # parts overlap when rollouts run ahead
        self.stepper.record_sync(sync["seconds"])
        self.rl_flops += row.pop("step_flops")
        row.update(
            phase="rl",
            step=switch_step + i,
            rl_step=i,
            flops=self.rl_flops,
            seconds=time.time() - self.state["started"],
        )
        self.folder.log(row)
        self.state["last"].update(reward=row.get("reward_mean"), loss=row.get("loss"))
        self._log_phase("rl")
        if i % cfg.rl.eval_every == 0 or i == cfg.rl.steps:
            res = self._eval(switch_step + i, self.rl_flops)
            # RL checkpoints at every held-out eval: a crash later loses at most eval_every steps.
            self.learner.save_hf(os.path.join(self.run_dir, "checkpoints", f"rl_step_{i:06d}"))
            return res
        return None

    def _sampler_state(self) -> dict:
        """The prompt sampler's position for a resume state (before any rollouts sampled ahead)."""
        return self.ahead.sampler_state() if self.ahead else self.stepper.get_state()

    def _collect(self, i: int):
        """Step i's rollouts on the engines' current weights. An engine that dies in it is replaced and the
        collection redone from the same prompts (the learner is not touched until it is complete)."""
        sampler = self.stepper.get_state()
        return self._on_rollouts(
            f"RL step {i} rollouts",
            lambda: self.stepper.collect(i),
            before=lambda: self.stepper.set_state(sampler),
        )

    def _rl_step_ahead(self, i: int) -> dict:
        """RL step i with rl.max_staleness 1: train on the rollouts sampled during step i-1 while the engines
        sample step i+1's; the weight sync after it waits for them."""
        rollouts, staleness = self.ahead.take(i), 1
        if rollouts is None:  # the first step, the first after a resume, or an engine died in the collection
            rollouts, staleness = self._collect(i), 0
        if i < self.cfg.rl.steps and not self.stop_requested:
            self.ahead.start(i + 1)
        try:
            row = self.stepper.learn(rollouts)
        except BaseException:
            self.ahead.drop()
            raise
        row["timing"]["wait_rollouts"] = self.ahead.finish()
        row["staleness"] = staleness
        return row
