"""Tests of trainer.py: NT-ASGD's trigger and average, one epoch of training."""

import numpy as np
import pytest
import torch

from config import COMMON, PRESETS
from data import Corpus
from trainer import StopRequest, Trainer, should_start_averaging


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
