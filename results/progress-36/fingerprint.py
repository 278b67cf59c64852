"""fingerprint.py: one line per run that says what it computed, read from the files at --save
alone (torch only, so that it reads the files of any commit): sha256 prefixes of the final
training state's weights, averaged weights, optimizer, every RNG and position, of the best
model's weights, and of the metrics rows in the columns that 2a9ab5e wrote, without their
timing columns (since 2a9ab5e a row also says the run's progress, which it did not); the
steps, the epochs and the last validation perplexity.

    python fingerprint.py DIR...     # each DIR holds one run's files (run.pt, run.state.pt)
"""

import csv
import importlib.util
import os
import sys

import torch

# The digests of refactor-27/fingerprint.py, so that both read a run's files alike.
spec = importlib.util.spec_from_file_location("fingerprint_27", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "refactor-27", "fingerprint.py"))
fingerprint_27 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fingerprint_27)
short = fingerprint_27.short

COLUMNS = ["epoch", "train_loss", "train_ppl", "valid_loss", "valid_ppl", "lr", "mode", "event",
           "resumed", "saved", "switched", "out_of_time"]  # 2a9ab5e's, less the timings


for directory in sys.argv[1:]:
    if not os.path.exists(f"{directory}/run.state.pt"):  # (the corpus, a run that failed)
        continue
    state = torch.load(f"{directory}/run.state.pt", weights_only=True)
    model = (torch.load(f"{directory}/run.pt", weights_only=True)
             if os.path.exists(f"{directory}/run.pt") else dict(model=None))
    with open(f"{directory}/run.csv") as f:
        rows = [{k: row.get(k) for k in COLUMNS}
                for row in csv.DictReader(line for line in f if not line.startswith("#"))]
    parts = dict(
        weights=short(state["model"]), averaged=short(state["averaged"]),
        optimizer=short(state["optimizer"]), rng=short(state["rng"]),
        position=short(state["position"]), best=short(model["model"]), metrics=short(rows),
        steps=state.get("steps"), epochs=len(rows), valid=rows[-1]["valid_ppl"] if rows else None,
        lr=rows[-1]["lr"] if rows else None)
    print(directory.rstrip("/").split("/")[-1], " ".join(f"{k}={v}" for k, v in parts.items()))
