"""What exporting a run's metrics costs: the rows of a finished run folder logged again through RunFolder with and
without the export (Ray metrics from inside a Ray actor, as in a run, and TensorBoard), against the run's wall.
The folder is flushed as often as the run wrote resume states (each closes the TensorBoard writer, draining its
queue, and opens a new event file), spread evenly over the rows.

    .venv/bin/python benchmarks/metrics_overhead.py RUN_DIR
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import ray


@ray.remote(num_cpus=0)
def _log_all(rows: list[dict], report_to: list, export_ray: bool, flushes: int = 0) -> float:
    from actors.run_folder import RunFolder
    from switchpoint.config import Config

    cfg = Config()
    cfg.run.report_to = report_to
    with tempfile.TemporaryDirectory() as d:
        folder = RunFolder(d, cfg)
        if not export_ray:
            folder.export.ray = None
        every = max(1, len(rows) // flushes) if flushes else 0
        t0 = time.perf_counter()
        for i, row in enumerate(rows, 1):
            folder.log(row)
            if every and i % every == 0:
                folder.flush()
        folder.close()  # the last TensorBoard flush belongs to the cost
        return time.perf_counter() - t0


def main(run_dir: str) -> None:
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    wall = json.load(open(os.path.join(run_dir, "summary.json")))["wall_seconds"]
    # Resume states are numbered from 0 (older ones pruned): the last number + 1 is how many the run wrote.
    states = [int(d.split("-")[0]) for d in os.listdir(os.path.join(run_dir, "resume")) if d[:5].isdigit()]
    flushes = max(states) + 1 if states else 0
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": repo}}
    )
    ray.get(_log_all.remote(rows[:5], ["tensorboard"], True))  # imports and first metrics set-up, not counted
    cases = {
        "jsonl only": ([], False),
        "+ ray metrics": ([], True),
        "+ ray metrics + tensorboard": (["tensorboard"], True),
    }
    base = None
    for name, (report_to, export_ray) in cases.items():
        seconds = min(ray.get(_log_all.remote(rows, report_to, export_ray, flushes)) for _ in range(3))
        base = seconds if base is None else base
        extra = seconds - base
        print(
            f"{name:<30} {seconds * 1e3:8.1f} ms for {len(rows)} rows ({seconds / len(rows) * 1e3:.3f} ms/row); "
            f"export adds {extra * 1e3:.1f} ms = {100 * extra / wall:.3f}% of the run's {wall:.0f} s wall "
            f"({flushes} resume-state flushes)"
        )


if __name__ == "__main__":
    main(sys.argv[1])
