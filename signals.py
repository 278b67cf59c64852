"""signals.py: the signals that stop a run (Ctrl-C, SIGTERM from a scheduler or torchrun,
SIGHUP from a closed terminal). Inside the epoch loop StopRequest turns the first into a
request that the loop's sync points share (the run saves its state and ends); outside it
they end the run as Ctrl-C does. After a hang-up the output may have nowhere to go:
output_that_outlives_its_reader keeps the run going once a write fails.
"""

import contextlib
import errno
import os
import signal
import sys

from tqdm import tqdm


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, schedulers, hang-ups


@contextlib.contextmanager
def handling(signals, handler):
    """Handle `signals` with `handler` inside the block, as before it outside."""
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for sig, earlier in previous.items():
            signal.signal(sig, earlier)


class StopRequest:
    """Turns the first Ctrl-C, SIGTERM or SIGHUP into a request to stop after the current
    batch (`when` says otherwise); a second one aborts at once."""

    def __init__(self, when="after the current batch"):
        self.requested = False
        self.when = when

    def __enter__(self):
        self.handlers = handling(STOP_SIGNALS, self.handle)
        self.handlers.__enter__()
        return self

    def __exit__(self, *exc):
        self.handlers.__exit__(*exc)

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        again = "Ctrl-C again" if signum == signal.SIGINT else "another signal or a Ctrl-C"
        tqdm.write(f"stopping {self.when}; the training state will be saved ({again} aborts "
                   "at once)")


def signals_as_ctrl_c():
    """Outside the epoch loop (where StopRequest takes them over), SIGTERM and SIGHUP end a
    run as Ctrl-C does: a KeyboardInterrupt, which train.main reports. Leaving the block
    restores all three as they were (ignore_stops may have changed them)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return handling(STOP_SIGNALS, interrupt)


# A terminal that hung up fails every write with EIO; a pipe whose reader is gone (`| tee`
# killed with the terminal) with EPIPE.
READER_GONE = (errno.EIO, errno.EPIPE)


class OutlivesItsReader:
    """A text stream whose first write or flush that fails because its reader is gone
    points its file descriptor at /dev/null: from then on the output goes nowhere and the
    run goes on (to save and end, after a hang-up). While the reader lives (a pipe into
    `tee`, a terminal that stays), the output reaches it, hang-up or not."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        return self.safely(self.stream.write, text)

    def flush(self):
        return self.safely(self.stream.flush)

    def safely(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            if e.errno not in READER_GONE:
                raise
        try:
            nowhere = os.open(os.devnull, os.O_WRONLY)
            os.dup2(nowhere, self.stream.fileno())
            os.close(nowhere)
            return call(*args)  # what was buffered goes nowhere too
        except (OSError, ValueError):  # (no file behind the stream)
            return None

    def __getattr__(self, name):  # isatty, fileno, encoding, ... as the stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def output_that_outlives_its_reader():
    """sys.stdout and sys.stderr as OutlivesItsReader within the block."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (OutlivesItsReader(s) for s in streams)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams


def ignore_stops():
    """From now on, until the enclosing signals_as_ctrl_c restores them, ignore Ctrl-C,
    SIGTERM and SIGHUP: a run that failed is saying what is left of it, and torchrun sends
    SIGTERM to every process as soon as one is lost, at a moment no process can foresee."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
