"""Tests of signals.py: a stop request inside the epoch loop, Ctrl-C's meaning outside it,
and the handlers put back as they were (a run's stop and hang-up end to end:
tests/test_train.py)."""

import os
import signal

import pytest

from signals import OutlivesItsReader, StopRequest, signals_as_ctrl_c, signals_ignored


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
        with signals_ignored():
            os.kill(os.getpid(), signal.SIGTERM)  # (a failed run's last words: not cut short)
    assert signal.getsignal(signal.SIGTERM) is before


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
