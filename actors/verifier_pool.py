"""VerifierPool: M VerifierWorker actors (actors/verifier.py) behind one score() call, surviving their faults.

The pool hands pieces of a batch to workers as they free up, re-sends a piece whose worker died (to the one
Ray restarted, or to a replacement in the same slot), and reports every such fault as a FaultEvent.
"""

import math
import time
from collections import deque
from dataclasses import dataclass

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from actors.fault_events import FaultEvent, fault_event
from actors.verifier import (
    CRASH,
    STATUSES,
    VerifierWorker,
    VerifyResult,
    _check_batch,
    _describe,
    load_verify_function,
    resolve_verifier_spec,
)
from switchpoint.answers import truncate as _truncate

MAX_PIECE_FAILURES = 2
"""A piece whose actor died under it this many times is scored 0 ("crash"): it may be what kills them."""
RECOVERY_TIMEOUT_S = 120.0
"""A worker that Ray has not restarted within this many seconds is replaced."""
PROBE_INTERVAL_S = 0.1
"""Pause between asking a restarting worker whether it is back (its calls fail until it is)."""
PID_PROBE_TIMEOUT_S = 30.0
"""How long the between-batches process-id probe waits for a worker (a busy one answers when it is free)."""


class WorkerGone(Exception):
    """A call returned, but its worker process died right after (see _check_crashes_are_the_items)."""


@dataclass
class _Fault:
    """One failed call, turned into a FaultEvent once both the recovery and the redo are known."""

    slot: int
    error: str
    started: float
    action: str = ""
    redone: str = ""
    ended: float = 0.0
    emitted: bool = False


