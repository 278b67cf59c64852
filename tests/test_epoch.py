"""Tests of epoch.py: an epoch's sums across a resume and across processes (what an epoch
trains, where it ends and what a stop does: tests/test_trainer.py)."""

import torch

from distributed import SINGLE, Group, Report
from epoch import EpochSums, Position


def test_only_the_main_process_carries_an_epochs_sums_across_a_resume():
    """Resumed after 3 batches (30 nats over 10 tokens): the main process's own sums start
    there, another process's at zero, so that their sum counts the past once."""
    position = Position(hidden=None, batches=3, loss_sum=30.0, tokens=10, seconds=1.0)
    main = EpochSums(position, SINGLE, torch.device("cpu"))
    other = EpochSums(position, Group(rank=1, size=2), torch.device("cpu"))
    assert (main.own_loss_sum.item(), main.own_tokens) == (30.0, 10)
    assert (other.own_loss_sum.item(), other.own_tokens) == (0.0, 0)
    assert main.batches == other.batches == 3


def test_each_sync_point_checks_the_mean_loss_since_the_last_one():
    sums = EpochSums(Position(hidden=None), SINGLE, torch.device("cpu"))
    sums.add(torch.tensor(2.0), 5)
    assert sums.agreed(Report(loss_sum=10.0, tokens=5)) == (2.0, 0)  # batch 1 on
    sums.add(torch.tensor(4.0), 5)
    sums.add(torch.tensor(6.0), 5)
    assert sums.agreed(Report(loss_sum=60.0, tokens=15)) == (5.0, 1)  # batches 2-3 alone
    position = sums.position(row=30, hidden=torch.zeros(1, 2, 3), group=SINGLE)
    assert (position.index, position.batches, position.loss_sum, position.tokens) == (
        30, 3, 60.0, 15)
