"""Benchmark: the whole `switchpoint analyze` of the paper's reference curves, plots included.

    python benchmarks/analyze_reference.py [--curves FILE] [--out DIR] [--bootstrap 200]

Prints the table, then the wall time of the analysis (fits of every scene and checkpoint, bootstrap
intervals, regimes, data selection, four PNG plots) against the 30 s budget of issue 3.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.analyze import analyze, format_report  # noqa: E402
from plasticity.ceiling import CeilingSearch  # noqa: E402

BUDGET_S = 30.0
DEFAULT_CURVES = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "retu_curves.json")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--curves", default=DEFAULT_CURVES, help="curves file in the reference layout")
    parser.add_argument("--out", help="folder for the plots (default: a temporary folder)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per branch")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="analyze_reference_")
    t0 = time.perf_counter()
    report = analyze(args.curves, CeilingSearch(bootstrap=args.bootstrap), out_dir=out)
    wall = time.perf_counter() - t0
    print(format_report(report))
    statuses = [r["fit_quality"]["status"] for r in report["branches"]]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in ("fit", "observed_peak", "failed"))
    print(f"\n{len(statuses)} branches ({counts}), {len(report['plots'])} plots in {out}")
    print(f"wall time {wall:.1f} s (budget {BUDGET_S:.0f} s): {'OK' if wall < BUDGET_S else 'OVER BUDGET'}")
    return 0 if wall < BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
