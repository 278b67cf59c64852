"""runlog.py: the record a training run keeps besides its checkpoints: the metrics CSV
(one row per epoch), the JSON summary of the finished run, optional TensorBoard scalars,
and the one-line summary of each epoch on the terminal.

train.py calls it at fixed points of the run (progress within an epoch, an epoch ended,
the state was saved, the run ended), so that what a run records lives here and not in the
training loop. For --save checkpoints/awd.pt the files are checkpoints/awd.csv and
checkpoints/awd.json.
"""

import csv
import json
import os
import time

from tqdm import tqdm

from config import SettingsError

FIELDS = ["epoch", "seconds", "tokens_per_s", "train_loss", "train_ppl", "valid_loss",
          "valid_ppl", "lr", "mode", "event", "elapsed_s", "resumed"]
# The CSV's numeric columns, logged to TensorBoard under epoch/<name> at step = epoch.
EPOCH_SCALARS = ["train_loss", "train_ppl", "valid_loss", "valid_ppl", "lr", "seconds",
                 "tokens_per_s", "elapsed_s"]
INSTALL = "pip install -r requirements-dev.txt"


def metrics_path(model_path):
    """checkpoints/awd.pt -> checkpoints/awd.csv"""
    return os.path.splitext(model_path)[0] + ".csv"


def summary_path(model_path):
    """checkpoints/awd.pt -> checkpoints/awd.json"""
    return os.path.splitext(model_path)[0] + ".json"


def write_atomically(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def duration(seconds):
    """3725 -> "1h 02m"; 125 -> "2m 05s"."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"


def open_tensorboard(log_dir):
    """A torch.utils.tensorboard SummaryWriter, or a SettingsError saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SettingsError(f"--tensorboard needs the tensorboard package, which is not "
                            f"installed: {INSTALL} (or pip install tensorboard)") from None
    return SummaryWriter(log_dir)


class RunLog:
    """What one run records; `settings` are the run's full settings. A context manager:
    leaving it closes the TensorBoard writer."""

    def __init__(self, settings, tensorboard=None):
        self.settings = settings
        self.path = metrics_path(settings["save"])
        self.writer = open_tensorboard(tensorboard) if tensorboard else None
        if self.writer is not None:
            table = "\n".join(f"| {k} | {v} |" for k, v in sorted(settings.items()))
            self.writer.add_text("settings", "| setting | value |\n|---|---|\n" + table)
        self.started = time.time()
        self.epochs_here = 0  # epochs finished by this process (for the time to finish)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()

    def progress(self, step, loss, lr, tokens_per_s):
        """Within an epoch, every --log-interval batches; `step` counts every batch of the run."""
        if self.writer is not None:
            for name, value in (("loss", loss), ("lr", lr), ("tokens_per_s", tokens_per_s)):
                self.writer.add_scalar(f"batch/{name}", value, step)

    def epoch_ended(self, row):
        """Print the summary line of the epoch that `row` (a metrics row) describes, with the
        expected time to finish the run's epochs; log its scalars."""
        self.epochs_here += 1
        left = self.settings["epochs"] - row["epoch"]
        finish = ""
        if left > 0 and "out of time" not in row["event"]:
            eta = (time.time() - self.started) / self.epochs_here * left
            limit = "at most " if self.settings.get("finetune") else ""
            finish = f" | {limit}{left} more, ~{duration(eta)}"
        tqdm.write(f"epoch {row['epoch']:4d} | {row['seconds']:8.1f} s | "
                   f"{row['tokens_per_s']:8,} tok/s | train ppl {row['train_ppl']:9.2f} "
                   f"| valid ppl {row['valid_ppl']:9.2f} | lr {row['lr']:g} | "
                   f"{row['mode']}" + (f" | {row['event']}" if row["event"] else "") + finish)
        if row["event"] == "switch to ASGD":
            tqdm.write(f"switching to ASGD at epoch {row['epoch']}")
        if self.writer is not None:
            for name in EPOCH_SCALARS:
                self.writer.add_scalar(f"epoch/{name}", row[name], row["epoch"])
            self.writer.flush()

    def state_saved(self, rows):
        """Rewrite the CSV whole from the run's rows (restored on resume, so a resumed run
        never duplicates a row), atomically."""

        def write(f):
            writer = csv.DictWriter(f, fieldnames=FIELDS, restval="")
            writer.writeheader()
            writer.writerows(rows)

        write_atomically(self.path, write)

    def finished(self, summary):
        """Write the run's final numbers (a dict) to <save stem>.json, atomically."""
        write_atomically(summary_path(self.settings["save"]),
                         lambda f: json.dump(summary, f, indent=2, sort_keys=True))
