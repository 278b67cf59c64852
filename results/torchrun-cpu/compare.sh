#!/usr/bin/env bash
# Two processes under torchrun (gloo) against one, the same global batch and seed, dropout
# off, on a toy corpus: 3 epochs of 30 batches each. Prints the largest weight difference,
# both runs' per-epoch losses and their valid / test perplexities (docs/torchrun.md).
#   bash results/torchrun-cpu/compare.sh > results/torchrun-cpu/log.txt 2>&1
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
date -u +%Y-%m-%dT%H:%M:%SZ; grep -m1 "model name" /proc/cpuinfo; nproc
python -c "import torch; print('torch', torch.__version__)"; git rev-parse --short HEAD
python - "$work/corpus" <<'PY'
import os, sys
import numpy as np
rng = np.random.default_rng(0)
text = "".join(" ".join(f"w{i}" for i in rng.integers(0, 40, 10)) + "\n" for _ in range(300))
os.makedirs(sys.argv[1])
for name, part in (("train", text), ("valid", text[:3000]), ("test", text[3000:6000])):
    open(os.path.join(sys.argv[1], f"{name}.txt"), "w").write(part)
PY
flags=(--model awd --emsize 16 --nhid 24 --batch_size 4 --bptt 12 --seed 3 --log-interval 5
       --dropout 0 --dropouth 0 --dropouti 0 --dropoute 0 --wdrop 0
       --data "$work/corpus" --epochs 3 --nonmono 1 --max-batches 30)
export OMP_NUM_THREADS=1
echo "command: python train.py ${flags[*]} --save one.pt"
python train.py "${flags[@]}" --save "$work/one.pt"
echo "command: torchrun --standalone --nproc_per_node 2 train.py ${flags[*]} --save two.pt"
python -m torch.distributed.run --standalone --nproc_per_node 2 train.py "${flags[@]}" \
    --save "$work/two.pt"
python - "$work" <<'PY'
import json, sys
import checkpoint, runlog
work = sys.argv[1]
one, two = (checkpoint.load(f"{work}/{n}.state.pt", kind="state")["model"] for n in ("one", "two"))
print(f"largest weight difference: {max((one[k] - two[k]).abs().max().item() for k in one):.1e}")
for a, b in zip(*(runlog.read_metrics(f"{work}/{n}.csv") for n in ("one", "two"))):
    print(f"epoch {a['epoch']}: train loss {float(a['train_loss']):.5f} / "
          f"{float(b['train_loss']):.5f}, valid loss {float(a['valid_loss']):.5f} / "
          f"{float(b['valid_loss']):.5f} (one / two processes)")
for n in ("one", "two"):
    s = json.load(open(f"{work}/{n}.json"))
    print(f"{n}: valid / test ppl {s['best_valid_ppl']:.2f} / {s['test_ppl']:.2f}")
PY
