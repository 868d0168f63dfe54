"""Controller: the run's state machine (a named Ray actor, one per run).

SFT until the switch policy fires, then the hot swap (same learner processes and weights, objective set to RL,
weights synced into the live vLLM engines), then RL with verifier rewards. It is the only place that knows the
order of things; it writes the run folder as it goes.
"""

from __future__ import annotations

import copy
import json
import os
import time

import ray
from ray.exceptions import RayActorError

from actors.chaos import FaultInjector
from actors.placement import Placement, engine_threads
from actors.progress import ActorLog
from actors.recovery import FaultTolerance
from actors.resumable import Resumable
from actors.rl_phase import RLPhase
from actors.rl_step import RLStepper
from actors.rollouts_ahead import RolloutsAhead
from actors.run_folder import RunFolder
from actors.run_state import ResumeStates
from actors.sft_phase import SFTPhase
from actors.verifier_pool import VerifierPool
from actors.weight_sync import make_weight_sync
from plasticity.regimes import label_regimes
from plasticity.selection import VAL_FINGERPRINT_KEY, val_set_fingerprint
from switchpoint.checks import needs_engines
from switchpoint.config import Config, from_dict
from switchpoint.data import chat_tokenizer_or_none
from switchpoint.prepare import PROMPT_SPLITS, data_sets, ensure_model, load_val_rows, split_paths
from switchpoint.prompt_dataset import PromptSet
from switchpoint.sft_dataset import SftSet
from switchpoint.trunk import Trunk, load_trunk


