#!/usr/bin/env bash
# A synthetic WikiText-103-like corpus (267,735 words, 2M training tokens) trained end to end
# with an adaptive softmax on 2 CPU processes under torchrun, then sampled and evaluated.
#   bash results/large-vocab-torchrun/run.sh   (from the repository root; writes /tmp/wt103mini
#   and checkpoints/large-vocab.*; the log goes to results/large-vocab-torchrun/log.txt)
set -euo pipefail
log=results/large-vocab-torchrun/log.txt
{
  date -u +%Y-%m-%dT%H:%M:%SZ; grep -m1 "model name" /proc/cpuinfo
  python results/data-scale/make_corpus.py /tmp/wt103mini 2000000
  run() { echo "\$ $*"; "$@" 2>&1 | grep -v "^W[0-9]\|^\*\*\*\|OMP_NUM_THREADS\|reducer.cpp"; }
  run env OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 train.py --model awd \
    --data /tmp/wt103mini --emsize 64 --nhid 128 --nlayers 2 --no-tied --cutoffs 2000,20000 \
    --batch_size 20 --bptt 35 --lr 10 --epochs 2 --max-batches 300 --eval-batch-size 10 \
    --test-batch-size 10 --save checkpoints/large-vocab.pt --overwrite
  run python generate.py --checkpoint checkpoints/large-vocab.pt --prompt "w1 w2" --words 20 \
    --seed 1 --raw
  run python evaluate.py --checkpoint checkpoints/large-vocab.pt --data /tmp/wt103mini \
    --batch_size 10
  run python evaluate.py --checkpoint checkpoints/large-vocab.pt --data /tmp/wt103mini \
    --batch_size 10 --cache
  date -u +%Y-%m-%dT%H:%M:%SZ
} > "$log" 2>&1
cat "$log"
