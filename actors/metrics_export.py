"""Every metrics row, also where people watch a run: Ray's metrics endpoint and TensorBoard event files.

RunFolder.log hands each row here, so the controller (and a Tune trial's controller) exports without knowing.

- RayMetrics: `ray.util.metrics` gauges and counters, scraped by Prometheus from each node's metrics agent
  (`ray_` is prefixed to the names) and shown in the dashboard's Metrics view when Grafana is attached
  (cluster/grafana_switchpoint.json). Ray drops a metric whose name does not match
  `^[a-zA-Z_:][a-zA-Z0-9_:]*$` and tags not declared in `tag_keys`, so both are fixed here and checked in tests.
- TensorBoardLog: one scalar per numeric value of a row (nested dicts such as `timing` flattened), the run's
  plot as an image; written with tensorboardX (a dependency of ray[tune]; no TensorFlow needed).
- WandbLog: the same scalars to Weights & Biases in offline mode (`wandb sync` uploads them later).
"""

from __future__ import annotations

import itertools
import os
import re

# Regimes as numbers for a gauge (the order of the paper's regimes in time); the name is also a tag.
REGIME_CODE = {"adaptive": 0, "stable": 1, "mild": 2, "severe": 3}
PHASES = ("sft", "switch", "rl", "fault", "resume")
VALID_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

# (metric name, kind, row phase, row key, extra tag keys, description). A row feeds every entry whose phase and
# key it has. Gauges hold the latest value; counters add the row's value.
SERIES = [
    ("switchpoint_step", "gauge", None, "step", ("phase",), "Current step of the phase (SFT or RL; RL counts on from the switch)"),
    ("switchpoint_sft_loss", "gauge", "sft", "loss", (), "SFT training loss (response tokens)"),
    ("switchpoint_val_loss", "gauge", "sft", "val_loss", (), "SFT validation loss"),
    ("switchpoint_regime", "gauge", "sft", "regime", ("regime",), "Online SFT regime: 0 adaptive, 1 stable, 2 mild, 3 severe"),
    ("switchpoint_lr", "gauge", None, "lr", ("phase",), "Learning rate"),
    ("switchpoint_switch_step", "gauge", "switch", "step", ("regime",), "SFT step RL was branched from"),
    ("switchpoint_switch_val_loss", "gauge", "switch", "val_loss", (), "Validation loss at the branch point"),
    ("switchpoint_rl_loss", "gauge", "rl", "loss", (), "RL policy loss"),
    ("switchpoint_reward", "gauge", "rl", "reward_mean", (), "Mean verifier reward of the step's rollouts"),
    ("switchpoint_accuracy", "gauge", "rl", "accuracy", (), "Held-out accuracy (avg@k)"),
    ("switchpoint_greedy_accuracy", "gauge", "rl", "greedy_accuracy", (), "Held-out accuracy, greedy decoding"),
    ("switchpoint_rl_step_seconds", "gauge", "rl", "timing", ("part",), "RL step time by part: generate, verify, train, weight_sync, other"),
    ("switchpoint_gen_tokens_per_second", "gauge", "rl", "gen_tokens_per_s", (), "Generated tokens per second of generate time"),
    ("switchpoint_flops", "gauge", None, "flops", ("phase",), "Training FLOPs so far (the paper's Appendix E)"),
    ("switchpoint_tokens_total", "counter", None, "tokens", ("phase",), "Trained tokens"),
    ("switchpoint_verifier_items_total", "counter", "rl", "verifier_status", ("status",), "Verifier results of RL rollouts by status"),
    ("switchpoint_eval_items_total", "counter", "rl", "eval_status", ("status",), "Verifier results of held-out evaluations by status"),
    ("switchpoint_faults_total", "counter", "fault", "role", ("role",), "Actor faults by role"),
]  # fmt: skip


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class RayMetrics:
    """The SERIES as Ray metrics, every one tagged with the run's name."""

    def __init__(self, run: str):
        from ray.util.metrics import Counter, Gauge

        self.run = run
        self.metrics = {}
        for name, kind, _, _, extra, desc in SERIES:
            assert VALID_NAME.match(name), name  # Ray would drop it without a word
            cls = Gauge if kind == "gauge" else Counter
            self.metrics[name] = cls(name, description=desc, tag_keys=("run", *extra))
        self.phase = Gauge(
            "switchpoint_phase", description="1 for the run's current phase", tag_keys=("run", "phase")
        )

    def export(self, row: dict) -> None:
        phase = row.get("phase")
        if phase in PHASES:
            for p in PHASES:
                if p not in ("fault", "resume"):  # events, not phases a run is in
                    self.phase.set(1.0 if p == phase else 0.0, {"run": self.run, "phase": p})
        for name, kind, want_phase, key, extra, _ in SERIES:
            if key not in row or (want_phase is not None and want_phase != phase):
                continue
            metric, value, tags = self.metrics[name], row[key], {"run": self.run}
            if "phase" in extra:
                tags["phase"] = str(phase)
            if key == "regime":
                if value in REGIME_CODE:
                    metric.set(REGIME_CODE[value], dict(tags, regime=value))
            elif name == "switchpoint_switch_step":
                metric.set(value, dict(tags, regime=str(row.get("regime"))))
            elif key == "role":
                metric.inc(1.0, dict(tags, role=str(value)))
            elif isinstance(value, dict):  # timing by part, verifier results by status
                label = "part" if "part" in extra else "status"
                for part, v in value.items():
                    v = _number(v)
                    if v is not None:
                        (metric.set if kind == "gauge" else metric.inc)(v, dict(tags, **{label: part}))
            else:
                v = _number(value)
                if v is None or (kind == "counter" and v <= 0):
                    continue
                (metric.set if kind == "gauge" else metric.inc)(v, tags)


