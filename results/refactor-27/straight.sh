#!/usr/bin/env bash
# straight.sh REPO OUT: the runs that saved.sh's states would have been had they not been
# stopped: AWD-LSTM for 3 epochs (mid and end continue to epoch 3) and the 1cycle recipe
# for 2 (1cycle-mid continues to the end of its plan), with REPO's train.py, fingerprinted.
set -euo pipefail
REPO=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd); DATA=$3
HERE=$(cd "$(dirname "$0")" && pwd)
AWD="--model awd --emsize 16 --nhid 24 --nlayers 2 --batch_size 8 --bptt 10 --seed 5"
export OMP_NUM_THREADS=1
run() {
  local name=$1; shift
  rm -rf "$OUT/$name"; mkdir -p "$OUT/$name"
  (cd "$REPO" && python train.py --data "$DATA" --save "$OUT/$name/run.pt" --device cpu "$@") \
    > "$OUT/$name/log.txt" 2>&1 || { echo "$name failed"; tail -5 "$OUT/$name/log.txt"; }
}
run straight-awd-3 $AWD --epochs 3
run straight-1cycle-2 --recipe 1cycle --emsize 16 --nhid 24 --nlayers 2 --batch_size 8 \
  --bptt 10 --epochs 2 --seed 5
python "$HERE/fingerprint.py" "$OUT"/straight-*/
