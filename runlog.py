"""runlog.py: the record a training run keeps besides its checkpoints: the metrics CSV
(one row per epoch) and the one-line summary of each epoch on the terminal.

train.py calls it at fixed points of the run (an epoch ended, the state was saved), so
that what a run records lives here and not in the training loop.
"""

import csv
import os

from tqdm import tqdm

FIELDS = ["epoch", "seconds", "tokens_per_s", "train_loss", "train_ppl", "valid_loss",
          "valid_ppl", "lr", "mode", "event"]


def metrics_path(model_path):
    """checkpoints/awd.pt -> checkpoints/awd.csv"""
    return os.path.splitext(model_path)[0] + ".csv"


class RunLog:
    """The metrics CSV at <save stem>.csv and the per-epoch line."""

    def __init__(self, model_path):
        self.path = metrics_path(model_path)

    def epoch_ended(self, row):
        """Print the summary line of the epoch that `row` (a metrics row) describes."""
        tqdm.write(f"epoch {row['epoch']:4d} | {row['seconds']:8.1f} s | "
                   f"{row['tokens_per_s']:8,} tok/s | train ppl {row['train_ppl']:9.2f} "
                   f"| valid ppl {row['valid_ppl']:9.2f} | lr {row['lr']:g} | "
                   f"{row['mode']}" + (f" | {row['event']}" if row["event"] else ""))
        if row["event"] == "switch to ASGD":
            tqdm.write(f"switching to ASGD at epoch {row['epoch']}")

    def state_saved(self, rows):
        """Rewrite the CSV whole from the run's rows (restored on resume, so a resumed run
        never duplicates a row), atomically."""
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
