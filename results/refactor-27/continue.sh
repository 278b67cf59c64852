#!/usr/bin/env bash
# continue.sh REPO OUT: continue each state of saved.sh (restored from OUT/saved-<kind>.orig)
# with REPO's train.py, then fingerprint the result, one line per continuation. OUT is the
# directory saved.sh wrote to: a state names the --save path that its resume writes to.
#   mid, end       AWD-LSTM (NT-ASGD) stopped in epoch 1 / after epoch 2, on to epoch 3
#   1cycle-mid     the 1cycle recipe stopped in epoch 1, on to the end of its plan (2 epochs)
#   1cycle-mid-3   the same with --epochs 3, which re-fits the plan (since 23c3299)
set -euo pipefail
REPO=$(cd "$1" && pwd); OUT=$(cd "$2" && pwd); DATA=$OUT/data
HERE=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1
for job in mid:3 end:3 1cycle-mid: 1cycle-mid:3; do
  kind=${job%%:*}; epochs=${job#*:}
  label=$kind${epochs:+-$epochs}; [ "$kind" = 1cycle-mid ] || label=$kind
  rm -rf "$OUT/saved-$kind"; cp -r "$OUT/saved-$kind.orig" "$OUT/saved-$kind"
  (cd "$REPO" && python train.py --resume "$OUT/saved-$kind/run.state.pt" \
    ${epochs:+--epochs $epochs} --device cpu --data "$DATA") \
    > "$OUT/saved-$kind/continued.txt" 2>&1 \
    || { echo "continuing $label failed"; tail -5 "$OUT/saved-$kind/continued.txt"; }
  python "$HERE/fingerprint.py" "$OUT/saved-$kind" | sed "s/^saved-$kind /$label /"
done
