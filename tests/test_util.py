"""Tests of util.py: atomic writes, the bytes torch.save writes, perplexity, the words of
messages."""

import errno
import io
import math
import os
import re

import pytest
import torch

from util import WriteFailed, duration, plural, ppl, tensor_bytes, write_atomically


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    write_atomically(str(path), "old")

    def killed(fd):  # the new bytes are written, not yet on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(path), "half of the new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("errno_, reason", [(errno.ENOSPC, "No space left on device"),
                                            (errno.EROFS, "Read-only file system")])
def test_a_failed_write_says_why_and_what_it_needed_and_leaves_no_temporary(
        tmp_path, monkeypatch, errno_, reason):
    path = tmp_path / "f.pt"
    path.write_bytes(b"old")

    def failed(fd):
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(os, "fsync", failed)
    with pytest.raises(WriteFailed) as error:
        write_atomically(str(path), b"x" * 3 * 2**20)
    message = str(error.value)
    assert f"cannot write {path} ({reason})" in message and "it needs 3.0 MB" in message
    assert re.search(r"the disk there has [\d,.]+ [KM]B free", message)
    assert message.startswith("cannot write")  # (no "[Errno 28]" before it)
    assert error.value.errno == errno_
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.pt"]


def test_perplexity_is_exp_of_the_loss_and_never_overflows():
    assert math.isclose(ppl(math.log(65.8)), 65.8)
    assert ppl(1000.0) == float("inf")


def test_plural_counts_in_words():
    assert plural(1, "epoch") == "1 epoch" and plural(3, "epoch") == "3 epochs"
    assert plural(2, "process") == "2 processes" and plural(1, "process") == "1 process"
    assert plural(1200, "batch") == "1,200 batches"


def test_durations_read_as_hours_and_minutes_or_minutes_and_seconds():
    assert duration(3725) == "1h 02m" and duration(125) == "2m 05s"


def test_the_bytes_of_tensors_are_those_torch_save_writes():
    """Each storage once and whole: views of one block (an LSTM layer's weights packed for
    cuDNN), a tied matrix, a tensor of its own."""
    block = torch.zeros(4 * 100)
    layer = {f"w{i}": block[100 * i:100 * (i + 1)].view(10, 10) for i in range(4)}
    tied = torch.ones(7, 3)
    state = dict(layer, encoder=tied, decoder=tied, bias=torch.zeros(5, dtype=torch.float64))
    assert tensor_bytes(state) == 4 * 400 + 4 * 21 + 8 * 5
    written = io.BytesIO()
    torch.save(state, written)
    assert 0 < len(written.getvalue()) - tensor_bytes(state) < 4096  # (and the zip records)