class VerifierPool:
    """M VerifierWorker actors behind one score() call; a plain object, so the controller actor can own it.

    Actor faults are survived here, not by Ray's task retries (max_task_retries=0): a piece whose call fails
    with an actor error is handed out again, to the restarted actor or another one; an actor whose restarts
    are used up is replaced in its slot with the same options (so a placement bundle is kept). Each fault
    becomes a FaultEvent for the controller (take_fault_events).
    """

    def __init__(
        self,
        num_workers: int,
        kind: str = "exact",
        timeout_s: float = 5.0,
        num_cpus_per_worker: float = 0.25,
        chunk_size: int = 16,
        actor_options: list[dict] | None = None,
        max_restarts: int = 3,
    ):
        """actor_options: per-worker `.options(...)` (e.g. a placement-group bundle inside a Tune trial).
        max_restarts: how often Ray restarts a dead worker actor before the pool replaces it."""
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not num_cpus_per_worker >= 0:
            raise ValueError(f"num_cpus_per_worker must be >= 0, got {num_cpus_per_worker!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        spec = resolve_verifier_spec(kind)
        load_verify_function(spec)  # a bad path fails here, in the caller, not inside M actors
        self.kind = kind
        self.num_workers = num_workers
        self.fault_count = 0
        """Worker actor faults (failed calls) since the pool started."""
        self._chunk_size = chunk_size
        self._actor_class = ray.remote(num_cpus=num_cpus_per_worker)(VerifierWorker)
        self._actor_args = (spec, timeout_s, chunk_size)
        per_worker = actor_options or [{} for _ in range(num_workers)]
        retry_policy = {"max_restarts": max_restarts, "max_task_retries": 0}
        self._slot_options = [{**retry_policy, **per_worker[slot]} for slot in range(num_workers)]
        self._workers = [self._new_actor(slot) for slot in range(num_workers)]
        self._counts = dict.fromkeys(STATUSES, 0)
        self._fault_events: list[FaultEvent] = []
        self._lost_slots: set[int] = set()  # slots whose replacement would not start
        try:
            ray.get([worker.ready.remote() for worker in self._workers])
            self._pids: list[int | None] = ray.get([worker.pid.remote() for worker in self._workers])
        except Exception:
            self.shutdown()
            raise

    @property
    def workers(self) -> list:
        """The worker actor handles by slot (for monitoring and fault tests)."""
        return list(self._workers)

    def score(self, completions: list[str], references: list[str]) -> list[VerifyResult]:
        """Score completions[i] against references[i] on all workers in parallel; order is preserved."""
        if not self._workers:
            raise RuntimeError("VerifierPool.score called after shutdown()")
        _check_batch(completions, references)
        self._note_idle_restarts()
        # Pieces are handed out as workers free up, so a worker stuck on a slow item does not hold back
        # work the others could do. Several pieces per worker keep that balance; each stays >= a chunk.
        piece_size = max(self._chunk_size, math.ceil(len(completions) / (4 * self.num_workers)))
        pieces = [
            (start, min(start + piece_size, len(completions)))
            for start in range(0, len(completions), piece_size)
        ]
        parts: dict[int, list[VerifyResult]] = {}
        waiting = deque(range(len(pieces)))
        failures = [0] * len(pieces)
        faults_of_piece: dict[int, list[_Fault]] = {}
        scoring = {}  # ObjectRef -> (piece, slot, submitted at)
        recovering = {}  # ObjectRef of ready() -> (slot, fault, since)
        idle = [slot for slot in range(len(self._workers)) if slot not in self._lost_slots]
        while waiting or scoring or recovering:
            if waiting and not idle and not scoring and not recovering:
                raise RuntimeError("VerifierPool: every worker is lost; cannot score")
            while idle and waiting:
                slot, piece = idle.pop(), waiting.popleft()
                start, stop = pieces[piece]
                call = self._workers[slot].score.remote(completions[start:stop], references[start:stop])
                scoring[call] = (piece, slot, time.monotonic())
            done, _ = ray.wait([*scoring, *recovering], num_returns=1, timeout=1.0)
            for ref in done:
                if ref in scoring:
                    piece, slot, submitted = scoring.pop(ref)
                    try:
                        result = ray.get(ref)
                        self._check_crashes_are_the_items(slot, result)
                        parts[piece] = result
                    except (RayActorError, WorkerGone) as exc:
                        fault = _Fault(slot, _describe(exc), submitted)
                        faults_of_piece.setdefault(piece, []).append(fault)
                        self.fault_count += 1
                        failures[piece] += 1
                        if failures[piece] >= MAX_PIECE_FAILURES:  # it may be what kills them: give up on it
                            detail = f"verifier actor died {failures[piece]} times on this piece; not scored"
                            parts[piece] = [VerifyResult(0.0, CRASH, detail)] * (
                                pieces[piece][1] - pieces[piece][0]
                            )
                        else:
                            waiting.appendleft(piece)
                        recovering[self._workers[slot].ready.remote()] = (slot, fault, time.monotonic())
                    else:
                        idle.append(slot)
                    if piece in parts:
                        self._close_faults(faults_of_piece.pop(piece, []), failures[piece], pieces[piece])
                else:
                    slot, fault, since = recovering.pop(ref)
                    self._recover(ref, slot, fault, since, recovering, idle)
            self._replace_overdue(recovering)
        results = [result for index in range(len(pieces)) for result in parts[index]]
        for result in results:
            self._counts[result.status] = self._counts.get(result.status, 0) + 1
        return results

    def _check_crashes_are_the_items(self, slot: int, results: list[VerifyResult]) -> None:
        """Ray kills an actor's child processes before the actor, and a call can still return in between: its
        item then reads as a verifier crash although the worker itself was being killed. A result with a crash
        is kept only if the worker is still the same process; otherwise the piece is redone like any piece whose
        worker died (a crash of the item's own making leaves the worker process as it was)."""
        if not any(r.status == CRASH for r in results):
            return
        try:
            pid = ray.get(self._workers[slot].pid.remote(), timeout=PID_PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            return  # no answer either way: keep the result
        if self._pids[slot] is not None and pid != self._pids[slot]:
            raise WorkerGone(f"worker process {self._pids[slot]} died with its call (now {pid})")

    def take_fault_events(self) -> list[FaultEvent]:
        """The worker faults recorded since the last call (oldest first); they are cleared."""
        events, self._fault_events = self._fault_events, []
        return events

    def stats(self) -> dict[str, int]:
        """How many items ended in each status since the pool started."""
        return dict(self._counts)

    def shutdown(self) -> None:
        """Stop every worker's child process and kill the actors. Safe to call twice."""
        workers, self._workers = self._workers, []
        if not workers:
            return
        try:
            ray.get([worker.shutdown.remote() for worker in workers], timeout=30)
        except Exception:
            pass  # a dead or stuck actor is killed below either way; its child dies with it (PDEATHSIG)
        for worker in workers:
            ray.kill(worker)

    def _note_idle_restarts(self) -> None:
        """A worker that died between batches and was restarted by Ray fails no call, so nothing else would
        notice it; its new process id gives it away, and it is reported like any other fault (nothing redone)."""
        slots = [s for s in range(len(self._workers)) if s not in self._lost_slots]
        refs = {slot: self._workers[slot].pid.remote() for slot in slots}
        for slot, ref in refs.items():
            try:
                pid = ray.get(ref, timeout=PID_PROBE_TIMEOUT_S)
            except Exception:
                continue  # restarting or dead: the scoring that follows meets it and recovers it
            if self._pids[slot] is not None and pid != self._pids[slot]:
                self.fault_count += 1
                error = f"worker process {self._pids[slot]} died while idle (now {pid})"
                self._fault_events.append(
                    fault_event("verifier", slot, error, "restarted by Ray", "nothing", 0.0)
                )
            self._pids[slot] = pid

    def _new_actor(self, slot: int):
        return self._actor_class.options(**self._slot_options[slot]).remote(*self._actor_args)

    def _recover(self, ref, slot: int, fault: _Fault, since: float, recovering: dict, idle: list) -> None:
        """Settle a ready() probe of a worker whose call failed: back in service, or replaced."""
        try:
            ray.get(ref)
        except ActorUnavailableError:  # Ray is still restarting it: ask again shortly
            time.sleep(PROBE_INTERVAL_S)
            recovering[self._workers[slot].ready.remote()] = (slot, fault, since)
            return
        except RayActorError as exc:  # dead for good (restarts used up), or its replacement failed to start
            if fault.action == "replaced":
                self._give_up(slot, fault, _describe(exc))
            else:
                self._replace(slot, fault, recovering)
            return
        fault.action = fault.action or "restarted by Ray"
        self._maybe_emit(fault)
        self._pids[slot] = None  # a new process: its id is learned at the next probe, not counted again
        idle.append(slot)

    def _replace(self, slot: int, fault: _Fault, recovering: dict) -> None:
        ray.kill(self._workers[slot], no_restart=True)
        self._workers[slot] = self._new_actor(slot)
        fault.action = "replaced"
        recovering[self._workers[slot].ready.remote()] = (slot, fault, time.monotonic())

    def _replace_overdue(self, recovering: dict) -> None:
        now = time.monotonic()
        for ref, (slot, fault, since) in list(recovering.items()):
            if now - since > RECOVERY_TIMEOUT_S:
                del recovering[ref]
                if fault.action == "replaced":
                    self._give_up(slot, fault, f"not ready after {RECOVERY_TIMEOUT_S:g} s")
                else:
                    self._replace(slot, fault, recovering)

    def _give_up(self, slot: int, fault: _Fault, why: str) -> None:
        """The replacement would not start either: leave the slot empty rather than retry forever."""
        ray.kill(self._workers[slot], no_restart=True)
        self._lost_slots.add(slot)
        fault.action = _truncate(f"replacement failed ({why}); slot left empty")
        self._maybe_emit(fault)

    def _close_faults(self, faults: list[_Fault], failures: int, piece: tuple[int, int]) -> None:
        items = piece[1] - piece[0]
        for fault in faults:
            fault.ended = time.monotonic()
            if failures >= MAX_PIECE_FAILURES:
                fault.redone = f"{items} items scored 0 after {failures} failures"
            else:
                fault.redone = f"{items} items re-scored"
            self._maybe_emit(fault)

    def _maybe_emit(self, fault: _Fault) -> None:
        """Record the event once both what was done about the worker and what was redone are known."""
        if fault.action and fault.redone and not fault.emitted:
            fault.emitted = True
            seconds_lost = fault.ended - fault.started
            event = fault_event("verifier", fault.slot, fault.error, fault.action, fault.redone, seconds_lost)
            self._fault_events.append(event)
