"""The run folder: resolved config, metrics.jsonl, checkpoints, summary.json, plot.png, tensorboard/.

Everything a person (or `switchpoint analyze`) looks at after a run lives here. Every metrics row passes
through RunFolder.log, which also exports it (Ray metrics for the dashboard, the trackers in run.report_to).
"""

from __future__ import annotations

import json
import math
import os
import time

from actors.metrics_export import MetricsExport
from switchpoint.config import Config, dump_yaml, to_dict


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _read_rows(path: str) -> list[dict]:
    """Rows of an existing metrics.jsonl; a last line cut short by a kill is dropped (it is redone)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class RunFolder:
    def __init__(self, path: str, cfg: Config):
        self.path = path
        os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
        with open(os.path.join(path, "config.yaml"), "w") as f:
            f.write(dump_yaml(cfg))
        metrics = os.path.join(path, "metrics.jsonl")
        self.rows: list[dict] = _read_rows(metrics)  # a resumed run starts from what is on disk
        self._metrics = open(metrics, "a")
        self.export = MetricsExport(path, cfg.run.report_to, to_dict(cfg))

    def log(self, row: dict) -> None:
        row = _clean(row)
        self.rows.append(row)
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        self.export.export(row)

    def replace_rows(self, rows: list[dict]) -> None:
        """Rewrite metrics.jsonl as exactly these rows (a resumed branch: no duplicated or missing rows), and
        have the trackers forget the rows left out (their steps are redone)."""
        new = {json.dumps(_clean(r), sort_keys=True) for r in rows}
        old = {json.dumps(r, sort_keys=True) for r in self.rows}
        dropped = [r for r in self.rows if json.dumps(r, sort_keys=True) not in new]
        added = [r for r in rows if json.dumps(_clean(r), sort_keys=True) not in old]
        self.export.rewind(rows, dropped, added)
        self._metrics.close()
        path = os.path.join(self.path, "metrics.jsonl")
        with open(path + ".tmp", "w") as f:
            for row in rows:
                f.write(json.dumps(_clean(row)) + "\n")
        os.replace(path + ".tmp", path)
        self.rows = list(rows)
        self._metrics = open(path, "a")

    def flush(self) -> None:
        """Everything logged so far on disk, trackers included (at a resume state: a kill after it loses only
        rows that are redone)."""
        self._metrics.flush()
        self.export.flush()

    def checkpoint_path(self, step: int) -> str:
        return os.path.join(self.path, "checkpoints", f"step_{step:06d}")

    def write_json(self, name: str, data: dict) -> str:
        path = os.path.join(self.path, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(_clean(data), f, indent=2)
        os.replace(tmp, path)  # never leave a half-written summary behind
        return path

    def plot(self, summary: dict, delta: float, delta2: float) -> str | None:
        from plasticity.plots import plot_run

        try:
            png = plot_run(
                self.rows, summary, os.path.join(self.path, "plot.png"), delta=delta, delta2=delta2
            )
            if png:
                self.export.image("plot", png)
            return png
        except Exception as e:  # a plotting problem must not lose the run's results
            with open(os.path.join(self.path, "plot_error.txt"), "w") as f:
                f.write(f"{time.ctime()}: {type(e).__name__}: {e}\n")
            return None

    def close(self) -> None:
        self._metrics.close()
        self.export.close()
