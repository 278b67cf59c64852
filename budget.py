"""budget.py: fit a training run into a wall-clock budget (train.py --budget-minutes), and
keep a planned run on its plan.

Before the first batch the run measures itself on throwaway copies (the model, optimizer
and random-number state it will train with are left untouched): seconds per training step,
and seconds for one validation pass, for the final test pass and for an epoch's checkpoint
writes. `plan` then fixes the number of epochs whose training and validation fit, after
the test and a safety margin, and the step from which the weights are averaged. The plan is
printed and kept in the training state.

`Plan` holds a run's plan as it goes (the Trainer keeps one): its layout, the deadline and
the recent pace. If the run falls behind its plan anyway (a slower machine, a busy GPU), it
re-fits the rest at the next sync point (`reshape`): the steps its recent pace fits,
and the rest of the lr schedule spread over them (`schedule_position`), so that a 1cycle
run still ends annealed and a planned average still starts. A run well ahead of it (its
first steps, measured for the plan, are slower than later ones) grows it up to --epochs.
The deadline stays the last resort: there the trainer ends the epoch, so that validation,
the saved model and the test still finish inside the budget.
"""

import bisect
import itertools
import math
import os
import time

import torch

from data import mean_nll, windows
from util import plural, remove_quietly, size_in_words, tensor_bytes

# Part of the budget kept free for what the measurements cannot see (the first CUDA
# kernels, jitter): 3% of it, at least 2 seconds. Epochs also cost a little more than
# their measured parts (Python around the loop, the metrics file): 3% measured on tiny
# CPU runs, where that overhead weighs most.
MARGIN_FRACTION, MARGIN_MIN_S, EPOCH_OVERHEAD = 0.03, 2.0, 1.03
# Keeping to a budget's deadline: the pace is measured over the latest batches that span a
# tenth of the time left (long enough early on that the first windows of a run, slower
# while new shapes warm up, cannot shorten a plan by themselves; short near the end, where
# a slowdown must be seen at once), and a re-fitted plan fills 95% of the time left. A plan
# grows when its rest would take under 93% of it, to fill 98% (a slowdown re-fits it), and
# only while 30% of the training time is left: later little is won, and a 1cycle anneal
# must not meet the deadline.
PACE_WINDOW, REFIT_SHARE, GROW_BELOW, GROW_TO, GROW_UNTIL = 0.1, 0.95, 0.93, 0.98, 0.3


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(trainer, warmup=2, steps=20):
    """Seconds per training step, per validation pass, per test pass and for the checkpoint
    writes of an epoch (and the bytes those write), measured on copies of the trainer's
    model and optimizer (and a probe file, removed); the RNG states are restored
    afterwards. Under torchrun every process measures together (its steps and passes talk
    to the others) and the main process's figures are returned to all, so that all of them
    plan alike."""
    s, device, group = trainer.s, trainer.device, trainer.group
    rng_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    model, optimizer, step = trainer.spare_copy()
    step_s = step_seconds(step, model, trainer.train_data, s["bptt"], warmup, steps)

    def pass_seconds(data, batch_size):
        # Time a slice of about 8 windows and scale to the split; mean_nll's own first
        # call pays for warm-up, so take the second of two.
        part = data[: batch_size * s["bptt"] * 8 + 1]
        for _ in range(2):
            started = time.perf_counter()
            mean_nll(model, part, batch_size, s["bptt"], group=group)
            synchronize(device)
        return (time.perf_counter() - started) * len(data) / len(part)

    valid_s = pass_seconds(trainer.corpus.valid, s["eval_batch_size"])
    test_s = pass_seconds(trainer.corpus.test, s["test_batch_size"])
    save_s, save_bytes = write_seconds(trainer, optimizer)
    torch.set_rng_state(rng_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)
    return group.broadcast(dict(step_s=step_s, valid_s=valid_s, test_s=test_s, save_s=save_s,
                                save_bytes=save_bytes))


def step_seconds(step, model, data, bptt, warmup, steps):
    """Mean seconds of `steps` calls of `step(inputs, targets, hidden)` (a training step of
    `model`, Trainer.spare_copy's) on consecutive windows of `data`, after `warmup`."""
    batches = windows(data, bptt)
    hidden = model.init_hidden(data.size(1))

    def run(n):
        nonlocal hidden
        for _, inputs, targets in itertools.islice(batches, n):
            _, hidden = step(inputs, targets, hidden)
        synchronize(data.device)

    run(warmup)
    started = time.perf_counter()
    run(steps)
    return (time.perf_counter() - started) / steps


def write_seconds(trainer, stepped_optimizer):
    """(seconds, bytes) of an epoch's checkpoint writes: the training state, and the model
    whenever validation improves. The disk's speed comes from a probe, the trainer's state
    as it is now (written, timed and removed); the bytes from what the run's state will
    hold: its optimizer's state after steps (that of `stepped_optimizer`, the copy that took
    them: Adam keeps two moments per weight, which the run's own optimizer, not yet
    stepped, lacks) and the averaged weights of a run that averages."""
    probe = trainer.files.probe(os.getpid())
    started = time.perf_counter()
    try:
        trainer.save_state(probe)
        probe_bytes = os.path.getsize(probe) if trainer.group.main else 1
    finally:
        remove_quietly(probe)
    seconds = time.perf_counter() - started
    weights = tensor_bytes(trainer.model.state_dict())
    state = (probe_bytes - tensor_bytes(trainer.optimizer.state_dict())
             + tensor_bytes(stepped_optimizer.state_dict())
             + (weights if trainer.schedule.averages and trainer.averaged is None else 0))
    written = state + weights  # (the model file: its weights, and a small header)
    return seconds * written / probe_bytes, written


def plan(budget_s, spent_s, speed, steps_per_epoch, max_epochs, average_start):
    """The schedule that fits: {"epochs", "batches_per_epoch", "last_epoch_batches",
    "total_steps", "average_from", "train_deadline_s"}. Times are seconds from the run's
    start; `spent_s` have passed.

    Whole epochs of `steps_per_epoch` steps plus a validation each, then the test pass,
    inside `budget_s` less a margin, and in the time left over a last, shorter epoch when
    a tenth of one fits; if not even one epoch fits, one shortened epoch. Averaging starts
    at step `average_start * total_steps` (average_start in [0, 1])."""
    margin = max(MARGIN_FRACTION * budget_s, MARGIN_MIN_S)
    available = budget_s - spent_s - speed["test_s"] - margin
    per_epoch = EPOCH_OVERHEAD * (speed["valid_s"] + speed["save_s"])
    epoch_s = EPOCH_OVERHEAD * steps_per_epoch * speed["step_s"] + per_epoch
    epochs = min(max_epochs, math.floor(available / epoch_s)) if epoch_s > 0 else max_epochs
    last = steps_per_epoch
    if epochs < max_epochs:  # the time left over: a shorter last epoch, or a shortened one
        spare = available - max(epochs, 0) * epoch_s - per_epoch
        steps = min(steps_per_epoch, math.floor(spare / (EPOCH_OVERHEAD * speed["step_s"])))
        if epochs < 1 or steps >= steps_per_epoch // 10:
            epochs, last = max(epochs, 0) + 1, max(steps, 1)
    # Training must stop by the deadline to leave time for a validation and the test.
    layout = fixed_plan(epochs, steps_per_epoch if epochs > 1 else last, average_start,
                        budget_s=budget_s, last_epoch_batches=last,
                        train_deadline_s=budget_s - margin - speed["test_s"] - speed["valid_s"]
                        - speed["save_s"], step_s=speed["step_s"])
    # What a plan that grows must know: how far it may (--epochs), what an epoch's end costs.
    return dict(layout, max_epochs=max_epochs, epoch_end_s=per_epoch)


def fixed_plan(epochs, steps_per_epoch, average_start, budget_s=None, train_deadline_s=None,
               last_epoch_batches=None, step_s=None):
    """The plan of a run without a budget (--schedule onecycle): its epochs as given (the
    last one of `last_epoch_batches` steps when given). A budget's plan also keeps the
    measured seconds of a step, which a re-fit compares with the pace it meets."""
    last = steps_per_epoch if last_epoch_batches is None else last_epoch_batches
    total = (epochs - 1) * steps_per_epoch + last
    return dict(epochs=epochs, batches_per_epoch=steps_per_epoch, last_epoch_batches=last,
                total_steps=total, average_from=math.floor(average_start * total),
                budget_s=budget_s, train_deadline_s=train_deadline_s, step_s=step_s)


# --- Keeping to a plan --------------------------------------------------------------------
#
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
    (`steps_done` in all): the epoch in progress ends sooner or later epochs drop, the rest
    of the lr schedule spreads over the new rest, and a planned average that has not begun
    starts at `average_start` of the new total."""
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


def describe(p, speed, started_at, averages=True):
    """The plan as the lines train.py prints (`averages`: whether the run's schedule
    averages the weights: schedule.Schedule.averages)."""
    end = time.strftime("%H:%M:%S", time.localtime(started_at + p["budget_s"]))
    averaging = f", averaging from step {p['average_from']:,}" if averages else ""
    return (f"budget {p['budget_s'] / 60:g} min: measured {speed['step_s'] * 1000:.1f} ms per "
            f"step, {speed['valid_s']:.1f} s per validation, {speed['save_s']:.2f} s of "
            f"checkpoint writes per epoch ({size_in_words(speed['save_bytes'])}), "
            f"{speed['test_s']:.1f} s for the test\nplan: {epochs_in_words(p)}{averaging}; "
            f"training stops by {p['train_deadline_s'] / 60:.1f} min at the latest; the run "
            f"ends by {end}")


def recent_pace(batch_ends, at_least):
    """Seconds per batch over the latest of `batch_ends` (when each batch ended, by the wall
    clock, so that the validations and writes between epochs count too) that span
    `at_least` seconds and two batches at least; None before the record spans that long."""
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

    def behind(self, epoch, batches_done, now):
        """Whether, at this process's recent pace (the ends of epochs within it included),
        the plan's steps left would run past the deadline."""
        if self.deadline is None:
            return False
        pace = self.pace(now)
        return pace is not None and self.steps_left(epoch, batches_done) * pace > \
            self.deadline - now

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
        (what the processes agreed on, so that each re-fits alike); returns refit's line,
        or None when no re-fit was needed (or no process has measured its pace yet)."""
        if not pace:
            return None
        fit = max(math.floor(REFIT_SHARE * seconds_left / pace), 0)
        if fit >= self.steps_left(epoch, batches_done):
            return None
        expected = self.layout.get("step_s")
        return self.refit(steps_done, epoch, batches_done, fit, average_start,
                          f"behind the plan (a step takes {1000 * pace:.1f} ms"
                          + (f", {1000 * expected:.1f} ms planned" if expected else "") + ")")

    def ahead(self, epoch, batches_done, now):
        """Whether a budget's plan (that records how far it may grow) would end training in
        under GROW_BELOW of the time left at this process's recent pace (GROW_UNTIL)."""
        if (self.deadline is None or "max_epochs" not in self.layout or self.grown_out
                or self.deadline - now < GROW_UNTIL * self.layout["train_deadline_s"]):
            return False
        pace = self.pace(now)  # (the steps left, and the ends of the epochs before the last)
        return pace is not None and (
            self.steps_left(epoch, batches_done) * pace
            + (self.epochs - epoch - 1) * self.layout["epoch_end_s"]
            < GROW_BELOW * (self.deadline - now))

    def fill_the_time(self, steps_done, epoch, batches_done, pace, seconds_left,
                      average_start):
        """Ahead of the plan: grow its rest to fill GROW_TO of `seconds_left` at `pace`
        (the epoch in progress to its end, then epochs as `plan` fits them), up to --epochs;
        returns refit's line, or None when it stands."""
        per_epoch, end_s = self.layout["batches_per_epoch"], self.layout["epoch_end_s"]
        room = GROW_TO * seconds_left
        this_epoch = per_epoch - batches_done
        if not pace or room <= this_epoch * pace:
            fit = math.floor(room / pace) if pace else 0
        else:
            whole, spare = divmod(room - this_epoch * pace, end_s + per_epoch * pace)
            whole = min(int(whole), self.layout["max_epochs"] - epoch - 1)
            extra = math.floor((spare - end_s) / pace) if spare > end_s else 0
            extra = extra if extra >= per_epoch // 10 and \
                epoch + 1 + whole < self.layout["max_epochs"] else 0
            fit = this_epoch + whole * per_epoch + extra
        if fit <= self.steps_left(epoch, batches_done):
            self.grown_out = True  # (--epochs reached: no sync point asks again)
            return None
        return self.refit(steps_done, epoch, batches_done, fit, average_start,
                          f"ahead of the plan (a step takes {1000 * pace:.1f} ms, "
                          f"{1000 * self.layout['step_s']:.1f} ms planned)")

    def budget_used(self, now):
        """The share of the budget that has passed by `now` (its clock: start_the_clock)."""
        return (now - self.deadline + self.layout["train_deadline_s"]) / self.layout["budget_s"]
