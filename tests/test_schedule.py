"""Tests of schedule.py: each schedule is the one writer of the lr, decides at the end of
an epoch as its rule says, and saves and restores its place; NT-ASGD's trigger; the 1cycle
phases."""

import dataclasses

import pytest
import torch

import checkpoint
import runlog
import schedule
import settings
import train
from optim import make_optimizer
from schedule import (FINETUNE_DONE, LR_CUT, ONE_CYCLE, SCHEDULES, START_AVERAGING, OneCycleLR,
                      PlannedSchedule, make_schedule, one_cycle_factor, should_start_averaging)
from settings import BY_NAME, defaults


def schedule_of(name, **changes):
    settings = {**defaults("awd"), "schedule": name, "finetune": None, "bptt": 10, **changes}
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer(settings, [weight])
    return make_schedule(settings, optimizer), optimizer


def test_the_schedules_are_the_choices_of_the_flag():
    assert tuple(SCHEDULES) == BY_NAME["schedule"].type


def test_a_schedule_sets_every_groups_lr_scaled_by_the_window():
    schedule, optimizer = schedule_of("ntasgd", lr=30.0)
    optimizer.add_param_group(dict(params=[torch.nn.Parameter(torch.zeros(2))]))
    assert schedule.lr(5) == 30.0  # (what the progress shows: the unscaled lr)
    assert [group["lr"] for group in optimizer.param_groups] == [15.0, 15.0]


def test_the_1cycle_recipe_takes_its_lr_whatever_the_window_as_its_authors_code_does():
    recipe = settings.RECIPES["1cycle"]
    schedule, optimizer = schedule_of("ntasgd", lr=5e-3, lr_by_window=recipe["lr_by_window"])
    schedule.lr(5)
    assert optimizer.param_groups[0]["lr"] == 5e-3


@pytest.mark.parametrize("name, finetune, losses, decisions, lrs", [
    # NT-ASGD (nonmono 2): averaging starts when a loss is worse than all but the last 2's
    ("ntasgd", None, [5.0, 4.0, 4.5, 4.6, 5.1], [None, None, None, None, START_AVERAGING],
     [30.0] * 5),
    # anneal: lr / 4 whenever an epoch is not the best so far
    ("anneal", None, [5.0, 5.2, 4.0, 4.1], [None, LR_CUT, None, LR_CUT], [30, 30, 7.5, 7.5]),
    # fine-tuning, whatever the schedule: done at the first trigger
    ("anneal", "m.pt", [3.0, 2.0, 2.5, 3.5], [None, None, LR_CUT, FINETUNE_DONE],
     [30, 30, 30, 7.5]),
])
def test_the_end_of_an_epoch_decides_as_the_schedule_says(name, finetune, losses, decisions,
                                                          lrs):
    schedule, _ = schedule_of(name, lr=30.0, nonmono=2, finetune=finetune)
    history, seen, best = [], [], float("inf")
    for loss in losses:
        seen.append(schedule.current())
        decided = schedule.after_validation(history, loss, improved=loss < best,
                                            averaging=False)
        assert decided == decisions[len(history)]
        best, history = min(best, loss), history + [loss]
    assert seen == lrs


@pytest.mark.parametrize("history, valid_loss, fires", [
    ([5.0, 4.0, 3.0], 3.5, False),  # not more than nonmono = 3 epochs before this one
    ([5.0, 4.0, 3.0, 2.9], 3.5, False),  # 3.5 is better than min([5.0])
    ([5.0, 4.0, 3.0, 2.9], 5.1, True),  # worse than every epoch before the last three
    ([5.0, 4.0, 3.0, 2.9, 2.8], 4.5, True),  # worse than min([5.0, 4.0]) = 4.0
    ([5.0, 4.0, 3.0, 2.9, 2.8], 3.9, False),  # better than 4.0: the last 3 do not count
    ([5.0, 4.0, 3.0, 2.9, 2.8], 4.0, False),  # equal is not worse
])
def test_nt_asgd_trigger(history, valid_loss, fires):
    assert should_start_averaging(history, valid_loss, nonmono=3) is fires


