"""trainer.py: one training run: the step (the model's loss plus AR/TAR, backward, clipping,
an optimizer step at the schedule's lr), the epoch that runs it window after window (its
running sums, progress bar, sync points and mid-epoch saves), the end of an epoch
(validation, the best checkpoint, the schedule's decision), and the run's whole state
(Trainer.state_dict, which a training state saves and load_state_dict continues exactly).

train.py builds a Trainer from the run's settings and calls train_epoch and end_epoch for
each epoch until the run is finished. Under torchrun every process holds a Trainer of its
own columns of the batch (distributed.Group); what one process may learn first (a stop,
a budget's time running out, a due save) they decide together at sync points
(distributed.SyncPoints).
"""

import copy
import itertools
import math
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

import checkpoint
from data import batchify, mean_nll, mean_seq_len, sample_seq_len, windows
from distributed import SINGLE, Report, SyncPoints
from lstm_layer import pack_lstm_weights
from model import build_model, count_parameters, detach_hidden, map_hidden, model_config
from optim import RunningAverage, make_optimizer
from progress import Progress
from runfiles import RunFiles
from schedule import FINETUNE_DONE, START_AVERAGING, make_schedule
from util import listing, plural, ppl, progress_bar

DIVERGED = 10.0  # nats above a uniform guess at which a run counts as diverged
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


