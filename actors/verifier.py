"""The reward/verifier pool: Ray actors that score completions against reference answers.

Model output is untrusted input. It is only ever parsed (never evaluated), and each verify call runs in a
child process so that a completion which makes the verifier hang or crash costs one item, not the pool:

    VerifierPool (plain object, lives in the controller)
      -> M VerifierWorker Ray actors
           -> one persistent child process each, forked from the actor, running the verify function in its
              MAIN thread (math-verify's parse/verify rely on signal.alarm, which only works there).

The actor sends the child a small chunk of items over a pipe and reads the results back one at a time, giving
each item `timeout_s` from the moment the previous result arrived. An item that overruns gets the child
SIGKILLed (status "timeout"); a child that dies mid-item gives status "crash"; a verify function that raises
gives status "error". In each case the item scores 0.0, a fresh child is forked, and the rest of the chunk
is sent again. Children are forked (not spawned) from an actor that has already imported the verify
function, so a restart costs milliseconds rather than a fresh interpreter and a sympy import.

A worker ACTOR that dies (killed, OOM, node lost) costs the pool a re-send, not the run: see VerifierPool.
The built-in verify functions and the answer extractor live in switchpoint/answers.py (no Ray there).
"""

import ctypes
import importlib
import math
import multiprocessing
import numbers
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from actors.fault_events import FaultEvent, fault_event
from switchpoint import answers
from switchpoint.answers import (  # noqa: F401 (re-exported)
    CRASH,
    ERROR,
    MAX_DETAIL_CHARS,
    NO_ANSWER,
    OK,
    STATUSES,
    TIMEOUT,
    VerifyResult,
    extract_final_answer,
    verify_exact,
    verify_math,
)
from switchpoint.answers import truncate as _truncate

VERIFIERS: dict[str, str | Callable] = {"exact": verify_exact, "math": verify_math}
"""Verifier kinds: name -> "package.module:function" or a module-level function, called as
verify(completion, reference) and returning a float, a bool or a VerifyResult. Any "package.module:function"
string also works as a kind directly."""

# A known-good item each built-in scores once in the actor before it forks children, so that every child
# (restarts included) inherits the imports, compiled regexes and once-only warnings already done.
_WARM_UP_ITEMS = {answers.verify_exact: ("Answer: 1", "1"), answers.verify_math: ("$1$", "1")}


def resolve_verifier_spec(kind: str) -> str:
    """The "module:function" path for a registry name or a path; ValueError for anything else."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"verifier kind must be a non-empty string, got {kind!r}")
    if kind in VERIFIERS:
        target = VERIFIERS[kind]
    elif ":" in kind:
        target = kind
    else:
        raise ValueError(
            f"unknown verifier kind {kind!r}; known kinds: {sorted(VERIFIERS)}, "
            "or a 'package.module:function' path"
        )
    if isinstance(target, str):
        return target
    spec = f"{target.__module__}:{target.__qualname__}"
    if load_verify_function(spec) is not target:
        raise ValueError(f"verifier {kind!r}: {spec} does not import back as the registered function")
    return spec


def load_verify_function(spec: str) -> Callable:
    """Import "package.module:function" (the function may be a dotted attribute path)."""
    module_name, _, attribute_path = spec.partition(":")
    if not module_name or not attribute_path:
        raise ValueError(f"verifier {spec!r} is not of the form 'package.module:function'")
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"verifier {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    for attribute in attribute_path.split("."):
        if not hasattr(target, attribute):
            raise ValueError(f"verifier {spec!r}: {module_name!r} has no attribute {attribute_path!r}")
        target = getattr(target, attribute)
    if not callable(target):
        raise ValueError(f"verifier {spec!r} is not callable")
    return target


# --- The child process ---


def _as_result_tuple(value: object) -> tuple[float, str, str]:
    """Normalise what a verify function returned to (score, status, detail)."""
    if isinstance(value, VerifyResult):
        if value.status not in STATUSES:
            return 0.0, ERROR, _truncate(f"verify returned unknown status {value.status!r}")
        if value.status != OK:
            return 0.0, value.status, _truncate(str(value.detail))
        value, detail = value.score, _truncate(str(value.detail))
    else:
        detail = ""
    if isinstance(value, numbers.Real) and math.isfinite(float(value)):
        return float(value), OK, detail
    return 0.0, ERROR, _truncate(f"verify returned {type(value).__name__}, expected a finite float or bool")


def _describe(exc: BaseException) -> str:
    try:
        return _truncate(f"{type(exc).__name__}: {exc}")
    except Exception:  # str() of an exception from untrusted input can itself fail
        return type(exc).__name__


def _score_one(verify_fn: Callable, completion: str, reference: str) -> tuple[float, str, str]:
    try:
        value = verify_fn(completion, reference)
    except BaseException as exc:  # incl. SystemExit/KeyboardInterrupt: one item's error, not the child's end
        return 0.0, ERROR, _describe(exc)
    return _as_result_tuple(value)


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this child if its actor dies, even while the child is stuck in an item."""
    try:
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: an idle child still ends on the pipe's EOF
    if os.getppid() != parent_pid:  # the actor died before prctl took effect
        os._exit(0)


