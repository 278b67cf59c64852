"""Tests of optim.py: the optimizers (the running average: tests/test_trainer.py)."""

import torch

from optim import OPTIMIZERS, make_optimizer
from settings import BY_NAME


def test_the_optimizers_are_the_choices_of_the_flag():
    assert tuple(OPTIMIZERS) == BY_NAME["optimizer"].type


def test_an_adam_type_optimizer_starts_from_the_betas_its_schedule_sets():
    settings = dict(optimizer="adam", schedule="1cycle", lr=5e-3, wdecay=1.2e-6)
    weight = torch.nn.Parameter(torch.zeros(3))
    assert make_optimizer(settings, [weight]).param_groups[0]["betas"] == (0.8, 0.99)
    assert make_optimizer(dict(settings, schedule="onecycle"),
                          [weight]).param_groups[0]["betas"] == (0.9, 0.999)  # torch's
    assert isinstance(make_optimizer(dict(settings, optimizer="sgd"), [weight]),
                      torch.optim.SGD)
