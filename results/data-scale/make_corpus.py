"""A synthetic WikiText-103-sized corpus: 100M training tokens, a 267,735-word vocabulary
(every word at least once, then Zipf-distributed), lines of 20 words; valid and test of
240k tokens each.   python make_corpus.py OUT_DIR [TRAIN_TOKENS]
(a smaller TRAIN_TOKENS keeps the vocabulary, with valid and test of TRAIN_TOKENS / 40)"""
import os
import sys

import numpy as np
V, LINE = 267_735, 20
N = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000_000
HELD_OUT = min(240_000, N // 40 // LINE * LINE)
rng = np.random.default_rng(0)
words = [f"w{i}".encode() for i in range(V)]

def write(path, n, first=None):
    with open(path, "wb") as f:
        done = 0
        while done < n:
            size = min(1_000_000, n - done)
            ids = np.minimum(rng.zipf(1.2, size) - 1, V - 1)
            if first is not None and done == 0:
                ids[:len(first)] = first
            lines = ids.reshape(-1, LINE) if size % LINE == 0 else ids.reshape(1, -1)
            f.write(b"\n".join(b" ".join(words[i] for i in line) for line in lines.tolist()) + b"\n")
            done += size

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
write(os.path.join(out, "wiki.train.tokens"), N, first=rng.permutation(V))
write(os.path.join(out, "wiki.valid.tokens"), HELD_OUT)
write(os.path.join(out, "wiki.test.tokens"), HELD_OUT)
