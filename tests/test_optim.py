"""Tests of optim.py: NT-ASGD's trigger and average, the 1cycle schedule, the optimizers."""

import pytest
import torch

from optim import (ONE_CYCLE, OPTIMIZERS, OneCycle, make_optimizer, one_cycle_factor,
                   should_start_averaging)
from settings import BY_NAME


@pytest.mark.parametrize("history, valid_loss, fires", [
    ([5.0, 4.0, 3.0], 3.5, False),  # not more than nonmono = 3 epochs before this one
    ([5.0, 4.0, 3.0, 2.9], 3.5, False),  # 3.5 is better than min([5.0])
    ([5.0, 4.0, 3.0, 2.9], 5.1, True),  # worse than every epoch before the last three
    ([5.0, 4.0, 3.0, 2.9, 2.8], 4.5, True),  # worse than min([5.0, 4.0]) = 4.0
    ([5.0, 4.0, 3.0, 2.9, 2.8], 3.9, False),  # better than 4.0: the last 3 do not count
    ([5.0, 4.0, 3.0, 2.9, 2.8], 4.0, False),  # equal is not worse
])
def test_nt_asgd_trigger(history, valid_loss, fires):
    assert should_start_averaging(history, valid_loss, nonmono=3) is fires


def test_the_1cycle_lr_follows_gugger_and_howards_four_phases():
    total = 900  # 90 "epochs" of 10 steps: phases end at steps 75, 450, 825 and 900
    factor = [one_cycle_factor(step, total) for step in range(total + 1)]
    assert factor[0] == pytest.approx(0.1) and factor[75] == 1.0
    assert factor[37] == pytest.approx(0.1 + 0.9 * 37 / 75)  # linear up
    assert set(factor[75:450]) == {1.0}  # held at the peak
    assert factor[450 + 375 // 2] == pytest.approx(1 - 0.9 * (375 // 2) / 375)  # linear down
    assert factor[825] == pytest.approx(0.1) and factor[900] == pytest.approx(0.0, abs=1e-12)
    assert factor[825 + 75 // 2] < 0.1 / 2 + 0.01  # a cosine to zero
    assert all(a >= b for a, b in zip(factor[450:], factor[451:]))


def test_the_1cycle_schedule_is_torchs_lambdalr_with_beta1_against_the_lr():
    settings = dict(optimizer="adam", schedule="1cycle", lr=5e-3, wdecay=1.2e-6)
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer(settings, [weight])
    scheduler = OneCycle(optimizer, total_steps=90)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    seen = []
    for _ in range(90):
        group = optimizer.param_groups[0]
        seen.append((group["lr"], group["betas"]))
        optimizer.step()
        scheduler.step()
    lrs = [lr for lr, _ in seen]
    assert lrs[0] == pytest.approx(5e-4) and max(lrs) == pytest.approx(5e-3)
    (beta1_low, beta1_peak), beta2 = ONE_CYCLE["beta1"], ONE_CYCLE["beta2"]
    for lr, (beta1, second) in seen:
        assert second == beta2
        if lr >= 5e-4:  # beta1 moves linearly against the lr, 0.8 at peak / 10, 0.7 at the peak
            assert beta1 == pytest.approx(beta1_low + (beta1_peak - beta1_low)
                                          * (lr - 5e-4) / (5e-3 - 5e-4))
        else:  # the cosine's end, below peak / 10
            assert beta1 == pytest.approx(beta1_low)
    assert isinstance(make_optimizer(dict(settings, optimizer="sgd"), [weight]),
                      torch.optim.SGD)




def test_the_optimizers_are_the_choices_of_the_flag():
    assert tuple(OPTIMIZERS) == BY_NAME["optimizer"].type
