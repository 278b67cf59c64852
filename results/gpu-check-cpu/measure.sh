#!/usr/bin/env bash
# The CPU measurements behind the estimates of docs/gpu-check.md: a Python process's
# start (torch imported, WikiText-2 tokenized) and the smoke run of scripts/gpu_check.sh.
#   bash results/gpu-check-cpu/measure.sh > results/gpu-check-cpu/log.txt 2>&1
cd "$(dirname "$0")/../.."
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); commit: $(git rev-parse HEAD)"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
for run in 1 2 3; do
    python3 - <<'PY'
import time
started = time.perf_counter()
import torch
imported = time.perf_counter()
from data import Corpus
from settings import DEFAULT_DATA
Corpus(DEFAULT_DATA)
print(f"torch {torch.__version__}: import {imported - started:.2f} s, WikiText-2 read and "
      f"tokenized {time.perf_counter() - imported:.2f} s")
PY
done
out=$(mktemp -d)
started=$(date +%s.%N)
bash scripts/gpu_check.sh --smoke "$out/smoke" >/dev/null 2>&1
echo "gpu_check.sh --smoke: $(echo "$(date +%s.%N) - $started" | bc) s; its summary:"
cat "$out/smoke/summary.txt"
rm -rf "$out"
