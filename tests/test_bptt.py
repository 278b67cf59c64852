"""Tests of bptt.py: windows cover a split once, exact target counts, perplexity."""

import math

import numpy as np
import torch

from bptt import ppl, sample_seq_len, scored_targets, windows
from data import batchify


def test_windows_cover_every_target_once_and_carry_on_in_order():
    source = batchify(torch.arange(103), 4)  # (25, 4)
    rows = [(row, inputs, targets) for row, inputs, targets in windows(source, 7)]
    assert [row for row, *_ in rows] == [0, 7, 14, 21]
    assert torch.equal(torch.cat([t for *_, t in rows]), source[1:])
    assert torch.equal(torch.cat([i for _, i, _ in rows]), source[:-1])


def test_windows_draw_each_length_just_before_cutting_it():
    source = batchify(torch.arange(200), 2)  # (100, 2)
    lengths = iter([5, 30, 2, 100])
    drawn = []

    def draw():
        drawn.append(next(lengths))
        return drawn[-1]

    sizes = [len(i) for _, i, _ in windows(source, draw, start=10)]
    assert sizes == [5, 30, 2, 52] and drawn == [5, 30, 2, 100]


def test_min_len_leaves_out_a_last_window_too_short():
    source = batchify(torch.arange(22), 2)  # (11, 2): 10 targets per column
    assert [len(i) for _, i, _ in windows(source, 3)] == [3, 3, 3, 1]
    assert [len(i) for _, i, _ in windows(source, 3, min_len=2)] == [3, 3, 3]


def test_scored_targets_counts_what_batchify_keeps():
    for n, batch in [(103, 4), (50, 1), (10, 10 // 2)]:
        assert scored_targets(n, batch) == batchify(torch.arange(n), batch)[1:].numel()


def test_variable_lengths_follow_the_awd_recipe():
    rng = np.random.default_rng(0)
    lengths = np.array([sample_seq_len(rng, 70) for _ in range(4000)])
    assert lengths.min() >= 5
    assert 0.03 < (lengths < 50).mean() < 0.07  # the bptt / 2 branch, p = 0.05
    assert abs(np.median(lengths) - 69.5) < 1.5


def test_perplexity_is_exp_of_the_loss_and_never_overflows():
    assert math.isclose(ppl(math.log(65.8)), 65.8)
    assert ppl(1000.0) == float("inf")
