"""Tests of trainer.py: NT-ASGD's trigger and average, one epoch of training, the 1cycle
schedule, the saved random state."""

import numpy as np
import pytest
import torch

import checkpoint
from config import COMMON, PRESETS
from data import Corpus
from trainer import (ONE_CYCLE, OneCycle, StopRequest, Trainer, make_optimizer,
                     one_cycle_factor, own_cuda_state, should_start_averaging)


@pytest.fixture
def random_text(tmp_path):
    """Random words: a model can only overfit the training split."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    for name, lines in (("train.txt", 120), ("valid.txt", 20), ("test.txt", 20)):
        (tmp_path / name).write_text("".join(
            " ".join(rng.choice(words, size=rng.integers(4, 12))) + "\n" for _ in range(lines)))
    return str(tmp_path)


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


def test_averaged_weights_are_the_mean_of_the_iterates(random_text):
    settings = {**PRESETS["awd"], **COMMON, "emsize": 8, "nhid": 12,
                "batch_size": 4, "bptt": 10, "model": "awd", "finetune": "x", "save": "-"}
    trainer = Trainer(settings, Corpus(random_text), torch.device("cpu"))
    iterates = []
    trainer.optimizer.register_step_post_hook(
        lambda opt, args, kwargs: iterates.append(
            [p.detach().clone() for p in trainer.model.parameters()]))
    with StopRequest() as stop:
        trainer.train_epoch(stop, max_batches=7, log_interval=50)
    assert len(iterates) == 7
    for i, averaged in enumerate(trainer.averaged.module.parameters()):
        mean = torch.stack([step[i] for step in iterates]).mean(0)
        assert torch.allclose(averaged, mean, atol=1e-6)
    assert not torch.allclose(next(trainer.averaged.module.parameters()), iterates[-1][0])


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


def test_a_state_resumes_with_the_generator_of_the_gpu_the_run_used():
    mine, other = torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)
    assert own_cuda_state([mine], torch.device("cuda", 3)) is mine  # one saved: the run's own
    # states written before saved every GPU of the host: this process's index
    assert own_cuda_state([other, mine], torch.device("cuda", 1)) is mine


# --- One epoch, and what its end decides ------------------------------------------------

def tiny_trainer(corpus_path, tmp_path, **changes):
    settings = {**PRESETS["awd"], **COMMON, "emsize": 8, "nhid": 12, "batch_size": 4,
                "bptt": 10, "model": "awd", "finetune": None, "save": str(tmp_path / "m.pt"),
                **changes}
    return Trainer(settings, Corpus(corpus_path), torch.device("cpu"))


def test_an_epoch_trains_on_every_window_once_and_returns_its_mean_loss(random_text,
                                                                        tmp_path):
    trainer = tiny_trainer(random_text, tmp_path, variable_bptt=False)
    seen = []
    trainer.optimizer.register_step_post_hook(lambda *args: seen.append(1))
    with StopRequest() as stop:
        mean_loss = trainer.train_epoch(stop, max_batches=None, log_interval=3)
    data = trainer.train_data
    lengths = [10] * ((data.size(0) - 1) // 10)
    if (data.size(0) - 1) % 10 >= 2:  # a last window of a single target is left out
        lengths.append((data.size(0) - 1) % 10)
    assert len(seen) == trainer.steps == len(lengths)
    assert trainer.position["tokens"] == sum(lengths) * data.size(1)
    assert mean_loss == pytest.approx(trainer.position["loss_sum"] / trainer.position["tokens"])
    assert 2.5 < mean_loss < 4.5  # near ln 30 for random words, and finite


def test_a_stop_ends_the_epoch_after_the_current_batch_where_a_resume_continues(random_text,
                                                                                tmp_path):
    trainer = tiny_trainer(random_text, tmp_path, variable_bptt=False)
    with StopRequest() as stop:
        stop.requested = True
        assert trainer.train_epoch(stop, max_batches=None, log_interval=50) is None
    position = trainer.position
    assert (position["batches"], position["index"], trainer.steps) == (1, 10, 1)
    assert position["hidden"][0][0].shape == (1, 4, 12)


@pytest.mark.parametrize("schedule, finetune, losses, events, lrs", [
    # NT-ASGD (nonmono 2): the switch when a loss is worse than all but the last 2 epochs'
    ("ntasgd", None, [5.0, 4.0, 4.5, 4.6, 5.1], ["saved", "saved", "", "",
                                                  "switch to ASGD"], [30] * 5),
    # anneal: the lr / 4 whenever validation does not improve
    ("anneal", None, [5.0, 5.2, 4.0, 4.1], ["saved", "lr / 4", "saved", "lr / 4"],
     [30, 30, 7.5, 7.5]),
    # fine-tuning: done at the first trigger; saved only below the starting loss
    ("ntasgd", "start.pt", [3.0, 2.0, 2.5, 3.5], ["saved", "saved", "", "fine-tuning done"],
     [30] * 4),
])
def test_the_end_of_an_epoch_saves_switches_anneals_and_stops_as_its_schedule_says(
        random_text, tmp_path, monkeypatch, schedule, finetune, losses, events, lrs):
    import trainer as trainer_module
    trainer = tiny_trainer(random_text, tmp_path, schedule=schedule, nonmono=2, lr=30.0,
                           finetune=finetune)
    scripted = iter(losses)
    monkeypatch.setattr(trainer_module, "evaluate", lambda *args, **kwargs: next(scripted))
    with StopRequest() as stop:
        rows = []
        for _ in losses:
            rows.append(trainer.end_epoch(trainer.train_epoch(stop, max_batches=2,
                                                               log_interval=50)))
    assert [r["event"] for r in rows] == events
    assert [r["lr"] for r in rows] == lrs
    assert trainer.best_valid_loss == min(losses)
    assert trainer.done == (finetune is not None)
    assert checkpoint.load(str(tmp_path / "m.pt"))["valid_loss"] == min(losses)
