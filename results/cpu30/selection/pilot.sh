#!/usr/bin/env bash
# pilot.sh NAME MINUTES [FLAGS...]: one pilot of the cpu30 recipe search, alone on the
# machine: python train.py FLAGS --budget-minutes MINUTES, its --save under /tmp/pilots;
# its log (the command, the commit, the CPU, the output, GNU time's figures), metrics CSV
# and JSON summary land here as NAME.log, NAME.csv, NAME.json. FLAGS start with
# --recipe cpu30 for a variation of the recipe.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
name=$1 minutes=$2; shift 2
mkdir -p /tmp/pilots
rm -f /tmp/pilots/"$name".*
cd "$repo"
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    echo "command: python train.py $* --budget-minutes $minutes --save /tmp/pilots/$name.pt"
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.py' || echo ' (with uncommitted changes)')"
    grep -m1 "model name" /proc/cpuinfo
    /usr/bin/time -v python train.py "$@" --budget-minutes "$minutes" \
        --save /tmp/pilots/"$name".pt
} > "$here/$name.log" 2>&1 || true
cp /tmp/pilots/"$name".csv "$here/$name.csv" 2>/dev/null || true
cp /tmp/pilots/"$name".json "$here/$name.json" 2>/dev/null || true
grep -E "^best model|^budget:" "$here/$name.log" | sed "s/^/$name: /"
