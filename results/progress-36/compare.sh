#!/usr/bin/env bash
# compare.sh REPO OUT: the runs whose numbers the progress change (issue 36) was to keep,
# trained with REPO's train.py (a checkout of the commit to test), each into OUT/<name>/,
# then fingerprinted (fingerprint.py). Tiny shapes, the first 3,000 / 300 / 300 lines of
# WikiText-2, one thread per run.
set -euo pipefail
REPO=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=$OUT/data
if [ ! -d "$DATA" ]; then
  mkdir -p "$DATA"
  for split in train valid test; do
    n=$([ $split = train ] && echo 3000 || echo 300)
    head -n $n "$REPO/data/wikitext-2/wiki.$split.tokens" > "$DATA/wiki.$split.tokens"
  done
fi
AWD="--model awd --emsize 16 --nhid 24 --nlayers 2 --batch_size 8 --bptt 10 --seed 5"
LSTM="--model lstm --emsize 16 --nhid 16 --batch_size 8 --bptt 10 --seed 5"
export OMP_NUM_THREADS=1
run() {  # run NAME ARGS...: one run, its files in OUT/NAME
  local name=$1; shift
  rm -rf "$OUT/$name"; mkdir -p "$OUT/$name"
  (cd "$REPO" && python train.py --data "$DATA" --save "$OUT/$name/run.pt" --device cpu "$@") \
    > "$OUT/$name/log.txt" 2>&1 || { echo "$name failed"; tail -5 "$OUT/$name/log.txt"; }
}
run awd $AWD --epochs 4 --nonmono 1                      # NT-ASGD, switching to averaging
run lstm $LSTM --epochs 3                                # anneal
run lstm-cut $LSTM --epochs 6 --lr 100                   # anneal: lr / 4 at epoch 4, then 25
run awd-capped $AWD --epochs 3 --max-batches 40 --save-every 0.001  # mid-epoch saves
run finetune --finetune "$OUT/awd/run.pt" --epochs 3     # ends at the trigger
rm -rf "$OUT/torchrun"; mkdir -p "$OUT/torchrun"
(cd "$REPO" && torchrun --standalone --nproc_per_node 2 train.py $AWD --epochs 2 \
  --data "$DATA" --save "$OUT/torchrun/run.pt" --device cpu) > "$OUT/torchrun/log.txt" 2>&1 \
  || { echo "torchrun failed"; tail -5 "$OUT/torchrun/log.txt"; }
python "$HERE/fingerprint.py" "$OUT"/*/ 2>/dev/null
