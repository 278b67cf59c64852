"""util.py: small helpers that every part of the project uses and that import nothing from
it: atomic file writes (and removing what killed ones left), file hashes, the bytes that
torch.save writes of tensors, perplexity, progress bars, and the words of messages."""

import hashlib
import math
import os
import re
import shutil
import sys

import torch
from tqdm import tqdm


TMP_SUFFIX = ".tmp"  # <file>.tmp<pid>: a write in progress, or one that was killed


class WriteFailed(OSError):
    """A file that could not be written (a full disk, a read-only or vanished directory):
    the message says which, why, and how much it needed against what was free."""


def write_atomically(path, content):
    """Write `content` (bytes or str) to a temporary file beside `path`, flush it to disk
    and rename it over `path`: an interrupted or failed write never leaves a broken or
    missing file, nor its temporary. A failure is a WriteFailed."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}{TMP_SUFFIX}{os.getpid()}"
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)  # first, so that the space it took counts as free
        try:
            free = size_in_words(shutil.disk_usage(directory).free)
            room = f", and the disk there has {free} free"
        except OSError:
            room = ""
        failed = WriteFailed(f"cannot write {path} ({e.strerror}): it needs "
                             f"{size_in_words(len(data))}{room}")
        failed.errno = e.errno
        raise failed from None
    finally:
        remove_quietly(tmp)


def remove_stale_temporaries(directory, pattern, what):
    """Remove the files in `directory` whose names match `pattern` (a regex whose last group
    is a pid: <file>.tmp<pid>, util.write_atomically's) and whose process no longer runs on
    this host (killed while it wrote), and say so on stderr, with `what` they were for:
    a training state's or a large corpus's temporary can weigh hundreds of MB."""
    pattern = re.compile(pattern)
    stale = [name for name in os.listdir(directory)
             if (m := pattern.match(name)) and not process_exists(int(m.groups()[-1]))]
    freed = 0
    for name in stale:
        path = os.path.join(directory, name)
        try:
            freed += os.path.getsize(path)
            os.remove(path)
        except OSError:  # (gone meanwhile, or not ours to remove)
            pass
    if stale:
        print(f"removed {plural(len(stale), 'temporary file')} that interrupted writes left "
              f"{what} ({size_in_words(freed)}): {', '.join(stale)}", file=sys.stderr)


def file_sha256(path):
    """The sha256 of the file at `path`, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_quietly(path):
    """Remove the file `path` if it is there and may be removed; say nothing otherwise."""
    try:
        os.remove(path)
    except OSError:  # (renamed, never made, or a read-only directory)
        pass


def process_exists(pid):
    """Whether a process `pid` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def size_in_words(n_bytes):
    """1536 -> "1.5 KB", 3 * 2**20 -> "3.0 MB"."""
    if n_bytes >= 2**20:
        return f"{n_bytes / 2**20:,.1f} MB"
    return f"{n_bytes / 2**10:,.1f} KB"


def listing(paths):
    """["a"] -> "a is", ["a", "b"] -> "a, b are": a sentence about files begins so."""
    return f"{', '.join(paths)} {'is' if len(paths) == 1 else 'are'}"


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


def tensor_bytes(value, counted=None):
    """The bytes of the tensors in `value` (nested dicts and lists) as torch.save writes
    them: each storage once, and whole. A tied embedding and decoder are one matrix; the
    weights of an LSTM layer packed for cuDNN are views of one block (lstm_layer.py), all
    of which is written."""
    counted = set() if counted is None else counted
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        if storage.data_ptr() in counted:
            return 0
        counted.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v, counted) for v in value)
    return 0
