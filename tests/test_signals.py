"""Tests of signals.py: a stop request inside the epoch loop, Ctrl-C's meaning outside it,
and the handlers put back as they were (a run's stop and hang-up end to end:
tests/test_train.py)."""

import os
import signal

import pytest

from signals import OutlivesItsReader, StopRequest, ignore_stops, signals_as_ctrl_c


def test_sigterm_and_ctrl_c_say_what_a_second_one_does(capsys):
    for signum, again in ((signal.SIGINT, "(Ctrl-C again aborts"),
                          (signal.SIGTERM, "(another signal or a Ctrl-C aborts"),
                          (signal.SIGHUP, "(another signal or a Ctrl-C aborts")):
        request = StopRequest()
        request.handle(signum, None)
        assert again in capsys.readouterr().out and request.requested



def test_outside_the_loop_sigterm_is_ctrl_c_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with signals_as_ctrl_c():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested  # a request, not an exception
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_failed_run_ignores_stops_until_the_outermost_block_puts_them_back():
    """A failed run's last words are not cut short: from ignore_stops on (once the epoch
    loop's block has ended, as train.py calls it) until signals_as_ctrl_c, train.main's
    outermost block, ends."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with signals_as_ctrl_c():
        with StopRequest():
            pass
        ignore_stops()
        for s in before:
            os.kill(os.getpid(), s)  # ignored
    assert {s: signal.getsignal(s) for s in before} == before


def test_output_reaches_its_reader_and_goes_nowhere_once_a_write_finds_it_gone():
    reading, writing = os.pipe()
    stream = OutlivesItsReader(os.fdopen(writing, "w", buffering=1))
    stream.write("read\n")
    assert os.read(reading, 100) == b"read\n"
    os.close(reading)  # the reader is gone: the next write fails with EPIPE
    stream.write("lost\n")
    stream.flush()
    assert os.fstat(writing).st_rdev == os.stat(os.devnull).st_rdev
    stream.write("and the run goes on\n")
    stream.close()
