"""fingerprint.py: one line per run that says what it computed, read from the files at --save
alone (torch only, so that it reads the files of any commit): the sha256 of the final
training state's tensors (weights, averaged weights, optimizer, position, every RNG), that
of the best model's weights, and the metrics rows without their timing columns.

    python fingerprint.py DIR...     # each DIR holds one run's files (run.pt, run.state.pt)
"""

import csv
import hashlib
import os
import sys

import torch

TIMING = {"seconds", "tokens_per_s", "elapsed_s"}


def digest(value, h):
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(str(key).encode())
            digest(value[key], h)
    elif isinstance(value, (list, tuple)):
        for item in value:
            digest(item, h)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        h.update(repr(value).encode())
    return h


def short(value):
    return digest(value, hashlib.sha256()).hexdigest()[:12]


def main(directories):
    for directory in sys.argv[1:]:
        if not os.path.exists(f"{directory}/run.state.pt"):  # (the corpus, a run that failed)
            continue
        state = torch.load(f"{directory}/run.state.pt", weights_only=True)
        model = (torch.load(f"{directory}/run.pt", weights_only=True)
                 if os.path.exists(f"{directory}/run.pt") else dict(model=None))  # (none better)
        with open(f"{directory}/run.csv") as f:
            rows = [{k: v for k, v in row.items() if k not in TIMING}
                    for row in csv.DictReader(line for line in f if not line.startswith("#"))]
        parts = dict(
            weights=short(state["model"]), averaged=short(state["averaged"]),
            optimizer=short(state["optimizer"]), rng=short(state["rng"]),
            position=short(state["position"]), scheduler=short(state.get("scheduler")),
            lr=state["lr"], steps=state.get("steps"), best=short(model["model"]),
            metrics=short(rows), epochs=len(rows), valid=rows[-1]["valid_ppl"] if rows else None)
        print(directory.rstrip("/").split("/")[-1], " ".join(f"{k}={v}" for k, v in parts.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
