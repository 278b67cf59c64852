"""trainer.py: one training run's state and how it moves: the model, the optimizer, the
NT-ASGD average, where an epoch stands; training one epoch, ending it (validation, best
checkpoint, schedule), and saving and restoring all of it exactly.

train.py builds a Trainer from the run's settings and drives it epoch by epoch. Under
torchrun every process holds a Trainer of its own columns (distributed.Group); they
decide together what one of them may see first, and only the main process writes.
"""

import itertools
import math
import os
import signal
import time
from functools import partial

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

import checkpoint
from bptt import (Objective, evaluate, mean_seq_len, ppl, progress_bar, sample_seq_len,
                  train_step, windows)
from data import batchify
from distributed import SINGLE
from model import build_model, map_hidden, model_config, pack_lstm_weights
from runlog import plural

# Like the reference code, an epoch leaves out a last window of a single target.
MIN_WINDOW = 2
DIVERGED = 10.0  # nats above a uniform guess at which a run counts as diverged


class TrainingError(RuntimeError):
    """Training cannot go on (it diverged)."""


def should_start_averaging(history, valid_loss, nonmono):
    """NT-ASGD's trigger (the paper's Algorithm 1): with `history` the validation losses of
    the epochs before this one, fire when there are more than `nonmono` of them and this
    epoch's loss is worse than the best one from before the last `nonmono` epochs."""
    return len(history) > nonmono and valid_loss > min(history[:-nonmono])


class StopRequest:
    """Turns the first Ctrl-C or SIGTERM into a request to stop after the current batch
    (`when` says otherwise); a second Ctrl-C aborts at once."""

    def __init__(self, when="after the current batch"):
        self.requested = False
        self.when = when

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"stopping {self.when}; the training state will be saved "
                   "(Ctrl-C again aborts at once)")


AVERAGING = ("ntasgd", "onecycle")  # the schedules that average the weights

# Adam's weight decay is an L2 term (added to the gradient), AdamW's a decoupled decay.
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}

# Gugger and Howard's 1cycle for AWD-LSTM (sgugger/Adam-experiments, utils.get_phases):
# the lr climbs linearly from peak / 10 to the peak, holds, falls back to peak / 10 and
# anneals to 0 on a cosine, in phases of 7.5, 37.5, 37.5 and 7.5 of 90 epochs (here
# fractions of the planned steps); Adam's beta1 moves against the lr, from 0.8 at peak / 10
# to 0.7 at the peak; beta2 is 0.99.
ONE_CYCLE = dict(phases=(7.5, 37.5, 37.5, 7.5), div=10.0, beta1=(0.8, 0.7), beta2=0.99)


def make_optimizer(settings, parameters):
    """torch.optim's SGD, Adam or AdamW at the run's lr and weight decay (Adam's betas
    those of the 1cycle schedule when it runs one)."""
    kind = OPTIMIZERS[settings.get("optimizer", "sgd")]
    extra = {}
    if kind is not torch.optim.SGD and settings.get("schedule") == "1cycle":
        extra["betas"] = (ONE_CYCLE["beta1"][0], ONE_CYCLE["beta2"])
    return kind(parameters, lr=settings["lr"], weight_decay=settings["wdecay"], **extra)


def one_cycle_ends(total_steps):
    """The steps at which the four phases of a 1cycle over `total_steps` end."""
    phases = ONE_CYCLE["phases"]
    return [total_steps * sum(phases[:i + 1]) / sum(phases) for i in range(4)]


def one_cycle_factor(step, total_steps):
    """The 1cycle lr at `step` of `total_steps`, as a fraction of the peak."""
    low, ends = 1 / ONE_CYCLE["div"], one_cycle_ends(total_steps)
    if step < ends[0]:
        return low + (1 - low) * step / ends[0]
    if step < ends[1]:
        return 1.0
    if step < ends[2]:
        return 1 - (1 - low) * (step - ends[1]) / (ends[2] - ends[1])
    progress = min((step - ends[2]) / max(ends[3] - ends[2], 1), 1.0)
    return low * (1 + math.cos(math.pi * progress)) / 2


