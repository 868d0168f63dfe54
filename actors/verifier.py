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
"""

import ctypes
import importlib
import math
import multiprocessing
import numbers
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import ray

OK = "ok"
NO_ANSWER = "no_answer"
ERROR = "error"
TIMEOUT = "timeout"
CRASH = "crash"
STATUSES = (OK, NO_ANSWER, ERROR, TIMEOUT, CRASH)

MAX_DETAIL_CHARS = 300
ANSWER_MARKER = "Answer:"
BOXED_MARKER = "\\boxed{"


@dataclass
class VerifyResult:
    """The verdict on one completion."""

    score: float
    """The reward: 1.0/0.0 for the built-in verifiers, whatever finite number a plugged-in one returns;
    always 0.0 unless status is "ok"."""
    status: str
    """One of STATUSES: ok, no_answer (nothing to extract), error (verify raised), timeout, crash."""
    detail: str = ""
    """Human-readable context (extracted answer, exception message, exit signal), truncated."""


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


# --- Built-in verify functions ---


def _last_boxed_content(text: str) -> str | None:
    """The contents of the last \\boxed{...}, with nested braces balanced; None if absent or unclosed."""
    start = text.rfind(BOXED_MARKER)
    if start < 0:
        return None
    depth = 1
    for position in range(start + len(BOXED_MARKER), len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(BOXED_MARKER) : position]
    return None


def extract_final_answer(text: str) -> str | None:
    """The first token after the last "Answer:", else of the last \\boxed{...}; None when there is none."""
    marker = text.rfind(ANSWER_MARKER)
    candidate = text[marker + len(ANSWER_MARKER) :] if marker >= 0 else _last_boxed_content(text)
    if candidate is None:
        return None
    tokens = candidate.split()
    return tokens[0] if tokens else None


def verify_exact(completion: str, reference: str) -> VerifyResult:
    """Exact match of the extracted final answer against the stripped reference (the synthetic task)."""
    answer = extract_final_answer(completion)
    if answer is None:
        return VerifyResult(0.0, NO_ANSWER, 'no "Answer:" or \\boxed{} answer in the completion')
    score = 1.0 if answer == reference.strip() else 0.0
    return VerifyResult(score, OK, _truncate(f"answer={answer!r}"))


def verify_math(completion: str, reference: str) -> VerifyResult:
    """Mathematical equivalence via math-verify ("\\frac{1}{2}" matches "0.5")."""
    # Imported here so that importing this module stays cheap; VerifierWorker warms it up before forking.
    from math_verify import parse, verify

    gold_text = reference.strip()
    if "$" not in gold_text and BOXED_MARKER not in gold_text:
        gold_text = f"${gold_text}$"
    # math-verify's own signal.alarm timeouts are switched off: the worker enforces the per-item limit.
    gold = parse(gold_text, parsing_timeout=None)
    if not gold:
        raise ValueError(f"reference {_truncate(reference)!r} has no answer math-verify can parse")
    predicted = parse(completion, parsing_timeout=None)
    if not predicted:
        return VerifyResult(0.0, NO_ANSWER, "math-verify found no answer in the completion")
    return VerifyResult(1.0 if verify(gold, predicted, timeout_seconds=None) else 0.0, OK)


VERIFIERS: dict[str, str | Callable] = {"exact": verify_exact, "math": verify_math}
"""Verifier kinds: name -> "package.module:function" or a module-level function, called as
verify(completion, reference) and returning a float, a bool or a VerifyResult. Any "package.module:function"
string also works as a kind directly."""

# A known-good item each built-in scores once in the actor before it forks children, so that every child
# (restarts included) inherits the imports, compiled regexes and once-only warnings already done.
_WARM_UP_ITEMS = {f"{__name__}:verify_exact": ("Answer: 1", "1"), f"{__name__}:verify_math": ("$1$", "1")}


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
        if self._spec in _WARM_UP_ITEMS:
            verify_fn(*_WARM_UP_ITEMS[self._spec])
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


class VerifierPool:
    """M VerifierWorker actors behind one score() call; a plain object, so the controller actor can own it."""

    def __init__(
        self,
        num_workers: int,
        kind: str = "exact",
        timeout_s: float = 5.0,
        num_cpus_per_worker: float = 0.25,
        chunk_size: int = 16,
        actor_options: list[dict] | None = None,
    ):
        """actor_options: per-worker `.options(...)` (e.g. a placement-group bundle inside a Tune trial)."""
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not num_cpus_per_worker >= 0:
            raise ValueError(f"num_cpus_per_worker must be >= 0, got {num_cpus_per_worker!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        spec = resolve_verifier_spec(kind)
        load_verify_function(spec)  # a bad path fails here, in the caller, not inside M actors
        self.kind = kind
        self.num_workers = num_workers
        self._chunk_size = chunk_size
        actor_class = ray.remote(num_cpus=num_cpus_per_worker)(VerifierWorker)
        opts = actor_options or [{} for _ in range(num_workers)]
        self._workers = [
            actor_class.options(**opts[i]).remote(spec, timeout_s, chunk_size) for i in range(num_workers)
        ]
        self._counts = dict.fromkeys(STATUSES, 0)
        try:
            ray.get([worker.ready.remote() for worker in self._workers])
        except Exception:
            self.shutdown()
            raise

    def score(self, completions: list[str], references: list[str]) -> list[VerifyResult]:
        """Score completions[i] against references[i] on all workers in parallel; order is preserved."""
        if not self._workers:
            raise RuntimeError("VerifierPool.score called after shutdown()")
        _check_batch(completions, references)
        # Pieces are handed out as workers free up, so a worker stuck on a slow item does not hold back
        # work the others could do. Several pieces per worker keep that balance; each stays >= a chunk.
        piece_size = max(self._chunk_size, math.ceil(len(completions) / (4 * self.num_workers)))
        pieces = [(start, start + piece_size) for start in range(0, len(completions), piece_size)]
        parts: dict[int, list[VerifyResult]] = {}
        in_flight = {}
        idle_workers = list(self._workers)
        next_piece = 0
        while next_piece < len(pieces) or in_flight:
            while idle_workers and next_piece < len(pieces):
                worker = idle_workers.pop()
                start, stop = pieces[next_piece]
                in_flight[worker.score.remote(completions[start:stop], references[start:stop])] = (
                    next_piece,
                    worker,
                )
                next_piece += 1
            [done], _ = ray.wait(list(in_flight), num_returns=1)
            piece_index, worker = in_flight.pop(done)
            parts[piece_index] = ray.get(done)
            idle_workers.append(worker)
        results = [result for index in range(len(pieces)) for result in parts[index]]
        for result in results:
            self._counts[result.status] = self._counts.get(result.status, 0) + 1
        return results

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
