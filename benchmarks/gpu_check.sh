#!/bin/sh
# GPU readiness check (benchmarks/gpu_check.py); a carried DeepSpeed may sit in .gpu_deps (pip install --target).
cd "$(dirname "$0")/.." && PYTHONPATH=".:.gpu_deps${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