class OneCycle(torch.optim.lr_scheduler.LambdaLR):
    """Gugger and Howard's 1cycle (ONE_CYCLE) over `total_steps`, as torch's LambdaLR; each
    step also sets beta1 of an Adam-type optimizer against the lr."""

    def __init__(self, optimizer, total_steps):
        self.total_steps = total_steps
        super().__init__(optimizer, lambda step: one_cycle_factor(step, total_steps))

    def step(self, epoch=None):
        super().step(epoch)
        low, (beta1_low_lr, beta1_peak) = 1 / ONE_CYCLE["div"], ONE_CYCLE["beta1"]
        factor = max(one_cycle_factor(self.last_epoch, self.total_steps), low)
        beta1 = beta1_low_lr + (beta1_peak - beta1_low_lr) * (factor - low) / (1 - low)
        for group in self.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (beta1, group["betas"][1])

    def describe(self, peak):
        """The schedule as train.py prints it."""
        ends = [round(end) for end in one_cycle_ends(self.total_steps)]
        (beta1_low_lr, beta1_peak), low = ONE_CYCLE["beta1"], peak / ONE_CYCLE["div"]
        return (f"schedule 1cycle over {self.total_steps:,} steps: lr {low:g} -> {peak:g} by "
                f"step {ends[0]:,} (beta1 {beta1_low_lr} -> {beta1_peak}), held to step "
                f"{ends[1]:,}, -> {low:g} by step {ends[2]:,} (beta1 -> {beta1_low_lr}), "
                f"cosine to 0 by step {ends[3]:,}")


class RunningAverage(AveragedModel):
    """NT-ASGD's uniform average of the weights after every step since it started.

    torch's AveragedModel.update_parameters reads its step counter, a tensor, on the host
    and copies it to the GPU on every call: two waits for the GPU per training step. This
    subclass keeps the count as a Python int (mirrored into the n_averaged buffer, so the
    state_dict is AveragedModel's) and updates each weight in place with lerp_, which
    computes the same mean: avg += (w - avg) / (n + 1)."""

    def __init__(self, model):
        super().__init__(model)
        pack_lstm_weights(self.module)
        self.count = 0

    @torch.no_grad()
    def update_parameters(self, model):
        for averaged, current in zip(self.module.parameters(), model.parameters()):
            if self.count == 0:
                averaged.copy_(current)
            else:
                averaged.lerp_(current, 1.0 / (self.count + 1))
        self.count += 1
        self.n_averaged.fill_(self.count)

    def load_state_dict(self, state_dict, strict=True):
        result = super().load_state_dict(state_dict, strict)
        self.count = int(self.n_averaged)  # one read, when a run resumes
        return result


def own_cuda_state(saved, device):
    """This process's CUDA generator state from a state's list: one entry (the GPU the run
    used), or, in states written before that, one per GPU of the saving host."""
    if len(saved) == 1:
        return saved[0]
    index = device.index if device.index is not None else torch.cuda.current_device()
    return saved[min(index, len(saved) - 1)]


