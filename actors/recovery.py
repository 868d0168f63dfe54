"""How the controller survives dead actors: find which died, replace them, count the faults.

- rollout worker: a new engine in the same slot (same bundle), given the current weights when the run is past
  the switch; the call that failed is made again (an RL step's generation, an evaluation, a weight sync);
- learner rank: a DeepSpeed group cannot lose a rank, so the whole group is rebuilt; the controller then
  reloads the latest resume state and redoes the steps since (the caller's loop does that);
- verifier worker: the pool restarts or replaces it itself and hands its events over here.

Every fault is a `phase: fault` row in metrics.jsonl and a line on the progress display; one more than
faults.max_faults stops the run with the reason (everything on disk stays; `--resume` continues it).
"""

from __future__ import annotations

import dataclasses
import time

import ray
from ray.exceptions import RayActorError

from actors.fault_events import FaultEvent, FaultLimitError, fault_event
from actors.learner_group import LearnerGroup, dead_actors
from actors.rollout import RolloutWorker


class FaultTolerance:
    """Mixed into the Controller: needs cfg, placement, model_path, hf_config, learner, workers, verifier,
    stepper, sync, folder, state, `engine_threads` (each engine's start-up thread count) and `engines_loaded`
    (True once the engines hold trained weights)."""

    faults: list
    engines_loaded: bool

    # ---- actors ----------------------------------------------------------------------------------------------
    def _new_worker(self, i: int):
        cfg = self.cfg
        worker_cls = ray.remote(num_cpus=cfg.rollout.cpus_per_worker, num_gpus=cfg.rollout.gpus_per_worker)(
            RolloutWorker
        )
        max_len = int(self.hf_config.get("max_position_embeddings", 2048))
        rollout = dataclasses.replace(cfg.rollout, threads=self.engine_threads)
        return worker_cls.options(**self.placement.options("rollout", i)).remote(
            self.model_path, rollout, max_len, cfg.model.dtype, cfg.run.seed + i
        )

    def _new_learner(self) -> LearnerGroup:
        cfg = self.cfg
        return LearnerGroup(
            self.model_path,
            cfg.learner,
            cfg.model.dtype,
            cfg.run.seed,
            pg=self.placement.pg,
            bundles=self.placement.learner,
        )

    def _replace_workers(self, dead: list[int]) -> None:
        """New engines in the dead ones' slots (the list is shared with the RL stepper), with current weights."""
        for i in dead:
            try:
                ray.kill(self.workers[i])
            except Exception:
                pass
            self.workers[i] = self._new_worker(i)
        ray.get([self.workers[i].ready.remote() for i in dead])
        if self.engines_loaded:
            self.sync.sync(self.learner, [self.workers[i] for i in dead], self.state["step"])

    def _rebuild_learner(self) -> None:
        self.learner.shutdown()
        self.learner = self._new_learner()
        if getattr(self, "stepper", None) is not None:
            self.stepper.learner = self.learner

    # ---- recovery --------------------------------------------------------------------------------------------
    def _on_rollouts(self, what: str, call, before=None):
        """call() touching the engines; when an engine died in it, replace the engine and make the call again.
        before(): run before each try (restores the prompt sampler, so a redone RL step draws the same prompts).
        Any other failure (a learner rank died too) goes up to the controller's loop."""
        while True:
            if before is not None:
                before()
            t0 = time.time()
            try:
                return call()
            except RayActorError as err:
                dead = dead_actors(self.workers)
                if not dead or dead_actors(self.learner.ranks, first_only=True):
                    raise
                self._replace_workers(dead)
                for i in dead:
                    self._record_fault(
                        fault_event("rollout", i, err, "replaced", what + " redone", time.time() - t0)
                    )

    def _recover(self, err: BaseException, since: float, state_step: str) -> None:
        """After a RayActorError reached the controller's loop: rebuild what died. since: when the state the
        run goes back to was saved (its work after that is redone); state_step: where that state is."""
        t0 = time.time()
        dead_ranks = dead_actors(self.learner.ranks, first_only=True)
        dead_workers = dead_actors(self.workers)
        if not dead_ranks and not dead_workers:
            raise err  # not a death we can repair
        if len(self.faults) + len(dead_ranks) + len(dead_workers) > self.cfg.faults.max_faults:
            # Over the limit: say so now rather than rebuild what will not be used.
            for role, dead in (("learner", dead_ranks), ("rollout", dead_workers)):
                for i in dead:
                    self._record_fault(
                        fault_event(role, i, err, "none (limit)", "nothing", time.time() - since)
                    )
        if dead_workers:
            self._replace_workers(dead_workers)
            for i in dead_workers:
                self._record_fault(
                    fault_event("rollout", i, err, "replaced", f"from {state_step}", time.time() - t0)
                )
        if dead_ranks:
            self._rebuild_learner()
            for r in dead_ranks:
                self._record_fault(
                    fault_event(
                        "learner",
                        r,
                        err,
                        f"group rebuilt, reloaded {state_step}",
                        f"steps after {state_step}",
                        time.time() - since,
                    )
                )

    def _inject(self, phase: str, step: int) -> None:
        """faults.inject: kill the actor due at this step (tests and drills only)."""
        if any(p[1] == phase and p[2] == step for p in self.chaos.pending):
            pids = {
                "learner": self.learner.pids(),
                "rollout": ray.get([w.pid.remote() for w in self.workers]),
            }
            if self.verifier is not None:
                pids["verifier"] = ray.get([w.pid.remote() for w in self.verifier.workers])
            self.chaos.at(phase, step, pids)

    def _drain_verifier_faults(self) -> None:
        if self.verifier is not None:
            for event in self.verifier.take_fault_events():
                self._record_fault(event)

    def _record_fault(self, event: FaultEvent) -> None:
        self.faults.append(event)
        phase = self.state["phase"]
        self.folder.log(
            {
                "phase": "fault",
                "during": phase,
                "step": self.state["step"],
                **event,
                "seconds": time.time() - self.state["started"],
            }
        )
        line = (
            f"fault {len(self.faults)}: {event['role']} {event['worker']} died during {phase} step "
            f"{self.state['step']} ({event['error']}); {event['action']}, {event['redone']}, "
            f"{event['seconds_lost']:.1f}s lost"
        )
        self.state["events"].append(line)
        if len(self.faults) > self.cfg.faults.max_faults:
            raise FaultLimitError(
                f"{len(self.faults)} actor faults, more than faults.max_faults={self.cfg.faults.max_faults}; "
                f"the last: {line}. Everything done is on disk: switchpoint run --resume {self.run_dir}"
            )
