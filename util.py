"""util.py: small helpers that every part of the project uses and that import nothing from
it: atomic file writes, perplexity, progress bars, and the words of messages (counts,
durations)."""

import math
import os
import sys

from tqdm import tqdm


def write_atomically(path, write, binary=False):
    """Call write(f) on a temporary file beside `path`, flush it to disk and rename it over
    `path`: an interrupted write never leaves a broken or missing file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with (open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plural(n, noun):
    """1, "epoch" -> "1 epoch"; 3, "epoch" -> "3 epochs"; 2, "process" -> "2 processes"."""
    ending = "es" if noun.endswith(("s", "x", "sh", "tch")) else "s"  # (not "epoches")
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}{ending}"


def duration(seconds):
    """3725 -> "1h 02m"; 125 -> "2m 05s"."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"


def ppl(loss):
    """Perplexity of a mean negative log-likelihood (inf rather than an overflow)."""
    return math.exp(loss) if loss < 700 else float("inf")


def progress_bar(iterable=None, desc=None, **kwargs):
    """A tqdm bar on a terminal only: redirected output (log files) gets none."""
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True,
                disable=desc is None or not sys.stderr.isatty(), **kwargs)
