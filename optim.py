"""optim.py: how the recipes update the weights: the optimizers (--optimizer) and the running
average of the weights that NT-ASGD and onecycle evaluate. The learning rate
is the schedule's (schedule.py).
"""

import torch
from torch.optim.swa_utils import AveragedModel

from lstm_layer import pack_lstm_weights
from schedule import SCHEDULES


# Adam's weight decay is an L2 term (added to the gradient), AdamW's a decoupled decay.
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def make_optimizer(settings, parameters):
    """torch.optim's SGD, Adam or AdamW at the run's lr and weight decay (Adam's betas those
    that the run's schedule starts from, when it sets them)."""
    kind = OPTIMIZERS[settings["optimizer"]]
    extra = {}
    betas = SCHEDULES[settings["schedule"]].adam_betas
    if kind is not torch.optim.SGD and betas is not None:
        extra["betas"] = betas
    return kind(parameters, lr=settings["lr"], weight_decay=settings["wdecay"], **extra)


class RunningAverage(AveragedModel):
    """NT-ASGD's uniform average of the weights after every step since it started.

    torch's AveragedModel.update_parameters reads its step counter, a tensor, on the host
    and copies it to the device on every call: on a GPU, two waits for it per training
    step (as torch's source reads; no GPU has run this yet). This
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
