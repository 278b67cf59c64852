#!/usr/bin/env bash
# continue.sh REPO OUT: continue each state of saved.sh (restored from OUT/saved-<kind>.orig)
# with REPO's train.py, then fingerprint the result, one line per continuation:
#   mid, end   AWD-LSTM, on to epoch 3 (--epochs 3)
#   lstm-mid   the baseline LSTM, on to the end of its 3 epochs
#   budget     the 1cycle budget run, on to the end of its budget (by the clock since
#              progress.py: not a bit-identical continuation, fingerprinted all the same)
set -euo pipefail
REPO=$(cd "$1" && pwd); OUT=$(cd "$2" && pwd); DATA=$OUT/data
HERE=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1
for job in mid:3 end:3 lstm-mid: budget:; do
  kind=${job%%:*}; epochs=${job#*:}
  rm -rf "$OUT/saved-$kind"; cp -r "$OUT/saved-$kind.orig" "$OUT/saved-$kind"
  (cd "$REPO" && python train.py --resume "$OUT/saved-$kind/run.state.pt" \
    ${epochs:+--epochs $epochs} --device cpu --data "$DATA") \
    > "$OUT/saved-$kind/continued.txt" 2>&1 \
    || { echo "continuing $kind failed"; tail -5 "$OUT/saved-$kind/continued.txt"; }
  python "$HERE/fingerprint.py" "$OUT/saved-$kind"
done