class Controller(SFTPhase, RLPhase, Resumable, FaultTolerance):
    def __init__(
        self,
        cfg_dict: dict,
        run_dir: str,
        trunk_dir: str | None = None,
        placement: Placement | None = None,
        resume: bool = False,
    ):
        """trunk_dir: branch RL from this trunk's checkpoint (switch.policy names it) instead of training SFT.
        placement: bundles of a placement group to put the actors on (inside a Tune trial).
        resume: continue the run in run_dir from its latest resume state."""
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
            "events": [],  # one line per fault or resume, for the progress display
        }
        self.stop_requested = False
        self.resume = resume
        self.faults: list = []  # this process's faults (the run's all are the `fault` rows in metrics.jsonl)
        self.engines_loaded = (
            False  # True once the engines hold trained weights (a new engine then needs them)
        )
        self.chaos = FaultInjector(self.cfg.faults.inject)
        self.run_log: ActorLog | None = None  # started by run(); a Tune branch has none
        self.sft_heldout: dict[int, dict] = {}  # SFT step -> held-out evaluation there (sft.heldout_every)

    # ---- what the driver polls -------------------------------------------------------------------------------
    def status(self) -> dict:
        # Copy `last`: the run thread updates it while this thread serialises the reply.
        return dict(
            self.state,
            last=dict(self.state["last"]),
            events=list(self.state["events"]),
            elapsed=time.time() - self.state["started"],
        )

    def request_stop(self) -> None:
        self.stop_requested = True

    def _log_phase(self, phase: str) -> None:
        """The actor log's line at a phase's first step, whatever the periodic line's timing."""
        if self.run_log is not None:
            self.run_log.phase(phase)

    def _phase(self, phase: str, **last) -> None:
        self.state["phase"] = phase
        self.state["last"].update(last)

    # ---- the run ---------------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, t_start = self.cfg, time.time()
        self.folder = RunFolder(self.run_dir, cfg)
        self.summary: dict = {"run_name": os.path.basename(self.run_dir), "policy": cfg.switch.policy}
        self.run_log = ActorLog(self.status)  # the same lines as the driver's, in this actor's own log
        self.run_log.start()
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
            self.run_log.stop()
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
        self.chat = chat_tokenizer_or_none(
            self.tokenizer, cfg.data.chat_template, f"model folder {model_path}"
        )
        paths = split_paths(cfg)
        with open(os.path.join(model_path, "config.json")) as f:
            self.hf_config = json.load(f)
        # Every set stays on disk (memory-mapped Arrow, built by check_inputs before Ray started, or now): the
        # controller keeps SFT per-row lengths and trained-token counts and reads the RL and held-out rows of a
        # step by index; the ranks read the SFT tokens.
        sets = data_sets(cfg, model_path, paths)
        self.sft_sets = {k: v for k, v in sets.items() if k not in PROMPT_SPLITS}
        self.prompt_sets = {k: PromptSet(sets[k]) for k in PROMPT_SPLITS}
        train, val = SftSet(self.sft_sets["sft_train"]), SftSet(self.sft_sets["sft_val"])
        self.sft_lengths, self.sft_trained = train.column("length"), train.trained_tokens()
        self.n_sft_val = len(val)
        self.data_info = {
            "paths": paths,
            "sft_sets": self.sft_sets,
            "sft_train": len(train),
            "sft_val": len(val),
            "rl": len(self.prompt_sets["rl"]),
            "eval": len(self.prompt_sets["eval"]),
            "prompt_sets": {k: p.folder for k, p in self.prompt_sets.items()},
            "truncated": train.meta["truncated"],
            # What the validation losses were measured on: data selection ranks only runs that share it.
            VAL_FINGERPRINT_KEY: val_set_fingerprint(load_val_rows(cfg, paths)),
        }
        del train, val

        self.model_path = model_path

    def _start_actors(self) -> None:
        cfg, place = self.cfg, self.placement
        self._phase("starting actors")
        # Engines start first (asynchronously) so they come up while the learner group sets up DeepSpeed.
        rl = needs_engines(
            cfg, self.trunk is not None
        )  # pure SFT (a trunk) needs none, unless sft.heldout_every
        # Once per run, so a replaced engine starts like the one it replaces.
        alive = sum(1 for n in ray.nodes() if n["Alive"])
        self.engine_threads = engine_threads(cfg, alive, len(os.sched_getaffinity(0)))
        self.workers = [self._new_worker(i) for i in range(cfg.rollout.num_workers if rl else 0)]
        self.verifier = None
        if rl:
            self.verifier = VerifierPool(
                cfg.verifier.num_workers,
                cfg.verifier.kind,
                cfg.verifier.timeout_s,
                cfg.verifier.cpus_per_worker,
                actor_options=[place.options("verifier", i) for i in range(cfg.verifier.num_workers)],
                max_restarts=cfg.faults.actor_max_restarts,
            )
        self.learner = self._new_learner()
        self.worker_info = ray.get([w.ready.remote() for w in self.workers])
        self.pids = self._pids()

    def _branch_helpers(self) -> None:
        """What a branch needs beyond the actors: built anew per branch when live actors are reused."""
        cfg = self.cfg
        if getattr(self, "ahead", None) is not None:
            self.ahead.shutdown()  # the previous branch's (its rollouts belong to its weights)
        self.sync = make_weight_sync(cfg.rollout.weight_sync, self.run_dir)
        self.stepper = RLStepper(
            cfg, self.learner, self.workers, self.verifier, self.tokenizer, self.hf_config, self.prompt_sets
        )
        self.ahead = RolloutsAhead(self.stepper) if cfg.rl.max_staleness else None

    def _run(self, t_start: float) -> dict:
        cfg = self.cfg
        self._setup()
        self.states = ResumeStates(self.run_dir, cfg.checkpoint.keep_last_states)
        self.summary.update(
            {
                "data": self.data_info,
                "setup_seconds": time.time() - t_start,
                "sft_val_losses": [],
                "switch": None,
                "accuracy": {"at_switch": None, "final": None},
                "optimizer_reset_at_switch": cfg.learner.reset_optimizer_at_switch or self.trunk is not None,
            }
        )
        self.initial_summary = copy.deepcopy(self.summary)
        resume = self.states.latest() if self.resume else None
        if self.resume:
            self._note_resume(resume)
        self.last_state = (time.time(), "the start")
        while True:
            try:
                self._train(resume)
                break
            except RayActorError as err:
                # An actor died where no local retry applies: rebuild it, go back to the latest resume state.
                self._recover(err, *self.last_state)
                resume = self.states.latest()
        summary = self.summary
        summary["faults"] = [r for r in self.folder.rows if r.get("phase") == "fault"]
        summary["actor_pids"] = {"at_start": self.pids, "at_end": self._pids()}
        summary["weight_sync"] = self.sync.describe()
        # Each engine's intra-op threads as it started (rollout.borrow_learner_cpus).
        summary["engine_threads"] = [w["threads"] for w in self.worker_info]
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

    def _train(self, resume: tuple[str, dict] | None) -> None:
        """SFT (or the trunk's branch point), the switch, RL; from the start or from a resume state."""
        path, st = resume if resume else (None, None)
        if self.ahead is not None:
            self.ahead.drop()  # rollouts sampled ahead of a state the run goes back to are sampled again
        self._rewind(st["rows"] if st else 0)
        self.summary = copy.deepcopy(st["summary"] if st else self.initial_summary)
        if st is not None:
            self.learner.load_state(self.states.learner_path(path))
        if st is None or st["phase"] == "sft":
            self.engines_loaded = False
            t_sft = time.time() - (st["sft_seconds"] if st else 0.0)
            if self.trunk is not None:
                decision, sft_flops, val_losses = self._from_trunk()
            else:
                decision, sft_flops, val_losses = self._sft(st)
            self.summary["sft_seconds"] = time.time() - t_sft
            if decision is None or self.stop_requested:
                return
            switch = self.summary["switch"] = self._switch(
                decision, val_losses, time.time() - self.state["started"]
            )
            self.engines_loaded = True
            measured = self.sft_heldout.get(switch["step"])  # measured at that validation (sft.heldout_every)
            acc0 = self._eval(
                switch["step"], sft_flops, dict(measured, reused_from="sft") if measured else None
            )
            self.summary["accuracy"]["at_switch"] = acc0["accuracy"]
            self.run_log.switch(dict(switch, p_sft=acc0["accuracy"]))
            self.summary["eval_at_switch"] = acc0
            self.i, self.rl_flops, self.last_eval = 0, sft_flops, acc0
            self._save_state("rl", 0)
        else:
            self.i, self.rl_flops, self.last_eval = st["i"], st["rl_flops"], st["last_eval"]
            self.stepper.set_state(st["stepper"])
            self.stepper.timings.clear()
            self.stepper.timings.update({k: list(v) for k, v in st["timings"].items()})
            step = self.summary["switch"]["step"] + self.i
            self._on_rollouts("weight sync", lambda: self.sync.sync(self.learner, self.workers, step))
            self.engines_loaded = True
            self.state["last"].update(
                switch_step=self.summary["switch"]["step"],
                switch_regime=self.summary["switch"]["regime"],
                switch_val_loss=self.summary["switch"]["val_loss"],
                accuracy=self.last_eval["accuracy"],
            )
        final = self._rl(self.summary["switch"]["step"])
        self.summary["accuracy"]["final"] = final["accuracy"]
        self.summary["eval_final"] = final
        self.summary["rl_timing_mean"] = self.stepper.mean_timing()
        self.summary["greedy_check_final"] = self._on_rollouts("greedy check", self._check_sync)

    def _pids(self) -> dict:
        return {"learner": self.learner.pids(), "rollout": ray.get([w.pid.remote() for w in self.workers])}

    def _check_sync(self) -> dict | None:
        """Greedy completions of the learner and of every engine on the same held-out prompts."""
        n = self.cfg.rollout.check_sync_prompts
        if n <= 0:
            return None
        held_out = self.prompt_sets["eval"]
        ids = [r["prompt_ids"] for r in held_out.rows(range(min(n, len(held_out))))]
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
        # The RL step's settings (objective, clip, dual clip, sampling temperature, old log-probs source).
        self.learner.set_objective("rl", self.stepper.learner_settings(), reset_optimizer=reset)
        sync = self._on_rollouts(
            "weight sync at the switch",
            lambda: self.sync.sync(self.learner, self.workers, decision.from_step),
        )
        losses = [v for s, v in val_losses if s <= decision.from_step]
        seen = [v for s, v in val_losses if s <= decision.step]
        if len(seen) == len(losses):
            from plasticity.regimes import online_regime

            # The branch point is the latest validation: judged as SFT judged it (a clear new minimum is still
            # Adaptive), not as the minimum of its own curve.
            online = online_regime(losses, cfg.switch.delta, cfg.switch.delta2)
        else:
            # A rollback: the losses after the branch point up to the decision are known.
            online = label_regimes(seen, cfg.switch.delta, cfg.switch.delta2)[len(losses) - 1]
        switch = {
            "step": decision.from_step,
            "decided_at_step": decision.step,
            "reason": decision.reason,
            "policy": cfg.switch.policy,
            "val_loss": losses[-1],
            # `regime` is the label the record stands by; `regime_basis` says which one it is: "online" (the
            # losses seen up to the decision; a plain run's SFT ends there, so its hindsight label is unknown)
            # or "hindsight" (the whole SFT curve, as in a trunk). Both labels are kept apart as well.
            "regime": online,
            "regime_basis": "online",
            "regime_basis_detail": f"the validation losses seen up to step {decision.step}",
            "regime_online": online,
            "regime_hindsight": None,
            "optimizer_reset": reset,
            "seconds": time.perf_counter() - t0,
            "sync_seconds": sync["seconds"],
            "at_seconds": at_seconds,
            "weight_sync": self.sync.name,
            "weight_sync_backend": sync.get("backend", self.sync.name),
            "weight_sync_fallback": sync.get("fallback"),
            "greedy_check": self._on_rollouts("greedy check", self._check_sync),
            "same_processes": self._pids() == self.pids,
        }
        if self.trunk is not None:
            # The trunk's whole curve is known: its hindsight label is the paper's.
            switch["regime"] = switch["regime_hindsight"] = self.trunk.checkpoint(decision.from_step).regime
            switch["regime_basis"] = "hindsight"
            switch["regime_basis_detail"] = f"the trunk's whole SFT curve, to step {self.trunk.steps()[-1]}"
        self.folder.log(
            {
                "phase": "switch",
                "step": decision.from_step,
                "val_loss": switch["val_loss"],
                "regime": switch["regime"],
                "regime_basis": switch["regime_basis"],
                "seconds": time.time() - self.state["started"],
                "switch_seconds": switch["seconds"],
            }
        )
        self.state["last"].update(
            switch_step=decision.from_step, switch_regime=switch["regime"], switch_val_loss=switch["val_loss"]
        )
        return switch

    def _shutdown(self) -> None:
        if getattr(self, "ahead", None) is not None:
            self.ahead.shutdown()
        for name in ("learner", "verifier"):
            obj = getattr(self, name, None)
            if obj is not None:
                try:
                    obj.shutdown()
                except Exception:
                    pass
        for w in getattr(self, "workers", []):
            ray.kill(w)
