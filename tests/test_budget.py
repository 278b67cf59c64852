"""Tests of budget.py and of planned runs: the plan's arithmetic, measuring leaves the run
untouched, a budget ends on time with a tested model, one-cycle runs resume exactly."""

import json
import math
import time

import pytest
import torch

import budget
import checkpoint
import runlog
import train
import trainer as trainer_module
import util
from data import Corpus
from settings import defaults

SPEED = dict(step_s=0.1, valid_s=2.0, test_s=5.0, save_s=0.5, save_bytes=3 * 2**20)


def test_the_plan_fits_whole_epochs_after_the_test_and_a_margin():
    p = budget.plan(600.0, 15.0, SPEED, steps_per_epoch=100, max_epochs=750, average_start=0.75)
    margin = max(budget.MARGIN_FRACTION * 600, budget.MARGIN_MIN_S)
    epoch_s = budget.EPOCH_OVERHEAD * (100 * 0.1 + 2.0 + 0.5)
    assert p["epochs"] == math.floor((600 - 15 - 5 - margin) / epoch_s)  # (no room for more)
    assert p["epochs"] * epoch_s + 15 + 5 <= 600
    assert p["total_steps"] == 100 * p["epochs"]
    assert p["average_from"] == math.floor(0.75 * p["total_steps"])
    assert p["train_deadline_s"] == 600 - margin - 5.0 - 2.0 - 0.5


def test_the_plan_never_exceeds_the_epochs_asked_for_and_shortens_one_that_does_not_fit():
    assert budget.plan(600.0, 0.0, SPEED, 100, max_epochs=3, average_start=0.5)["epochs"] == 3
    short = budget.plan(20.0, 0.0, SPEED, steps_per_epoch=1000, max_epochs=10, average_start=0.5)
    assert short["epochs"] == 1
    overhead = budget.EPOCH_OVERHEAD
    steps = math.floor((20 - 2.0 - 5 - overhead * (2.0 + 0.5)) / (overhead * 0.1))
    assert short["batches_per_epoch"] == short["last_epoch_batches"] == steps


def test_the_time_left_after_whole_epochs_goes_to_a_shorter_last_one():
    p = budget.plan(300.0, 0.0, SPEED, steps_per_epoch=1000, max_epochs=50, average_start=0.75)
    margin = max(budget.MARGIN_FRACTION * 300, budget.MARGIN_MIN_S)
    whole = budget.EPOCH_OVERHEAD * (1000 * 0.1 + 2.0 + 0.5)
    assert p["epochs"] == math.floor((300 - 5 - margin) / whole) + 1 == 3
    last = p["last_epoch_batches"]
    assert 100 <= last < 1000 and p["total_steps"] == 2 * 1000 + last
    spent = 2 * whole + budget.EPOCH_OVERHEAD * (last * 0.1 + 2.0 + 0.5) + 5 + margin
    assert 300 - budget.EPOCH_OVERHEAD * 0.1 < spent <= 300  # the budget, filled
    assert "plan: 2 epochs of 1,000 steps and a last of " in budget.describe(p, SPEED, 0.0)


def test_the_plan_counts_the_weight_averages_updates_in_the_steps_that_average():
    # averaging the last quarter at 0.4 s an update: 0.1 s more per step over the whole plan
    slow = budget.plan(300.0, 0.0, dict(SPEED, step_s=0.1, average_s=0.4), 1000, 50, 0.75)
    even = budget.plan(300.0, 0.0, dict(SPEED, step_s=0.2), 1000, 50, 0.75)
    assert slow["total_steps"] == even["total_steps"] < budget.plan(
        300.0, 0.0, SPEED, 1000, 50, 0.75)["total_steps"]
    assert slow["average_s"] == 0.4
    assert "(and 400.0 ms to update the average)" in budget.describe(
        slow, dict(SPEED, average_s=0.4), 0.0)


