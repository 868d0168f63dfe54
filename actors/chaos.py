"""Faults caused on purpose (`faults.inject`), so tests and drills see recovery from real dead actors.

Each item ROLE@PHASE:STEP fires once: a timer SIGKILLs the actor's process shortly after that step starts, so
the kill lands while the step's calls are in flight, as a crash or an OOM kill would. The role `sweep` (Tune
sweeps only) SIGKILLs the sweep driver's whole process group instead, right after a branch trial wrote its resume
state at that RL step (`sweep@rl:0`: after the branch opened, before any state), the moments a user's kill can
fall between; cluster.tune_trial fires those once each, in the order given.
"""

from __future__ import annotations

import os
import re
import signal
import threading

ITEM = re.compile(r"^(learner|rollout|verifier|sweep)@(sft|rl):(\d+)$")
DELAY_S = 0.05


def parse_injections(items: list, sweep: bool = False) -> list[tuple[str, str, int]]:
    """(role, phase, step) per item; `sweep` kills only where the caller is a Tune sweep."""
    out = []
    for item in items:
        m = ITEM.match(str(item).strip())
        if not m:
            raise ValueError(
                f"config key 'faults.inject' item {item!r} must look like ROLE@PHASE:STEP "
                "(role learner|rollout|verifier|sweep, phase sft|rl), e.g. learner@sft:15"
            )
        if m.group(1) == "sweep" and m.group(2) != "rl":
            raise ValueError(
                f"config key 'faults.inject' item {item!r}: a sweep kill is timed by RL steps (sweep@rl:N)"
            )
        if m.group(1) == "sweep" and not sweep:
            raise ValueError(
                f"config key 'faults.inject' item {item!r}: sweep kills work only in `switchpoint tune`"
            )
        out.append((m.group(1), m.group(2), int(m.group(3))))
    return out


class FaultInjector:
    def __init__(self, items: list):
        # The actors' faults only: a sweep kill is fired by the Tune trial (cluster.tune_trial).
        self.pending = [i for i in parse_injections(items, sweep=True) if i[0] != "sweep"]
        self.fired: list[dict] = []

    def at(self, phase: str, step: int, pids: dict[str, list[int]]) -> None:
        """Called at the start of each step: kill what is due. pids: role -> actor process ids (the last of
        a role is the victim: learner rank N-1, the last engine, the last verifier worker)."""
        for item in [p for p in self.pending if p[1] == phase and p[2] == step]:
            self.pending.remove(item)
            role = item[0]
            if not pids.get(role):
                continue
            pid = pids[role][-1]
            threading.Timer(DELAY_S, _kill, (pid,)).start()
            self.fired.append({"role": role, "phase": phase, "step": step, "pid": pid})


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
