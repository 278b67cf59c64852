"""Tests of trainer.py: the step's objective, one epoch of training, what the end of an epoch
decides, the running average of a run."""

import time

import pytest
import torch

import budget
import checkpoint
import plans
import trainer as trainer_module
from data import Corpus
from settings import defaults
from signals import StopRequest
from trainer import Trainer


def tiny_trainer(corpus_path, tmp_path, **changes):
    settings = {**defaults("awd"), "emsize": 8, "nhid": 12, "batch_size": 4, "bptt": 10,
                "finetune": None, "save": str(tmp_path / "m.pt"), **changes}
    return Trainer(settings, Corpus(corpus_path), torch.device("cpu"))


def test_averaged_weights_are_the_mean_of_the_iterates(random_text, tmp_path):
    trainer = tiny_trainer(random_text, tmp_path, finetune="x")
    iterates = []
    trainer.optimizer.register_step_post_hook(
        lambda opt, args, kwargs: iterates.append(
            [p.detach().clone() for p in trainer.model.parameters()]))
    with StopRequest() as stop:
        trainer.train_epoch(stop, max_batches=7, log_interval=50)
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
        mean_loss = trainer.train_epoch(stop, max_batches=None, log_interval=3)
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
        assert trainer.train_epoch(stop, max_batches=None, log_interval=50) is None
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
    trainer = tiny_trainer(random_text, tmp_path, schedule=schedule, nonmono=2, lr=30.0,
                           finetune=finetune)
    scripted = iter(losses)
    monkeypatch.setattr(trainer_module, "mean_nll", lambda *args, **kwargs: next(scripted))
    with StopRequest() as stop:
        rows = []
        for _ in losses:
            rows.append(trainer.end_epoch(trainer.train_epoch(stop, max_batches=2,
                                                               log_interval=50)))
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


def test_a_plan_re_fitted_within_an_epoch_ends_the_epoch_there_at_the_cycles_end(
        repeating, tmp_path, monkeypatch):
    """Each step takes 100 ms where 1 ms was planned, and the deadline leaves time for about
    ten of the epoch's 17: the plan is re-fitted once the pace is known, the epoch ends
    with the re-fitted plan, before the deadline, and the 1cycle schedule at its end."""
    trainer = tiny_trainer(repeating, tmp_path, schedule="1cycle", optimizer="adam",
                           lr=0.005, variable_bptt=False)
    planned = trainer.steps_per_epoch()
    trainer.set_plan(plans.Plan(budget.fixed_plan(1, planned, 0.75, budget_s=60.0,
                                                   train_deadline_s=0.0, step_s=0.001)))
    original = Trainer.after_step

    def slow(self):
        time.sleep(0.1)
        return original(self)

    monkeypatch.setattr(Trainer, "after_step", slow)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (see test_budget.py: the other core may be busy)
    try:
        trainer.plan.deadline = time.time() + 1.0
        with StopRequest() as stop:
            trainer.train_epoch(stop, max_batches=None, log_interval=50)
    finally:
        torch.set_num_threads(threads)
    assert planned == 17 and trainer.plan.replanned and not trainer.out_of_time
    assert trainer.steps == trainer.plan.layout["total_steps"] < planned
    assert trainer.schedule.scheduler.last_epoch == planned - 1
