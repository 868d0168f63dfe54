"""What an actor fault cost: the typed record every role hands the controller, which logs it as a metrics row.

A fault is an actor that died (killed, OOM, node lost, a crash in native code). The role that owned it replaces
or restarts it and redoes the work that was in flight; this record says what died, what was redone and how
many seconds that cost, so the run folder shows every fault next to the steps it touched.
"""

from __future__ import annotations

from typing import TypedDict


class FaultLimitError(RuntimeError):
    """More actor faults than faults.max_faults: the run stops with this reason (everything done stays on disk)."""


class FaultEvent(TypedDict):
    role: str
    """verifier | rollout | learner."""
    worker: int
    """Index of the actor within its role (the pool slot, engine index or learner rank)."""
    error: str
    """What Ray reported, one line (e.g. "ActorDiedError: ... killed by SIGKILL")."""
    action: str
    """What was done about it: "restarted by Ray", "replaced", "group rebuilt from step_000120", ..."""
    redone: str
    """The work that was done again: "16 items re-scored", "generation of RL step 3", "SFT steps 121-127"."""
    seconds_lost: float
    """Wall seconds from the failed call to the redone work being back where it was."""


def fault_event(
    role: str, worker: int, error: BaseException | str, action: str, redone: str, seconds_lost: float
) -> FaultEvent:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return FaultEvent(
        role=role,
        worker=worker,
        error=first_line[:300],
        action=action,
        redone=redone,
        seconds_lost=round(float(seconds_lost), 3),
    )
