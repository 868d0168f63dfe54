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
from collections.abc import Callable

import ray

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
