#!/usr/bin/env bash
# The test suite with a CPU hog on the other core (issue 28, item 5: no test may depend on
# the machine's speed).   bash results/tests/busy.sh > results/tests/busy-N.txt 2>&1
set -uo pipefail
cd "$(dirname "$0")/../.."
echo "$(date -u +%FT%TZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores,"\
     "torch $(python -c 'import torch; print(torch.__version__)'), commit $(git rev-parse --short HEAD)"
python -c "while True: pass" &
hog=$!
start=$(date +%s)
python -m pytest -q -p no:cacheprovider 2>&1 | tail -n 4
echo "wall: $(( $(date +%s) - start )) s, a busy-loop process beside it"
kill "$hog"
