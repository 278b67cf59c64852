"""progress.py: how far a run is, as one number p in [0, 1], which every lr schedule reads
(schedule.py), and the time budget that keeps it by the clock.

A run of --epochs: p is the share of its epochs' training rows done, after the step the
schedule sets the lr for (every column of the batch moves through the same rows, so this
is the share of its training tokens). It is deterministic, so a resume continues it
exactly, and it reaches 1 at the last step of the last epoch, whatever the window lengths.

A run under --budget-minutes: p is also the share of its training time passed (Clock), and
the larger of the two counts, so that the run ends at whichever end it meets first. Before
its first step the run measures, once, what it must keep for after training
(measure_reserve): the final validation, the checkpoint writes, the test and a margin.

    progress = Progress(epochs=40, rows=1000)    # rows: an epoch's, of the batchified split
    progress.at(epoch=3, row=700, batches=20)   # 0.0925 = (3 + 700 / 1000) / 40
"""

import os
import time

import torch

from data import mean_nll, windows
from devices import synchronize
from util import remove_quietly, size_in_words, tensor_bytes

# What a budget keeps besides the measured end: 2% of it, at least 2 seconds, for what the
# measurements cannot see (the first kernels of a pass, jitter, writing the summary).
MARGIN_SHARE, MARGIN_MIN_S = 0.02, 2.0


class Clock:
    """A time budget's share of training time passed. The clock counts training seconds
    only: it runs while an epoch trains and stops around validation. The training time is
    what the budget leaves after set-up and the reserve, less what each validation takes
    as it comes; so the share is the training seconds so far over themselves plus the
    seconds left before the deadline, and it is 1 at the deadline.

    Under torchrun the processes' clocks differ by the moments each one reads them, and
    every process must set the same lr: the share that the schedule reads (`share`) is the
    one the processes agreed on at the last sync point (distributed.Report.progress), held
    until the next one. A process whose clock has passed the deadline asks for a sync point
    at once (`late`)."""

    def __init__(self, budget_s):
        self.budget_s = budget_s
        self.reserve_s = None  # seconds kept for after training (measure_reserve)
        self.used_s = 0.0  # wall seconds of the budget that earlier sessions of the run used
        self.trained_s = 0.0  # training seconds, until the stretch running now
        self.share = 0.0  # the share the processes last agreed on
        self.started = self.deadline = self.running_since = None

    def start(self, now, reserve_s=None):
        """Start this session of the run at `now` (time.time(), before its set-up): training
        must end by the deadline, which leaves the reserve (the one measured now, for a
        fresh run) to the budget's end. Returns the training seconds left."""
        if reserve_s is not None:
            self.reserve_s = reserve_s
        self.started = now
        self.deadline = now - self.used_s + self.budget_s - self.reserve_s
        return self.deadline - time.time()

    def run(self, now):
        self.running_since = now

    def pause(self, now):
        if self.running_since is not None:
            self.trained_s += now - self.running_since
        self.running_since = None

    def trained(self, now):
        running = now - self.running_since if self.running_since is not None else 0.0
        return self.trained_s + running

    def own_share(self, now):
        """This process's share of the training time passed, by its own clock."""
        trained, left = self.trained(now), max(self.deadline - now, 0.0)
        return trained / (trained + left) if trained + left > 0 else 1.0

    def late(self, now):
        return now >= self.deadline

    def agree(self, share, late):
        """The share the processes agreed on (1 when any of them is late); never less than
        before."""
        self.share = 1.0 if late else max(self.share, min(share, 1.0))

    def used(self, now):
        """Wall seconds of the budget used by `now`, earlier sessions' included."""
        return self.used_s + (now - self.started if self.started is not None else 0.0)

    def state_dict(self):
        now = time.time()
        return dict(budget_s=self.budget_s, reserve_s=self.reserve_s, used_s=self.used(now),
                    trained_s=self.trained(now), share=self.share)

    def load_state_dict(self, state):
        self.reserve_s, self.used_s = state["reserve_s"], state["used_s"]
        self.trained_s, self.share = state["trained_s"], state["share"]