def row_step(row: dict) -> int:
    return int(row.get("step") or 0)


def scalars(row: dict) -> dict[str, float]:
    """A row's numeric values as `phase/key` (nested: `phase/key/sub`), the regime as its code."""
    phase = str(row.get("phase", "row"))
    out = {}
    for key, value in row.items():
        if key in ("phase", "step"):
            continue
        if key == "regime" and value in REGIME_CODE:
            out[f"{phase}/regime"] = float(REGIME_CODE[value])
        elif isinstance(value, dict):
            for sub, v in value.items():
                if _number(v) is not None:
                    out[f"{phase}/{key}/{sub}"] = _number(v)
        elif _number(value) is not None:
            out[f"{phase}/{key}"] = _number(value)
    return out


_EVENT_FILES = itertools.count(1)


class TensorBoardLog:
    def __init__(self, run_dir: str):
        self.dir = os.path.join(run_dir, "tensorboard")
        self.writer = self._open(None)

    def _open(self, purge_step: int | None):
        from tensorboardX import SummaryWriter

        # Event file names carry the second they were opened: a suffix keeps a second writer of the same
        # second (a rewind right after a resume) from overwriting the first one's file.
        suffix = f".{os.getpid()}.{next(_EVENT_FILES):03d}"
        return SummaryWriter(logdir=self.dir, flush_secs=10, purge_step=purge_step, filename_suffix=suffix)

    def write(self, row: dict) -> None:
        step = row_step(row)
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, step)

    def rewind(self, purge_step: int | None, rows_again: list[dict]) -> None:
        """Steps from purge_step on are being redone: a new event file whose first event tells TensorBoard to
        drop every earlier event at or after that step (all tags), then the rows to show again."""
        if purge_step is not None:
            self.writer.close()
            self.writer = self._open(purge_step)
        for row in rows_again:
            self.write(row)

    def flush(self) -> None:
        # tensorboardX's flush() leaves events still in its queue (a multiprocessing.Queue served by a thread)
        # unwritten; close() drains it. A resume state needs every event up to it on disk: close, go on in a new file.
        self.writer.close()
        self.writer = self._open(None)

    def image(self, tag: str, png_path: str) -> None:
        import matplotlib.image

        self.writer.add_image(tag, matplotlib.image.imread(png_path)[..., :3], dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbLog:
    def __init__(self, run_dir: str, run_name: str, config: dict):
        # wandb prints a banner and a run summary (some 30 lines) on stderr; in a job those reach the driver log
        # between the progress lines. The run's files in RUN_DIR/wandb say the same. A user's WANDB_SILENT wins.
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.run = wandb.init(dir=run_dir, name=run_name, config=config, mode="offline", reinit="create_new")

    def write(self, row: dict) -> None:
        self.run.log({"step": row.get("step") or 0, **scalars(row)})

    def image(self, tag: str, png_path: str) -> None:
        import wandb

        self.run.log({tag: wandb.Image(png_path)})

    def close(self) -> None:
        self.run.finish()


class MetricsExport:
    """Where RunFolder sends each row beyond metrics.jsonl: Ray metrics when inside Ray, and `run.report_to`
    (its values were checked with the config, switchpoint/checks.py)."""

    def __init__(self, run_dir: str, report_to: list, config: dict | None = None):
        import ray

        run = os.path.basename(os.path.normpath(run_dir))
        # Outside a Ray worker (a unit test writing a run folder) there is no metrics agent to export to.
        self.ray = RayMetrics(run) if ray.is_initialized() else None
        self.trackers = []
        if "tensorboard" in report_to:
            self.trackers.append(TensorBoardLog(run_dir))
        if "wandb" in report_to:
            self.trackers.append(WandbLog(run_dir, run, config or {}))

    def export(self, row: dict) -> None:
        if self.ray is not None:
            self.ray.export(row)
        for t in self.trackers:
            t.write(row)

    def rewind(self, rows: list[dict], dropped: list[dict], added: list[dict]) -> None:
        """metrics.jsonl was rewritten as `rows` (a resume or a rebuilt learner redoes the dropped rows' steps; a
        restored Tune branch brings rows back): trackers that can forget do, so a redone step shows once.
        TensorBoard forgets by step across all tags, so rows kept at or after the first dropped step (SFT
        validations past the branch point, fault rows) are written again, as are rows it never had. wandb keeps
        what it logged (offline runs are append-only)."""
        steps = [row_step(r) for r in dropped]
        purge_step = min(steps) if steps else None
        if purge_step is None and not added:
            return
        fresh = {id(r) for r in added}
        again = [r for r in rows if id(r) in fresh or (purge_step is not None and row_step(r) >= purge_step)]
        for t in self.trackers:
            if hasattr(t, "rewind"):
                t.rewind(purge_step, again)

    def flush(self) -> None:
        for t in self.trackers:
            if hasattr(t, "flush"):
                t.flush()

    def image(self, tag: str, png_path: str) -> None:
        for t in self.trackers:
            t.image(tag, png_path)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []
