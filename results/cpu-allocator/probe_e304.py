"""probe_e304.py: results/cpu-allocator/probe.py as it runs in a worktree of e304d6d, which
kept StopRequest in devices.py and had no devices.keep_freed_memory (two lines differ):
the cpu30 step before the kept memory, for e304d6d-side-by-side.txt.

    git worktree add /tmp/e304 e304d6d && cp results/cpu-allocator/probe_e304.py /tmp/e304
    (cd /tmp/e304 && python probe_e304.py default)
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