class Progress:
    """p, as the run's schedule reads it (see the module's docstring). `epochs` is --epochs
    (a budget's upper limit), `rows` the training rows an epoch covers, `max_batches` a
    cap on an epoch's batches, `budget_s` the budget (None: none)."""

    def __init__(self, epochs, rows, max_batches=None, budget_s=None):
        self.epochs, self.rows, self.max_batches = epochs, rows, max_batches
        self.clock = Clock(budget_s) if budget_s else None
        # (p, epochs done) where the share of epochs starts: (0, 0), unless a resume
        # changed --epochs, which spreads the rest of p over the rest of the new epochs.
        self.start = (0.0, 0.0)

    def epochs_done(self, epoch, row, batches):
        """Epochs done, fractionally, once epoch `epoch` (0 for the first) has reached
        `row` after `batches` batches."""
        within = row / self.rows
        if self.max_batches:
            within = max(within, batches / self.max_batches)
        return epoch + min(within, 1.0)

    def at(self, epoch, row, batches):
        """p once epoch `epoch` has reached `row` after `batches` batches."""
        done = self.epochs_done(epoch, row, batches)
        start_p, start_done = self.start
        p = (1.0 if done >= self.epochs else
             start_p + (1 - start_p) * (done - start_done) / (self.epochs - start_done))
        return p if self.clock is None else max(p, self.clock.share)

    @property
    def spent(self):
        """Whether a budget's training time is over (as the processes agreed)."""
        return self.clock is not None and self.clock.share >= 1.0

    def set_epochs(self, epochs, epoch, row, batches):
        """A resume that asks for other --epochs: p goes on from where it stands, and its
        rest spreads over the epochs left, so that a schedule ends with the new last
        epoch."""
        if epochs != self.epochs:
            self.start = (self.at(epoch, row, batches), self.epochs_done(epoch, row, batches))
            self.epochs = epochs

    # The clock, for the trainer: it runs while an epoch trains (None without a budget).

    def run(self, now):
        if self.clock is not None:
            self.clock.run(now)

    def pause(self, now):
        if self.clock is not None:
            self.clock.pause(now)

    def own_share(self, now):
        return self.clock.own_share(now) if self.clock is not None else 0.0

    def late(self, now):
        return self.clock is not None and self.clock.late(now)

    def agree(self, share, late):
        if self.clock is not None:
            self.clock.agree(share, late)

    def training_left(self, now):
        """Under a budget, the seconds left before its training time is over (else None)."""
        return max(self.clock.deadline - now, 0.0) if self.clock is not None else None

    def state_dict(self):
        return dict(epochs=self.epochs, start=list(self.start),
                    clock=self.clock.state_dict() if self.clock is not None else None)

    def load_state_dict(self, state):
        self.epochs, self.start = state["epochs"], tuple(state["start"])
        if self.clock is not None and state["clock"] is not None:
            self.clock.load_state_dict(state["clock"])

    def read_plan(self, plan, steps, epochs_done, seconds):
        """A training state written before progress existed (at 2a9ab5e and earlier) holds
        the plan of a budget or a planned schedule instead: the share of its lr schedule
        reached after `steps` steps becomes p, spread over the plan's epochs (or, under a
        budget, its --epochs) from `epochs_done` on; a budget's clock goes on with
        the time its plan left after `seconds` (the run's wall seconds so far)."""
        total = plan.get("schedule_steps", plan["total_steps"])
        anchor = plan.get("schedule_anchor")  # (a re-fitted plan: the schedule's rest spread)
        position = steps if anchor is None else anchor[1] + (
            (steps - anchor[0]) * (total - anchor[1]) // max(plan["total_steps"] - anchor[0], 1))
        p = min(position / max(total, 1), 1.0)
        self.epochs = plan.get("max_epochs", plan["epochs"])
        self.start = (p, epochs_done)
        if self.clock is not None and plan.get("budget_s") is not None:
            self.clock.reserve_s = plan["budget_s"] - plan["train_deadline_s"]
            self.clock.used_s = seconds
            left = max(plan["train_deadline_s"] - seconds, 0.0)
            # the training seconds that make the clock's share p with that time left
            self.clock.trained_s = p * left / (1 - p) if p < 1 else 0.0
            self.clock.share = p


# --- A budget's reserve ---------------------------------------------------------------------

def measure_reserve(trainer):
    """What a budget keeps for after training, in seconds, and its parts: a validation pass,
    the test pass, an epoch's checkpoint writes (and the bytes they write) and the margin,
    measured on a copy of the trainer's model after a training step of its own (the model,
    optimizer and random state the run trains with are untouched). Under torchrun every
    process measures together (the passes talk to the others) and the main process's
    figures are returned to all."""
    s, device, group = trainer.s, trainer.device, trainer.group
    rng_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    model, optimizer, step = trainer.spare_copy()
    # One step, so that the copy's optimizer holds what the run's will (Adam's moments).
    _, inputs, targets = next(windows(trainer.train_data, s["bptt"]))
    step(inputs, targets, model.init_hidden(trainer.train_data.size(1)))

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
    margin_s = max(MARGIN_SHARE * 60 * s["budget_minutes"], MARGIN_MIN_S)
    parts = dict(valid_s=valid_s, test_s=test_s, save_s=save_s, save_bytes=save_bytes,
                 margin_s=margin_s)
    return group.broadcast(dict(parts, reserve_s=valid_s + test_s + save_s + margin_s))


def write_seconds(trainer, stepped_optimizer):
    """(seconds, bytes) of an epoch's checkpoint writes: the training state, and the model
    whenever validation improves. The disk's speed comes from a probe, the trainer's state
    as it is now (written, timed and removed); the bytes from what the run's state will
    hold: its optimizer's state after steps (that of `stepped_optimizer`: Adam keeps two
    moments per weight, which the run's own optimizer, not yet stepped, lacks) and the
    averaged weights of a run that will average."""
    probe = trainer.files.probe(os.getpid())
    started = time.perf_counter()
    try:
        trainer.save_state(probe)
        probe_bytes = os.path.getsize(probe) if trainer.group.main else 1
    finally:
        remove_quietly(probe)
    seconds = time.perf_counter() - started
    weights = tensor_bytes(trainer.model.state_dict())
    averages = trainer.schedule.averages and trainer.averaged is None
    state = (probe_bytes - tensor_bytes(trainer.optimizer.state_dict())
             + tensor_bytes(stepped_optimizer.state_dict()) + (weights if averages else 0))
    written = state + weights  # (the model file: its weights, and a small header)
    return seconds * written / probe_bytes, written


def describe_reserve(reserve):
    """"62.4 s (a validation 12.2 s, checkpoint writes 1.20 s of 193.9 MB, the test 40.2 s,
    a margin 36.0 s)": measure_reserve's figures in words."""
    return (f"{reserve['reserve_s']:.1f} s (a validation {reserve['valid_s']:.1f} s, "
            f"checkpoint writes {reserve['save_s']:.2f} s of "
            f"{size_in_words(reserve['save_bytes'])}, the test {reserve['test_s']:.1f} s, a "
            f"margin {reserve['margin_s']:.1f} s)")
