"""probe.py: minor page faults and milliseconds per training step of --recipe cpu30's model
on WikiText-2, with glibc's default allocation (`default`) or with freed memory kept for
reuse (`keep`: devices.keep_freed_memory, which train.py applies on the CPU), and a sum of
the trained weights to show that both compute the same numbers.

    python results/cpu-allocator/probe.py default|keep      # from the repository root
"""

import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
import devices  # noqa: E402
from data import Corpus  # noqa: E402
from settings import RECIPES, defaults  # noqa: E402
from devices import StopRequest  # noqa: E402  (e304d6d: signals.py did not exist yet)
from trainer import Trainer  # noqa: E402

if sys.argv[1] == "keep":  # (not at e304d6d: it had no such setting)
    assert devices.keep_freed_memory(torch.device("cpu"))
settings = {**defaults("lstm"), **RECIPES["cpu30"], "budget_minutes": None, "finetune": None,
            "save": "/tmp/probe-allocator.pt"}
trainer = Trainer(settings, Corpus("data/wikitext-2"), torch.device("cpu"))
with StopRequest() as stop:
    trainer.train_epoch(stop, max_batches=20, log_interval=50)  # warm-up
    trainer.position, trainer.epoch = None, 1
    faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    trainer.train_epoch(stop, max_batches=100, log_interval=50)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    seconds = time.perf_counter() - started
weights = sum(p.double().sum().item() for p in trainer.model.parameters())
print(f"{sys.argv[1]:8s} {faults / 100:8.0f} minor faults/step {1000 * seconds / 100:6.1f} "
      f"ms/step  weights sum {weights!r}")
