"""The controller's SFT phase: batches, the training loop with validations and the switch policy, or the
branch point of a trunk instead of training.

A resume state is written after each validation that does not end SFT; `_sft(state)` continues from one.
"""

from __future__ import annotations

import os
import shutil
import time

from actors.run_state import SFTBatches, hf_checkpoints_to_drop
from plasticity.flops import sft_step_flops
from plasticity.regimes import Decision, make_policy, online_regime, severe_for


class SFTPhase:
    """Batches are row indices into the tokenized SFT set (switchpoint/sft_dataset.py); each learner rank reads
    its own rows of a batch from the set's Arrow files, so no token list passes through the controller."""

    def _validate(self, step: int, flops: float, policy, val_losses: list) -> object:
        self._phase("sft: validation")
        val = self.learner.eval_rows(self.sft_sets["sft_val"], list(range(self.n_sft_val)))
        val_losses.append([step, val])
        regime = online_regime([v for _, v in val_losses], self.cfg.switch.delta, self.cfg.switch.delta2)
        self.learner.save_hf(self.folder.checkpoint_path(step))
        decision = policy.observe(step, val)
        heldout = self._sft_heldout(step)
        self.folder.log(
            {
                "phase": "sft",
                "step": step,
                "val_loss": val,
                "regime": regime,
                "flops": flops,
                "seconds": time.time() - self.state["started"],
                "checkpoint": os.path.relpath(self.folder.checkpoint_path(step), self.run_dir),
                **heldout,
            }
        )
        self.state["last"].update(val_loss=val, regime=regime)
        if heldout:
            self.state["last"].update(accuracy=heldout["accuracy"])
        self.regimes_seen.append(regime)
        return decision

    def _sft_heldout(self, step: int) -> dict:
        """sft.heldout_every: held-out accuracy of the current SFT weights (synced into the engines, evaluated as
        RL evaluates), at every heldout_every-th validation; {} at the others."""
        every = self.cfg.sft.heldout_every
        if not every or step % (every * self.cfg.sft.eval_every):
            return {}
        self._phase("sft: held-out eval")
        self._on_rollouts(
            f"weight sync for the held-out eval at SFT step {step}",
            lambda: self.sync.sync(self.learner, self.workers, step),
        )
        self.engines_loaded = True  # an engine replaced from here on gets the learner's weights
        res = self._on_rollouts("held-out evaluation", self.stepper.evaluate)
        self._drain_verifier_faults()
        self.sft_heldout[step] = res  # a switch from this checkpoint reuses it as P_sft (same weights, seeds)
        return {k: v for k, v in res.items() if k != "per_prompt"}

    def _sft(self, st: dict | None):
        """SFT until the policy decides (or the budget ends); st: a resume state to continue from."""
        cfg = self.cfg
        policy = make_policy(cfg.switch.policy, cfg.switch.delta, cfg.switch.delta2, cfg.switch.patience)
        val_losses: list = self.summary["sft_val_losses"]  # filled in place: a crash keeps the curve
        self.batches = SFTBatches(len(self.sft_lengths), cfg.sft.batch_size, cfg.run.seed)
        self.t_sft = time.time() - (st["sft_seconds"] if st else 0.0)
        self.sft_heldout: dict[int, dict] = {}
        if st is None:
            step, self.sft_flops, self.regimes_seen = 0, 0.0, []
            decision = self._validate(0, self.sft_flops, policy, val_losses)
        else:
            step, self.sft_flops, self.regimes_seen = st["step"], st["sft_flops"], list(st["regimes_seen"])
            self.batches.set_state(st["batches"])
            for s, v in val_losses:  # the policy sees the curve again; it had not decided on it
                decision = policy.observe(s, v)
            self.state["last"].update(val_loss=val_losses[-1][1], regime=self.regimes_seen[-1])
        while decision is None and step < cfg.sft.max_steps and not self.stop_requested:
            if severe_for(self.regimes_seen, cfg.sft.stop_after_severe):
                break
            self._inject("sft", step + 1)
            batch = self.batches.next_indices()
            global_tokens = int(self.sft_trained[batch].sum())
            out = self.learner.train_rows(self.sft_sets["sft_train"], batch, global_tokens)
            step += 1
            mean_len = float(self.sft_lengths[batch].mean())
            self.sft_flops += sft_step_flops(self.hf_config, len(batch), mean_len)
            self.state.update(phase="sft", step=step)
            self.state["last"].update(loss=out["loss"])
            self._log_phase("sft")
            row = {
                "phase": "sft",
                "step": step,
                "loss": out["loss"],
                "tokens": int(global_tokens),
                "flops": self.sft_flops,
                "lr": out["lr"],
                "grad_norm": out["grad_norm"],
                "rows_per_rank": out["rows_per_rank"],  # each rank read only its shard of the batch
                "seconds": time.time() - self.state["started"],
            }
            self.folder.log(row)
            if step % cfg.sft.eval_every == 0 or step == cfg.sft.max_steps:
                decision = self._validate(step, self.sft_flops, policy, val_losses)
                self._prune_checkpoints(val_losses)
                if decision is None and step < cfg.sft.max_steps:
                    self._save_state("sft", step)
        # Why SFT ended where its curve ends (the last SFT step is `step`): the policy, a stop rule or the budget.
        if decision is not None:
            reason = f"switch.policy {cfg.switch.policy} decided at step {decision.step}: {decision.reason}"
        elif self.stop_requested:
            reason = f"stop requested at SFT step {step}"
        elif step < cfg.sft.max_steps:
            reason = f"Severe overfitting for {cfg.sft.stop_after_severe} validations (sft.stop_after_severe)"
        else:
            reason = f"SFT budget sft.max_steps={cfg.sft.max_steps} reached"
        self.summary["sft_stop_reason"] = reason
        self.summary["sft_last_step"] = step
        if decision is None and cfg.switch.policy != "never" and not self.stop_requested:
            decision = Decision(step, step, reason)
        return decision, self.sft_flops, val_losses

    def _from_trunk(self):
        """The branch point on the trunk (step:N, or the policy replayed on the trunk's curve), with the trunk's
        SFT rows up to it copied into this run's metrics, so the run folder reads like one that trained SFT."""
        decision = self.trunk.branch_decision(self.cfg.switch)
        for row in self.trunk.sft_rows(decision.step):
            self.folder.log(row)
        val_losses = self.summary["sft_val_losses"]
        val_losses[:] = self.trunk.losses_up_to(decision.step)
        at = self.trunk.checkpoint(decision.from_step)
        self.summary["trunk"] = {"dir": self.trunk.dir, "key": self.trunk.key, "branch_step": at.step}
        return decision, at.flops, val_losses

    def _prune_checkpoints(self, val_losses: list) -> None:
        """checkpoint.keep_last_hf: delete SFT checkpoints no policy can still branch from."""
        cfg = self.cfg
        for step in hf_checkpoints_to_drop(val_losses, cfg.switch.delta, cfg.checkpoint.keep_last_hf, set()):
            shutil.rmtree(self.folder.checkpoint_path(step), ignore_errors=True)
