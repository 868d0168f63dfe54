"""Deliberately faulty verify functions, used by tests to inject faults into the verifier pool.

Each function has the verify signature `(completion, reference) -> float`. A pool runs one function for a
whole batch, so each misbehaves only on completions that carry its marker word and otherwise scores like a
plain exact match on the completion's last token; that way one batch can mix healthy and faulty items.
`mixed` understands every marker.
"""

import os
import signal
import time

HANG_MARKER = "HANG"
CRASH_MARKER = "CRASH"
EXIT_MARKER = "EXIT"
RAISE_MARKER = "RAISE"


def last_token_matches(completion: str, reference: str) -> float:
    """1.0 when the completion's last whitespace-separated token equals the stripped reference."""
    tokens = completion.split()
    return 1.0 if tokens and tokens[-1] == reference.strip() else 0.0


def hang(completion: str, reference: str) -> float:
    """Never returns on a HANG item; ignores SIGTERM and SIGALRM so only SIGKILL can stop it."""
    if HANG_MARKER in completion:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            time.sleep(3600)
    return last_token_matches(completion, reference)


def crash(completion: str, reference: str) -> float:
    """Dies by SIGSEGV on a CRASH item, as a faulty C extension would."""
    if CRASH_MARKER in completion:
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(60)  # the signal is delivered asynchronously; never fall through to a score
    return last_token_matches(completion, reference)


def exit_abruptly(completion: str, reference: str) -> float:
    """Ends its process with os._exit(3) on an EXIT item: no exception, no cleanup, no reply."""
    if EXIT_MARKER in completion:
        os._exit(3)
    return last_token_matches(completion, reference)


def raises(completion: str, reference: str) -> float:
    """Raises RuntimeError on a RAISE item."""
    if RAISE_MARKER in completion:
        raise RuntimeError("deliberate verifier failure for " + repr(completion[:40]))
    return last_token_matches(completion, reference)


def mixed(completion: str, reference: str) -> float:
    """Every fault above, chosen by the marker in the completion."""
    for fault in (hang, crash, exit_abruptly, raises):
        fault(completion, reference)
    return last_token_matches(completion, reference)


def not_a_number(completion: str, reference: str) -> str:
    """Returns a string instead of a score: the pool must report it as an error, not crash."""
    return "yes"


SLOW_SECONDS = 0.3


def slow(completion: str, reference: str) -> float:
    """Takes SLOW_SECONDS per item, so a test can kill a worker actor while it is busy with a batch."""
    time.sleep(SLOW_SECONDS)
    return last_token_matches(completion, reference)


KILL_ACTOR_MARKER = "KILLACTOR"


def kills_its_actor(completion: str, reference: str) -> float:
    """SIGKILLs the verifier's actor process (this child's parent) on a KILLACTOR item, every time it is tried."""
    if KILL_ACTOR_MARKER in completion:
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)  # dies with the actor (PDEATHSIG); never fall through to a score
    return last_token_matches(completion, reference)
