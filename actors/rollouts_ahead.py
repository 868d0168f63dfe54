"""Rollouts one step ahead (rl.max_staleness: 1): while the learners train step i, the engines sample step i+1's
rollouts with the weights from before that update, as veRL's one-step-off-policy recipe. Generation and training
then overlap instead of taking turns; every update trains on rollouts exactly one update old, and the ratio is
taken against the engine's own log-probs (the policy that sampled).

The collection runs in a thread of the Controller actor and touches only the engines and the verifier pool; the
weight sync waits for it (the engines are idle when new weights arrive, so no batch mixes two policies).
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import Future, ThreadPoolExecutor

from ray.exceptions import RayActorError

from actors.rollout_collect import Rollouts


class RolloutsAhead:
    def __init__(self, stepper):
        self.stepper = stepper
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollouts-ahead")
        self.future: Future | None = None
        self.ready: Rollouts | None = None
        self.sampler_before: dict | None = None  # the sampler before the rollouts in flight or ready

    def start(self, i: int) -> None:
        """Begin collecting step i's rollouts on the engines' current weights."""
        self.sampler_before = copy.deepcopy(self.stepper.get_state())
        self.ready = None
        self.future = self.pool.submit(self.stepper.collect, i)

    def finish(self) -> float:
        """Wait for the collection in flight; returns the seconds waited. An engine that died in it leaves
        nothing ready (the sampler goes back, so step i draws the same prompts again, on the engines that
        recovery rebuilds); any other error goes up as it would from an on-policy step."""
        if self.future is None:
            return 0.0
        t = time.perf_counter()
        future, self.future = self.future, None
        try:
            self.ready = future.result()
        except RayActorError:
            self.drop()
        return time.perf_counter() - t

    def take(self, i: int) -> Rollouts | None:
        """Step i's rollouts if they were collected ahead, else None (collect them now)."""
        if self.ready is None or self.ready.step != i:
            return None
        out, self.ready, self.sampler_before = self.ready, None, None
        return out

    def drop(self) -> None:
        """Forget what is in flight or ready (before a recovery goes back to a resume state, or after an engine
        died): wait for the thread, put the sampler back where it was before those rollouts."""
        if self.future is not None:
            self.future.exception()  # waits; the collection touches the engines, so it must end first
            self.future = None
        if self.sampler_before is not None:
            self.stepper.set_state(self.sampler_state())
        self.ready, self.sampler_before = None, None

    def sampler_state(self) -> dict:
        """The sampler's state for a resume state: from before the rollouts collected ahead (a resumed run
        samples them again), with the SFT buffer as it is now (ReLIFT's buffer is filled by the updates)."""
        if self.sampler_before is None:
            return self.stepper.get_state()
        return dict(self.sampler_before, sft_buffer=self.stepper.sft_buffer)

    def shutdown(self) -> None:
        self.drop()
        self.pool.shutdown(wait=True)
