#!/usr/bin/env bash
# saved.sh REPO OUT: training states written by REPO's train.py (a checkout of 2a9ab5e), for
# continue.sh, in OUT/saved-<kind> (and a copy in OUT/saved-<kind>.orig, since a resume
# writes to the --save path its state names):
#   mid      AWD-LSTM stopped by SIGINT within epoch 1 (of 2)
#   end      AWD-LSTM after epoch 2
#   lstm-mid the baseline LSTM stopped within epoch 2 (of 3)
#   budget   the 1cycle recipe under a 2-minute budget, stopped by SIGINT after 45 s
# OUT/data is compare.sh's corpus.
set -euo pipefail
REPO=$(cd "$1" && pwd); OUT=$(cd "$2" && pwd); DATA=$OUT/data
AWD="--model awd --emsize 16 --nhid 24 --nlayers 2 --batch_size 8 --bptt 10 --seed 5"
LSTM="--model lstm --emsize 16 --nhid 16 --batch_size 8 --bptt 10 --seed 5"
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
save end 0 $AWD --epochs 2
save lstm-mid 14 $LSTM --epochs 3
save budget 45 --recipe 1cycle --emsize 16 --nhid 24 --nlayers 2 --batch_size 8 --bptt 10 \
  --seed 5 --epochs 1000 --budget-minutes 2
grep -h "stopped\|finished" "$OUT"/saved-*/log.txt
