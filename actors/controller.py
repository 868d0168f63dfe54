"""Controller: the run's state machine (a named Ray actor, one per run).

SFT until the switch policy fires, then the hot swap (same learner processes and weights, objective set to RL,
weights synced into the live vLLM engines), then RL with verifier rewards. It is the only place that knows the
order of things; it writes the run folder as it goes.
"""

from __future__ import annotations

import json
import os
import random
import time

import ray

from actors.learner import LearnerGroup
from actors.placement import Placement
from actors.rl_step import RLStepper
from actors.rollout import RolloutWorker
from actors.run_folder import RunFolder
from actors.verifier import VerifierPool
from actors.weight_sync import make_weight_sync
from plasticity.flops import sft_step_flops
from plasticity.regimes import Decision, label_regimes, make_policy, online_regime, severe_for
from switchpoint.config import Config, from_dict
from switchpoint.data import tokenize_sft_with_stats
from switchpoint.prepare import ensure_model, load_splits
from switchpoint.trunk import Trunk, load_trunk


class Controller:
    def __init__(
        self, cfg_dict: dict, run_dir: str, trunk_dir: str | None = None, placement: Placement | None = None
    ):
        """trunk_dir: branch RL from this trunk's checkpoint (switch.policy names it) instead of training SFT.
        placement: bundles of a placement group to put the actors on (inside a Tune trial)."""
        self.cfg: Config = from_dict(cfg_dict)
        self.run_dir = run_dir
        self.trunk: Trunk | None = load_trunk(trunk_dir) if trunk_dir else None
        self.placement = placement or Placement()
        self.state = {
            "phase": "starting",
            "step": 0,
            "sft_max_steps": self.cfg.sft.max_steps,
            "rl_steps": self.cfg.rl.steps,
            "started": time.time(),
            "last": {},
        }
        self.stop_requested = False

    # ---- what the driver polls -------------------------------------------------------------------------------
    def status(self) -> dict:
        # Copy `last`: the run thread updates it while this thread serialises the reply.
        return dict(self.state, last=dict(self.state["last"]), elapsed=time.time() - self.state["started"])

    def request_stop(self) -> None:
        self.stop_requested = True

    def _phase(self, phase: str, **last) -> None:
        self.state["phase"] = phase
        self.state["last"].update(last)

    # ---- the run ---------------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, t_start = self.cfg, time.time()
        self.folder = RunFolder(self.run_dir, cfg)
        self.summary: dict = {"run_name": os.path.basename(self.run_dir), "policy": cfg.switch.policy}
        try:
            return self._run(t_start)
        except BaseException as e:
            # Keep what was done: metrics and checkpoints are on disk already; say where it stopped and why.
            self.summary.update(
                error=f"{type(e).__name__}: {e}",
                wall_seconds=time.time() - t_start,
                failed_in_phase=self.state["phase"],
            )
            self.folder.write_json("summary.json", self.summary)
            self.folder.plot(self.summary, cfg.switch.delta, cfg.switch.delta2)
            raise
        finally:
            self.folder.close()
            self._shutdown()

    def _setup(self) -> None:
        self._prepare_data()
        self._start_actors()
        self._branch_helpers()

    def _prepare_data(self) -> None:
        from transformers import AutoTokenizer

        cfg = self.cfg
        self._phase("preparing data and model")
        model_path = ensure_model(cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.splits, paths = load_splits(cfg)
        with open(os.path.join(model_path, "config.json")) as f:
            self.hf_config = json.load(f)
        tok = dict(max_len=cfg.data.max_len, prompt_template=cfg.data.prompt_template)
        self.sft_train, stats = tokenize_sft_with_stats(self.splits.sft_train, self.tokenizer, **tok)
        self.sft_val, _ = tokenize_sft_with_stats(self.splits.sft_val, self.tokenizer, **tok)
        self.data_info = {
            "paths": paths,
            "sft_train": len(self.sft_train),
            "sft_val": len(self.sft_val),
            "rl": len(self.splits.rl),
            "eval": len(self.splits.eval),
            "truncated": stats.n_truncated,
        }

        self.model_path = model_path

    def _start_actors(self) -> None:
        cfg, place, model_path = self.cfg, self.placement, self.model_path
        self._phase("starting actors")
        max_len = int(self.hf_config.get("max_position_embeddings", 2048))
        worker_cls = ray.remote(num_cpus=cfg.rollout.cpus_per_worker, num_gpus=cfg.rollout.gpus_per_worker)(
            RolloutWorker
        )
        # Engines start first (asynchronously) so they come up while the learner group sets up DeepSpeed.
        rl = cfg.switch.policy != "never" or self.trunk is not None  # pure SFT (a trunk) needs no engines
        self.workers = [
            worker_cls.options(**place.options("rollout", i)).remote(
                model_path, cfg.rollout, max_len, cfg.model.dtype, cfg.run.seed + i
            )
            for i in range(cfg.rollout.num_workers if rl else 0)
        ]
        self.verifier = None
        if rl:
            self.verifier = VerifierPool(
                cfg.verifier.num_workers,
                cfg.verifier.kind,
                cfg.verifier.timeout_s,
                cfg.verifier.cpus_per_worker,
                actor_options=[place.options("verifier", i) for i in range(cfg.verifier.num_workers)],
            )
        self.learner = LearnerGroup(
            model_path, cfg.learner, cfg.model.dtype, cfg.run.seed, pg=place.pg, bundles=place.learner
        )
        self.worker_info = ray.get([w.ready.remote() for w in self.workers])
        self.pids = self._pids()

    def _branch_helpers(self) -> None:
        """What a branch needs beyond the actors: built anew per branch when live actors are reused."""
        cfg = self.cfg
        self.sync = make_weight_sync(cfg.rollout.weight_sync, self.run_dir)
        self.stepper = RLStepper(
            cfg, self.learner, self.workers, self.verifier, self.tokenizer, self.hf_config, self.splits
        )

    def _run(self, t_start: float) -> dict:
        cfg = self.cfg
        self._setup()
        setup_seconds = time.time() - t_start
        t_sft = time.time()
        summary = self.summary
        summary.update(switch=None, accuracy={"at_switch": None, "final": None}, sft_val_losses=[])
        if self.trunk is not None:
            decision, sft_flops, val_losses = self._from_trunk()
        else:
            decision, sft_flops, val_losses = self._sft()
        summary.update(
            {
                "data": self.data_info,
                "setup_seconds": setup_seconds,
                "sft_seconds": time.time() - t_sft,
                "sft_val_losses": val_losses,
                "switch": None,
                "accuracy": {"at_switch": None, "final": None},
                "optimizer_reset_at_switch": cfg.learner.reset_optimizer_at_switch or self.trunk is not None,
            }
        )
        if decision is not None and not self.stop_requested:
            summary["switch"] = self._switch(decision, val_losses, time.time() - t_start)
            acc0 = self._eval(summary["switch"]["step"], sft_flops)
            summary["accuracy"]["at_switch"] = acc0["accuracy"]
            summary["eval_at_switch"] = acc0
            final = self._rl(summary["switch"]["step"], sft_flops, acc0)
            summary["accuracy"]["final"] = final["accuracy"]
            summary["eval_final"] = final
            summary["rl_timing_mean"] = self.stepper.mean_timing()
            summary["greedy_check_final"] = self._check_sync()
        summary["actor_pids"] = {"at_start": self.pids, "at_end": self._pids()}
        final_dir = os.path.join(self.run_dir, "checkpoints", "final")
        self.learner.save_hf(final_dir)
        summary["final_checkpoint"] = final_dir
        summary["wall_seconds"] = time.time() - t_start
        summary["stopped_early"] = self.stop_requested
        self.folder.write_json("summary.json", summary)
        summary["plot"] = self.folder.plot(summary, cfg.switch.delta, cfg.switch.delta2)
        self.folder.write_json("summary.json", summary)
        self._phase("done")
        return summary

    # ---- SFT -------------------------------------------------------------------------------------------------
    def _batches(self):
        rng = random.Random(self.cfg.run.seed)
        order: list[int] = []
        while True:
            if len(order) < self.cfg.sft.batch_size:
                more = list(range(len(self.sft_train)))
                rng.shuffle(more)
                order += more
            idx, order = order[: self.cfg.sft.batch_size], order[self.cfg.sft.batch_size :]
            yield [self.sft_train[i] for i in idx]

    @staticmethod
    def _stack(examples: list[dict]) -> dict:
        return {
            "input_ids": [e["input_ids"] for e in examples],
            "loss_mask": [e["loss_mask"] for e in examples],
        }

    def _validate(self, step: int, flops: float, policy, val_losses: list) -> object:
        self._phase("sft: validation")
        val = self.learner.eval_loss(self._stack(self.sft_val))
        val_losses.append([step, val])
        regime = online_regime([v for _, v in val_losses], self.cfg.switch.delta, self.cfg.switch.delta2)
        self.learner.save_hf(self.folder.checkpoint_path(step))
        decision = policy.observe(step, val)
        self.folder.log(
            {
                "phase": "sft",
                "step": step,
                "val_loss": val,
                "regime": regime,
                "flops": flops,
                "seconds": time.time() - self.state["started"],
                "checkpoint": os.path.relpath(self.folder.checkpoint_path(step), self.run_dir),
            }
        )
        self.state["last"].update(val_loss=val, regime=regime)
        self.regimes_seen.append(regime)
        return decision

    def _sft(self):
        cfg = self.cfg
        policy = make_policy(cfg.switch.policy, cfg.switch.delta, cfg.switch.delta2, cfg.switch.patience)
        val_losses: list = self.summary["sft_val_losses"]  # filled in place: a crash keeps the curve
        flops = 0.0
        self.regimes_seen: list[str] = []
        decision = self._validate(0, flops, policy, val_losses)
        batches = self._batches()
        step = 0
        self.summary["sft_stop_reason"] = f"SFT budget sft.max_steps={cfg.sft.max_steps} reached"
        while decision is None and step < cfg.sft.max_steps and not self.stop_requested:
            if severe_for(self.regimes_seen, cfg.sft.stop_after_severe):
                self.summary["sft_stop_reason"] = (
                    f"Severe overfitting for {cfg.sft.stop_after_severe} validations (sft.stop_after_severe)"
                )
                break
            batch = next(batches)
            global_tokens = sum(sum(e["loss_mask"][1:]) for e in batch)
            out = self.learner.train_step(self._stack(batch), global_tokens)
            step += 1
            mean_len = sum(len(e["input_ids"]) for e in batch) / len(batch)
            flops += sft_step_flops(self.hf_config, len(batch), mean_len)
            self.state.update(phase="sft", step=step)
            self.state["last"].update(loss=out["loss"])
            row = {
                "phase": "sft",
                "step": step,
                "loss": out["loss"],
                "tokens": int(global_tokens),
                "flops": flops,
                "lr": out["lr"],
                "grad_norm": out["grad_norm"],
                "seconds": time.time() - self.state["started"],
            }
            self.folder.log(row)
            if step % cfg.sft.eval_every == 0 or step == cfg.sft.max_steps:
                decision = self._validate(step, flops, policy, val_losses)
        if decision is None and cfg.switch.policy != "never" and not self.stop_requested:
            decision = Decision(step, step, self.summary["sft_stop_reason"])
        return decision, flops, val_losses

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

    def _pids(self) -> dict:
        return {"learner": self.learner.pids(), "rollout": ray.get([w.pid.remote() for w in self.workers])}

    def _check_sync(self) -> dict | None:
        """Greedy completions of the learner and of every engine on the same held-out prompts."""
        n = self.cfg.rollout.check_sync_prompts
        if n <= 0:
            return None
        from switchpoint.data import format_prompt

        prompts = [format_prompt(r, self.cfg.data.prompt_template) for r in self.splits.eval[:n]]
        ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        max_new = self.cfg.rollout.max_tokens
        learner = self.learner.greedy_generate(ids, max_new, self.tokenizer.eos_token_id)
        engines = ray.get([w.greedy.remote(ids, max_new) for w in self.workers])
        matches = [sum(a == b for a, b in zip(learner, e)) for e in engines]
        return {"prompts": n, "matching": min(matches), "equal": all(m == n for m in matches)}

    def _rl_settings(self) -> dict:
        cfg = self.cfg
        return {
            "algorithm": cfg.rl.algorithm,
            "clip_low": cfg.rl.clip_low,
            "clip_high": cfg.rl.clip_high,
            "lr": cfg.learner.rl_lr or cfg.learner.lr,
            "max_tokens": cfg.rollout.max_tokens,
        }

    # ---- the hot swap ----------------------------------------------------------------------------------------
    def _switch(self, decision, val_losses: list, at_seconds: float) -> dict:
        cfg = self.cfg
        self._phase("switching to RL")
        t0 = time.perf_counter()
        reset = cfg.learner.reset_optimizer_at_switch
        if self.trunk is not None:
            # A branch starts from the trunk's weights with a new optimizer, as the paper's RL runs do.
            self.learner.load_hf(self.trunk.checkpoint(decision.from_step).path)
            reset = True
        elif decision.from_step != val_losses[-1][0]:
            self.learner.load_hf(self.folder.checkpoint_path(decision.from_step))
        self.learner.set_objective("rl", self._rl_settings(), reset_optimizer=reset)
        sync = self.sync.sync(self.learner, self.workers, decision.from_step)
        losses = [v for s, v in val_losses if s <= decision.from_step]
        seen = [v for s, v in val_losses if s <= decision.step]
        switch = {
            "step": decision.from_step,
            "decided_at_step": decision.step,
            "reason": decision.reason,
            "policy": cfg.switch.policy,
            "val_loss": losses[-1],
            # The branch point's regime given every loss seen when the decision was taken (a rollback knows
            # the losses that came after its checkpoint).
            "regime": label_regimes(seen, cfg.switch.delta, cfg.switch.delta2)[len(losses) - 1],
            "regime_basis": f"online: the losses seen up to step {decision.step}",
            "optimizer_reset": reset,
            "seconds": time.perf_counter() - t0,
            "sync_seconds": sync["seconds"],
            "at_seconds": at_seconds,
            "weight_sync": self.sync.name,
            "greedy_check": self._check_sync(),
            "same_processes": self._pids() == self.pids,
        }
        if self.trunk is not None:
            # The trunk's whole curve is known: its hindsight label is the paper's.
            switch["regime_online"] = switch["regime"]
            switch["regime"] = self.trunk.checkpoint(decision.from_step).regime
            switch["regime_basis"] = f"hindsight: the trunk's curve to step {self.trunk.steps()[-1]}"
        self.folder.log(
            {
                "phase": "switch",
                "step": decision.from_step,
                "val_loss": switch["val_loss"],
                "regime": switch["regime"],
                "seconds": time.time() - self.state["started"],
                "switch_seconds": switch["seconds"],
            }
        )
        self.state["last"].update(
            switch_step=decision.from_step, switch_regime=switch["regime"], switch_val_loss=switch["val_loss"]
        )
        return switch

    # ---- RL --------------------------------------------------------------------------------------------------
    def _eval(self, step: int, flops: float, res: dict | None = None) -> dict:
        """Held-out evaluation, logged as a metrics row (res: one already measured on these same weights)."""
        self._phase("held-out eval")
        res = res or self.stepper.evaluate()
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

    def _rl(self, switch_step: int, flops: float, last_eval: dict) -> dict:
        self.rl_flops = flops
        for i in range(1, self.cfg.rl.steps + 1):
            if self.stop_requested:
                break
            last_eval = self._rl_step(i, switch_step) or last_eval
        return last_eval

    def _rl_step(self, i: int, switch_step: int) -> dict | None:
        """RL step i after the switch; returns the held-out evaluation when one is due."""
        cfg = self.cfg
        self.state.update(phase="rl", step=i)
        row = self.stepper.step(i)
        sync = self.sync.sync(self.learner, self.workers, switch_step + i)
        row["timing"]["weight_sync"] = sync["seconds"]
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
        if i % cfg.rl.eval_every == 0 or i == cfg.rl.steps:
            res = self._eval(switch_step + i, self.rl_flops)
            # RL checkpoints at every held-out eval: a crash later loses at most eval_every steps.
            self.learner.save_hf(os.path.join(self.run_dir, "checkpoints", f"rl_step_{i:06d}"))
            return res
        return None

    def _shutdown(self) -> None:
        for name in ("learner", "verifier"):
            obj = getattr(self, name, None)
            if obj is not None:
                try:
                    obj.shutdown()
                except Exception:
                    pass
        for w in getattr(self, "workers", []):
            ray.kill(w)
