"""trainer.py: one training run: the step (the model's loss plus AR/TAR, backward, clipping,
an optimizer step), the epoch loop around it, and the end of an epoch (validation, the best
checkpoint, the schedule's decisions).

train.py builds a Trainer from the run's settings and calls train_epoch and end_epoch for
each epoch; checkpoint.py saves and restores its state. Under torchrun every process holds
a Trainer of its own columns of the batch (devices.Group); what one process may learn first
(a stop, a passed deadline, a due save) they decide together at sync points.
"""

import bisect
import copy
import itertools
import math
import os
import time
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

import budget
import checkpoint
from checkpoint import Position
from data import batchify, mean_nll, mean_seq_len, sample_seq_len, windows
from devices import SINGLE
from model import (build_model, count_parameters, detach_hidden, map_hidden, model_config,
                   pack_lstm_weights)
from optim import (AVERAGING, RunningAverage, make_optimizer, make_scheduler,
                   should_start_averaging)
from util import listing, plural, ppl, progress_bar

DIVERGED = 10.0  # nats above a uniform guess at which a run counts as diverged
SYNC_SECONDS = 5.0  # sync points come at least this often (and every --log-interval batches)
# Keeping to a budget's deadline: the pace is measured over the latest batches that span a
# tenth of the time left (long enough early on that the first windows of a run, slower
# while new shapes warm up, cannot shorten a plan by themselves; short near the end, where
# a slowdown must be seen at once), and a re-fitted plan fills 95% of the time left.
PACE_WINDOW, REFIT_SHARE = 0.1, 0.95
MIN_WINDOW = 2  # like the reference code, an epoch leaves out a last window of one target


class TrainingError(RuntimeError):
    """Training cannot go on (it diverged)."""


# --- One step -----------------------------------------------------------------------------

class Objective(torch.nn.Module):
    """What a training step minimises, as one module: the model's mean cross-entropy on the
    targets, and AR/TAR (weights `alpha`, `beta`): AR = alpha * mean(h^2) of the dropped
    last layer, TAR = beta * mean((h_t+1 - h_t)^2) of the undropped one, in float32. Under
    torchrun it is this module that DistributedDataParallel wraps: DDP follows only what
    its forward computes, and an adaptive softmax scores the targets outside the model's."""

    def __init__(self, model, alpha, beta):
        super().__init__()
        self.model, self.alpha, self.beta = model, alpha, beta

    def forward(self, inputs, hidden, targets):
        """(cross-entropy, AR/TAR penalty, new hidden state)"""
        out = self.model(inputs, hidden)
        penalty = 0.0
        if self.alpha:
            penalty = penalty + self.alpha * out.dropped_output.float().pow(2).mean()
        raw = out.raw_output.float()
        if self.beta and raw.size(0) > 1:
            penalty = penalty + self.beta * (raw[1:] - raw[:-1]).pow(2).mean()
        return self.model.loss(out, targets), penalty, out.hidden


