"""schedule.py: the learning-rate schedules of --schedule. A run's schedule is the one writer
of its lr: before each training step it sets the lr of every param group (`lr(window,
progress)`: a function of the run's progress p in [0, 1], progress.py, and a window
shorter than --bptt takes a proportionally smaller step), at the end of an epoch it
decides (`after_validation`), and a training state saves and restores it (`state_dict`).

    ntasgd    a constant lr; NT-ASGD starts averaging the weights when validation stalls
    anneal    the lr divided by 4 whenever validation does not improve
    linear    constant, then down to 0 in a straight line over the last --cooldown of the run
    onecycle  torch's OneCycleLR, as a function of p
    1cycle    Gugger and Howard's four phases, as a function of p

A new schedule is a class here and its entry in SCHEDULES, whose `summary` the help of
--schedule shows; one whose lr follows the run's progress overrides `factor(progress)`, the
lr as a share of --lr (and `beta1(progress)` if it moves Adam's beta1).
docs/training.md shows one.
"""

import math

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
    summary = "a constant lr"
    averages = False  # whether the run's weights are averaged at some point (the saved
    #                   state then holds a second copy of them)
    adam_betas = None  # the betas an Adam-type optimizer starts with (None: torch's)

    def __init__(self, settings, optimizer):
        self.optimizer = optimizer
        self.base_lr = settings["lr"]  # (anneal cuts it)
        self.bptt, self.nonmono = settings["bptt"], settings["nonmono"]
        self.by_window = settings["lr_by_window"]
        self.finetuning = bool(settings["finetune"])
        # From which progress on the weights are averaged (None: never by progress)
        self.average_from = None

    def factor(self, progress):
        """The lr at `progress`, as a share of --lr (None: --lr as it stands)."""
        return None

    def beta1(self, progress):
        """Adam's beta1 at `progress` (None: as the optimizer holds it)."""
        return None

    def current(self, progress):
        """The schedule's lr at `progress` (before window scaling): what the progress bar and
        the metrics CSV show."""
        factor = self.factor(progress)
        return self.base_lr if factor is None else self.base_lr * factor

    def lr(self, window, progress):
        """Set the lr of every param group for a step on a window of `window` tokens that
        brings the run to `progress` (a shorter window a proportionally smaller step, as in
        Merity et al.'s code, unless --no-lr-by-window), and beta1 where the schedule moves
        it; returns the schedule's lr (current)."""
        lr, beta1 = self.current(progress), self.beta1(progress)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr * window / self.bptt if self.by_window else lr
            if beta1 is not None and "betas" in param_group:
                param_group["betas"] = (beta1, param_group["betas"][1])
        return lr

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
        # The keys a training state has held since version 1: "lr" and "scheduler" (a torch
        # scheduler's state, which states before progress.py held; now always None).
        return dict(lr=self.base_lr, scheduler=None)

    def load_state_dict(self, state):
        self.base_lr = state["lr"]

    def describe(self):
        """A line for train.py to print before the first batch, or None."""
        return None


class NTASGD(Schedule):
    """Merity et al.'s NT-ASGD: SGD at a constant lr until validation stalls, then the
    weights averaged from that step on. Under a budget the trigger may not come in time:
    the weights are then averaged from --average-start of the run on, if not before."""
    summary = "a constant lr, the weights averaged from when validation stalls (NT-ASGD)"
    averages = True

    def __init__(self, settings, optimizer):
        super().__init__(settings, optimizer)
        if settings["budget_minutes"]:
            self.average_from = settings["average_start"]

    def decide(self, stalled, improved, averaging):
        return START_AVERAGING if stalled and not averaging else None


class Anneal(Schedule):
    """The PyTorch example's schedule: the lr divided by 4 after an epoch that did not
    improve on the best validation loss (torch's ReduceLROnPlateau(factor=0.25,
    patience=0), decided here where the other schedules decide)."""
    summary = "the lr divided by 4 whenever validation does not improve"

    def decide(self, stalled, improved, averaging):
        if improved:
            return None
        self.base_lr /= 4
        return LR_CUT


class Linear(Schedule):
    """--lr, then down to 0 in a straight line over the last --cooldown of the run (Li,
    Yumer and Ramanan, "Budgeted training", ICLR 2020, found a linear decay to zero over
    the whole budget robust at every budget: --cooldown 1)."""
    summary = "--lr, then linearly to 0 over the last --cooldown of the run"

    def __init__(self, settings, optimizer):
        super().__init__(settings, optimizer)
        self.cooldown = settings["cooldown"]

    def factor(self, progress):
        left = 1.0 - progress
        return 1.0 if left >= self.cooldown else left / self.cooldown

    def describe(self):
        start = "" if self.cooldown == 1 else f", held to {1 - self.cooldown:.0%} of the run"
        return f"schedule linear: lr {self.base_lr:g}{start}, then linearly to 0 at its end"


def cosine_between(start, end, share):
    """From `start` at share 0 to `end` at share 1 on half a cosine (torch's annealing)."""
    return end + (start - end) * (1 + math.cos(math.pi * share)) / 2


