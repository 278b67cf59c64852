"""plans.py: a planned run's plan as it goes (a budget's, budget.py, or a planned
schedule's: onecycle, 1cycle). `Plan` holds its layout, the deadline and the recent pace.
If the run falls behind its plan (a slower machine, a busy GPU), it re-fits the rest at the
next sync point (`reshape`): the steps its recent pace fits, and the rest of the lr schedule
spread over them (`schedule_position`), so that a 1cycle run still ends annealed and a
planned average still starts. A run well ahead of it (its first steps, measured for the
plan, are slower than later ones) grows it up to --epochs. The deadline stays the last
resort: there the trainer ends the epoch, so that validation, the saved model and the test
still finish inside the budget.
"""

import bisect
import math

from util import plural

# Keeping to a budget's deadline: the pace is measured over the latest batches that span a
# tenth of the time left (long enough early on that the first windows of a run, slower
# while new shapes warm up, cannot shorten a plan by themselves; short near the end, where
# a slowdown must be seen at once). A plan is re-fitted to fill 96% of the time left when
# its rest would overrun it, or take under 92% of it; the plan then sits 4% from either
# edge, so that a few percent of jitter does not swing it back and forth. It grows only while
# 15% of the training time is left: later little is won, and a 1cycle anneal must not meet
# the deadline. (What a 30-minute run left unused with other shares:
# results/cpu30/selection/README.md.)
PACE_WINDOW, REFIT_SHARE, GROW_BELOW, GROW_UNTIL = 0.1, 0.96, 0.92, 0.15

# The lr schedule of a planned run (1cycle, onecycle) is laid over the steps first planned,
# plan["schedule_steps"]. When the run re-fits its plan (it fell behind the deadline, or a
# resume changed --epochs), the plan records where it was (its "schedule_anchor": the run's
# step and the schedule's step then) and spreads the rest of the schedule over the rest of
# the new plan, so that the schedule's last step is the run's last.

def epoch_batches(p, epoch):
    """The planned steps of epoch number `epoch` (0 for the first): a budget's last epoch
    may be shorter."""
    last = epoch + 1 >= p["epochs"]
    return p.get("last_epoch_batches", p["batches_per_epoch"]) if last else p["batches_per_epoch"]


def steps_left(p, epoch, batches_done):
    """The plan's steps after `batches_done` of epoch `epoch`."""
    rest, later = max(epoch_batches(p, epoch) - batches_done, 0), p["epochs"] - epoch - 1
    if later < 1:
        return rest
    return rest + (later - 1) * p["batches_per_epoch"] + epoch_batches(p, p["epochs"] - 1)


def reshape(p, steps_done, epoch, batches_done, steps, average_start):
    """The plan `p` re-fitted to `steps` more steps after `batches_done` of epoch `epoch`
    (`steps_done` in all): the epoch in progress ends sooner or later, epochs drop or are
    added, the rest of the lr schedule spreads over the new rest, and a planned average that
    has not begun starts at `average_start` of the new total."""
    rest, per_epoch = max(epoch_batches(p, epoch) - batches_done, 0), p["batches_per_epoch"]
    rest = max(rest, per_epoch - batches_done)  # (a shortened last epoch may grow to whole)
    if steps <= rest:  # the epoch in progress becomes the last
        epochs, last = epoch + 1, batches_done + steps
    else:
        whole, extra = divmod(steps - rest, per_epoch)
        epochs, last = epoch + 1 + whole + (extra > 0), extra or per_epoch
    total = steps_done + steps
    new = dict(p, epochs=epochs, last_epoch_batches=last, total_steps=total,
               schedule_steps=p.get("schedule_steps", p["total_steps"]),
               schedule_anchor=[steps_done, schedule_position(p, steps_done)])
    if steps_done < p["average_from"]:
        new["average_from"] = max(steps_done, math.floor(average_start * total))
    return new


