"""optim.py: how the recipes update the weights: the optimizers, the learning-rate
schedules (Gugger and Howard's 1cycle among them; torch's OneCycleLR for onecycle), and
NT-ASGD's trigger and running average of the weights.
"""

import math

import torch
from torch.optim.swa_utils import AveragedModel

from model import pack_lstm_weights


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
    kind = OPTIMIZERS[settings["optimizer"]]
    extra = {}
    if kind is not torch.optim.SGD and settings["schedule"] == "1cycle":
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


def make_scheduler(settings, optimizer, total_steps):
    """The lr schedule that steps with every batch, over a run of `total_steps` (planned):
    torch's OneCycleLR for onecycle (rising for the first `warmup` of the steps, cycling
    beta1 for Adam-type optimizers), OneCycle for 1cycle; None for the schedules that act at
    the end of an epoch (ntasgd, anneal)."""
    total_steps = max(total_steps, 1)
    if settings["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings["lr"], total_steps=total_steps,
            pct_start=settings["warmup"],
            cycle_momentum=not isinstance(optimizer, torch.optim.SGD))
    if settings["schedule"] == "1cycle":
        return OneCycle(optimizer, total_steps)
    return None


def should_start_averaging(history, valid_loss, nonmono):
    """NT-ASGD's trigger (the paper's Algorithm 1): with `history` the validation losses of
    the epochs before this one, fire when there are more than `nonmono` of them and this
    epoch's loss is worse than the best one from before the last `nonmono` epochs."""
    return len(history) > nonmono and valid_loss > min(history[:-nonmono])


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