def train_step(objective, optimizer, inputs, targets, hidden, lr, clip, precision):
    """One truncated-BPTT step: forward from `hidden` (detached here) through `objective`
    (an Objective, or its DDP wrapper), backward, gradients clipped to total norm `clip`,
    an optimizer step at `lr`. With precision "bf16" the forward runs under bfloat16
    autocast; weights, gradients and the optimizer stay float32. Returns the cross-entropy
    (a tensor, so the caller decides when to synchronise) and the new hidden state."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, penalty, hidden = objective(inputs, detach_hidden(hidden), targets)
    optimizer.zero_grad(set_to_none=True)
    (loss + penalty).backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), clip)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return loss.detach(), hidden


# --- Where an epoch stands ----------------------------------------------------------------

def recent_pace(batch_ends, at_least):
    """Seconds per batch over the latest of `batch_ends` (when each batch ended, by the wall
    clock, so that the validations and writes between epochs count too) that span
    `at_least` seconds and two batches at least; None before the record spans that long."""
    start = bisect.bisect_right(batch_ends, batch_ends[-1] - at_least) - 1 if batch_ends else -1
    start = min(start, len(batch_ends) - 3)
    if start < 0:
        return None
    return (batch_ends[-1] - batch_ends[start]) / (len(batch_ends) - 1 - start)


class EpochSums:
    """An epoch's running sums as it trains: this process's loss sum (on the device: no
    sync per step) and tokens, those of all processes as of the last sync point, and those
    at the last divergence check. The main process's own sums start with the epoch's before
    a resume, so that adding up the processes counts them once."""

    def __init__(self, position, group, device):
        self.total, self.all_tokens = position.loss_sum, position.tokens
        self.loss_sum = torch.tensor(self.total if group.main else 0.0, dtype=torch.float64,
                                     device=device)
        self.tokens = self.all_tokens if group.main else 0
        self.batches = position.batches
        self.started = time.time() - position.seconds
        self.checked = (self.total, self.all_tokens, self.batches)
        self.synced_at = (time.time(), self.batches)  # the last sync point
        self.next_sync = self.batches + 1  # the first batch shows a loss at once
        self.pace = self.seconds_left = None  # as agreed at the last sync point

    def add(self, loss, tokens):
        self.loss_sum += loss.double() * tokens
        self.tokens += tokens
        self.batches += 1

    def position(self, row, hidden, group):
        return Position(index=row, batches=self.batches, loss_sum=self.total,
                        tokens=self.all_tokens, seconds=time.time() - self.started,
                        hidden=map_hidden(lambda h: group.gather_columns(h.detach().float()),
                                          hidden))


# --- The run ------------------------------------------------------------------------------

class Trainer:
    """One training run: model, optimizer, schedule, NT-ASGD average and the bookkeeping
    that a training state saves and restores. `settings` is the run's full settings dict;
    under torchrun, `group` is the processes that share the run (devices.Group)."""

    def __init__(self, settings, corpus, device, weights=None, group=SINGLE):
        self.s = s = settings
        self.corpus, self.device, self.group = corpus, device, group
        torch.manual_seed(s["seed"])
        self.model = build_model(model_config(s, len(corpus.dictionary)))
        if self.model.adaptive:  # the adaptive softmax wants words in frequency order
            self.model.order_words_by_frequency(
                torch.bincount(corpus.train, minlength=len(corpus.dictionary)))
        self.model.to(device)
        if weights is not None:  # fine-tuning starts from a trained model's weights
            self.model.load_state_dict(weights)
        if group.size > 1:  # the same weights everywhere, but each process its own dropout
            torch.manual_seed(s["seed"] + group.rank)
        # What a training step calls: join_processes wraps it in DDP under torchrun.
        self.objective = Objective(self.model, s["alpha"], s["beta"])
        self.optimizer = make_optimizer(s, self.model.parameters())
        self.plan = None  # budget.plan's schedule (a budget, onecycle or 1cycle)
        self.scheduler = None  # the per-step lr schedule of onecycle and 1cycle
        self.deadline = None  # time.time() by which training must stop (a budget)
        self.out_of_time = False
        self.replanned = False  # the plan was re-fitted during the epoch in progress
        self.batch_ends = []  # under a deadline, when each batch of this process ended
        self.rng = np.random.default_rng(s["seed"])  # variable BPTT lengths
        # (steps, batch) or, under torchrun, this process's columns of it
        self.train_data = batchify(corpus.train, s["batch_size"])[
            :, group.columns(s["batch_size"])].contiguous().to(device)
        self.averaged = RunningAverage(self.model) if s["finetune"] else None
        self.lr = s["lr"]
        self.epoch = 0  # epochs completed
        self.position = None  # where an interrupted epoch stopped (Position)
        self.valid_history = []  # validation losses of completed epochs
        self.best_valid_loss = math.inf
        self.metrics = []  # one row per completed epoch (runlog.FIELDS)
        self.steps = 0  # training batches of the whole run
        self.done = False  # fine-tuning ended at its trigger, or a budget ran out
        self.resumed = False  # restored from a state, until the next epoch ends
        self.provenance = []  # checkpoint.provenance_record's, of the start and each resume

    def join_processes(self):
        """Under torchrun, train through DistributedDataParallel, whose construction copies
        the main process's weights to every process: all of them must call this together,
        after a set-up that every one of them passed."""
        self.objective = self.group.wrap(self.objective,
                                         find_unused_parameters=self.model.adaptive)

    @property
    def eval_model(self):
        return self.averaged.module if self.averaged is not None else self.model

    @property
    def model_path(self):
        return self.s["save"]

    def steps_per_epoch(self, max_batches=None):
        """Training steps of one full epoch (an estimate under variable BPTT), at most
        `max_batches`."""
        mean_len = mean_seq_len(self.s["bptt"]) if self.s["variable_bptt"] else self.s["bptt"]
        expected = math.ceil((self.train_data.size(0) - MIN_WINDOW) / mean_len)
        return min(expected, max_batches) if max_batches else expected

    def set_plan(self, plan):
        """Fix the run's plan (budget.plan): epochs, steps per epoch, the averaging start,
        and the lr schedule over the planned steps (those first planned, when the plan was
        re-fitted since: budget.schedule_position)."""
        self.plan = plan
        self.scheduler = make_scheduler(self.s, self.optimizer,
                                        plan.get("schedule_steps", plan["total_steps"]))

    def fit_plan_to_epochs(self, epochs):
        """A resume that changes --epochs of a planned run: the rest of the plan re-fitted
        to end with epoch `epochs`, its lr schedule ending there. A budget's plan only
        shrinks (more epochs than it fitted would not fit)."""
        if self.plan.get("budget_s") is not None and epochs > self.plan["epochs"]:
            print(f"note: the budget's plan of {plural(self.plan['epochs'], 'epoch')} stands "
                  f"(a budget fits whole epochs up to --epochs when the run starts)")
            self.s["epochs"] = self.plan["epochs"]
        elif self.epoch < epochs != self.plan["epochs"]:
            batches = self.position.batches if self.position is not None else 0
            per_epoch = self.plan["batches_per_epoch"]
            steps = max(per_epoch - batches, 0) + (epochs - self.epoch - 1) * per_epoch
            self.refit_plan(steps, batches, f"--epochs {epochs} instead of the plan's "
                                            f"{self.plan['epochs']}")

    def refit_plan(self, steps, batches_done, why):
        """Re-fit the plan to `steps` more steps after `batches_done` of the epoch in
        progress (budget.reshape), the lr schedule going on from where it stands; says
        `why` on the main process."""
        self.plan = budget.reshape(self.plan, self.steps, self.epoch, batches_done, steps,
                                   self.s["average_start"])
        self.s["epochs"] = self.plan["epochs"]  # (the epoch loop ends there)
        self.replanned = True
        if self.group.main:
            tqdm.write(f"{why}: {plural(steps, 'step')} left, the plan now "
                       f"{budget.epochs_in_words(self.plan)}; the lr schedule's rest spreads "
                       "over them")

    @property
    def averages(self):
        """Whether the run's schedule averages the weights (a planned run from its planned
        step on, NT-ASGD maybe earlier)."""
        return self.s["schedule"] in AVERAGING

    def current_lr(self):
        return self.scheduler.get_last_lr()[0] if self.scheduler is not None else self.lr

    def measure_start(self):
        """Fine-tuning: the validation loss of the starting weights, which an epoch must beat
        to be saved (so <stem>-finetune.pt is never worse than the model it came from)."""
        self.best_valid_loss = mean_nll(self.eval_model, self.corpus.valid,
                                        self.s["eval_batch_size"], self.s["bptt"],
                                        progress="validating the start", group=self.group)
        return self.best_valid_loss

    # Training ------------------------------------------------------------------------------

    def train_epoch(self, stop, max_batches, log_interval, on_progress=None, save_every=None):
        """One pass over the training split (or what is left of an interrupted one). At
        sync points (`sync`: after the first batch, then every `log_interval` batches or
        SYNC_SECONDS, whichever comes first) the loss is read, checked and its mean so far
        passed to `on_progress(step, loss, lr, tokens_per_s)`. Every `save_every` seconds
        (if given) the state is saved mid-epoch, to resume from exactly like an end-of-epoch
        state. Returns the mean training loss, or None when stopped by a signal (`stop`),
        also at the epoch's end, so that the state is saved before any validation. A stop,
        a passed deadline, a due save and a budget run falling behind its plan (which
        re-fits the plan: keep_to_the_deadline) take effect after the batch that sees them
        on one process; under torchrun at the next sync point."""
        s, group, data = self.s, self.group, self.train_data
        self.model.train()
        if self.position is None:
            self.position = Position(hidden=self.model.init_hidden(data.size(1)))
        sums = EpochSums(self.position, group, self.device)
        hidden, row, last_save = self.position.hidden, self.position.index, time.time()
        seq_len = partial(sample_seq_len, self.rng, s["bptt"]) if s["variable_bptt"] else s["bptt"]
        if self.plan is not None:  # (a budget's last epoch may be shorter; re-fits shorten it)
            max_batches = budget.epoch_batches(self.plan, self.epoch)
        left = None if max_batches is None else max(max_batches - sums.batches, 0)
        at_end = stopping = False
        with progress_bar(total=self.steps_per_epoch(max_batches), initial=sums.batches,
                          desc=f"epoch {self.epoch + 1}" if group.main else None,
                          unit="batch") as bar:
            for row, inputs, targets in itertools.islice(
                    windows(data, seq_len, start=row, min_len=MIN_WINDOW), left):
                base_lr = self.current_lr()
                lr = base_lr * inputs.size(0) / s["bptt"]  # a short window takes a smaller step
                loss, hidden = train_step(self.objective, self.optimizer, inputs, targets,
                                          hidden, lr, s["clip"], s["precision"])
                self.after_step()
                sums.add(loss, targets.numel())
                row += inputs.size(0)
                bar.update(1)
                if self.plan is not None:
                    max_batches = budget.epoch_batches(self.plan, self.epoch)
                at_end = data.size(0) - 1 - row < MIN_WINDOW or sums.batches == max_batches
                now = time.time()
                if self.deadline is not None:
                    self.batch_ends.append(now)
                requests = (  # what this process alone may have seen: stop, late, save due,
                    stop.requested, self.deadline is not None and now >= self.deadline,
                    save_every is not None and now - last_save >= save_every,
                    self.behind(sums, now))  # behind the plan
                if sums.batches < sums.next_sync and not at_end and not (
                        group.size == 1 and any(requests)):
                    continue
                stopping, late, save_due, behind = self.sync(sums, requests, base_lr, bar,
                                                             on_progress, log_interval)
                if behind:
                    self.keep_to_the_deadline(sums)
                    at_end = at_end or sums.batches >= budget.epoch_batches(self.plan,
                                                                            self.epoch)
                if late:
                    self.out_of_time = at_end = True  # a budget: end the epoch here
                if stopping or at_end:  # (at_end: also where a re-fitted plan ends it)
                    break
                if save_due:  # (the end of the epoch saves the state anyway)
                    self.position = sums.position(row, hidden, group)
                    self.save_state()
                    last_save = time.time()
        self.position = sums.position(row, hidden, group)
        if stopping:  # (at the end of the epoch too: saved before its validation, which
            return None  # a resume then runs)
        return self.position.loss_sum / self.position.tokens

    def behind(self, sums, now):
        """Whether, at this process's recent pace (recent_pace: the ends of epochs within
        it included), the plan's steps left would run past the deadline."""
        if self.deadline is None:
            return False
        left = self.deadline - now
        pace = recent_pace(self.batch_ends, PACE_WINDOW * left)
        return pace is not None and budget.steps_left(self.plan, self.epoch,
                                                      sums.batches) * pace > left

    def keep_to_the_deadline(self, sums):
        """Behind the plan: re-fit its rest into REFIT_SHARE of the time left, at the pace
        and with the time left that the processes agreed on (the same plan on each)."""
        if not sums.pace:  # (no process has measured its pace yet)
            return
        planned = budget.steps_left(self.plan, self.epoch, sums.batches)
        fit = max(math.floor(REFIT_SHARE * sums.seconds_left / sums.pace), 0)
        if fit < planned:
            expected = self.plan.get("step_s")
            self.refit_plan(fit, sums.batches, f"behind the plan (a step takes "
                            f"{1000 * sums.pace:.1f} ms" + (f", {1000 * expected:.1f} ms "
                                                             "planned" if expected else "")
                            + ")")

    def after_step(self):
        """The schedule's step and the weight average's update, after every training step."""
        if self.scheduler is not None:  # (to the schedule's step this step has reached)
            reached = min(budget.schedule_position(self.plan, self.steps + 1),
                          self.scheduler.total_steps - 1)
            while self.scheduler.last_epoch < reached:
                self.scheduler.step()
        planned_average = (self.plan is not None and self.averages
                           and self.steps >= self.plan["average_from"])
        if self.averaged is None and planned_average:  # (NT-ASGD may have started it)
            self.averaged = RunningAverage(self.model)
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        self.steps += 1

    def sync(self, sums, requests, lr, bar, on_progress, log_interval):
        """A sync point, the loop's one wait for the device: under torchrun the processes
        add up their losses, tokens, seconds per batch and requests here, and agree on when
        the next comes: after `log_interval` batches, or sooner so that it comes within
        SYNC_SECONDS (a stop is honoured that soon whatever --log-interval says). Checks
        the mean loss since the last check for divergence, shows the progress (with the
        step's base `lr`), and returns the requests that any process made: (stop, late,
        save due, behind the plan). The processes also agree on the pace and the seconds
        left before the deadline (their means), which a re-fit of the plan reads."""
        (at, batches), now = sums.synced_at, time.time()
        step_s = (now - at) / max(sums.batches - batches, 1)
        seconds_left = self.deadline - now if self.deadline is not None else 0.0
        pace = recent_pace(self.batch_ends, PACE_WINDOW * seconds_left) or 0.0
        counts = torch.tensor([sums.tokens, step_s, pace, seconds_left, *requests],
                              dtype=torch.float64, device=self.device)
        totals = self.group.sum(torch.cat([sums.loss_sum.view(1), counts])).tolist()
        sums.total, sums.all_tokens = totals[0], round(totals[1])
        # The same numbers on every process:
        mean_step_s, sums.pace, sums.seconds_left = (t / self.group.size for t in totals[2:5])
        sums.synced_at = (now, sums.batches)
        sums.next_sync = sums.batches + max(1, min(log_interval,
                                                   int(SYNC_SECONDS / max(mean_step_s, 1e-9))))
        checked_sum, checked_tokens, checked_batches = sums.checked
        recent = (sums.total - checked_sum) / (sums.all_tokens - checked_tokens)
        if self.diverged(recent):
            raise self.divergence(f"the mean training loss of batches {checked_batches + 1}-"
                                  f"{sums.batches}", recent)
        sums.checked = (sums.total, sums.all_tokens, sums.batches)
        mean_loss = sums.total / sums.all_tokens
        tokens_per_s = sums.all_tokens / max(time.time() - sums.started, 1e-9)
        bar.set_postfix(loss=f"{mean_loss:.3f}", ppl=f"{ppl(mean_loss):.1f}", lr=f"{lr:g}",
                        tok_s=f"{tokens_per_s:,.0f}")
        if on_progress is not None:
            on_progress(self.steps, mean_loss, lr, tokens_per_s)
        return tuple(v > 0 for v in totals[5:])

    def diverged(self, loss):
        """A mean loss that shows the run blew up: not finite, or DIVERGED nats above that of
        a uniform guess over the vocabulary (ln V, where a fresh run starts): a perplexity
        e^10 = 22,000 times the vocabulary's size, which no run that learns comes near."""
        return not math.isfinite(loss) or loss > math.log(len(self.corpus.dictionary)) + DIVERGED

    def files_on_disk(self):
        """Those of the run's checkpoints that exist: the model, the training state and,
        when fine-tuning, the model it started from."""
        return [path for path in (self.model_path, checkpoint.state_path(self.model_path),
                                  self.s["finetune"]) if path and os.path.exists(path)]

    def divergence(self, what, loss):
        """The error that ends a diverged run, naming the files it leaves as they were."""
        kept = self.files_on_disk()
        return TrainingError(
            f"training diverged: {what} became {loss:.4g} in epoch {self.epoch + 1} (a uniform "
            f"guess over the vocabulary scores {math.log(len(self.corpus.dictionary)):.2f}); "
            "the run stopped without saving the diverged weights"
            + (f", and {listing(kept)} kept as before" if kept
               else "; it had written no checkpoint yet")
            + ". Try a lower --lr or --clip")

    def end_epoch(self, train_loss):
        """Validate, save the best model, apply the schedule's decisions; returns the
        epoch's metrics row, whose saved, switched and out_of_time fields say what happened
        (and its event, in words)."""
        s = self.s
        seconds, validation_started = self.position.seconds, time.time()
        epoch_lr = self.current_lr()  # (under onecycle: where the cycle stands at its end)
        valid_loss = mean_nll(self.eval_model, self.corpus.valid, s["eval_batch_size"],
                              s["bptt"], progress="validating", group=self.group)
        if self.diverged(valid_loss):
            raise self.divergence("the validation loss", valid_loss)
        mode = "ASGD" if self.averaged is not None else "SGD"
        saved = valid_loss < self.best_valid_loss
        if saved:
            self.best_valid_loss = valid_loss
            if self.group.main:
                checkpoint.save(self.model_path, self.model_checkpoint(valid_loss))
        trigger = should_start_averaging(self.valid_history, valid_loss, s["nonmono"])
        finetune_done = bool(s["finetune"]) and trigger
        switched = (not finetune_done and s["schedule"] == "ntasgd" and self.averaged is None
                    and trigger)
        lr_cut = not finetune_done and s["schedule"] == "anneal" and not saved
        if switched:
            self.averaged = RunningAverage(self.model)  # averages the iterates from here on
        if lr_cut:
            self.lr /= 4
        self.done = self.done or finetune_done or self.out_of_time
        event = ("fine-tuning done" if finetune_done else "switch to ASGD" if switched else
                 "lr / 4" if lr_cut else "saved" if saved else "")
        if self.replanned:
            event = "re-planned" + (f"; {event}" if event else "")
        if self.out_of_time:
            event = "out of time" + (f"; {event}" if event else "")
        self.valid_history.append(valid_loss)
        # Wall time of the run so far: training and validation of every epoch (not the
        # time a stopped run spent waiting for its resume).
        elapsed = (self.metrics[-1].get("elapsed_s", 0.0) if self.metrics else 0.0) + \
            seconds + time.time() - validation_started
        yes = {True: "yes", False: ""}
        row = dict(epoch=self.epoch + 1, seconds=round(seconds, 2),
                   tokens_per_s=round(self.position.tokens / max(seconds, 1e-9)),
                   train_loss=round(train_loss, 5), train_ppl=round(ppl(train_loss), 3),
                   valid_loss=round(valid_loss, 5), valid_ppl=round(ppl(valid_loss), 3),
                   lr=epoch_lr, mode=mode, event=event, elapsed_s=round(elapsed, 2),
                   resumed=yes[self.resumed], saved=yes[saved], switched=yes[switched],
                   out_of_time=yes[self.out_of_time])
        self.metrics.append(row)
        self.epoch += 1
        self.position = None
        self.resumed = self.replanned = False
        return row

    # The training state ----------------------------------------------------------------------

    def pack(self, kind, **contents):
        return checkpoint.pack(kind, self.model.config, self.corpus.dictionary.idx2word, self.s,
                               provenance=list(self.provenance), **contents)

    def model_checkpoint(self, valid_loss):
        return self.pack("model", model=self.eval_model.state_dict(), epoch=self.epoch + 1,
                         valid_loss=valid_loss, valid_ppl=ppl(valid_loss))

    def save_state(self, path=None):
        """Write the training state (checkpoint.training_state) to `path`, by default the
        run's state file; the main process writes, but under torchrun every process must call
        this together: each one's random state goes into it."""
        state = checkpoint.training_state(self)
        if self.group.main:
            checkpoint.save(path or checkpoint.state_path(self.model_path), state)

    def load_state(self, state):
        """Continue from a training state exactly (on as many processes as saved it)."""
        saved_by = checkpoint.restore(self, state)
        if saved_by != self.group.size:
            print(f"note: the state was saved by {plural(saved_by, 'process')} and this "
                  f"run has {self.group.size}: training continues from the same weights and "
                  "place, but dropout draws other masks than the saved run would have")
            torch.manual_seed(self.s["seed"] + self.steps + self.group.rank)

    def spare_copy(self):
        """A throwaway copy of the model (its LSTM weights packed for cuDNN, as the trained
        one's are), a fresh optimizer for it, and its training step, `step(inputs, targets,
        hidden) -> (loss, hidden)` (through its objective, wrapped as under torchrun, at
        the run's lr): what budget.measure times, leaving the run untouched."""
        model = pack_lstm_weights(copy.deepcopy(self.model)).train()
        objective = self.group.wrap(Objective(model, self.s["alpha"], self.s["beta"]),
                                    find_unused_parameters=model.adaptive)
        optimizer = make_optimizer(self.s, model.parameters())

        def step(inputs, targets, hidden):
            return train_step(objective, optimizer, inputs, targets, hidden, self.s["lr"],
                              self.s["clip"], self.s["precision"])

        return model, optimizer, step

    @property
    def n_parameters(self):
        return count_parameters(self.model)