def schedule_position(p, step):
    """The step of the lr schedule that the run's step `step` has reached: the same until a
    re-fit, then the rest of the schedule spread evenly over the rest of the plan."""
    anchor = p.get("schedule_anchor")
    if anchor is None:
        return step
    run_at, schedule_at = anchor
    return schedule_at + ((step - run_at) * (p["schedule_steps"] - schedule_at)
                          // max(p["total_steps"] - run_at, 1))


def epochs_in_words(p):
    """"3 epochs of 933 steps and a last of 400 (2,266 steps)", "1 epoch of 49 steps"."""
    last = p.get("last_epoch_batches", p["batches_per_epoch"])  # (older plans lack it)
    if p["epochs"] == 1:
        return f"1 epoch of {plural(last, 'step')}"
    whole = p["epochs"] - (last != p["batches_per_epoch"])
    words = f"{plural(whole, 'epoch')} of {plural(p['batches_per_epoch'], 'step')}"
    if last != p["batches_per_epoch"]:
        words += f" and a last of {last:,}"
    return words + f" ({p['total_steps']:,} steps)"


def recent_pace(batch_ends, at_least):
    """Seconds per batch over the latest of `batch_ends` (when each batch ended, by the wall
    clock, the pauses between epochs taken out: Plan.resume) that span `at_least` seconds
    and two batches at least; None before the record spans that long."""
    start = bisect.bisect_right(batch_ends, batch_ends[-1] - at_least) - 1 if batch_ends else -1
    start = min(start, len(batch_ends) - 3)
    if start < 0:
        return None
    return (batch_ends[-1] - batch_ends[start]) / (len(batch_ends) - 1 - start)


class Plan:
    """A planned run's plan as it goes: its `layout` (plan's or fixed_plan's dict, which the
    training state keeps as it is) and, under a budget, the `deadline` (time.time()) by
    which training must stop, with the end of each batch since, which gives the recent
    pace. The Trainer holds one for a budget, onecycle or 1cycle run."""

    def __init__(self, layout, deadline=None):
        self.layout, self.deadline = layout, deadline
        self.batch_ends = []  # under a deadline, when each batch of this process ended
        self.replanned = False  # re-fitted during the epoch in progress
        self.grown_out = False  # grew to --epochs: grows no more
        self.paused_at = None  # when training last stopped for an epoch's end

    @property
    def epochs(self):
        return self.layout["epochs"]

    @property
    def schedule_steps(self):
        """The steps the lr schedule is laid over: those first planned (reshape)."""
        return self.layout.get("schedule_steps", self.layout["total_steps"])

    def epoch_batches(self, epoch):
        return epoch_batches(self.layout, epoch)

    def steps_left(self, epoch, batches_done):
        return steps_left(self.layout, epoch, batches_done)

    def schedule_position(self, step):
        return schedule_position(self.layout, step)

    def averaging_from(self, step):
        """Whether a run that averages averages at its step `step` (its planned start)."""
        return step >= self.layout["average_from"]

    def start_the_clock(self, started, spent):
        """Under a budget, training stops by train_deadline_s from `started` (time.time()
        when this session of the run began), less the seconds its earlier sessions `spent`."""
        if self.layout["train_deadline_s"] is not None:
            self.deadline = started - spent + self.layout["train_deadline_s"]

    def fit_to_epochs(self, epochs, steps_done, epoch, batches_done, average_start):
        """A resume that asks for `epochs` (--epochs) other than the plan's: the rest of the
        plan re-fitted to end with epoch `epochs`, its lr schedule ending there; a budget's
        plan only shrinks (more epochs than it fitted would not fit). Returns the line that
        says what became of the plan, or None when it stands as it was."""
        if self.layout.get("budget_s") is not None and epochs > self.epochs:
            return (f"note: the budget's plan of {plural(self.epochs, 'epoch')} stands (a "
                    "budget fits whole epochs up to --epochs when the run starts)")
        if not epoch < epochs != self.epochs:
            return None
        per_epoch = self.layout["batches_per_epoch"]
        steps = max(per_epoch - batches_done, 0) + (epochs - epoch - 1) * per_epoch
        return self.refit(steps_done, epoch, batches_done, steps, average_start,
                          f"--epochs {epochs} instead of the plan's {self.epochs}")

    def batch_ended(self, now):
        if self.deadline is not None:
            self.batch_ends.append(now)

    def late(self, now):
        return self.deadline is not None and now >= self.deadline

    def seconds_left(self, now):
        return self.deadline - now if self.deadline is not None else 0.0

    def pace(self, now):
        """Seconds per batch lately (recent_pace over PACE_WINDOW of the time left), or
        None before it is known."""
        return recent_pace(self.batch_ends, PACE_WINDOW * self.seconds_left(now))

    def pause(self, now):
        """Training stops for an epoch's end: the pace does not count the time until
        resume (seconds_needed counts the ends of epochs to come as measured)."""
        self.paused_at = now

    def resume(self, now):
        if self.paused_at is not None:
            self.batch_ends = [end + now - self.paused_at for end in self.batch_ends]
        self.paused_at = None

    def pace_to_come(self, steps_done, epoch, batches_done, pace):
        """`pace` (seconds per step lately) with the measured cost of the weight average's
        update (budget.measure) spread over the steps left, for those that will average
        and do not yet, after `steps_done` steps (`batches_done` of epoch `epoch`)."""
        extra, start = self.layout.get("average_s", 0.0), self.layout["average_from"]
        left = self.steps_left(epoch, batches_done)
        if not (pace and extra) or steps_done >= start or left <= 0:
            return pace
        return pace + extra * max(left - (start - steps_done), 0) / left

    def seconds_needed(self, epoch, batches_done, pace):
        """The plan's steps left at `pace`, and the ends of its epochs before the last."""
        return (self.steps_left(epoch, batches_done) * pace
                + (self.epochs - epoch - 1) * self.layout.get("epoch_end_s", 0.0))

    def steps_that_fit(self, epoch, batches_done, room, pace):
        """The steps after `batches_done` of epoch `epoch` that `room` seconds hold at `pace`:
        the epoch in progress to its end, then whole epochs after an epoch's end each, then
        a shorter last one when a tenth of an epoch fits; up to --epochs."""
        per_epoch, end_s = self.layout["batches_per_epoch"], self.layout.get("epoch_end_s", 0.0)
        this_epoch, most = per_epoch - batches_done, self.layout.get("max_epochs", math.inf)
        if room <= this_epoch * pace:
            return max(math.floor(room / pace), 0)
        whole, spare = divmod(room - this_epoch * pace, end_s + per_epoch * pace)
        whole = int(min(whole, most - epoch - 1))
        extra = math.floor((spare - end_s) / pace) if spare > end_s else 0
        fits = extra >= per_epoch // 10 and epoch + 1 + whole < most
        return this_epoch + whole * per_epoch + (extra if fits else 0)

    def behind(self, steps_done, epoch, batches_done, now):
        """Whether, at this process's recent pace (pace_to_come), the plan's rest would run
        past the deadline."""
        pace = self.pace(now) if self.deadline is not None else None
        pace = self.pace_to_come(steps_done, epoch, batches_done, pace)
        return pace is not None and self.seconds_needed(epoch, batches_done, pace) > \
            self.deadline - now

    def ahead(self, steps_done, epoch, batches_done, now):
        """Whether a budget's plan (that records how far it may grow) would end training in
        under GROW_BELOW of the time left at this process's recent pace (GROW_UNTIL)."""
        if (self.deadline is None or "max_epochs" not in self.layout or self.grown_out
                or self.deadline - now < GROW_UNTIL * self.layout["train_deadline_s"]):
            return False
        pace = self.pace_to_come(steps_done, epoch, batches_done, self.pace(now))
        return pace is not None and self.seconds_needed(epoch, batches_done, pace) < \
            GROW_BELOW * (self.deadline - now)

    def refit(self, steps_done, epoch, batches_done, steps, average_start, why):
        """Re-fit the plan to `steps` more steps after `batches_done` of epoch `epoch`
        (reshape), the lr schedule going on from where it stands; returns the line that
        says so, giving `why`."""
        self.layout = reshape(self.layout, steps_done, epoch, batches_done, steps, average_start)
        self.replanned = True
        return (f"{why}: {plural(steps, 'step')} left, the plan now "
                f"{epochs_in_words(self.layout)}; the lr schedule's rest spreads over them")

    def keep_to_the_deadline(self, steps_done, epoch, batches_done, pace, seconds_left,
                             average_start):
        """Behind the plan: re-fit its rest into REFIT_SHARE of `seconds_left` at `pace`
        (what the processes agreed on, so that each re-fits alike), with the updates of an
        average not yet begun (pace_to_come); returns refit's line, which gives the pace
        met, or None when no re-fit was needed (or no process has measured its pace yet)."""
        if not pace:
            return None
        fit = self.steps_that_fit(epoch, batches_done, REFIT_SHARE * seconds_left,
                                  self.pace_to_come(steps_done, epoch, batches_done, pace))
        if fit >= self.steps_left(epoch, batches_done):
            return None
        return self.refit(steps_done, epoch, batches_done, fit, average_start,
                          f"behind the plan ({self.pace_in_words(pace)})")

    def fill_the_time(self, steps_done, epoch, batches_done, pace, seconds_left,
                      average_start):
        """Ahead of the plan: grow its rest to fill REFIT_SHARE of `seconds_left` at `pace`,
        up to --epochs; returns refit's line, or None when it stands."""
        fit = pace and self.steps_that_fit(epoch, batches_done, REFIT_SHARE * seconds_left,
                                           self.pace_to_come(steps_done, epoch, batches_done,
                                                             pace))
        if not pace or fit <= self.steps_left(epoch, batches_done):
            self.grown_out = True  # (--epochs reached: no sync point asks again)
            return None
        return self.refit(steps_done, epoch, batches_done, fit, average_start,
                          f"ahead of the plan ({self.pace_in_words(pace)})")

    def pace_in_words(self, pace):
        """"a step takes 97.1 ms, 125.5 ms planned"."""
        planned = self.layout.get("step_s")
        return f"a step takes {1000 * pace:.1f} ms" + (
            f", {1000 * planned:.1f} ms planned" if planned else "")

    def budget_used(self, now):
        """The share of the budget that has passed by `now` (its clock: start_the_clock)."""
        return (now - self.deadline + self.layout["train_deadline_s"]) / self.layout["budget_s"]