class Trainer:
    """One training run: model, optimizer, NT-ASGD average and the bookkeeping that a
    training state saves and restores. `settings` is the run's full settings dict; under
    torchrun, `group` is the processes that share the run (distributed.Group)."""

    def __init__(self, settings, corpus, device, weights=None, group=SINGLE):
        self.s = s = settings
        self.corpus = corpus
        self.device = device
        self.group = group
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
        # What a training step calls: the model with its loss and AR/TAR, which
        # join_processes wraps in DistributedDataParallel under torchrun.
        self.objective = Objective(self.model, s["alpha"], s["beta"])
        self.optimizer = make_optimizer(s, self.model.parameters())
        self.plan = None  # budget.plan's schedule (a budget or --schedule onecycle)
        self.scheduler = None  # OneCycleLR under --schedule onecycle
        self.deadline = None  # time.time() by which training must stop (a budget)
        self.out_of_time = False
        self.rng = np.random.default_rng(s["seed"])  # variable BPTT lengths
        # (steps, batch) or, under torchrun, this process's columns of it
        self.train_data = batchify(corpus.train, s["batch_size"])[
            :, group.columns(s["batch_size"])].contiguous().to(device)
        self.averaged = None  # RunningAverage from the NT-ASGD switch (or fine-tuning) on
        self.lr = s["lr"]
        self.epoch = 0  # epochs completed
        self.position = None  # where an interrupted epoch stopped
        self.valid_history = []  # validation losses of completed epochs
        self.best_valid_loss = math.inf
        self.metrics = []  # one row per completed epoch (runlog.FIELDS)
        self.steps = 0  # training batches of the whole run
        self.done = False  # fine-tuning ended at its trigger
        self.resumed = False  # restored from a state, until the next epoch ends
        self.provenance = []  # provenance.record of the start and of each resume
        if s["finetune"]:
            self.averaged = RunningAverage(self.model)

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

    # Checkpoints ---------------------------------------------------------------------------

    def pack(self, kind, **contents):
        return checkpoint.pack(kind, self.model.config, self.corpus.dictionary.idx2word, self.s,
                               provenance=list(self.provenance), **contents)

    def model_checkpoint(self, valid_loss):
        return self.pack("model", model=self.eval_model.state_dict(), epoch=self.epoch + 1,
                         valid_loss=valid_loss, valid_ppl=ppl(valid_loss))

    def state(self):
        """The training state (every process must call this together under torchrun: each
        one's random state goes into it)."""
        # the generator of the one GPU this process uses (a host may have more)
        own = dict(torch=torch.get_rng_state(),
                   cuda=[torch.cuda.get_rng_state(self.device)]
                   if self.device.type == "cuda" else [])
        rng = dict(own, numpy=self.rng.bit_generator.state)
        if self.group.size > 1:  # each process draws its own dropout masks
            rng["processes"] = self.group.gather(own)
        return self.pack(
            "state", model=self.model.state_dict(),
            averaged=self.averaged.state_dict() if self.averaged is not None else None,
            optimizer=self.optimizer.state_dict(), lr=self.lr, epoch=self.epoch,
            position=self.position, valid_history=self.valid_history,
            best_valid_loss=self.best_valid_loss, metrics=self.metrics, steps=self.steps,
            done=self.done, plan=self.plan,
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            rng=rng)

    def load_state(self, state):
        self.model.load_state_dict(state["model"])
        if state["averaged"] is not None:
            self.averaged = RunningAverage(self.model)
            self.averaged.load_state_dict(state["averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr, self.epoch, self.valid_history = (
            state["lr"], state["epoch"], state["valid_history"])
        self.best_valid_loss, self.metrics, self.done = (
            state["best_valid_loss"], state["metrics"], state["done"])
        # states written before these existed lack them
        self.steps = state.get("steps", 0)
        self.provenance = list(state.get("provenance", []))
        if state.get("plan") is not None:
            self.set_plan(state["plan"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        self.resumed = True
        self.position = state["position"]
        if self.position is not None:  # the whole batch's state: take this process's columns
            columns = self.group.columns(self.s["batch_size"])
            self.position["hidden"] = map_hidden(
                lambda t: t[:, columns].contiguous().to(self.device), self.position["hidden"])
        rng = state["rng"]
        self.rng.bit_generator.state = rng["numpy"]  # the BPTT lengths: one stream for all
        saved = rng.get("processes") or [rng]
        if len(saved) == self.group.size:
            own = saved[self.group.rank]
            torch.set_rng_state(own["torch"])
            if own["cuda"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(own_cuda_state(own["cuda"], self.device), self.device)
        else:
            print(f"note: the state was saved by {plural(len(saved), 'process')} and this "
                  f"run has {self.group.size}: training continues from the same weights and "
                  "place, but dropout draws other masks than the saved run would have")
            torch.manual_seed(self.s["seed"] + self.steps + self.group.rank)

    def steps_per_epoch(self, max_batches=None):
        """Training steps of one full epoch (an estimate under variable BPTT), at most
        `max_batches`."""
        mean_len = mean_seq_len(self.s["bptt"]) if self.s["variable_bptt"] else self.s["bptt"]
        expected = math.ceil((self.train_data.size(0) - MIN_WINDOW) / mean_len)
        return min(expected, max_batches) if max_batches else expected

    def set_plan(self, plan):
        """Fix the run's schedule (budget.plan): epochs, steps per epoch, the averaging
        start, and for --schedule onecycle the learning-rate cycle over the planned steps."""
        self.plan = plan
        if self.s["schedule"] == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=self.s["lr"], total_steps=max(plan["total_steps"], 1),
                pct_start=self.s["warmup"],
                cycle_momentum=not isinstance(self.optimizer, torch.optim.SGD))
        elif self.s["schedule"] == "1cycle":
            self.scheduler = OneCycle(self.optimizer, max(plan["total_steps"], 1))

    def averaging_due(self):
        """A planned run averages from its planned step (NT-ASGD may start it earlier);
        anneal and 1cycle never average."""
        return (self.plan is not None and self.s["schedule"] in AVERAGING
                and self.steps >= self.plan["average_from"])

    def measure_start(self):
        """Fine-tuning: the validation loss of the starting weights, which an epoch must beat
        to be saved (so <stem>-finetune.pt is never worse than the model it came from)."""
        self.best_valid_loss = evaluate(self.eval_model, self.corpus.valid,
                                        self.s["eval_batch_size"], self.s["bptt"],
                                        progress="validating the start", group=self.group)
        return self.best_valid_loss

    def save_state(self):
        state = self.state()
        if self.group.main:
            checkpoint.save(checkpoint.state_path(self.model_path), state)

    # Divergence ----------------------------------------------------------------------------

    def diverged(self, loss):
        """A mean loss that shows the run blew up: not finite, or DIVERGED nats above that of
        a uniform guess over the vocabulary (ln V, where a fresh run starts): a perplexity
        e^10 = 22,000 times the vocabulary's size, which no run that learns comes near."""
        return not math.isfinite(loss) or loss > math.log(len(self.corpus.dictionary)) + DIVERGED

    def divergence(self, what, loss):
        """The error that ends a diverged run, naming the files it leaves as they were."""
        kept = [path for path in (self.model_path, checkpoint.state_path(self.model_path),
                                  self.s["finetune"]) if path and os.path.exists(path)]
        return TrainingError(
            f"training diverged: {what} became {loss:.4g} in epoch {self.epoch + 1} (a uniform "
            f"guess over the vocabulary scores {math.log(len(self.corpus.dictionary)):.2f}); "
            "the run stopped without saving the diverged weights"
            + (f", and {', '.join(kept)} {'is' if len(kept) == 1 else 'are'} kept as before"
               if kept else "; it had written no checkpoint yet")
            + ". Try a lower --lr or --clip")

    # Training ------------------------------------------------------------------------------

    def train_epoch(self, stop, max_batches, log_interval, on_progress=None, save_every=None):
        """One pass over the training split (or what is left of an interrupted one).
        Every `log_interval` batches the loss is read (the one host sync), checked for
        divergence and its mean so far passed to `on_progress(step, loss, lr, tokens_per_s)`.
        Every `save_every` seconds (if given) the training state is saved mid-epoch, to
        resume from exactly like an end-of-epoch state. Returns the mean training loss,
        or None when stopped by a signal (`stop`).

        A stop, a passed deadline and a due save are requests that one process may see
        before the others; on one process they take effect after the batch that sees them,
        under torchrun at the next check point (every `log_interval` batches, and at the end
        of the epoch), where the processes add up their losses and requests."""
        s, group, data = self.s, self.group, self.train_data
        self.model.train()
        if self.position is None:
            self.position = dict(index=0, batches=0, loss_sum=0.0, tokens=0, seconds=0.0,
                                 hidden=self.model.init_hidden(data.size(1)))
        pos = self.position
        hidden, row, batches = pos["hidden"], pos["index"], pos["batches"]
        # The epoch's loss sum and tokens so far over all processes, as of the last check
        # point; and this process's own, of which the main one also carries those from
        # before a resume (so that adding up the processes counts them once).
        total, all_tokens = pos["loss_sum"], pos["tokens"]
        loss_sum = torch.tensor(total if group.main else 0.0, dtype=torch.float64,
                                device=self.device)
        tokens = all_tokens if group.main else 0
        started = time.time() - pos["seconds"]
        # the loss sum, tokens and batches at the last divergence check
        checked_sum, checked_tokens, checked_batches = total, all_tokens, batches
        last_save = time.time()

        def position():  # where the epoch stands, for a saved state to continue from
            # (the hidden state in float32 whatever the precision, which may change on resume)
            return dict(index=row, batches=batches, loss_sum=total, tokens=all_tokens,
                        seconds=time.time() - started,
                        hidden=map_hidden(lambda h: group.gather_columns(h.detach().float()),
                                          hidden))

        seq_len = partial(sample_seq_len, self.rng, s["bptt"]) if s["variable_bptt"] else s["bptt"]
        if self.plan is not None:
            max_batches = self.plan["batches_per_epoch"]
        bar = progress_bar(total=self.steps_per_epoch(max_batches), initial=batches,
                           desc=f"epoch {self.epoch + 1}" if group.main else None, unit="batch")
        left = None if max_batches is None else max(max_batches - batches, 0)
        at_end = stopping = False
        for row, inputs, targets in itertools.islice(
                windows(data, seq_len, start=row, min_len=MIN_WINDOW), left):
            base_lr = self.scheduler.get_last_lr()[0] if self.scheduler is not None else self.lr
            lr = base_lr * inputs.size(0) / s["bptt"]  # a short window takes a smaller step
            loss, hidden = train_step(self.objective, self.optimizer, inputs, targets, hidden,
                                      lr, s)
            if self.scheduler is not None and self.steps + 1 < self.scheduler.total_steps:
                self.scheduler.step()
            if self.averaged is None and self.averaging_due():
                self.averaged = RunningAverage(self.model)
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            loss_sum += loss.double() * targets.numel()
            tokens += targets.numel()
            row += inputs.size(0)
            batches += 1
            self.steps += 1
            bar.update(1)
            at_end = data.size(0) - 1 - row < MIN_WINDOW or batches == max_batches
            requests = (  # what this process alone may have seen: stop, late, save due
                stop.requested, self.deadline is not None and time.time() >= self.deadline,
                save_every is not None and time.time() - last_save >= save_every)
            if batches % log_interval == 0 or at_end or (group.size == 1 and any(requests)):
                # A check point, the one host sync; under torchrun the processes add up
                # their losses, tokens and requests, and act on them together.
                counts = torch.tensor([tokens, *requests], dtype=torch.float64,
                                      device=self.device)
                sums = group.sum(torch.cat([loss_sum.view(1), counts])).tolist()
                total, all_tokens = sums[0], round(sums[1])
                stopping, late, save_due = (v > 0 for v in sums[2:])
                recent = (total - checked_sum) / (all_tokens - checked_tokens)
                if self.diverged(recent):
                    bar.close()
                    raise self.divergence(f"the mean training loss of batches "
                                          f"{checked_batches + 1}-{batches}", recent)
                checked_sum, checked_tokens, checked_batches = total, all_tokens, batches
                mean_loss = total / all_tokens
                tokens_per_s = all_tokens / max(time.time() - started, 1e-9)
                bar.set_postfix(loss=f"{mean_loss:.3f}", ppl=f"{ppl(mean_loss):.1f}",
                                lr=f"{base_lr:g}", tok_s=f"{tokens_per_s:,.0f}")
                if on_progress is not None:
                    on_progress(self.steps, mean_loss, base_lr, tokens_per_s)
                if late:
                    self.out_of_time = at_end = True  # a budget: end the epoch here
                if stopping or self.out_of_time:
                    break
                if save_due and not at_end:  # (the end of the epoch saves the state anyway)
                    self.position = position()
                    self.save_state()
                    last_save = time.time()
        bar.close()
        self.position = position()
        if stopping and not at_end:
            return None
        return self.position["loss_sum"] / self.position["tokens"]

    def end_epoch(self, train_loss):
        """Validate, save the best model, apply the schedule; returns the epoch's metrics row."""
        s = self.s
        seconds, validation_started = self.position["seconds"], time.time()
        # the lr of the epoch (under onecycle: where the cycle stands at its end)
        epoch_lr = self.scheduler.get_last_lr()[0] if self.scheduler is not None else self.lr
        valid_loss = evaluate(self.eval_model, self.corpus.valid, s["eval_batch_size"],
                              s["bptt"], progress="validating", group=self.group)
        if self.diverged(valid_loss):
            raise self.divergence("the validation loss", valid_loss)
        mode, event = ("ASGD" if self.averaged is not None else "SGD"), ""
        if valid_loss < self.best_valid_loss:
            self.best_valid_loss = valid_loss
            if self.group.main:
                checkpoint.save(self.model_path, self.model_checkpoint(valid_loss))
            event = "saved"
        trigger = should_start_averaging(self.valid_history, valid_loss, s["nonmono"])
        if s["finetune"] and trigger:
            self.done = True
            event = "fine-tuning done"
        elif s["schedule"] == "ntasgd" and self.averaged is None and trigger:
            self.averaged = RunningAverage(self.model)  # averages the iterates from here on
            event = "switch to ASGD"
        elif s["schedule"] == "anneal" and event != "saved":
            self.lr /= 4
            event = "lr / 4"
        if self.out_of_time:
            self.done = True
            event = "out of time" + (f"; {event}" if event else "")
        self.valid_history.append(valid_loss)
        # Wall time of the run so far: training and validation of every epoch (not the
        # time a stopped run spent waiting for its resume).
        elapsed = (self.metrics[-1].get("elapsed_s", 0.0) if self.metrics else 0.0) + \
            seconds + time.time() - validation_started
        row = dict(epoch=self.epoch + 1, seconds=round(seconds, 2),
                   tokens_per_s=round(self.position["tokens"] / max(seconds, 1e-9)),
                   train_loss=round(train_loss, 5), train_ppl=round(ppl(train_loss), 3),
                   valid_loss=round(valid_loss, 5), valid_ppl=round(ppl(valid_loss), 3),
                   lr=epoch_lr, mode=mode, event=event, elapsed_s=round(elapsed, 2),
                   resumed="yes" if self.resumed else "")
        self.metrics.append(row)
        self.epoch += 1
        self.position = None
        self.resumed = False
        return row
