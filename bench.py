"""bench.py: time full training steps of the models and print the figures.

A step is what train.py does per batch (bptt.train_step): forward, cross-entropy plus
AR/TAR, backward, gradient clipping, SGD step. After --warmup untimed steps, --steps
steps are timed (with CUDA synchronisation at both ends) on WikiText-2 tokens, at a fixed
BPTT length. Printed for each configuration: ms/step, tokens/s and peak memory:
  (a) AWD-LSTM with every regulariser on,
  (b) the same shapes with every regulariser off, a plain stack of nn.LSTMs: the ceiling,
  a/b, the speed of (a) as a fraction of (b),
  (c) the baseline LSTM,
  (d) the same baseline stepped the way the PyTorch word-language-model example does it
      (log-softmax then NLL loss, a hand-written SGD update), for comparison with (c).

    python bench.py                      # defaults: paper shapes on CUDA, smaller on CPU
    python bench.py --full               # the full-size models on any device
"""

import argparse
import itertools
import resource
import statistics
import sys
import time

import torch

from bptt import train_step, windows
from config import (COUNT, PRECISIONS, PRESETS, Parser, SettingsError, checked, describe_device,
                    out_of_memory, pick_device, set_precision)
from data import DEFAULT_DATA, Corpus, CorpusError, batchify
from model import build_model, count_parameters, model_config

# Shapes (emsize, nhid, nlayers, batch_size, bptt) when no flag says otherwise.
FULL = dict(awd=(400, 1150, 3, 80, 70), lstm=(650, 650, 2, 20, 35))
CPU_SMALL = dict(awd=(200, 400, 3, 20, 35), lstm=(200, 200, 2, 20, 35))  # lstm: PyTorch
SHAPE = ("emsize", "nhid", "nlayers", "batch_size", "bptt")              # example "small"


def example_style_step(model, optimizer, inputs, targets, hidden, lr, s):
    """The PyTorch example's update: separate log-softmax and NLL loss, then p -= lr * grad
    parameter by parameter (no optimizer object, no AR/TAR, no weight decay)."""
    model.zero_grad()
    out = model(inputs, tuple(h.detach() for h in hidden))
    log_probs = torch.log_softmax(out.logits, dim=-1).view(-1, out.logits.size(-1))
    loss = torch.nn.functional.nll_loss(log_probs, targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), s["clip"])
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
    return loss.detach(), out.hidden


def time_steps(model_kind, shape, regularised, corpus, device, steps, warmup,
               step_fn=train_step, precision="fp32"):
    """Mean seconds per training step and peak memory (bytes) for one configuration."""
    emsize, nhid, nlayers, batch_size, bptt = shape
    s = dict(PRESETS[model_kind], emsize=emsize, nhid=nhid, nlayers=nlayers,
             batch_size=batch_size, bptt=bptt, precision=precision)
    if not regularised:  # same shapes, no dropout of any kind, no AR/TAR
        s.update(dropout=0.0, dropouth=0.0, dropouti=0.0, dropoute=0.0, wdrop=0.0,
                 alpha=0.0, beta=0.0)
    torch.manual_seed(0)
    model = build_model(model_config(dict(s, model=model_kind), len(corpus.dictionary)))
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=s["lr"], weight_decay=s["wdecay"])
    data = batchify(corpus.train[: (steps + warmup + 1) * bptt * batch_size + 1],
                    batch_size).to(device)
    hidden = model.init_hidden(batch_size)
    batches = windows(data, bptt)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def run(n):
        nonlocal hidden
        for _, inputs, targets in itertools.islice(batches, n):
            _, hidden = step_fn(model, optimizer, inputs, targets, hidden, s["lr"], s)

    run(warmup)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:  # the process's high-water mark so far (ru_maxrss is in KiB on Linux)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return seconds, peak, count_parameters(model)


def main(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--full", action="store_true", help="full-size shapes on any device")
    p.add_argument("--steps", type=COUNT, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=checked(int, lambda v: v >= 0, "not be negative"),
                   default=3, help="untimed steps first")
    p.add_argument("--repeats", type=COUNT, default=3,
                   help="times each configuration is timed (round-robin); medians printed")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="as train.py --precision (the example-style step (d) is always fp32)")
    for prefix in ("awd", "lstm"):
        for name in SHAPE:
            p.add_argument(f"--{prefix}-{name.replace('_', '-')}", type=COUNT, default=None,
                           help=f"{prefix} {name} (default: by device)")
    args = p.parse_args(argv)
    try:
        run(args)
    except (CorpusError, SettingsError) as e:
        sys.exit(f"error: {e}")
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        sys.exit("error: out of memory; lower the batch size or BPTT of the shapes "
                 "(--awd-batch-size, --awd-bptt, ...)")


def run(args):
    device = pick_device(args.device)
    set_precision(args.precision, device)
    defaults = FULL if args.full or device.type == "cuda" else CPU_SMALL
    shapes = {kind: tuple(getattr(args, f"{kind}_{name}") or default
                          for name, default in zip(SHAPE, defaults[kind]))
              for kind in ("awd", "lstm")}
    corpus = Corpus(args.data)
    print(f"torch {torch.__version__} | {device.type} ({describe_device(device)}, "
          f"{args.precision}) | median of {args.repeats} x {args.steps} "
          f"timed steps after {args.warmup} warm-up | vocabulary {len(corpus.dictionary):,}")
    memory = "peak GPU memory" if device.type == "cuda" else "process peak RSS"
    print(f"{'configuration':<44} {'params':>11} {'ms/step':>9} {'tokens/s':>10} "
          f"{memory:>16}")
    runs = [("a", "awd", True, "AWD-LSTM, all regularisers", train_step),
            ("b", "awd", False, "same shapes, no regularisation", train_step),
            ("c", "lstm", True, "baseline LSTM", train_step),
            ("d", "lstm", True, "baseline, PyTorch-example-style step", example_style_step)]
    # Round-robin repeats, median per configuration: on a busy CPU single timings of the
    # same configuration differ by 10% and more.
    timings = {label: [] for label, *_ in runs}
    for _ in range(args.repeats):
        for label, kind, regularised, title, step_fn in runs:
            timings[label].append(time_steps(kind, shapes[kind], regularised, corpus, device,
                                             args.steps, args.warmup, step_fn, args.precision))
    results = {}
    for label, kind, regularised, title, step_fn in runs:
        emsize, nhid, nlayers, batch_size, bptt = shapes[kind]
        seconds = statistics.median(t[0] for t in timings[label])
        peak, n_params = max(t[1] for t in timings[label]), timings[label][0][2]
        results[label] = seconds
        name = f"({label}) {title}"
        print(f"{name:<44} {n_params:>11,} {1000 * seconds:>9.1f} "
              f"{batch_size * bptt / seconds:>10,.0f} {peak / 2**20:>13,.0f} MiB")
        if label == "b":
            print(f"{'a/b (speed of a as a fraction of b)':<44} {'':>11} "
                  f"{results['b'] / results['a']:>9.3f}")
        if label == "d":
            print(f"{'c/d (speed of c as a fraction of d)':<44} {'':>11} "
                  f"{results['d'] / results['c']:>9.3f}")
    for kind in ("awd", "lstm"):
        print(f"shapes {kind}: " + ", ".join(f"{n} {v}" for n, v in zip(SHAPE, shapes[kind])))


if __name__ == "__main__":
    main()
