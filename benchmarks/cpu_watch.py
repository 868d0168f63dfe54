"""CPU seconds spent per RL step by this driver's own Ray actors, by kind (learner ranks, vLLM engines, the rest).

On a machine shared with other jobs, wall time per step moves with their load; the CPU time a step costs moves
far less, so a change that removes work shows in it even when the wall clock is noisy. A thread follows the run
folder's metrics.jsonl and, each time an RL row lands, reads utime + stime (/proc/PID/stat) of every process
descended from this one, grouped by the actor name Ray puts in the process title. Linux only.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time

KINDS = {"ray::LearnerRank": "learner", "ray::RolloutWorker": "engine"}
TICK = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, title, CPU seconds) for every readable process."""
    out = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                raw = f.read()
            with open(stat[:-4] + "cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(stat.split("/")[2])] = (int(fields[1]), title, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def cpu_by_kind(root: int | None = None) -> dict[str, float]:
    """CPU seconds so far of root's descendants (default: this process), summed per kind."""
    root = root or os.getpid()
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    totals = {"learner": 0.0, "engine": 0.0, "other": 0.0}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        _, title, cpu = procs[pid]
        kind = next((k for prefix, k in KINDS.items() if title.startswith(prefix)), "other")
        totals[kind] += cpu
        stack += children.get(pid, [])
    return totals


class StepCPU:
    """Follows OUTPUT_DIR/<run name>-*/metrics.jsonl of the run about to start; `per_step` holds, per RL row
    (in order), the CPU seconds by kind since the previous row."""

    def __init__(self, output_dir: str, run_name: str, poll_s: float = 0.05):
        self.pattern = os.path.join(output_dir, f"{run_name}-*", "metrics.jsonl")
        self.existing = set(glob.glob(self.pattern))
        self.poll_s, self.per_step = poll_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        path, offset, last = None, 0, None
        while not self._stop.is_set():
            time.sleep(self.poll_s)
            if path is None:
                new = sorted(set(glob.glob(self.pattern)) - self.existing)
                if not new:
                    continue
                path = new[0]
            with open(path) as f:
                f.seek(offset)
                chunk = f.read()
            lines = chunk.split("\n")[:-1]  # a line still being written stays for the next poll
            offset += sum(len(line) + 1 for line in lines)
            for line in lines:
                row = json.loads(line)
                if row.get("phase") == "switch" or (row.get("phase") == "rl" and "timing" in row):
                    now = cpu_by_kind()
                    if last is not None and row.get("phase") == "rl":
                        self.per_step.append({k: now[k] - last[k] for k in now})
                    last = now

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join()
        return self.per_step