def test_measuring_leaves_the_model_and_the_random_state_untouched(repeating, tmp_path):
    settings = {**defaults("awd"), "emsize": 8, "nhid": 12, "batch_size": 4,
                "bptt": 10, "model": "awd", "finetune": None, "save": str(tmp_path / "m.pt")}
    trainer = trainer_module.Trainer(settings, Corpus(repeating), torch.device("cpu"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    speed = budget.measure(trainer)
    assert all(speed[k] > 0 for k in ("step_s", "average_s", "valid_s", "test_s", "save_s"))
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert list(tmp_path.iterdir()) == []  # the probe checkpoint is gone


def test_a_budget_ends_on_time_with_a_tested_model(repeating, tmp_path, capsys, tiny):
    budget_minutes = 0.15
    started = time.time()
    train.main(tiny["awd"] + ["--data", repeating, "--budget-minutes", str(budget_minutes),
                              "--schedule", "onecycle", "--save", str(tmp_path / "b.pt")])
    elapsed = time.time() - started
    out = capsys.readouterr().out
    assert "plan: " in out and "averaging from step" in out
    # In-process, set-up is inside the budget. The bound leaves room for a machine whose
    # speed changes after the run measured it (the other core busy): a run that ignored its
    # budget would train for minutes (750 epochs).
    assert elapsed <= 1.5 * 60 * budget_minutes
    summary = json.load(open(tmp_path / "b.json"))
    assert summary["test_ppl"] is not None and summary["epochs"] >= 1
    state = checkpoint.load(str(tmp_path / "b.state.pt"), kind="state")
    # the final model is the averaged one once the run reached the planned averaging step
    # (a slow moment can end a budget's last epoch before it)
    assert (state["averaged"] is not None) == (state["steps"] > state["plan"]["average_from"])
    assert state["plan"]["epochs"] >= summary["epochs"]


def test_onecycle_follows_torchs_schedule_and_averages_from_the_planned_step(repeating, tmp_path,
                                                                             tiny):
    train.main(tiny["awd"] + ["--data", repeating, "--schedule", "onecycle", "--optimizer",
                              "adamw", "--lr", "0.01", "--epochs", "4", "--average-start",
                              "0.5", "--no-variable-bptt", "--save", str(tmp_path / "c.pt")])
    state = checkpoint.load(str(tmp_path / "c.state.pt"), kind="state")
    plan = state["plan"]
    assert plan["total_steps"] == 4 * plan["batches_per_epoch"]
    assert state["scheduler"]["total_steps"] == plan["total_steps"]
    assert state["averaged"]["n_averaged"].item() == state["steps"] - plan["average_from"]
    lrs = [float(r["lr"]) for r in csv_rows(tmp_path / "c.csv")]
    assert max(lrs) <= 0.01 and lrs[-1] < 0.01 / 100  # annealed to near zero at the end


def csv_rows(path):
    return runlog.read_metrics(path)


@pytest.mark.parametrize("schedule", [
    ["--schedule", "onecycle"],
    # Adam's beta1 cycles against the lr; a resume must not start from the beta1 that
    # constructing the schedule writes (0.95 for onecycle, 0.8 for 1cycle)
    ["--schedule", "onecycle", "--optimizer", "adam", "--lr", "0.003"],
    ["--recipe", "1cycle", "--batch_size", "4"],
])
def test_a_planned_run_stopped_mid_epoch_resumes_exactly(repeating, tmp_path, monkeypatch, tiny,
                                                         schedule):
    common = tiny["awd"] + ["--data", repeating, "--epochs", "4", "--variable-bptt"] + schedule
    train.main(common + ["--save", str(tmp_path / "straight.pt")])
    original, calls = trainer_module.Trainer.train_epoch, []

    def stop_in_epoch_three(self, stop, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            stop.requested = True  # as Ctrl-C: one more batch, then the state is saved
        return original(self, stop, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", stop_in_epoch_three)
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
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]


def test_a_budget_shrinks_the_1cycle_phases_and_a_run_that_falls_behind_still_anneals(
        repeating, tmp_path, capsys, monkeypatch, tiny):
    """The run plans from a measured 10 ms per step (given here, so that the plan does not
    depend on this machine's speed: 90 epochs never fit in 9 s); every step takes 10 ms
    more than it would, and from a third of the plan on 40 ms more (a busy GPU, a slower
    machine than measured): the plan is re-fitted so that the 1cycle schedule, which
    averages nothing, still reaches its end before the deadline."""
    step_s = 0.01
    monkeypatch.setattr(budget, "measure", lambda trainer: dict(
        step_s=step_s, valid_s=0.05, test_s=0.05, save_s=0.01, save_bytes=2**20))
    original = trainer_module.Trainer.after_step

    def slower(self):  # (never faster than measured: no growth of the plan first)
        time.sleep(step_s if self.steps < self.plan.layout["total_steps"] // 3 else 4 * step_s)
        return original(self)

    monkeypatch.setattr(trainer_module.Trainer, "after_step", slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (two threads on a CI machine whose other core is busy wait on
    try:  # each other far longer than any slowdown a test can reason about)
        train.main(tiny["awd"] + ["--data", repeating, "--recipe", "1cycle", "--budget-minutes",
                                  "0.15", "--batch_size", "4", "--no-variable-bptt",
                                  "--save", str(tmp_path / "b.pt")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    state = checkpoint.load(str(tmp_path / "b.state.pt"), kind="state")
    first_planned = state["scheduler"]["total_steps"]  # its phases span the first plan
    assert f"schedule 1cycle over {first_planned:,} steps" in out
    assert first_planned < 90 * state["plan"]["batches_per_epoch"]  # 90 epochs did not fit
    assert state["scheduler"]["last_epoch"] == first_planned - 1  # annealed: the cycle's end
    assert "behind the plan" in out and state["steps"] == state["plan"]["total_steps"] < \
        first_planned  # it trained the re-fitted plan's steps, no more
    rows = csv_rows(tmp_path / "b.csv")
    assert any("re-planned" in r["event"] for r in rows)
    assert state["averaged"] is None and json.load(open(tmp_path / "b.json"))["test_ppl"]


def test_a_run_well_ahead_of_its_plan_grows_it_and_still_averages_its_last_quarter(
        repeating, tmp_path, capsys, monkeypatch, tiny):
    """The plan is made from a measured 100 ms per step (given), while every step takes
    about 20 ms (a sleep, so that the pace does not depend on this machine's speed): once
    the run knows its pace it grows the plan to fill the budget, up to --epochs, and the
    planned average moves to the last quarter of the grown plan."""
    monkeypatch.setattr(budget, "measure", lambda trainer: dict(
        step_s=0.1, valid_s=0.05, test_s=0.05, save_s=0.01, save_bytes=2**20))
    original = trainer_module.Trainer.after_step

    def slowed(self):
        time.sleep(0.02)
        return original(self)

    monkeypatch.setattr(trainer_module.Trainer, "after_step", slowed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(tiny["awd"] + ["--data", repeating, "--budget-minutes", "0.15", "--epochs",
                                  "200", "--save", str(tmp_path / "g.pt")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    state = checkpoint.load(str(tmp_path / "g.state.pt"), kind="state")
    plan, first_planned = state["plan"], state["plan"]["schedule_steps"]
    assert "ahead of the plan" in out and state["steps"] > 1.5 * first_planned
    assert state["epoch"] == plan["epochs"] <= 200
    assert plan["average_from"] > int(0.75 * first_planned) and state["averaged"]
    summary = json.load(open(tmp_path / "g.json"))
    assert summary["budget_used"] > 0 and f"({summary['budget_used']:.1%})" in out


def test_a_resume_that_lowers_the_epochs_of_a_1cycle_run_ends_it_annealed(repeating, tmp_path,
                                                                          monkeypatch, tiny):
    common = tiny["awd"] + ["--data", repeating, "--recipe", "1cycle", "--batch_size", "4",
                            "--epochs", "6", "--no-variable-bptt"]
    original = trainer_module.Trainer.train_epoch

    def stop_in_epoch_two(self, stop, *args, **kwargs):
        if self.epoch == 1:
            stop.requested = True  # as Ctrl-C: one more batch, then the state is saved
        return original(self, stop, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", stop_in_epoch_two)
    train.main(common + ["--save", str(tmp_path / "c.pt")])
    monkeypatch.undo()
    train.main(["--resume", str(tmp_path / "c.state.pt"), "--epochs", "3"])
    state = checkpoint.load(str(tmp_path / "c.state.pt"), kind="state")
    plan, first_planned = state["plan"], state["scheduler"]["total_steps"]  # (6 epochs')
    assert state["epoch"] == plan["epochs"] == 3
    assert plan["total_steps"] == 3 * plan["batches_per_epoch"] == first_planned // 2
    assert state["scheduler"]["last_epoch"] == first_planned - 1  # the schedule's end
    assert float(csv_rows(tmp_path / "c.csv")[-1]["lr"]) < 0.005 / 100


def test_the_checkpoint_writes_are_measured_at_the_size_of_the_states_to_come(repeating,
                                                                             tmp_path):
    """Adam keeps two moments per weight, which an optimizer that has taken no step lacks;
    a run that averages keeps a second copy of the weights; the model file is written too."""
    written = {}
    for optimizer, schedule in (("sgd", "anneal"), ("adam", "anneal"), ("adam", "onecycle")):
        settings = {**defaults("awd"), "emsize": 8, "nhid": 12, "batch_size": 4, "bptt": 10,
                    "model": "awd", "finetune": None, "save": str(tmp_path / "m.pt"),
                    "optimizer": optimizer, "schedule": schedule}
        trainer = trainer_module.Trainer(settings, Corpus(repeating), torch.device("cpu"))
        speed = budget.measure(trainer, warmup=1, steps=2)
        written[optimizer, schedule] = speed["save_bytes"]
        weights = util.tensor_bytes(trainer.model.state_dict())
    parameters = len(list(trainer.model.parameters()))
    assert written["sgd", "anneal"] >= 2 * weights  # the state, and the model file
    moments = written["adam", "anneal"] - written["sgd", "anneal"]  # (and a step count each)
    assert 2 * weights <= moments <= 2 * weights + 8 * parameters + 512  # (+ zip records)
    average = written["adam", "onecycle"] - written["adam", "anneal"]  # (and its count)
    assert weights <= average <= weights + 512


def test_the_plan_of_one_epoch_says_its_steps_once():
    plan = budget.fixed_plan(1, 49, 0.75, budget_s=60.0, train_deadline_s=50.0)
    line = budget.describe(plan, SPEED, time.time()).splitlines()[1]
    assert line.startswith("plan: 1 epoch of 49 steps, averaging from step 36; training stops")
    two = budget.fixed_plan(2, 49, 0.75, budget_s=60.0, train_deadline_s=50.0)
    assert "plan: 2 epochs of 49 steps (98 steps)," in budget.describe(two, SPEED, time.time())
