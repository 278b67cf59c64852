"""Tests of schedule.py: each schedule is the one writer of the lr, a function of the run's
progress or a decision at the end of an epoch; NT-ASGD's trigger; the linear, onecycle and
1cycle shapes; runs of --epochs end at their schedule's last value; a new schedule is one
class."""

import dataclasses
import math

import pytest
import torch

import checkpoint
import runlog
import schedule
import settings
import train
from optim import make_optimizer
from schedule import (FINETUNE_DONE, LR_CUT, ONE_CYCLE, SCHEDULES, START_AVERAGING, Schedule,
                      make_schedule, one_cycle_factor, should_start_averaging)
from settings import BY_NAME, defaults


def schedule_of(name, **changes):
    settings = {**defaults("awd"), "schedule": name, "finetune": None, "bptt": 10,
                "budget_minutes": None, **changes}
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer(settings, [weight])
    return make_schedule(settings, optimizer), optimizer


def test_the_schedules_are_the_choices_of_the_flag():
    assert tuple(SCHEDULES) == BY_NAME["schedule"].type


def test_a_schedule_sets_every_groups_lr_scaled_by_the_window():
    schedule, optimizer = schedule_of("ntasgd", lr=30.0)
    optimizer.add_param_group(dict(params=[torch.nn.Parameter(torch.zeros(2))]))
    assert schedule.lr(5, progress=0.7) == 30.0  # (what the progress shows: the unscaled lr)
    assert [group["lr"] for group in optimizer.param_groups] == [15.0, 15.0]
    linear, optimizer = schedule_of("linear", lr=30.0, cooldown=1.0)
    assert linear.lr(10, progress=0.75) == pytest.approx(7.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(7.5)


def test_the_1cycle_recipe_takes_its_lr_whatever_the_window_as_its_authors_code_does():
    recipe = settings.RECIPES["1cycle"]
    schedule, optimizer = schedule_of("ntasgd", lr=5e-3, lr_by_window=recipe["lr_by_window"])
    schedule.lr(5, progress=0.0)
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
        seen.append(schedule.current(progress=0.5))
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


def test_linear_holds_the_lr_then_falls_to_0_over_the_cooldown():
    schedule, _ = schedule_of("linear", lr=20.0, cooldown=0.25)
    assert [schedule.current(p) for p in (0.0, 0.5, 0.75)] == [20.0] * 3
    assert schedule.current(0.875) == pytest.approx(10.0) and schedule.current(1.0) == 0.0
    constant, _ = schedule_of("linear", lr=20.0, cooldown=0.0)
    assert constant.current(0.999) == constant.current(1.0) == 20.0


def test_onecycle_is_torchs_onecyclelr_read_at_the_share_of_the_run():
    """torch's OneCycleLR over N steps sets the lr (and Adam's beta1) that onecycle gives
    at the same share of each phase: torch's first phase ends at step 0.3 N - 1, its last
    at step N - 1 (p = 1)."""
    total = 50
    schedule, optimizer = schedule_of("onecycle", optimizer="adam", lr=0.01, warmup=0.3)
    weight = torch.nn.Parameter(torch.zeros(3))
    reference = torch.optim.Adam([weight], lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=0.01, total_steps=total,
                                                    pct_start=0.3)
    for step in range(total):
        group = reference.param_groups[0]
        rising = 0.3 * total - 1  # (step 14)
        progress = (0.3 * step / rising if step <= rising else
                    0.3 + 0.7 * (step - rising) / (total - 1 - rising))
        assert schedule.current(progress) == pytest.approx(group["lr"], rel=1e-9), step
        assert schedule.beta1(progress) == pytest.approx(group["betas"][0], rel=1e-9), step
        reference.step()
        scheduler.step()
    assert schedule.current(1.0) == pytest.approx(0.01 / 25 / 1e4)


def test_the_1cycle_lr_follows_gugger_and_howards_four_phases():
    # as fractions of 90 "epochs": phases end at 7.5, 45, 82.5 and 90
    ends = [7.5 / 90, 45 / 90, 82.5 / 90, 1.0]
    assert one_cycle_factor(0.0) == pytest.approx(0.1) and one_cycle_factor(ends[0]) == 1.0
    assert one_cycle_factor(ends[0] / 2) == pytest.approx(0.55)  # linear up
    assert {one_cycle_factor(p) for p in (0.1, 0.3, 0.49)} == {1.0}  # held at the peak
    middle = (ends[1] + ends[2]) / 2
    assert one_cycle_factor(middle) == pytest.approx(0.55)  # linear down
    assert one_cycle_factor(ends[2]) == pytest.approx(0.1)
    assert one_cycle_factor(1.0) == pytest.approx(0.0, abs=1e-12)
    assert one_cycle_factor((ends[2] + 1) / 2) == pytest.approx(0.05)  # a cosine to zero
    shares = [i / 1000 for i in range(1001)]
    assert all(one_cycle_factor(a) >= one_cycle_factor(b)
               for a, b in zip(shares[500:], shares[501:]))


def test_the_1cycle_beta1_moves_against_the_lr_and_beta2_is_0_99():
    schedule, optimizer = schedule_of("1cycle", optimizer="adam", lr=5e-3)
    assert optimizer.param_groups[0]["betas"] == (ONE_CYCLE["beta1"][0], ONE_CYCLE["beta2"])
    (beta1_low, beta1_peak), beta2 = ONE_CYCLE["beta1"], ONE_CYCLE["beta2"]
    for p in (0.0, 0.05, 0.3, 0.7, 0.95, 1.0):
        lr = schedule.lr(70, p)
        beta1, second = optimizer.param_groups[0]["betas"]
        assert second == beta2
        if lr >= 5e-4:  # beta1 moves linearly against the lr, 0.8 at peak / 10, 0.7 at the peak
            assert beta1 == pytest.approx(beta1_low + (beta1_peak - beta1_low)
                                          * (lr - 5e-4) / (5e-3 - 5e-4))
        else:  # the cosine's end, below peak / 10
            assert beta1 == pytest.approx(beta1_low)


@pytest.mark.parametrize("schedule, last_lr", [
    (["--schedule", "onecycle", "--optimizer", "adam", "--lr", "0.003"], 0.003 / 25 / 1e4),
    (["--recipe", "1cycle", "--batch_size", "4"], 0.0),
    (["--schedule", "linear", "--cooldown", "0.5"], 0.0),
])
def test_a_run_of_epochs_reaches_its_schedules_last_value_at_its_last_step(
        repeating, tmp_path, tiny, schedule, last_lr):
    """Under variable BPTT the steps of an epoch are not known beforehand; p, the share of
    the rows done, still reaches 1 at the last one."""
    steps = []
    original = Schedule.lr

    def recorded(self, window, progress):
        steps.append(progress)
        return original(self, window, progress)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Schedule, "lr", recorded)
        train.main(tiny["awd"] + ["--data", repeating, "--epochs", "3", "--variable-bptt"]
                   + schedule + ["--save", str(tmp_path / "c.pt")])
    state = checkpoint.load(str(tmp_path / "c.state.pt"), kind="state")
    assert len(steps) == state["steps"] and steps == sorted(steps)
    assert steps[-1] == 1.0 > steps[-2]  # the last step, and only it, at the end
    rows = runlog.read_metrics(str(tmp_path / "c.csv"))
    assert float(rows[-1]["lr"]) == pytest.approx(last_lr, abs=1e-15)
    assert [float(r["progress"]) for r in rows][-1] == 1.0