@pytest.mark.parametrize("name", ["onecycle", "1cycle"])
def test_a_planned_schedule_resumes_where_it_stood(name):
    """Steps taken, saved, and loaded as a resume loads them (Trainer.load_state_dict: the
    schedule fitted to the plan first, then the optimizer's state and the schedule's): the
    two go on with the same lr and betas from the first step on."""
    adam = dict(optimizer="adam", lr=5e-3)
    first, first_optimizer = schedule_of(name, **adam)
    first.fit(40)
    for step in range(1, 13):
        first_optimizer.step()  # (no gradients: the weights stay; torch counts the step)
        first.after_step(step)
    second, second_optimizer = schedule_of(name, **adam)
    second.fit(40)  # (constructing a torch scheduler writes the optimizer's lr and betas)
    second_optimizer.load_state_dict(first_optimizer.state_dict())
    second.load_state_dict(first.state_dict())
    for step in range(13, 40):
        assert second.lr(10) == first.lr(10)
        assert second_optimizer.param_groups[0]["betas"] == \
            first_optimizer.param_groups[0]["betas"]
        for optimizer, planned in ((first_optimizer, first), (second_optimizer, second)):
            optimizer.step()
            planned.after_step(step)
    assert first.current() == pytest.approx(second.current())


def test_the_1cycle_lr_follows_gugger_and_howards_four_phases():
    total = 900  # 90 "epochs" of 10 steps: phases end at steps 75, 450, 825 and 900
    factor = [one_cycle_factor(step, total) for step in range(total + 1)]
    assert factor[0] == pytest.approx(0.1) and factor[75] == 1.0
    assert factor[37] == pytest.approx(0.1 + 0.9 * 37 / 75)  # linear up
    assert set(factor[75:450]) == {1.0}  # held at the peak
    assert factor[450 + 375 // 2] == pytest.approx(1 - 0.9 * (375 // 2) / 375)  # linear down
    assert factor[825] == pytest.approx(0.1) and factor[900] == pytest.approx(0.0, abs=1e-12)
    assert factor[825 + 75 // 2] < 0.1 / 2 + 0.01  # a cosine to zero
    assert all(a >= b for a, b in zip(factor[450:], factor[451:]))


def test_the_1cycle_schedule_is_torchs_lambdalr_with_beta1_against_the_lr():
    settings = dict(optimizer="adam", schedule="1cycle", lr=5e-3, wdecay=1.2e-6)
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer(settings, [weight])
    scheduler = OneCycleLR(optimizer, total_steps=90)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    seen = []
    for _ in range(90):
        group = optimizer.param_groups[0]
        seen.append((group["lr"], group["betas"]))
        optimizer.step()
        scheduler.step()
    lrs = [lr for lr, _ in seen]
    assert lrs[0] == pytest.approx(5e-4) and max(lrs) == pytest.approx(5e-3)
    (beta1_low, beta1_peak), beta2 = ONE_CYCLE["beta1"], ONE_CYCLE["beta2"]
    for lr, (beta1, second) in seen:
        assert second == beta2
        if lr >= 5e-4:  # beta1 moves linearly against the lr, 0.8 at peak / 10, 0.7 at the peak
            assert beta1 == pytest.approx(beta1_low + (beta1_peak - beta1_low)
                                          * (lr - 5e-4) / (5e-3 - 5e-4))
        else:  # the cosine's end, below peak / 10
            assert beta1 == pytest.approx(beta1_low)
    assert isinstance(make_optimizer(dict(settings, optimizer="sgd"), [weight]),
                      torch.optim.SGD)


class Cosine(PlannedSchedule):  # docs/training.md's example, as written there
    """torch's CosineAnnealingLR from --lr to 0 over the planned steps."""

    def make(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


def test_a_new_schedule_is_a_class_and_an_entry_of_the_table(repeating, tmp_path, monkeypatch,
                                                             tiny):
    """docs/training.md's cosine schedule, added as it says (SCHEDULES and the choices of
    --schedule, nothing else), trains over the planned steps to an lr of 0."""
    monkeypatch.setitem(schedule.SCHEDULES, "cosine", Cosine)
    old = settings.BY_NAME["schedule"]
    new = dataclasses.replace(old, type=old.type + ("cosine",))
    monkeypatch.setattr(settings, "SETTINGS",
                        tuple(new if s is old else s for s in settings.SETTINGS))
    monkeypatch.setitem(settings.BY_NAME, "schedule", new)
    train.main(tiny["awd"] + ["--data", repeating, "--schedule", "cosine", "--epochs", "2",
                              "--no-variable-bptt", "--save", str(tmp_path / "c.pt")])
    state = checkpoint.load(str(tmp_path / "c.state.pt"), kind="state")
    planned = state["plan"]["total_steps"]
    assert state["steps"] == planned and state["scheduler"]["T_max"] == planned
    rows = runlog.read_metrics(str(tmp_path / "c.csv"))
    assert float(rows[0]["lr"]) < 30.0 / 2 + 1  # half way down the cosine after epoch 1
    assert float(rows[1]["lr"]) < 0.01 * 30.0  # and one step short of 0 after epoch 2
