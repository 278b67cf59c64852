"""schedule.py: the learning-rate schedules of --schedule. A run's schedule is the one writer
of its lr: before each training step it sets the lr of every param group (`lr(window)`: a
window shorter than --bptt takes a proportionally smaller step), after the step it moves on
(`after_step`), at the end of an epoch it decides (`after_validation`), and a training
state saves and restores it (`state_dict`).

    ntasgd    a constant lr; NT-ASGD starts averaging the weights when validation stalls
    anneal    the lr divided by 4 whenever validation does not improve
    onecycle  torch's OneCycleLR over the planned steps
    1cycle    Gugger and Howard's four phases over the planned steps

A planned schedule (onecycle, 1cycle) is laid over the steps that the run plans before its
first batch (budget.py): `fit(steps)`, then `after_step(position)` with the schedule's step
that the run has reached (plans.Plan.schedule_position, which spreads the rest of the
schedule over a re-fitted plan). A new schedule is a class here, its entry in SCHEDULES,
and its words in the help of --schedule (settings.py); docs/training.md shows one.
"""

import math

import torch

# What after_validation decides (the words of the metrics CSV's event column).
FINETUNE_DONE, START_AVERAGING, LR_CUT = "fine-tuning done", "switch to ASGD", "lr / 4"


def should_start_averaging(history, valid_loss, nonmono):
    """NT-ASGD's trigger (the paper's Algorithm 1): with `history` the validation losses of
    the epochs before this one, fire when there are more than `nonmono` of them and this
    epoch's loss is worse than the best one from before the last `nonmono` epochs."""
    return len(history) > nonmono and valid_loss > min(history[:-nonmono])


class Schedule:
    """A constant lr (--lr), and the end of fine-tuning at NT-ASGD's trigger (a fine-tuning
    run of any schedule stops there)."""
    planned = False  # laid over the planned steps (fit) before the first step
    averages = False  # a planned run of it averages the weights from the plan's step on
    adam_betas = None  # the betas an Adam-type optimizer starts with (None: torch's)

    def __init__(self, settings, optimizer):
        self.optimizer = optimizer
        self.base_lr = settings["lr"]  # (anneal cuts it; planned schedules keep --lr here)
        self.bptt, self.nonmono = settings["bptt"], settings["nonmono"]
        self.by_window = settings["lr_by_window"]
        self.finetuning = bool(settings["finetune"])

    def current(self):
        """The schedule's lr now (before window scaling): what the progress bar and the
        metrics CSV show."""
        return self.base_lr

    def lr(self, window):
        """Set the lr of every param group for a step on a window of `window` tokens (a
        shorter window a proportionally smaller step, as in Merity et al.'s code, unless
        --no-lr-by-window); returns the schedule's lr (current)."""
        lr = self.current()
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr * window / self.bptt if self.by_window else lr
        return lr

    def after_step(self, position):
        """After each training step; `position` is the schedule's step reached."""

    def after_validation(self, history, valid_loss, improved, averaging):
        """At the end of an epoch (`history`: the validation losses before this one;
        `improved`: this one is the best so far; `averaging`: the weights are being
        averaged): one of FINETUNE_DONE, START_AVERAGING, LR_CUT, or None."""
        stalled = should_start_averaging(history, valid_loss, self.nonmono)
        if self.finetuning and stalled:
            return FINETUNE_DONE
        return self.decide(stalled, improved, averaging)

    def decide(self, stalled, improved, averaging):
        return None

    def state_dict(self):
        # The keys a training state has held since version 1: "lr" and "scheduler".
        return dict(lr=self.base_lr, scheduler=None)

    def load_state_dict(self, state):
        self.base_lr = state["lr"]

    def describe(self):
        """A line for train.py to print before the first batch, or None."""
        return None


class NTASGD(Schedule):
    """Merity et al.'s NT-ASGD: SGD at a constant lr until validation stalls, then the
    weights averaged from that step on."""
    averages = True

    def decide(self, stalled, improved, averaging):
        return START_AVERAGING if stalled and not averaging else None


