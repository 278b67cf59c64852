"""Where a step of the cpu30 model spends its time on the CPU: 50 timed steps, then
torch.profiler over 20 more, the operators by their own time (docs/speed.md).

    python results/bench-cpu/profile_cpu30.py > results/bench-cpu/profile-cpu30.txt
"""
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, REPO)
from data import Corpus, batchify, windows  # noqa: E402
from devices import keep_freed_memory  # noqa: E402
from model import build_model, model_config  # noqa: E402
from settings import RECIPES, defaults  # noqa: E402
from trainer import Objective, train_step  # noqa: E402

keep_freed_memory(torch.device("cpu"))
torch.set_num_threads(2)
s = dict(defaults("lstm"), **RECIPES["cpu30"])  # (the recipe names its model)
corpus = Corpus(os.path.join(REPO, "data", "wikitext-2"))
torch.manual_seed(0)
model = build_model(model_config(s, len(corpus.dictionary))).train()
objective = Objective(model, 0.0, 0.0)
optimizer = torch.optim.SGD(model.parameters(), lr=s["lr"])
batches = windows(batchify(corpus.train[:100 * s["bptt"] * s["batch_size"] + 1],
                           s["batch_size"]), s["bptt"])
hidden = model.init_hidden(s["batch_size"])


def steps(n):
    global hidden
    for _ in range(n):
        _, inputs, targets = next(batches)
        _, hidden = train_step(objective, optimizer, inputs, targets, hidden, s["clip"],
                               "torch")


steps(10)
started = time.perf_counter()
steps(50)
print(f"torch {torch.__version__}, 2 threads: {(time.perf_counter() - started) / 50 * 1000:.1f} "
      "ms per step (50 steps)")
with profile(activities=[ProfilerActivity.CPU]) as profiled:
    steps(20)
print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
