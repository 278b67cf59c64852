"""Tests of util.py: atomic writes, perplexity, the words of messages."""

import math
import os

import pytest

from util import duration, plural, ppl, write_atomically


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    write_atomically(str(path), lambda f: f.write("old"))

    def half_then_crash(f):
        f.write("half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(path), half_then_crash)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_perplexity_is_exp_of_the_loss_and_never_overflows():
    assert math.isclose(ppl(math.log(65.8)), 65.8)
    assert ppl(1000.0) == float("inf")


def test_plural_counts_in_words():
    assert plural(1, "epoch") == "1 epoch" and plural(3, "epoch") == "3 epochs"
    assert plural(2, "process") == "2 processes" and plural(1, "process") == "1 process"
    assert plural(1200, "batch") == "1,200 batches"


def test_durations_read_as_hours_and_minutes_or_minutes_and_seconds():
    assert duration(3725) == "1h 02m" and duration(125) == "2m 05s"