class Anneal(Schedule):
    """The PyTorch example's schedule: the lr divided by 4 after an epoch that did not
    improve on the best validation loss (torch's ReduceLROnPlateau(factor=0.25,
    patience=0), decided here where the other schedules decide)."""

    def decide(self, stalled, improved, averaging):
        if improved:
            return None
        self.base_lr /= 4
        return LR_CUT


class PlannedSchedule(Schedule):
    """A schedule over the planned steps, stepped once per training step: a torch
    LRScheduler (`make`) that this class drives and saves."""
    planned = True
    scheduler = None  # (until fit)

    def fit(self, steps):
        """Lay the schedule over `steps` training steps (at least one)."""
        self.total_steps = max(steps, 1)
        self.scheduler = self.make(self.optimizer, self.total_steps)

    def make(self, optimizer, total_steps):
        raise NotImplementedError

    def current(self):
        return self.scheduler.get_last_lr()[0]

    def after_step(self, position):
        # (to the step the run has reached; a re-fitted plan may skip some)
        reached = min(position, self.total_steps - 1)
        while self.scheduler.last_epoch < reached:
            self.scheduler.step()

    def state_dict(self):
        fitted = self.scheduler is not None
        return dict(super().state_dict(), scheduler=self.scheduler.state_dict() if fitted else None)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.scheduler is not None and state.get("scheduler") is not None:
            # (fitted to the state's plan first: Trainer.load_state_dict)
            self.scheduler.load_state_dict(state["scheduler"])


class OneCycleTorch(PlannedSchedule):
    """torch's OneCycleLR: the lr rises for the first --warmup of the steps to --lr and
    anneals on a cosine; an Adam-type optimizer's beta1 cycles against it. The weights are
    averaged from --average-start of the steps."""
    averages = True

    def __init__(self, settings, optimizer):
        super().__init__(settings, optimizer)
        self.peak, self.warmup = settings["lr"], settings["warmup"]

    def make(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.peak, total_steps=total_steps, pct_start=self.warmup,
            cycle_momentum=not isinstance(optimizer, torch.optim.SGD))


# Gugger and Howard's 1cycle for AWD-LSTM (sgugger/Adam-experiments, utils.get_phases):
# the lr climbs linearly from peak / 10 to the peak, holds, falls back to peak / 10 and
# anneals to 0 on a cosine, in phases of 7.5, 37.5, 37.5 and 7.5 of 90 epochs (here
# fractions of the planned steps); Adam's beta1 moves against the lr, from 0.8 at peak / 10
# to 0.7 at the peak; beta2 is 0.99.
ONE_CYCLE = dict(phases=(7.5, 37.5, 37.5, 7.5), div=10.0, beta1=(0.8, 0.7), beta2=0.99)


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


class OneCycleLR(torch.optim.lr_scheduler.LambdaLR):
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
        for param_group in self.optimizer.param_groups:
            if "betas" in param_group:
                param_group["betas"] = (beta1, param_group["betas"][1])


class OneCycle(PlannedSchedule):
    """Gugger and Howard's 1cycle (OneCycleLR above); no averaging."""
    adam_betas = (ONE_CYCLE["beta1"][0], ONE_CYCLE["beta2"])

    def __init__(self, settings, optimizer):
        super().__init__(settings, optimizer)
        self.peak = settings["lr"]

    def make(self, optimizer, total_steps):
        return OneCycleLR(optimizer, total_steps)

    def describe(self):
        ends = [round(end) for end in one_cycle_ends(self.total_steps)]
        (beta1_low_lr, beta1_peak), low = ONE_CYCLE["beta1"], self.peak / ONE_CYCLE["div"]
        return (f"schedule 1cycle over {self.total_steps:,} steps: lr {low:g} -> {self.peak:g} "
                f"by step {ends[0]:,} (beta1 {beta1_low_lr} -> {beta1_peak}), held to step "
                f"{ends[1]:,}, -> {low:g} by step {ends[2]:,} (beta1 -> {beta1_low_lr}), "
                f"cosine to 0 by step {ends[3]:,}")


SCHEDULES = {"ntasgd": NTASGD, "anneal": Anneal, "onecycle": OneCycleTorch, "1cycle": OneCycle}


def make_schedule(settings, optimizer):
    """The schedule that --schedule names, driving `optimizer`."""
    return SCHEDULES[settings["schedule"]](settings, optimizer)
