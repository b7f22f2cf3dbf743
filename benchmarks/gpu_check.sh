#!/usr/bin/env bash
# GPU readiness check (about 5 minutes on one GPU, at most 8): parity on CUDA, training step
# time ours/ref in fp32 and bf16 autocast, inference throughput at batch 1 and 8, peak memory.
# Run from the repository root, with the project's environment (`make setup`) or $PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
