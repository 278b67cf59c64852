"""epoch.py: what surrounds the training step within one epoch (trainer.Trainer.train_epoch
runs the step itself): the epoch's windows and where it ends, its running sums, the
progress bar, and the sync points at which the processes of a run read the loss, check it
for divergence and act on the requests any of them made (a stop, a passed deadline, a due
mid-epoch save, a budget falling behind its plan or well ahead of it); and Position, where
an interrupted epoch stands, which a training state keeps.
"""

import itertools
import time
from dataclasses import dataclass
from functools import partial

import torch

from data import sample_seq_len, windows
from distributed import Report, SyncPoints
from model import map_hidden
from util import ppl, progress_bar

MIN_WINDOW = 2  # like the reference code, an epoch leaves out a last window of one target


@dataclass
class Position:
    """Where an interrupted epoch stands, for a state to continue from: the next window's
    row, the batches done, the loss sum and tokens of all processes as of the last sync
    point, the training seconds, and the whole batch's hidden state (float32)."""
    hidden: object
    index: int = 0
    batches: int = 0
    loss_sum: float = 0.0
    tokens: int = 0
    seconds: float = 0.0


class EpochSums:
    """An epoch's running sums as it trains: this process's own loss sum (on the device: no
    sync per step) and tokens, those of all processes as agreed at the last sync point, and
    those at the last divergence check. The main process's own sums start with the epoch's
    before a resume, so that adding up the processes counts them once."""

    def __init__(self, position, group, device):
        self.loss_sum, self.tokens = position.loss_sum, position.tokens  # (all processes')
        self.own_loss_sum = torch.tensor(self.loss_sum if group.main else 0.0,
                                         dtype=torch.float64, device=device)
        self.own_tokens = self.tokens if group.main else 0
        self.batches = position.batches
        self.started = time.time() - position.seconds
        self.checked = (self.loss_sum, self.tokens, self.batches)

    def add(self, loss, tokens):
        self.own_loss_sum += loss.double() * tokens
        self.own_tokens += tokens
        self.batches += 1

    def agreed(self, report):
        """Take the sums that the processes agreed on; returns the mean loss since the last
        check (and the batches it spans), which becomes the next check's start."""
        self.loss_sum, self.tokens = report.loss_sum, report.tokens
        checked_sum, checked_tokens, checked_batches = self.checked
        self.checked = (self.loss_sum, self.tokens, self.batches)
        return (self.loss_sum - checked_sum) / (self.tokens - checked_tokens), checked_batches

    def position(self, row, hidden, group):
        return Position(index=row, batches=self.batches, loss_sum=self.loss_sum,
                        tokens=self.tokens, seconds=time.time() - self.started,
                        hidden=map_hidden(lambda h: group.gather_columns(h.detach().float()),
                                          hidden))


class EpochLoop:
    """What surrounds the step within an epoch: its windows and where it ends (the data's
    end, --max-batches, the plan), the progress bar, and at sync points the loss check,
    the progress shown and the requests that any process made (a stop, a passed deadline,
    a due save, a budget behind or ahead of its plan). A context manager: the bar closes,
    and the plan's pace stops counting time until the next epoch."""

    def __init__(self, trainer, sums, stop, max_batches, log_interval, on_progress, save_every):
        self.trainer, self.sums, self.stop = trainer, sums, stop
        self.max_batches, self.on_progress = max_batches, on_progress
        self.save_every, self.last_save = save_every, time.time()
        self.syncs = SyncPoints(trainer.group, sums.batches, log_interval)
        self.stopping = False  # a stop ended the epoch

    def windows(self, row):
        """The epoch's (row, inputs, targets) from `row` on, as many as it has left."""
        t, s = self.trainer, self.trainer.s
        seq_len = partial(sample_seq_len, t.rng, s["bptt"]) if s["variable_bptt"] else s["bptt"]
        if t.plan is not None:  # (a budget's last epoch may be shorter; re-fits shorten it)
            self.max_batches = t.plan.epoch_batches(t.epoch)
        left = None if self.max_batches is None else max(self.max_batches - self.sums.batches, 0)
        self.bar = progress_bar(total=t.steps_per_epoch(self.max_batches),
                                initial=self.sums.batches, unit="batch",
                                desc=f"epoch {t.epoch + 1}" if t.group.main else None)
        return itertools.islice(windows(t.train_data, seq_len, start=row, min_len=MIN_WINDOW),
                                left)

    def __enter__(self):
        if self.trainer.plan is not None:  # (the pace counts training time only)
            self.trainer.plan.resume(time.time())
        return self

    def __exit__(self, *exc):
        self.bar.close()
        if self.trainer.plan is not None:
            self.trainer.plan.pause(time.time())

    def ends_here(self, row, hidden, lr):
        """After each step (the next window at `row`, the schedule's `lr`): whether the
        epoch ends here. Requests take effect at the sync point that sees them."""
        t, sums, plan = self.trainer, self.sums, self.trainer.plan
        self.bar.update(1)
        if plan is not None:
            self.max_batches = plan.epoch_batches(t.epoch)
        at_end = t.train_data.size(0) - 1 - row < MIN_WINDOW or sums.batches == self.max_batches
        now = time.time()
        if plan is not None:
            plan.batch_ended(now)
        report = Report(sums.own_loss_sum, sums.own_tokens, stop=self.stop.requested,
                        late=plan is not None and plan.late(now),
                        save_due=self.save_every is not None and
                        now - self.last_save >= self.save_every,
                        behind=plan is not None and plan.behind(t.steps, t.epoch, sums.batches,
                                                                now),
                        ahead=plan is not None and plan.ahead(t.steps, t.epoch, sums.batches,
                                                              now))
        if not self.syncs.due(sums.batches, at_end, report):
            return False
        agreed = self.sync(report, lr)
        if agreed.behind:
            t.keep_to_the_deadline(sums.batches, agreed)
            at_end = at_end or sums.batches >= plan.epoch_batches(t.epoch)
        elif agreed.ahead:  # (one process behind outweighs any number ahead)
            t.fill_the_time(sums.batches, agreed)
        if agreed.late:
            t.out_of_time = at_end = True  # a budget: end the epoch here
        self.stopping = agreed.stop
        if agreed.stop or at_end:  # (at_end: also where a re-fitted plan ends it)
            return True
        if agreed.save_due:  # (the end of the epoch saves the state anyway)
            t.position = sums.position(row, hidden, t.group)
            t.save_state()
            self.last_save = time.time()
        return False

    def sync(self, report, lr):
        """A sync point: the processes agree (on the pace and the seconds left before a
        deadline too, which a re-fit reads); the mean loss since the last check is checked
        for divergence; the progress is shown, with the schedule's `lr`."""
        t, sums, now = self.trainer, self.sums, time.time()
        if t.plan is not None:
            report.seconds_left = t.plan.seconds_left(now)
            report.pace = t.plan.pace(now) or 0.0
        agreed = self.syncs.agree(report, sums.batches)
        recent, since = sums.agreed(agreed)
        if t.diverged(recent):
            raise t.divergence(f"the mean training loss of batches {since + 1}-{sums.batches}",
                               recent)
        mean_loss = sums.loss_sum / sums.tokens
        tokens_per_s = sums.tokens / max(time.time() - sums.started, 1e-9)
        self.bar.set_postfix(loss=f"{mean_loss:.3f}", ppl=f"{ppl(mean_loss):.1f}", lr=f"{lr:g}",
                             tok_s=f"{tokens_per_s:,.0f}")
        if self.on_progress is not None:
            self.on_progress(t.steps, mean_loss, lr, tokens_per_s)
        return agreed