def train_step(objective, optimizer, inputs, targets, hidden, clip, precision):
    """One truncated-BPTT step: forward from `hidden` (detached here) through `objective`
    (an Objective, or its DDP wrapper), backward, gradients clipped to total norm `clip`,
    an optimizer step at the lr its param groups hold (the schedule's). With precision
    "bf16" the forward runs under bfloat16 autocast; weights, gradients and the optimizer
    stay float32. Returns the cross-entropy (a tensor, so the caller decides when to
    synchronise) and the new hidden state."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, penalty, hidden = objective(inputs, detach_hidden(hidden), targets)
    optimizer.zero_grad(set_to_none=True)
    (loss + penalty).backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), clip)
    optimizer.step()
    return loss.detach(), hidden



# --- Where an epoch stands ----------------------------------------------------------------

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


# --- The run ------------------------------------------------------------------------------

class Trainer:
    """One training run: model, optimizer, schedule, weight average, progress, and the
    bookkeeping that a training state saves and restores. `settings` is the run's full
    settings dict, which the Trainer reads and never writes; under torchrun, `group` is
    the processes that share the run."""

    def __init__(self, settings, corpus, device, weights=None, group=SINGLE):
        self.s = s = settings
        self.corpus, self.device, self.group = corpus, device, group
        self.files = RunFiles(s["save"])
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
        self.schedule = make_schedule(s, self.optimizer)  # the one writer of the lr
        self.rng = np.random.default_rng(s["seed"])  # variable BPTT lengths
        # (steps, batch) or, under torchrun, this process's columns of it
        self.train_data = batchify(corpus.train, s["batch_size"])[
            :, group.columns(s["batch_size"])].contiguous().to(device)
        self.max_batches = s["max_batches"]  # a cap on each epoch's batches, or None
        self.progress = Progress(s["epochs"], self.train_data.size(0) - MIN_WINDOW,
                                 self.max_batches,
                                 budget_s=s["budget_minutes"] and 60 * s["budget_minutes"])
        self.averaged = RunningAverage(self.model) if s["finetune"] else None
        self.epoch = 0  # epochs completed
        self.position = None  # where an interrupted epoch stopped (Position)
        self.valid_history = []  # validation losses of completed epochs
        self.best_valid_loss = math.inf
        self.metrics = []  # one row per completed epoch (runlog.FIELDS)
        self.steps = 0  # training batches of the whole run
        self.done = False  # fine-tuning ended at its trigger, or a budget's time ran out
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
    def finished(self):
        """Whether the run has trained all it will: its epochs, or its budget's time, or
        fine-tuning to its trigger."""
        return (self.done or self.epoch >= self.progress.epochs
                or (self.progress.spent and self.position is None))

    def steps_per_epoch(self):
        """Training steps of one full epoch (an estimate under variable BPTT), at most
        --max-batches."""
        mean_len = mean_seq_len(self.s["bptt"]) if self.s["variable_bptt"] else self.s["bptt"]
        expected = math.ceil((self.train_data.size(0) - MIN_WINDOW) / mean_len)
        return min(expected, self.max_batches) if self.max_batches else expected

    def seconds_trained(self):
        """Wall time of the run so far: training and validation of every epoch and the part
        of an unfinished one (not the time a stopped run waited for its resume)."""
        done = self.metrics[-1].get("elapsed_s", 0.0) if self.metrics else 0.0
        return done + (self.position.seconds if self.position is not None else 0.0)

    # Training ------------------------------------------------------------------------------

    def train_epoch(self, stop, log_interval, on_progress=None, save_every=None):
        """One pass over the training split (or what is left of an interrupted one), at most
        --max-batches, ending early where a budget's time runs out. At sync points the mean
        loss so far is passed to `on_progress(step, loss, lr, tokens_per_s)`; every
        `save_every` seconds (if given) the state is saved mid-epoch, to resume from exactly
        like an end-of-epoch state. Returns the mean training loss, or None when stopped by
        a signal (`stop`), also at the epoch's end, so that the state is saved before any
        validation."""
        s, group = self.s, self.group
        self.model.train()
        if self.position is None:
            self.position = Position(hidden=self.model.init_hidden(self.train_data.size(1)))
        hidden, row = self.position.hidden, self.position.index
        sums = EpochSums(self.position, group, self.device)
        syncs = SyncPoints(group, sums.batches, log_interval)
        seq_len = partial(sample_seq_len, self.rng, s["bptt"]) if s["variable_bptt"] else s["bptt"]
        left = None if self.max_batches is None else max(self.max_batches - sums.batches, 0)
        if self.progress.spent:  # (a resume of a state saved as the budget's time ran out)
            left = 0
        batches = itertools.islice(
            windows(self.train_data, seq_len, start=row, min_len=MIN_WINDOW), left)
        bar = progress_bar(total=self.steps_per_epoch(), initial=sums.batches, unit="batch",
                           desc=f"epoch {self.epoch + 1}" if group.main else None)
        last_save, stopping = time.time(), False
        self.progress.run(time.time())  # a budget's clock runs while the epoch trains
        try:
            for row, inputs, targets in batches:
                progress = self.progress.at(self.epoch, row + inputs.size(0), sums.batches + 1)
                lr = self.schedule.lr(inputs.size(0), progress)
                loss, hidden = train_step(self.objective, self.optimizer, inputs, targets,
                                          hidden, s["clip"], s["precision"])
                self.after_step(progress)
                sums.add(loss, targets.numel())
                row += inputs.size(0)
                bar.update(1)
                # What ends the epoch here, and what any process may ask for.
                at_end = (self.train_data.size(0) - 1 - row < MIN_WINDOW
                          or sums.batches == self.max_batches)
                now = time.time()
                report = Report(sums.own_loss_sum, sums.own_tokens, stop=stop.requested,
                                late=self.progress.late(now),
                                save_due=save_every is not None and now - last_save >= save_every)
                if not syncs.due(sums.batches, at_end, report):
                    continue
                agreed = self.sync_point(syncs, report, sums, bar, lr, on_progress)
                stopping = agreed.stop
                if stopping or at_end or self.progress.spent:
                    break
                if agreed.save_due:  # (the end of the epoch saves the state anyway)
                    self.position = sums.position(row, hidden, group)
                    self.save_state()
                    last_save = time.time()
        finally:
            bar.close()
            self.progress.pause(time.time())
        self.position = sums.position(row, hidden, group)
        if stopping:  # (at the end of the epoch too: saved before its validation, which a
            return None  # resume then runs)
        return self.position.loss_sum / self.position.tokens

    def sync_point(self, syncs, report, sums, bar, lr, on_progress):
        """The processes agree on the epoch's sums, on a budget's share of time passed and
        on what any of them asked for; the mean loss since the last sync point is checked
        for divergence, and the loss so far is shown with the schedule's `lr`."""
        report.progress = self.progress.own_share(time.time())
        agreed = syncs.agree(report, sums.batches)
        self.progress.agree(agreed.progress, agreed.late)
        recent, since = sums.agreed(agreed)
        if self.diverged(recent):
            raise self.divergence(f"the mean training loss of batches {since + 1}-{sums.batches}",
                                  recent)
        mean_loss = sums.loss_sum / sums.tokens
        tokens_per_s = sums.tokens / max(time.time() - sums.started, 1e-9)
        bar.set_postfix(loss=f"{mean_loss:.3f}", ppl=f"{ppl(mean_loss):.1f}", lr=f"{lr:g}",
                        tok_s=f"{tokens_per_s:,.0f}")
        if on_progress is not None:
            on_progress(self.steps, mean_loss, lr, tokens_per_s)
        return agreed

    def after_step(self, progress):
        """The weight average's update after every training step, started first where the
        schedule averages from a share of the run (NT-ASGD may have started it)."""
        average_from = self.schedule.average_from
        if self.averaged is None and average_from is not None and progress >= average_from:
            self.averaged = RunningAverage(self.model)
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        self.steps += 1

    def diverged(self, loss):
        """A mean loss that shows the run blew up: not finite, or DIVERGED nats above that of
        a uniform guess over the vocabulary (ln V, where a fresh run starts): a perplexity
        e^10 = 22,000 times the vocabulary's size, which no run that learns comes near."""
        return not math.isfinite(loss) or loss > math.log(len(self.corpus.dictionary)) + DIVERGED

    def files_on_disk(self):
        """Those of the run's checkpoints that exist (and, when fine-tuning, the model it
        started from)."""
        return self.files.on_disk(self.files.model, self.files.state, self.s["finetune"])

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

    def measure_start(self):
        """Fine-tuning: the validation loss of the starting weights, which an epoch must beat
        to be saved (so <stem>-finetune.pt is never worse than the model it came from)."""
        self.best_valid_loss = mean_nll(self.eval_model, self.corpus.valid,
                                        self.s["eval_batch_size"], self.s["bptt"],
                                        progress="validating the start", group=self.group)
        return self.best_valid_loss

    def end_epoch(self, train_loss):
        """Validate, save the best model, apply the schedule's decision; returns the epoch's
        metrics row, whose saved, switched and out_of_time fields say what happened (and
        its event, in words). A budget whose time ran out during the epoch, or during its
        validation (every process agrees), ends the run here."""
        s = self.s
        seconds, validation_started = self.position.seconds, time.time()
        progress = self.progress.at(self.epoch, self.position.index, self.position.batches)
        epoch_lr = self.schedule.current(progress)
        valid_loss = mean_nll(self.eval_model, self.corpus.valid, s["eval_batch_size"],
                              s["bptt"], progress="validating", group=self.group)
        if self.diverged(valid_loss):
            raise self.divergence("the validation loss", valid_loss)
        mode = "ASGD" if self.averaged is not None else "SGD"
        saved = valid_loss < self.best_valid_loss
        if saved:
            self.best_valid_loss = valid_loss
            if self.group.main:
                checkpoint.save(self.files.model, self.model_checkpoint(valid_loss))
        decision = self.schedule.after_validation(self.valid_history, valid_loss, saved,
                                                  averaging=self.averaged is not None)
        if decision == START_AVERAGING:
            self.averaged = RunningAverage(self.model)  # averages the iterates from here on
        out_of_time = self.progress.clock is not None and (
            self.progress.spent or self.group.any(self.progress.late(time.time())))
        self.done = self.done or decision == FINETUNE_DONE or out_of_time
        event = "; ".join(word for word in ("out of time" if out_of_time else "",
                                            decision or ("saved" if saved else "")) if word)
        self.valid_history.append(valid_loss)
        elapsed = self.seconds_trained() + (time.time() - validation_started)
        yes = {True: "yes", False: ""}
        row = dict(epoch=self.epoch + 1, seconds=round(seconds, 2),
                   tokens_per_s=round(self.position.tokens / max(seconds, 1e-9)),
                   train_loss=round(train_loss, 5), train_ppl=round(ppl(train_loss), 3),
                   valid_loss=round(valid_loss, 5), valid_ppl=round(ppl(valid_loss), 3),
                   lr=epoch_lr, mode=mode, event=event, elapsed_s=round(elapsed, 2),
                   resumed=yes[self.resumed], saved=yes[saved],
                   switched=yes[decision == START_AVERAGING], out_of_time=yes[out_of_time],
                   progress=round(progress, 4))
        self.metrics.append(row)
        self.epoch += 1
        self.position = None
        self.resumed = False
        return row

    # The training state ----------------------------------------------------------------------

    def state_dict(self):
        """The run's whole state as plain data, the contents of a checkpoint of kind
        "state" (under torchrun every process must call this together: each one's random
        state goes into it)."""
        return dict(
            model=self.model.state_dict(),
            averaged=self.averaged.state_dict() if self.averaged is not None else None,
            optimizer=self.optimizer.state_dict(), **self.schedule.state_dict(),  # lr, scheduler
            epoch=self.epoch,
            position=vars(self.position).copy() if self.position is not None else None,
            valid_history=self.valid_history, best_valid_loss=self.best_valid_loss,
            metrics=self.metrics, steps=self.steps, done=self.done,
            progress=self.progress.state_dict(),
            rng=self.group.random_states(self.device, self.rng))

    def load_state_dict(self, state):
        """Continue from a training state (state_dict's, as a checkpoint holds it) exactly
        when as many processes run as saved it; returns how many did. A resume that asks
        for other --epochs spreads the rest of the run's progress over them."""
        self.model.load_state_dict(state["model"])
        if state["averaged"] is not None:
            self.averaged = RunningAverage(self.model)
            self.averaged.load_state_dict(state["averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(dict(lr=state["lr"], scheduler=state.get("scheduler")))
        self.epoch, self.valid_history = state["epoch"], state["valid_history"]
        self.best_valid_loss, self.metrics, self.done = (state["best_valid_loss"],
                                                         state["metrics"], state["done"])
        self.steps = state.get("steps", 0)  # (states written before these existed lack them)
        self.provenance = list(state.get("provenance", []))
        self.resumed = True
        if state["position"] is not None:  # the whole batch's state: this process's columns
            columns = self.group.columns(self.s["batch_size"])
            self.position = Position(**state["position"])
            self.position.hidden = map_hidden(lambda h: h[:, columns].contiguous().to(self.device),
                                              self.position.hidden)
        where = ((self.position.index, self.position.batches) if self.position is not None
                 else (0, 0))
        if state.get("progress") is not None:
            self.progress.load_state_dict(state["progress"])
        elif state.get("plan") is not None:  # (a state written before progress.py)
            self.progress.read_plan(state["plan"], self.steps,
                                    self.progress.epochs_done(self.epoch, *where),
                                    self.seconds_trained())
        self.progress.set_epochs(self.s["epochs"], self.epoch, *where)
        return self.group.restore_random_states(state["rng"], self.device, self.rng)

    def pack(self, kind, **contents):
        return checkpoint.pack(kind, self.model.config, self.corpus.dictionary.idx2word, self.s,
                               provenance=list(self.provenance), **contents)

    def model_checkpoint(self, valid_loss):
        return self.pack("model", model=self.eval_model.state_dict(), epoch=self.epoch + 1,
                         valid_loss=valid_loss, valid_ppl=ppl(valid_loss))

    def save_state(self, path=None):
        """Write the training state to `path`, by default the run's state file; the main
        process writes, but under torchrun every process must call this together."""
        state = self.pack("state", **self.state_dict())
        if self.group.main:
            checkpoint.save(path or self.files.state, state)

    def load_state(self, state):
        """Continue from a training state; on another number of processes than saved it,
        say so and draw new dropout masks."""
        saved_by = self.load_state_dict(state)
        if saved_by != self.group.size:
            print(f"note: the state was saved by {plural(saved_by, 'process')} and this "
                  f"run has {self.group.size}: training continues from the same weights and "
                  "place, but dropout draws other masks than the saved run would have")
            torch.manual_seed(self.s["seed"] + self.steps + self.group.rank)

    def spare_copy(self):
        """A throwaway copy of the model (its LSTM weights packed for cuDNN, as the trained
        one's are), a fresh optimizer for it at --lr, and its training step,
        `step(inputs, targets, hidden) -> (loss, hidden)` (through its objective, wrapped as
        under torchrun): what progress.measure_reserve steps and times, leaving the run
        untouched."""
        model = pack_lstm_weights(copy.deepcopy(self.model)).train()
        objective = self.group.wrap(Objective(model, self.s["alpha"], self.s["beta"]),
                                    find_unused_parameters=model.adaptive)
        optimizer = make_optimizer(self.s, model.parameters())

        def step(inputs, targets, hidden):
            return train_step(objective, optimizer, inputs, targets, hidden, self.s["clip"],
                              self.s["precision"])

        return model, optimizer, step

    @property
    def n_parameters(self):
        return count_parameters(self.model)
