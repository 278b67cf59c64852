"""Tests of trainer.py: the step's objective, one epoch of training and its running sums,
what the end of an epoch decides, the running average of a run, a budget's time running
out within an epoch."""

import time

import pytest
import torch

import checkpoint
import trainer as trainer_module
from data import Corpus
from distributed import SINGLE, Group, Report
from settings import defaults
from signals import StopRequest
from trainer import EpochSums, Position, Trainer


def tiny_trainer(corpus_path, tmp_path, **changes):
    settings = {**defaults("awd"), "emsize": 8, "nhid": 12, "batch_size": 4, "bptt": 10,
                "finetune": None, "save": str(tmp_path / "m.pt"), **changes}
    return Trainer(settings, Corpus(corpus_path), torch.device("cpu"))


def test_averaged_weights_are_the_mean_of_the_iterates(random_text, tmp_path):
    trainer = tiny_trainer(random_text, tmp_path, max_batches=7, finetune="x")
    iterates = []
    trainer.optimizer.register_step_post_hook(
        lambda opt, args, kwargs: iterates.append(
            [p.detach().clone() for p in trainer.model.parameters()]))
    with StopRequest() as stop:
        trainer.train_epoch(stop, log_interval=50)
    assert len(iterates) == 7
    for i, averaged in enumerate(trainer.averaged.module.parameters()):
        mean = torch.stack([step[i] for step in iterates]).mean(0)
        assert torch.allclose(averaged, mean, atol=1e-6)
    assert not torch.allclose(next(trainer.averaged.module.parameters()), iterates[-1][0])


# --- One epoch, and what its end decides ------------------------------------------------

def test_an_epoch_trains_on_every_window_once_and_returns_its_mean_loss(random_text,
                                                                        tmp_path):
    trainer = tiny_trainer(random_text, tmp_path, variable_bptt=False)
    seen = []
    trainer.optimizer.register_step_post_hook(lambda *args: seen.append(1))
    with StopRequest() as stop:
        mean_loss = trainer.train_epoch(stop, log_interval=3)
    data = trainer.train_data
    lengths = [10] * ((data.size(0) - 1) // 10)
    if (data.size(0) - 1) % 10 >= 2:  # a last window of a single target is left out
        lengths.append((data.size(0) - 1) % 10)
    assert len(seen) == trainer.steps == len(lengths)
    assert trainer.position.tokens == sum(lengths) * data.size(1)
    assert mean_loss == pytest.approx(trainer.position.loss_sum / trainer.position.tokens)
    assert 2.5 < mean_loss < 4.5  # near ln 30 for random words, and finite


def test_a_stop_ends_the_epoch_after_the_current_batch_where_a_resume_continues(random_text,
                                                                                tmp_path):
    trainer = tiny_trainer(random_text, tmp_path, variable_bptt=False)
    with StopRequest() as stop:
        stop.requested = True
        assert trainer.train_epoch(stop, log_interval=50) is None
    position = trainer.position
    assert (position.batches, position.index, trainer.steps) == (1, 10, 1)
    assert position.hidden[0][0].shape == (1, 4, 12)


@pytest.mark.parametrize("schedule, finetune, losses, events, lrs", [
    # NT-ASGD (nonmono 2): the switch when a loss is worse than all but the last 2 epochs'
    ("ntasgd", None, [5.0, 4.0, 4.5, 4.6, 5.1], ["saved", "saved", "", "",
                                                  "switch to ASGD"], [30] * 5),
    # anneal: the lr / 4 whenever validation does not improve
    ("anneal", None, [5.0, 5.2, 4.0, 4.1], ["saved", "lr / 4", "saved", "lr / 4"],
     [30, 30, 7.5, 7.5]),
    # fine-tuning: done at the first trigger; saved only below the starting loss
    ("ntasgd", "start.pt", [3.0, 2.0, 2.5, 3.5], ["saved", "saved", "", "fine-tuning done"],
     [30] * 4),
])
def test_the_end_of_an_epoch_saves_switches_anneals_and_stops_as_its_schedule_says(
        random_text, tmp_path, monkeypatch, schedule, finetune, losses, events, lrs):
    trainer = tiny_trainer(random_text, tmp_path, max_batches=2, schedule=schedule, nonmono=2,
                           lr=30.0, finetune=finetune)
    scripted = iter(losses)
    monkeypatch.setattr(trainer_module, "mean_nll", lambda *args, **kwargs: next(scripted))
    with StopRequest() as stop:
        rows = []
        for _ in losses:
            rows.append(trainer.end_epoch(trainer.train_epoch(stop, log_interval=50)))
    assert [r["event"] for r in rows] == events
    assert [r["lr"] for r in rows] == lrs
    assert trainer.best_valid_loss == min(losses)
    assert trainer.done == (finetune is not None)
    assert checkpoint.load(str(tmp_path / "m.pt"))["valid_loss"] == min(losses)


def test_the_objective_adds_ar_and_tar_to_the_cross_entropy():
    torch.manual_seed(0)
    model = trainer_module.build_model(dict(model="awd", ntoken=20, emsize=8, nhid=8,
                                            nlayers=2)).eval()
    tokens, targets = torch.randint(0, 20, (6, 2)), torch.randint(0, 20, (6, 2))
    loss, penalty, _ = trainer_module.Objective(model, 2.0, 1.0)(tokens, model.init_hidden(2),
                                                                 targets)
    out = model(tokens, model.init_hidden(2))
    h = out.raw_output  # (in evaluation the dropped output is the raw one)
    by_hand = 2.0 * h.pow(2).mean() + 1.0 * (h[1:] - h[:-1]).pow(2).mean()
    assert torch.isclose(penalty, by_hand) and torch.isclose(loss, model.loss(out, targets))


def test_a_budget_whose_time_runs_out_ends_the_epoch_there_and_the_run_after_it(
        repeating, tmp_path, monkeypatch):
    """Each step takes at least 100 ms, and the budget leaves its clock a second of training:
    the epoch of 17 steps ends at the sync point that sees the time run out, with the lr of
    the linear schedule near 0, and its end says "out of time" and ends the run."""
    trainer = tiny_trainer(repeating, tmp_path, schedule="linear", variable_bptt=False,
                           budget_minutes=1.0)
    original = Trainer.after_step

    def slow(self, progress):
        time.sleep(0.1)
        return original(self, progress)

    monkeypatch.setattr(Trainer, "after_step", slow)
    trainer.progress.clock.start(time.time(), reserve_s=59.0)
    with StopRequest() as stop:
        trainer.train_epoch(stop, log_interval=3)
    assert trainer.steps_per_epoch() == 17 and trainer.steps < 17
    assert trainer.progress.spent and trainer.schedule.current(1.0) == 0.0
    lrs = [group["lr"] for group in trainer.optimizer.param_groups]
    assert max(lrs) < 30.0 * 0.5  # (the last step's lr: p past one half by then)
    row = trainer.end_epoch(trainer.position.loss_sum / trainer.position.tokens)
    assert row["out_of_time"] == "yes" and row["progress"] == 1.0 and trainer.finished


# --- An epoch's sums ------------------------------------------------------------------------

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