def _child_main(conn, actor_end, spec: str, parent_pid: int) -> None:
    """Score chunks of (completion, reference) pairs from the pipe, one reply per item, until told to stop."""
    actor_end.close()  # our copy of the actor's end would keep the pipe open after the actor dies
    _die_with_parent(parent_pid)
    verify_fn = load_verify_function(spec)  # already imported in the actor, so a sys.modules lookup
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for completion, reference in chunk:
            conn.send(_score_one(verify_fn, completion, reference))


def _check_batch(completions: list[str], references: list[str]) -> None:
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    for name, values in (("completions", completions), ("references", references)):
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise ValueError(f"{name}[{index}] is {type(value).__name__}, expected str")


# --- The Ray actor ---


class VerifierWorker:
    """One verifier actor owning one persistent child process; see the module docstring for the protocol."""

    def __init__(self, kind: str, timeout_s: float, chunk_size: int = 16):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self._spec = resolve_verifier_spec(kind)
        verify_fn = load_verify_function(self._spec)
        if verify_fn in _WARM_UP_ITEMS:
            verify_fn(*_WARM_UP_ITEMS[verify_fn])
        self._timeout_s = float(timeout_s)
        self._chunk_size = chunk_size
        self._context = multiprocessing.get_context("fork")
        self._process = None
        self._conn = None
        self.restarts = 0
        self._start_child()

    def ready(self) -> str:
        """The resolved "module:function" this worker runs; awaiting it surfaces construction errors."""
        return self._spec

    def pid(self) -> int:
        """Process id of this worker (the actor process), so tests can kill it from outside Ray."""
        return os.getpid()

    def child_pid(self) -> int | None:
        """Process id of the current child (for monitoring and tests)."""
        return self._process.pid if self._process is not None else None

    def score(self, completions: list[str], references: list[str]) -> list[VerifyResult]:
        """Score completions[i] against references[i]; one result per item, in order."""
        _check_batch(completions, references)
        items = list(zip(completions, references))
        results: list[VerifyResult] = []
        for start in range(0, len(items), self._chunk_size):
            pending = items[start : start + self._chunk_size]
            while pending:
                scored = self._score_until_failure(pending)
                results.extend(scored)
                pending = pending[len(scored) :]
        return results

    def shutdown(self) -> None:
        """Stop the child; the actor can then be killed. Safe to call twice."""
        if self._process is None:
            return
        try:
            self._conn.send(None)
            self._process.join(timeout=2.0)
        except OSError:
            pass
        self._stop_child()

    def _score_until_failure(self, items: list[tuple[str, str]]) -> list[VerifyResult]:
        """Results for a prefix of items: all of them, or up to and including the first timeout/crash."""
        if self._process is None or not self._process.is_alive():
            self._restart_child()
        try:
            self._conn.send(items)
        except OSError as exc:  # the child died while idle: charge the first item and carry on
            self._restart_child()
            return [VerifyResult(0.0, CRASH, _truncate(f"verifier process unreachable: {exc}"))]
        results = []
        for _ in items:
            # poll() also returns True at EOF, i.e. when the child has died.
            if not self._conn.poll(self._timeout_s):
                self._restart_child()
                detail = f"no result within {self._timeout_s:g} s; verifier process killed"
                return results + [VerifyResult(0.0, TIMEOUT, detail)]
            try:
                score, status, detail = self._conn.recv()
            except Exception:  # EOF or a torn message: the child died mid-item
                self._process.join(timeout=5.0)
                exit_info = self._describe_exit()
                self._restart_child()
                return results + [VerifyResult(0.0, CRASH, f"verifier process died ({exit_info})")]
            results.append(VerifyResult(score, status, detail))
        return results

    def _describe_exit(self) -> str:
        code = self._process.exitcode
        if code is None:
            return "still running, pipe broken"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def _start_child(self) -> None:
        actor_end, child_end = self._context.Pipe(duplex=True)
        self._process = self._context.Process(
            target=_child_main, args=(child_end, actor_end, self._spec, os.getpid()), daemon=True
        )
        self._process.start()
        child_end.close()  # so that the child's death reads as EOF here
        self._conn = actor_end

    def _stop_child(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()  # SIGKILL: a stuck verify function may ignore anything gentler
        if self._process is not None:
            self._process.join(timeout=5.0)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None

    def _restart_child(self) -> None:
        self._stop_child()
        self._start_child()
        self.restarts += 1


VerifierWorkerActor = ray.remote(VerifierWorker)


# --- The pool used by the controller ---

MAX_PIECE_FAILURES = 2
"""A piece whose actor died under it this many times is scored 0 ("crash"): it may be what kills them."""
RECOVERY_TIMEOUT_S = 120.0
"""A worker that Ray has not restarted within this many seconds is replaced."""
PROBE_INTERVAL_S = 0.1
"""Pause between asking a restarting worker whether it is back (its calls fail until it is)."""


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
                        parts[piece] = ray.get(ref)
                    except RayActorError as exc:
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
