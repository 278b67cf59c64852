"""runlog.py: the record a training run keeps besides its checkpoints: the lock on its
--save path, the metrics CSV (one row per epoch), the JSON summary of the finished run,
optional TensorBoard scalars, and the one-line summary of each epoch on the terminal.

train.py calls it at fixed points of the run (progress within an epoch, an epoch ended,
the state was saved, the run ended), so that what a run records lives here and not in the
training loop. runfiles.RunFiles names the files (for --save checkpoints/awd.pt,
checkpoints/awd.csv, .json and .lock).
"""

import csv
import io
import json
import os
import re
import socket
import sys
import time

from tqdm import tqdm

from checkpoint import describe_provenance
from runfiles import RunFiles
from settings import SettingsError
from util import (TMP_SUFFIX, duration, process_exists, remove_quietly, remove_stale_temporaries,
                  write_atomically)

# "event" says in words what "saved" (the best model so far), "switched" (NT-ASGD began
# averaging) and "out_of_time" (a budget's training time ran out in the epoch) say as "yes"
# or ""; "progress" is the run's progress p at the epoch's end (progress.py).
FIELDS = ["epoch", "seconds", "tokens_per_s", "train_loss", "train_ppl", "valid_loss",
          "valid_ppl", "lr", "mode", "event", "elapsed_s", "resumed", "saved", "switched",
          "out_of_time", "progress"]
# The CSV's numeric columns, logged to TensorBoard under epoch/<name> at step = epoch.
EPOCH_SCALARS = ["train_loss", "train_ppl", "valid_loss", "valid_ppl", "lr", "seconds",
                 "tokens_per_s", "elapsed_s", "progress"]
INSTALL = "pip install -r requirements-dev.txt"


class MetricsError(ValueError):
    """A metrics CSV that cannot be read; the message names the file and the line."""


def read_metrics(path, with_lines=False):
    """The rows of a metrics CSV (dicts of strings), past its "#" provenance lines; with
    `with_lines`, (the line number of each row, the rows). Bytes that are not text, or a
    row cut short (a write interrupted on a disk without atomic renames, an edit), are a
    MetricsError naming the file and the line."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"PK\x03\x04"):  # a zip archive: torch.save's, a checkpoint
        raise MetricsError(f"{path} is a checkpoint (or another archive), not a metrics CSV; "
                           f"give the run's CSV, {RunFiles(path).metrics}")
    try:
        text = raw.decode("utf-8-sig")  # (a byte-order mark, as spreadsheets save)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise MetricsError(f"{path}, line {line}: not text (a byte that is not UTF-8): the "
                           "file is damaged") from None
    numbered = [(n, line) for n, line in enumerate(text.splitlines(keepends=True), 1)
                if not line.startswith("#")]
    reader = csv.DictReader(line for _, line in numbered)
    lines, rows = [], []
    for row in reader:
        line = numbered[reader.line_num - 1][0]
        if None in row.values() or None in row:
            filled = sum(value is not None for value in row.values())
            raise MetricsError(f"{path}, line {line}: the row is cut short ({filled} of "
                               f"{len(reader.fieldnames)} columns) or has extra ones")
        lines.append(line)
        rows.append(row)
    return (lines, rows) if with_lines else rows


class SaveLock:
    """Holds <save stem>.lock while a run writes to its --save path, so that a second run
    on the same path refuses instead of overwriting the first one's files. The file says
    who holds it (pid, host, start, command); a lock whose process no longer runs on this
    host is stale and is replaced. Taking it also proves the directory is writable."""

    def __init__(self, model_path):
        self.path = RunFiles(model_path).lock
        self.held = False

    def __enter__(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        me = dict(pid=os.getpid(), host=socket.gethostname(),
                  started=time.strftime("%Y-%m-%d %H:%M:%S"), command=" ".join(sys.argv))
        unwritable = (f"cannot write to the --save directory {directory} ({{}}); choose "
                      "another --save")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise SettingsError(unwritable.format(e.strerror)) from None
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self.refuse_or_clear()
                continue
            except OSError as e:
                raise SettingsError(unwritable.format(e.strerror)) from None
            try:  # (a full disk takes the lock's name but not its contents)
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except OSError as e:
                remove_quietly(self.path)  # (an empty lock would refuse the next run)
                raise SettingsError(unwritable.format(e.strerror)) from None
            self.held = True
            self.remove_stale_temporaries()
            return self
        raise SettingsError(f"could not take the lock {self.path}; try again")

    def remove_stale_temporaries(self):
        """Remove what killed writes at this --save path left behind: <file>.tmp<pid> and
        budget probes (util.remove_stale_temporaries)."""
        stem = os.path.basename(os.path.splitext(self.path)[0])
        remove_stale_temporaries(os.path.dirname(os.path.abspath(self.path)),
                                 re.escape(stem) + r"\..*(?:" + re.escape(TMP_SUFFIX)
                                 + r"|\.budget-probe)(\d+)$", "at this --save path")

    def refuse_or_clear(self):
        try:
            with open(self.path) as f:
                holder = json.load(f)
            pid, host = int(holder["pid"]), holder["host"]
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, None, None  # unreadable: written by something else
        if host == socket.gethostname() and pid is not None and not process_exists(pid):
            print(f"removing the stale lock {self.path} (pid {pid} no longer runs)",
                  file=sys.stderr)
            os.remove(self.path)
            return
        who = f"pid {pid} on {host}, started {holder.get('started')}" if pid else "unknown"
        raise SettingsError(f"another run is writing to this --save path ({who}; lock file "
                            f"{self.path}); wait for it to end or choose another --save. If "
                            f"no such run exists, delete {self.path}")

    def __exit__(self, *exc):
        if self.held and os.path.exists(self.path):
            try:
                os.remove(self.path)
            except OSError as e:  # a directory turned read-only: the next run replaces it
                print(f"note: could not remove the lock {self.path} ({e.strerror}); the next "
                      "run on this --save path replaces it", file=sys.stderr)
        self.held = False


def open_tensorboard(log_dir):
    """A torch.utils.tensorboard SummaryWriter, or a SettingsError saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SettingsError(f"--tensorboard needs the tensorboard package, which is not "
                            f"installed: {INSTALL} (or pip install tensorboard)") from None
    try:
        return SummaryWriter(log_dir)
    except OSError as e:
        raise SettingsError(f"--tensorboard {log_dir} cannot be written ({e.strerror}); "
                            "choose another directory") from None