def test_a_resume_that_lowers_the_epochs_of_a_1cycle_run_ends_it_annealed(
        repeating, tmp_path, monkeypatch, tiny, stop_in_epoch):
    common = tiny["awd"] + ["--data", repeating, "--recipe", "1cycle", "--batch_size", "4",
                            "--epochs", "6", "--no-variable-bptt"]
    stop_in_epoch(2)
    train.main(common + ["--save", str(tmp_path / "c.pt")])
    monkeypatch.undo()
    train.main(["--resume", str(tmp_path / "c.state.pt"), "--epochs", "3"])
    rows = runlog.read_metrics(str(tmp_path / "c.csv"))
    assert len(rows) == 3 and float(rows[-1]["progress"]) == 1.0
    assert 1 / 6 < float(rows[0]["progress"]) < float(rows[1]["progress"]) < 1
    assert float(rows[-1]["lr"]) == 0.0  # the cycle's end, with the new last epoch


@pytest.mark.parametrize("schedule", [
    ["--schedule", "onecycle"],
    ["--schedule", "onecycle", "--optimizer", "adam", "--lr", "0.003"],
    ["--recipe", "1cycle", "--batch_size", "4"],
    ["--schedule", "linear"],
])
def test_a_run_whose_schedule_follows_progress_resumes_exactly_from_mid_epoch(
        repeating, tmp_path, monkeypatch, tiny, stop_in_epoch, schedule):
    common = tiny["awd"] + ["--data", repeating, "--epochs", "4", "--variable-bptt"] + schedule
    train.main(common + ["--save", str(tmp_path / "straight.pt")])
    stop_in_epoch(3)
    train.main(common + ["--save", str(tmp_path / "split.pt")])
    monkeypatch.undo()
    stopped = checkpoint.load(str(tmp_path / "split.state.pt"), kind="state")
    assert stopped["epoch"] == 2 and stopped["position"] is not None
    train.main(["--resume", str(tmp_path / "split.state.pt")])
    a = checkpoint.load(str(tmp_path / "straight.state.pt"), kind="state")
    b = checkpoint.load(str(tmp_path / "split.state.pt"), kind="state")
    assert (a["averaged"] is None) == (b["averaged"] is None)
    for key in ("model", "averaged"):
        for name in a[key] or {}:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]  # lr and betas


class Cosine(Schedule):  # docs/training.md's example, as written there
    """A cosine from --lr down to 0 over the run."""
    summary = "a cosine from --lr down to 0 over the run"

    def factor(self, progress):
        return (1 + math.cos(math.pi * progress)) / 2


def test_a_new_schedule_is_a_class_and_an_entry_of_the_table(repeating, tmp_path, monkeypatch,
                                                             tiny):
    """docs/training.md's cosine schedule, added as it says (a class and its entry in
    SCHEDULES, whose names are the choices of --schedule), trains over the run to an lr
    of 0."""
    monkeypatch.setitem(schedule.SCHEDULES, "cosine", Cosine)
    old = settings.BY_NAME["schedule"]  # (made from SCHEDULES when settings.py is imported)
    new = dataclasses.replace(old, type=old.type + ("cosine",))
    monkeypatch.setattr(settings, "SETTINGS",
                        tuple(new if s is old else s for s in settings.SETTINGS))
    monkeypatch.setitem(settings.BY_NAME, "schedule", new)
    train.main(tiny["awd"] + ["--data", repeating, "--schedule", "cosine", "--epochs", "2",
                              "--save", str(tmp_path / "c.pt")])
    rows = runlog.read_metrics(str(tmp_path / "c.csv"))
    assert float(rows[0]["lr"]) == pytest.approx(15.0, abs=1.0)  # half way down after epoch 1
    assert float(rows[1]["lr"]) == pytest.approx(0.0, abs=1e-12)  # and at 0 after epoch 2