# torch's OneCycleLR's defaults: the lr starts at the peak / 25, ends at that / 10,000;
# Adam's beta1 goes from 0.95 to 0.85 at the peak and back.
ONECYCLE = dict(div=25.0, final_div=1e4, beta1=(0.95, 0.85))


class OneCycleTorch(Schedule):
    """torch's OneCycleLR as a function of p: the lr rises on a cosine for the first
    --warmup of the run to --lr, then anneals on a cosine to nearly 0; an Adam-type
    optimizer's beta1 cycles against it. The weights are averaged from --average-start of
    the run."""
    summary = ("torch's OneCycleLR: a cosine up to --lr over --warmup of the run, then down; "
               "the weights averaged from --average-start")
    averages = True

    def __init__(self, settings, optimizer):
        super().__init__(settings, optimizer)
        self.warmup = settings["warmup"]
        self.average_from = settings["average_start"]

    def phase(self, progress):
        """(0 rising or 1 falling, the share of that phase done)."""
        if progress < self.warmup:
            return 0, progress / self.warmup
        return 1, (progress - self.warmup) / max(1.0 - self.warmup, 1e-12)

    def factor(self, progress):
        start = 1 / ONECYCLE["div"]
        falling, share = self.phase(progress)
        if falling:
            return cosine_between(1.0, start / ONECYCLE["final_div"], share)
        return cosine_between(start, 1.0, share)

    def beta1(self, progress):
        high, low = ONECYCLE["beta1"]
        falling, share = self.phase(progress)
        return cosine_between(low, high, share) if falling else cosine_between(high, low, share)

    def describe(self):
        start = self.base_lr / ONECYCLE["div"]
        return (f"schedule onecycle: lr {start:g} -> {self.base_lr:g} over the first "
                f"{self.warmup:.0%} of the run, a cosine down to {start / ONECYCLE['final_div']:g} "
                f"at its end; the weights averaged from {self.average_from:.0%} of it")


# Gugger and Howard's 1cycle for AWD-LSTM (sgugger/Adam-experiments, utils.get_phases):
# the lr climbs linearly from peak / 10 to the peak, holds, falls back to peak / 10 and
# anneals to 0 on a cosine, in phases of 7.5, 37.5, 37.5 and 7.5 of 90 epochs (here shares
# of the run); Adam's beta1 moves against the lr, from 0.8 at peak / 10 to 0.7 at the peak;
# beta2 is 0.99.
ONE_CYCLE = dict(phases=(7.5, 37.5, 37.5, 7.5), div=10.0, beta1=(0.8, 0.7), beta2=0.99)


def one_cycle_ends():
    """The shares of the run at which the four phases of a 1cycle end."""
    phases = ONE_CYCLE["phases"]
    return [sum(phases[:i + 1]) / sum(phases) for i in range(4)]


def one_cycle_factor(progress):
    """The 1cycle lr at `progress`, as a share of the peak."""
    low, ends = 1 / ONE_CYCLE["div"], one_cycle_ends()
    if progress < ends[0]:
        return low + (1 - low) * progress / ends[0]
    if progress < ends[1]:
        return 1.0
    if progress < ends[2]:
        return 1 - (1 - low) * (progress - ends[1]) / (ends[2] - ends[1])
    return cosine_between(low, 0.0, min((progress - ends[2]) / (ends[3] - ends[2]), 1.0))


class OneCycle(Schedule):
    """Gugger and Howard's 1cycle (ONE_CYCLE above); beta1 moves linearly against the lr
    (0.8 at its lowest from the last phase on); no averaging."""
    summary = "Gugger and Howard's four phases over the run, no averaging"
    adam_betas = (ONE_CYCLE["beta1"][0], ONE_CYCLE["beta2"])

    def factor(self, progress):
        return one_cycle_factor(progress)

    def beta1(self, progress):
        low, (beta1_low_lr, beta1_peak) = 1 / ONE_CYCLE["div"], ONE_CYCLE["beta1"]
        factor = max(one_cycle_factor(progress), low)
        return beta1_low_lr + (beta1_peak - beta1_low_lr) * (factor - low) / (1 - low)

    def describe(self):
        ends = one_cycle_ends()
        (beta1_low_lr, beta1_peak), low = ONE_CYCLE["beta1"], self.base_lr / ONE_CYCLE["div"]
        return (f"schedule 1cycle: lr {low:g} -> {self.base_lr:g} by {ends[0]:.1%} of the run "
                f"(beta1 {beta1_low_lr} -> {beta1_peak}), held to {ends[1]:.1%}, -> {low:g} by "
                f"{ends[2]:.1%} (beta1 -> {beta1_low_lr}), a cosine to 0 at its end")


SCHEDULES = {"ntasgd": NTASGD, "anneal": Anneal, "linear": Linear, "onecycle": OneCycleTorch,
             "1cycle": OneCycle}


def make_schedule(settings, optimizer):
    """The schedule that --schedule names, driving `optimizer`."""
    return SCHEDULES[settings["schedule"]](settings, optimizer)
