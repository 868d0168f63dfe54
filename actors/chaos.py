"""Faults caused on purpose (`faults.inject`), so tests and drills see recovery from real dead actors.

Each item ROLE@PHASE:STEP fires once: a timer SIGKILLs the actor's process shortly after that step starts, so
the kill lands while the step's calls are in flight, as a crash or an OOM kill would.
"""

from __future__ import annotations

import os
import re
import signal
import threading

ITEM = re.compile(r"^(learner|rollout|verifier)@(sft|rl):(\d+)$")
DELAY_S = 0.05


def parse_injections(items: list) -> list[tuple[str, str, int]]:
    out = []
    for item in items:
        m = ITEM.match(str(item).strip())
        if not m:
            raise ValueError(
                f"config key 'faults.inject' item {item!r} must look like ROLE@PHASE:STEP "
                "(role learner|rollout|verifier, phase sft|rl), e.g. learner@sft:15"
            )
        out.append((m.group(1), m.group(2), int(m.group(3))))
    return out


class FaultInjector:
    def __init__(self, items: list):
        self.pending = parse_injections(items)
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
