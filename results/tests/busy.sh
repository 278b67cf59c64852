#!/usr/bin/env bash
# The test suite twice with a CPU hog on the other core (issue 28, item 5: no test may
# depend on the machine's speed), then once on a quiet machine, as the README runs it.
#   bash results/tests/busy.sh > results/tests/log.txt 2>&1
set -uo pipefail
cd "$(dirname "$0")/../.."
date -u +%Y-%m-%dT%H:%M:%SZ; grep -m1 "model name" /proc/cpuinfo; nproc
python -c "import torch; print('torch', torch.__version__)"; git rev-parse --short HEAD
python -c "while True: pass" &
hog=$!
for run in 1 2; do
    echo "== suite, run $run, a busy-loop process beside it (pid $hog)"
    start=$(date +%s)
    python -m pytest -q -p no:cacheprovider 2>&1 | tail -n 3
    echo "wall: $(( $(date +%s) - start )) s"
done
kill "$hog"
echo "== suite, the machine otherwise idle (the README's command)"
start=$(date +%s)
python -m pytest -q -p no:cacheprovider 2>&1 | tail -n 3
echo "wall: $(( $(date +%s) - start )) s"
date -u +%Y-%m-%dT%H:%M:%SZ
