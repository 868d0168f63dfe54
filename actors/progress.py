"""The run's lines as people read them: the progress line, the switch line, and the Controller actor's own log.

The driver (cluster/runner.py) prints these lines on the console and, in a job, in the driver log. The Controller
logs the same lines through Python logging into its own stderr, which is the actor's log in the dashboard (Actors
-> Controller -> Logs), so a run watched from the dashboard shows them there too. Ray forwards every actor's
stderr to the job's driver, where these would appear a second time: the driver drops forwarded lines that carry
RUN_LOG_MARK (cluster/runner.py), everything else the actors write still comes through.
"""

from __future__ import annotations

import logging
import sys
import threading

RUN_LOGGER = "switchpoint.run"
RUN_LOG_MARK = f" {RUN_LOGGER}: "
"""In every line of the Controller's run log, and in no line of anything else."""


def fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def progress_line(s: dict) -> str:
    last = s.get("last", {})
    phase = s["phase"]
    if phase.startswith("sft"):
        where = f"SFT {s['step']}/{s['sft_max_steps']}"
    elif phase == "rl":
        where = f"RL {s['step']}/{s['rl_steps']}"
    else:
        where = phase
    parts = [f"[{s['elapsed']:6.0f}s] {where:<28}", f"loss {fmt(last.get('loss'))}"]
    if "switch_step" in last:
        # After the switch the last SFT validation is stale; show the branch point RL started from.
        sw_val = fmt(last.get("switch_val_loss"))
        parts.append(f"switched@{last['switch_step']} (val {sw_val}, {last['switch_regime']})")
    else:
        parts.append(f"val {fmt(last.get('val_loss'))} ({last.get('regime', '-')})")
    parts += [
        f"reward {fmt(last.get('reward'), '.3f')}",
        f"held-out acc {fmt(last.get('accuracy'), '.3f')}",
    ]
    return "  ".join(parts)


def switch_line(sw: dict) -> str:
    """The switch on a line of its own: where RL branched, in which regime, why, and P_sft there."""
    return (
        f"switch: RL from SFT step {sw['step']} ({sw['regime']}, val loss {fmt(sw['val_loss'])}), decided at "
        f"step {sw['decided_at_step']}: {sw['reason']}; P_sft {fmt(sw['p_sft'], '.3f')} (held-out avg@k)"
    )


def run_logger() -> logging.Logger:
    """INFO lines to this process's stderr (in an actor: its log file), marked, not passed to the root logger."""
    logger = logging.getLogger(RUN_LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s" + RUN_LOG_MARK + "%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class ActorLog:
    """Inside the Controller: a progress line every `interval_s` seconds when it changed (as the driver prints
    them), one at the first step of each phase (SFT, RL: however fast a phase is, its line is in the log), each
    event line (faults, resumes) and the switch line as they happen, the last line at the end."""

    def __init__(self, status, interval_s: float = 5.0):
        self.status, self.interval_s = status, interval_s
        self.log = run_logger()
        self.last_line = ""
        self.last_phase = ""
        self.lock = threading.Lock()  # the timer thread and the run's own phase lines
        self.events_shown = 0
        self.switch_shown = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="switchpoint-run-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def tick(self) -> None:
        with self.lock:
            s = self.status()
            for event in s["events"][self.events_shown :]:
                self.log.info(event)
            self.events_shown = len(s["events"])
            line = progress_line(s)
            if line != self.last_line:
                self.log.info(line)
                self.last_line = line

    def phase(self, phase: str) -> None:
        """Called at every step; logs the progress line when the step is its phase's first."""
        if phase != self.last_phase:
            self.last_phase = phase
            self.tick()

    def switch(self, sw: dict) -> None:
        if not self.switch_shown:
            self.log.info(switch_line(sw))
            self.switch_shown = True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 1)
        self.tick()
