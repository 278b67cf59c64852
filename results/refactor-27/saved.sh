#!/usr/bin/env bash
# saved.sh REPO OUT: training states written by REPO's train.py (a checkout of e304d6d), for
# continue.sh: OUT/saved-mid (AWD-LSTM stopped by Ctrl-C within its first epoch),
# OUT/saved-1cycle-mid (the 1cycle recipe, likewise) and OUT/saved-end (after epoch 2), each
# kept as OUT/saved-<kind>.orig too (a resume writes to the --save path its state names).
set -euo pipefail
REPO=$(cd "$1" && pwd); OUT=$(cd "$2" && pwd); DATA=$OUT/data
AWD="--model awd --emsize 16 --nhid 24 --nlayers 2 --batch_size 8 --bptt 10 --seed 5"
export OMP_NUM_THREADS=1
save() {  # save KIND SECONDS ARGS...: a run stopped by SIGINT after SECONDS (0: never)
  local kind=$1 seconds=$2; shift 2
  rm -rf "$OUT/saved-$kind" "$OUT/saved-$kind.orig"; mkdir -p "$OUT/saved-$kind"
  local cmd=(python train.py --data "$DATA" --save "$OUT/saved-$kind/run.pt" --device cpu "$@")
  if [ "$seconds" = 0 ]; then (cd "$REPO" && "${cmd[@]}") > "$OUT/saved-$kind/log.txt" 2>&1
  else (cd "$REPO" && timeout -s INT "$seconds" "${cmd[@]}") > "$OUT/saved-$kind/log.txt" 2>&1 || true
  fi
  cp -r "$OUT/saved-$kind" "$OUT/saved-$kind.orig"
}
save mid 8 $AWD --epochs 2
save 1cycle-mid 8 --recipe 1cycle --emsize 16 --nhid 24 --nlayers 2 --batch_size 8 --bptt 10 \
  --epochs 2 --seed 5
save end 0 $AWD --epochs 2
grep -h "stopped\|finished" "$OUT"/saved-*/log.txt
