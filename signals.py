"""signals.py: the signals that stop a run (Ctrl-C, SIGTERM from a scheduler or torchrun,
SIGHUP from a closed terminal). Inside the epoch loop StopRequest turns the first into a
request that the loop's sync points share (the run saves its state and ends); outside it
they end the run as Ctrl-C does.
"""

import contextlib
import os
import signal
import stat
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
        if signum == signal.SIGHUP:
            leave_the_terminal()
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        again = "Ctrl-C again" if signum == signal.SIGINT else "another signal or a Ctrl-C"
        tqdm.write(f"stopping {self.when}; the training state will be saved ({again} aborts "
                   "at once)")


def leave_the_terminal():
    """After a hang-up the terminal is gone, and every write to it would fail (EIO): what
    was meant for it goes nowhere from now on, so that the run can still save and end."""
    nowhere = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:  # a terminal is a character device (isatty fails once it is gone)
            if stat.S_ISCHR(os.fstat(stream.fileno()).st_mode):
                os.dup2(nowhere, stream.fileno())
        except (OSError, ValueError):  # (closed, or no file behind it)
            pass
    os.close(nowhere)


def signals_as_ctrl_c():
    """Outside the epoch loop (where StopRequest takes them over), SIGTERM and SIGHUP end a
    run as Ctrl-C does: a KeyboardInterrupt, which train.main reports."""
    def interrupt(signum, frame):
        if signum == signal.SIGHUP:
            leave_the_terminal()
        raise KeyboardInterrupt

    return handling((signal.SIGTERM, signal.SIGHUP), interrupt)


def signals_ignored():
    """While a failed run says what is left of it: torchrun sends SIGTERM to every process
    as soon as one is lost, and it must not cut that message short."""
    return handling(STOP_SIGNALS, signal.SIG_IGN)
