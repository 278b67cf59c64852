"""Tests of plans.py: a plan re-fitted as the run goes (shrunk behind its deadline, grown
ahead of it), the lr schedule spread over the rest, and the pace it is read from."""

import math

import budget
import plans


def test_a_plan_grows_the_epoch_in_progress_first_and_never_past_the_epochs_asked_for():
    speed = dict(step_s=0.4, valid_s=1.0, test_s=1.0, save_s=0.0)
    first = budget.plan(60.0, 0.0, speed, 100, 3, 0.75)
    assert (first["epochs"], first["last_epoch_batches"], first["average_from"]) == (2, 33, 99)
    # 10 steps into the first epoch, at a sixteenth of the pace measured: the averaging that
    # has not begun moves to the last quarter of the grown plan
    plan = plans.Plan(dict(first), deadline=1000.0)
    line = plan.fill_the_time(10, 0, 10, 0.025, 50.0, 0.75)
    assert line.startswith("ahead of the plan (a step takes 25.0 ms, 400.0 ms planned)")
    assert (plan.epochs, plan.layout["total_steps"], plan.layout["average_from"]) == (
        3, 300, 225)  # only up to --epochs 3
    assert plan.fill_the_time(10, 0, 10, 0.025, 50.0, 0.75) is None and plan.grown_out
    assert not plan.ahead(10, 0, 10, 990.0)  # (no sync point asks again)
    # 10 steps into the shorter last epoch: it grows to whole first; the averaging that has
    # begun goes on
    plan = plans.Plan(dict(first), deadline=1000.0)
    plan.fill_the_time(110, 1, 10, 0.025, 50.0, 0.75)
    assert (plan.epoch_batches(1), plan.epochs, plan.layout["average_from"]) == (100, 3, 99)


def test_a_refit_keeps_whole_epochs_and_spreads_the_rest_of_the_schedule():
    p = budget.fixed_plan(10, 100, 0.75, budget_s=600.0, train_deadline_s=500.0, step_s=0.1)
    # 250 steps into epoch 3 (index 2, 50 done): 750 planned steps left; 340 of them fit:
    # the 50 left of this epoch, two whole epochs and a last of 90
    assert plans.steps_left(p, 2, 50) == 750
    new = plans.reshape(p, 250, 2, 50, 340, average_start=0.75)
    assert (new["epochs"], new["last_epoch_batches"], new["total_steps"]) == (6, 90, 590)
    assert plans.steps_left(new, 2, 50) == 340
    assert new["average_from"] == math.floor(0.75 * 590)
    assert new["schedule_steps"] == 1000 and new["schedule_anchor"] == [250, 250]
    positions = [plans.schedule_position(new, step) for step in range(250, 591)]
    assert positions[0] == 250 and positions[-1] == 1000  # the schedule's end, on time
    assert all(2 <= b - a <= 3 for a, b in zip(positions, positions[1:]))  # evenly spread
    # a second re-fit (at the start of epoch 5) goes on from where the schedule stands
    again = plans.reshape(new, 450, 4, 0, 40, average_start=0.75)
    assert again["schedule_anchor"] == [450, plans.schedule_position(new, 450)]
    assert again["epochs"] == 5 and plans.schedule_position(again, 490) == 1000
    # fewer steps than the epoch in progress has left: it becomes the last
    short = plans.reshape(p, 250, 2, 50, 20, average_start=0.75)
    assert (short["epochs"], short["last_epoch_batches"], short["total_steps"]) == (3, 70, 270)


def test_the_pace_is_read_over_the_latest_batches_that_span_the_window():
    """A budget run judges whether it is behind by its recent pace: over the latest batches
    that span the window asked for (long early in a run, short near its deadline), never
    the first batch alone, and not at all before the record spans the window."""
    ends = [0.0, 1.0, 2.0, 3.0, 13.0, 23.0]  # ten times slower from the fifth batch
    assert plans.recent_pace(ends, 15.0) == 10.0  # from 3.0: the slow batches alone
    assert plans.recent_pace(ends, 23.0) == 23.0 / 5  # all after the first batch
    assert plans.recent_pace(ends, 0.0) == 10.0  # two batches at least
    assert plans.recent_pace(ends, 24.0) is None  # not that long yet
    assert plans.recent_pace([0.0, 1.0], 0.0) is None
    assert plans.recent_pace([], 0.0) is None


def test_the_pace_leaves_out_the_time_between_epochs():
    plan = plans.Plan(budget.fixed_plan(2, 10, 0.75), deadline=40.0)
    for now in (0.0, 1.0, 2.0):
        plan.batch_ended(now)
    plan.pause(2.0)  # an epoch's end: validation, saves
    plan.resume(32.0)
    plan.batch_ended(33.0)
    assert plan.batch_ends == [30.0, 31.0, 32.0, 33.0] and plan.pace(33.0) == 1.0


def test_the_steps_that_will_average_cost_the_measured_update_until_they_do():
    """A plan whose average has not begun counts its updates in the pace of the steps left
    (the pace measured so far has none); once the average runs, the pace has them."""
    layout = budget.fixed_plan(1, 100, 0.5, budget_s=200.0, train_deadline_s=140.0)
    plan, unaware = plans.Plan(dict(layout, average_s=1.0)), plans.Plan(layout)
    for p in (plan, unaware):
        p.start_the_clock(started=0.0, spent=0.0)
        for now in range(0, 41):
            p.batch_ended(float(now))  # a step a second over the first 40 steps
    assert plan.pace_to_come(40, 0, 40, 1.0) == 1.0 + 50 / 60  # 50 of the 60 left average
    assert plan.pace_to_come(50, 0, 50, 1.0) == 1.0  # averaging: in the pace already
    # 60 steps of a second fit in the 100 s left, but not with 50 updates of a second
    assert plan.behind(40, 0, 40, 40.0) and not unaware.behind(40, 0, 40, 40.0)
    assert plan.keep_to_the_deadline(40, 0, 40, 1.0, 100.0, 0.5).startswith("behind the plan")
    left = plan.steps_left(0, 40)
    averaging = plan.layout["total_steps"] - plan.layout["average_from"]
    assert 90 < left + averaging <= 100  # the re-fitted rest's seconds: a step, an update