class RunLog:
    """What one run records; `settings` are the run's full settings. A context manager:
    leaving it closes the TensorBoard writer. Under torchrun only the main process keeps
    the record: the others' RunLog has `writes` False and writes no file."""

    def __init__(self, settings, tensorboard=None, writes=True):
        self.settings = settings
        self.files = RunFiles(settings["save"])
        self.path = self.files.metrics
        self.writes = writes
        self.writer = open_tensorboard(tensorboard) if tensorboard and writes else None
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

    def epoch_ended(self, row, training_left_s=None):
        """Print the summary line of the epoch that `row` (a metrics row) describes, with
        what is left of the run: the epochs left and the expected time to finish them, or,
        under a budget whose clock (`training_left_s`) ends training before those would,
        the training time left; log its scalars."""
        self.epochs_here += 1
        left = self.settings["epochs"] - row["epoch"]
        finish = ""
        eta = (time.time() - self.started) / self.epochs_here * max(left, 0)
        if row["out_of_time"] or left <= 0:
            pass
        elif training_left_s is not None and training_left_s <= eta:  # the budget ends first
            finish = f" | training ends in ~{duration(training_left_s)}"
        else:
            limit = "at most " if self.settings.get("finetune") or training_left_s else ""
            finish = f" | {limit}{left} more, ~{duration(eta)}"
        tqdm.write(f"epoch {row['epoch']:4d} | {row['seconds']:8.1f} s | "
                   f"{row['tokens_per_s']:8,} tok/s | train ppl {row['train_ppl']:9.2f} "
                   f"| valid ppl {row['valid_ppl']:9.2f} | lr {row['lr']:g} | "
                   f"{row['mode']}" + (f" | {row['event']}" if row["event"] else "") + finish)
        if row["switched"]:
            tqdm.write(f"switching to ASGD at epoch {row['epoch']}")
        if self.writer is not None:
            for name in EPOCH_SCALARS:
                self.writer.add_scalar(f"epoch/{name}", row[name], row["epoch"])
            self.writer.flush()

    def state_saved(self, rows, entries):
        """Rewrite the CSV whole from the run's rows (restored on resume, so a resumed run
        never duplicates a row), atomically; its first lines, each starting with "#", say
        where the run came from (`entries`, checkpoint.provenance_record's)."""
        if not self.writes:
            return

        text = io.StringIO(newline="")
        text.writelines(f"# {line}\n" for line in describe_provenance(entries))
        writer = csv.DictWriter(text, fieldnames=FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(self.path, text.getvalue())

    def finished(self, summary):
        """Write the run's final numbers (a dict) to <save stem>.json, atomically."""
        if not self.writes:
            return
        write_atomically(self.files.summary,
                         json.dumps(summary, indent=2, sort_keys=True))
