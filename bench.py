"""bench.py: time full training steps of the models and print the figures.

A step is what train.py does per batch (trainer.train_step): forward, cross-entropy plus
AR/TAR, backward, gradient clipping, SGD step. After --warmup untimed steps, --steps
steps are timed (with CUDA synchronisation at both ends) at a fixed BPTT length. Printed
for each configuration: ms/step, tokens/s and peak memory:
  (a) AWD-LSTM with every regulariser on,
  (b) the same shapes with every regulariser off, a plain stack of nn.LSTMs: the ceiling,
  (c) the baseline LSTM,
  (d) the same baseline stepped the way the PyTorch word-language-model example does it
      (log-softmax then NLL loss, a hand-written SGD update), for comparison with (c),
  (e) AWD-LSTM (a's shapes, untied) with WikiText-103's vocabulary of 267,735 words and an
      adaptive softmax (--cutoffs), on Zipf-distributed synthetic tokens,
  (f) the same with a full softmax over the 267,735 words (only when --configs names it:
      its logits alone take GiBs),
  (g) the model of --recipe cpu30 (one 400-unit LSTM, an adaptive softmax), at its shapes,
  (h) the PyTorch example's model and step at (g)'s shapes (a full softmax, untied),
  (i) the PyTorch example's model and step at (a)'s sizes (untied), for comparison with (a);
  and the ratios a/b, c/d, e/f, g/h and a/i.
Each row also gives the step's floating-point work (GFLOP: what torch's FlopCounterMode
counts of the matmuls outside the LSTMs, plus 24 h (in + h) per token for each LSTM layer,
forward and backward) as a share of the device's peak: the rate of a large fp32 matmul on
the same threads, measured first. (a)-(d) and (g)-(i) step on WikiText-2 tokens. Under
torchrun, every process steps its share of the batch's columns through
DistributedDataParallel, as train.py does, and tokens/s is given per process and in total.
Each row also says which kernels ran the LSTMs (cuDNN, oneDNN or torch's own) and how
many times a step made cuDNN copy their weights. Figures are printed as they come (every
25 timed steps, and each timing's result), so that a run cut short still says what it
measured; the table of medians follows at the end.

    python bench.py                      # defaults: paper shapes on CUDA, smaller on CPU
    python bench.py --full               # the full-size models on any device
    python bench.py --configs ef         # the large vocabulary: adaptive and full softmax
    torchrun --standalone --nproc_per_node 4 bench.py
"""

import argparse
import contextlib
import itertools
import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import distributed
from data import Corpus, CorpusError, batchify, windows
from devices import (PRECISIONS, check_bf16, describe_device, keep_freed_memory,
                     out_of_memory, resolve_precision, set_precision, synchronize)
from model import CLUSTER_SHRINK, build_model, count_parameters, model_config
from settings import (COUNT, DEFAULT_DATA, RECIPES, Parser, SettingsError, ShowDefaults,
                      checked, cutoff_list, defaults)
from trainer import Objective, train_step
from util import ppl

# Shapes (emsize, nhid, nlayers, batch_size, bptt) when no flag says otherwise.
SHAPE = ("emsize", "nhid", "nlayers", "batch_size", "bptt")
CPU30 = tuple(RECIPES["cpu30"][name] for name in SHAPE)  # the same on every device
FULL = dict(awd=(400, 1150, 3, 80, 70), lstm=(650, 650, 2, 20, 35), cpu30=CPU30)
CPU_SMALL = dict(awd=(200, 400, 3, 20, 35), lstm=(200, 200, 2, 20, 35),  # lstm: PyTorch
                 cpu30=CPU30)                                            # example "small"
WT103_WORDS = 267_735  # WikiText-103's vocabulary
CONFIGS = "abcdefghi"


def example_style_step(objective, optimizer, inputs, targets, hidden, clip, precision):
    """The PyTorch example's update: separate log-softmax and NLL loss, then p -= lr * grad
    parameter by parameter (no optimizer step: `optimizer` only holds the lr; no AR/TAR, no
    weight decay)."""
    model, lr = objective.model, optimizer.param_groups[0]["lr"]
    model.zero_grad()
    out = model(inputs, tuple(h.detach() for h in hidden))
    log_probs = torch.log_softmax(out.logits, dim=-1).view(-1, out.logits.size(-1))
    loss = torch.nn.functional.nll_loss(log_probs, targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
    return loss.detach(), out.hidden


def zipf_tokens(n, ntoken, seed=0):
    """n token ids drawn with probability proportional to 1 / (id + 1): word frequencies in
    text fall off roughly so (Zipf's law), with id 0 the commonest, as the adaptive
    softmax's frequency ranks have it. Its speed depends on how many targets its head
    holds: here the first 20,000 of 267,735 words hold 80% of the tokens."""
    p = 1.0 / np.arange(1, ntoken + 1)
    return torch.from_numpy(np.random.default_rng(seed).choice(ntoken, size=n, p=p / p.sum()))


class LSTMKernels(TorchDispatchMode):
    """Records, while active, which kernels ran the LSTMs (`path`: "cudnn", "onednn", or
    "native" for torch's own) and counts the cuDNN weight re-packs (`repacks`): a flatten
    (what nn.LSTM does when its weights were swapped, e.g. by functional_call) and a cuDNN
    LSTM call given weights that are not views of one buffer in its layout (it then copies
    them and warns). Re-packs are always 0 on the CPU, which has no cuDNN."""

    def __init__(self):
        super().__init__()
        self.repacks, self.kernels = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._cudnn_rnn_flatten_weight.default:
            self.repacks += 1
        elif func is torch.ops.aten._cudnn_rnn.default:
            self.kernels.add("cudnn")
            self.repacks += args[3] is None  # no weight_buf
        elif func is torch.ops.aten.mkldnn_rnn_layer.default:
            self.kernels.add("onednn")
        return func(*args, **(kwargs or {}))

    @property
    def path(self):
        """"cudnn", "onednn" or "native": torch's own kernels (cell by cell) ran the LSTMs
        when neither library's op was called."""
        return "+".join(sorted(self.kernels)) or "native"


PROGRESS_EVERY = 25  # timed steps between partial figures


def time_steps(run, shape, tokens, ntoken, device, steps, warmup, precision,
               group=distributed.SINGLE, progress=None):
    """One configuration (`run`, an entry of RUNS, with the adaptive softmax's "cutoffs")
    at `shape`, stepping through `tokens` (1-D ids below `ntoken`): a dict of the mean
    seconds per training step, this process's peak memory (bytes), the parameter count,
    the mean training loss of the timed steps, the dtype the last LSTM layer computed in,
    the kernels that ran the LSTMs and the cuDNN weight re-packs of one more step
    (LSTMKernels), untimed. Every PROGRESS_EVERY timed steps before the last, `progress`
    (if given) is called with (steps so far, seconds per step, mean loss)."""
    emsize, nhid, nlayers, batch_size, bptt = shape
    s = dict(defaults(run["kind"]), emsize=emsize, nhid=nhid, nlayers=nlayers,
             batch_size=batch_size, bptt=bptt, precision=precision, **run.get("settings", {}))
    if run.get("large_vocabulary"):  # an adaptive softmax cannot be tied; nor is (f), to match
        s.update(tied=False, cutoffs=run["cutoffs"] if run["adaptive"] else [])
    if not run["regularised"]:  # same shapes, no dropout of any kind, no AR/TAR
        s.update(dropout=0.0, dropouth=0.0, dropouti=0.0, dropoute=0.0, wdrop=0.0,
                 alpha=0.0, beta=0.0)
    torch.manual_seed(0)
    model = build_model(model_config(dict(s, model=run["kind"]), ntoken)).to(device).train()
    data = batchify(tokens[: (steps + warmup + 2) * bptt * batch_size + 1], batch_size)
    data = data[:, group.columns(batch_size)].contiguous().to(device)
    if precision == "bf16":
        check_bf16(device, model, data.size(1))
    objective = group.wrap(Objective(model, s["alpha"], s["beta"]),
                           find_unused_parameters=model.adaptive)
    optimizer = torch.optim.SGD(model.parameters(), lr=s["lr"], weight_decay=s["wdecay"])
    hidden = model.init_hidden(data.size(1))
    batches = windows(data, bptt)
    step_fn = run.get("step", train_step)
    dtypes = []
    model.rnns[-1].register_forward_hook(lambda module, inputs, out: dtypes.append(out[0].dtype))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def steps_of(n):
        nonlocal hidden
        losses = []
        for _, inputs, targets in itertools.islice(batches, n):
            loss, hidden = step_fn(objective, optimizer, inputs, targets, hidden, s["clip"],
                                   precision)
            losses.append(loss)
        synchronize(device)
        return losses

    steps_of(warmup)
    seconds, losses = 0.0, []
    while len(losses) < steps:  # in parts, the device synchronised at each end
        start = time.perf_counter()
        losses += steps_of(min(PROGRESS_EVERY, steps - len(losses)))
        seconds += time.perf_counter() - start
        if progress is not None and len(losses) < steps:
            progress(len(losses), seconds / len(losses), torch.stack(losses).float().mean().item())
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:  # the process's high-water mark so far (ru_maxrss is in KiB on Linux)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with LSTMKernels() as kernels, FlopCounterMode(display=False) as counter:
        steps_of(1)
    flops = counter.get_total_flops()
    if kernels.path != "native":  # (the counter sees torch's own LSTM kernels' matmuls)
        flops += data.size(1) * bptt * sum(24 * rnn.lstm.hidden_size * (
            rnn.lstm.input_size + rnn.lstm.hidden_size) for rnn in model.rnns)
    return dict(seconds=seconds / steps, peak=peak, params=count_parameters(model),
                train_loss=torch.stack(losses).float().mean().item(),
                lstm_dtype=str(dtypes[-1]).replace("torch.", ""), kernels=kernels.path,
                repacks=kernels.repacks, flops=flops)


def matmul_peak(device, n, dtype=torch.float32, repeats=5):
    """The device's rate at its best-suited work, FLOP/s: n x n matmuls (float32 unless
    `dtype`) on the threads the steps use, the fastest of three timings of `repeats`."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    timings = []
    for _ in range(3):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        timings.append(time.perf_counter() - started)
    return 2 * n ** 3 * repeats / min(timings)


def figures(seconds, tokens_per_step, loss):
    """"35.2 ms/step, 2,273 tokens/s, train ppl 1,234.5": a timing in words."""
    return (f"{1000 * seconds:.1f} ms/step, {tokens_per_step / seconds:,.0f} tokens/s, "
            f"train ppl {ppl(loss):,.1f}")


# The configurations: which model, its settings besides the shapes, which data.
RUNS = [
    dict(label="a", kind="awd", regularised=True, title="AWD-LSTM, all regularisers"),
    dict(label="b", kind="awd", regularised=False, title="same shapes, no regularisation"),
    dict(label="c", kind="lstm", regularised=True, title="baseline LSTM"),
    dict(label="d", kind="lstm", regularised=True, step=example_style_step,
         title="baseline, PyTorch-example-style step"),
    dict(label="e", kind="awd", regularised=True, large_vocabulary=True, adaptive=True,
         title="AWD-LSTM, 267,735 words, adaptive"),
    dict(label="f", kind="awd", regularised=True, large_vocabulary=True, adaptive=False,
         title="AWD-LSTM, 267,735 words, full softmax"),
    dict(label="g", kind="lstm", shape="cpu30", regularised=True, title="--recipe cpu30",
         settings=dict(tied=False, cutoffs=RECIPES["cpu30"]["cutoffs"],
                       dropout=RECIPES["cpu30"]["dropout"])),
    dict(label="h", kind="lstm", shape="cpu30", regularised=True, step=example_style_step,
         title="(g)'s shapes, PyTorch example", settings=dict(
             tied=False, dropout=RECIPES["cpu30"]["dropout"])),
    dict(label="i", kind="lstm", shape="awd", regularised=True, step=example_style_step,
         title="(a)'s sizes, PyTorch example", settings=dict(tied=False)),
]
RATIOS = (("a", "b"), ("c", "d"), ("e", "f"), ("g", "h"), ("a", "i"))


def precision_list(text):
    """An argparse type: "torch,bf16" -> ["torch", "bf16"], each a --precision."""
    names = text.split(",")
    if not all(name in PRECISIONS for name in names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"must be one or more of {', '.join(PRECISIONS)}, "
                                         f"comma-separated (got {text!r})")
    return names


def config_letters(text):
    """An argparse type: "ace" -> "ace", letters of CONFIGS only."""
    if not text or not set(text) <= set(CONFIGS):
        raise argparse.ArgumentTypeError(f"must be letters of {CONFIGS} (got {text!r})")
    return text


def main(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0],
               formatter_class=ShowDefaults)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--full", action="store_true", help="full-size shapes on any device")
    p.add_argument("--configs", type=config_letters, default="abcdeghi",
                   help="which configurations to time")
    p.add_argument("--steps", type=COUNT, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=checked(int, lambda v: v >= 0, "not be negative"),
                   default=3, help="untimed steps first")
    p.add_argument("--repeats", type=COUNT, default=3,
                   help="times each configuration is timed (round-robin); medians printed")
    p.add_argument("--data", default=DEFAULT_DATA, help="the corpus of (a)-(d)")
    p.add_argument("--cutoffs", type=cutoff_list, default=[20000, 60000],
                   help="the adaptive softmax's cutoffs in (e), as train.py --cutoffs")
    p.add_argument("--precision", type=precision_list, default=["torch"],
                   help="as train.py --precision, or several side by side (torch,bf16): each "
                        "configuration is timed at each, and the table gives their ratios; "
                        "the example-style steps (d), (h), (i) have no autocast and run at "
                        "the first only")
    p.add_argument("--peak-n", type=COUNT, default=2048,
                   help="the size of the matmuls that measure the device's peak")
    for prefix in ("awd", "lstm", "cpu30"):
        for name in SHAPE:
            p.add_argument(f"--{prefix}-{name.replace('_', '-')}", type=COUNT, default=None,
                           help=f"{prefix} {name} (default: by device)")
    rank = distributed.environment_rank()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(distributed.only_main_prints())
            args = p.parse_args(argv)
            group, device = stack.enter_context(distributed.start(args.device))
            keep_freed_memory(device)
            run(args, group, device)
    except (CorpusError, SettingsError) as e:
        sys.exit(f"error: {e}" if rank == 0 else 1)
    except SystemExit as e:  # a flag error (on every process) or --help
        sys.exit(1 if rank != 0 and isinstance(e.code, str) else e.code)
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        sys.exit("error: out of memory; lower the batch size or BPTT of the shapes "
                 "(--awd-batch-size, --awd-bptt, ...)")


def run(args, group, device):
    args.precision = list(dict.fromkeys(resolve_precision(p, device)[0] for p in args.precision))
    defaults = FULL if args.full or device.type == "cuda" else CPU_SMALL
    shapes = {kind: tuple(getattr(args, f"{kind}_{name}") or default
                          for name, default in zip(SHAPE, defaults[kind]))
              for kind in ("awd", "lstm", "cpu30")}
    runs = chosen_runs(args, shapes, group)
    corpus = Corpus(args.data) if any(not r.get("large_vocabulary") for r in runs) else None
    largest = max(shapes["awd"][3] * shapes["awd"][4], 1) * (args.steps + args.warmup + 2)
    large = zipf_tokens(largest, WT103_WORDS) if any(r.get("large_vocabulary")
                                                     for r in runs) else None
    where = f"{group.size} processes ({group.backend}), " if group.size > 1 else ""
    print(f"torch {torch.__version__} | {where}{device.type} ({describe_device(device)}, "
          f"{','.join(args.precision)}) | median of {args.repeats} x {args.steps} timed steps "
          f"after {args.warmup} warm-up" + (f" | vocabulary {len(corpus.dictionary):,}"
                                            if corpus else ""))
    peak_flops = matmul_peak(device, args.peak_n)
    print(f"peak: {peak_flops / 1e9:,.1f} GFLOP/s ({args.peak_n} x {args.peak_n} float32 "
          "matmuls, the fastest of three timings)")
    if "bf16" in args.precision:
        print(f"peak in bfloat16: {matmul_peak(device, args.peak_n, torch.bfloat16) / 1e9:,.1f} "
              f"GFLOP/s (the same in bfloat16)")
    # Each configuration at each precision (the example-style steps have no autocast: at
    # the first only). Round-robin repeats, median per row: on a busy CPU single timings of
    # the same configuration differ by 10% and more.
    rows = [(r, precision) for r in runs for precision in args.precision
            if precision == args.precision[0] or "step" not in r]
    timings = {(r["label"], precision): [] for r, precision in rows}
    for repeat in range(args.repeats):
        for r, precision in rows:
            tokens, ntoken = ((large, WT103_WORDS) if r.get("large_vocabulary") else
                              (corpus.train, len(corpus.dictionary)))
            batch_size, bptt = shapes[r.get("shape", r["kind"])][3:]
            tokens_per_step = batch_size // group.size * bptt  # this process's
            where = f"({r['label']}) {repeat + 1}/{args.repeats}" + (
                f" {precision}" if len(args.precision) > 1 else "")

            def progress(done, seconds, loss):
                print(f"{where}, after {done} of {args.steps} timed steps: "
                      f"{figures(seconds, tokens_per_step, loss)}")

            set_precision(precision, device)
            t = time_steps(dict(r, cutoffs=args.cutoffs), shapes[r.get("shape", r["kind"])],
                           tokens, ntoken, device, args.steps, args.warmup, precision,
                           group, progress)
            timings[r["label"], precision].append(t)
            print(f"{where}: {figures(t['seconds'], tokens_per_step, t['train_loss'])}, LSTMs "
                  f"in {t['lstm_dtype']} on {t['kernels']} kernels, {t['repacks']} re-packs")
    print_table(rows, timings, shapes, group, device, peak_flops, args.precision)
    for kind in sorted({r.get("shape", r["kind"]) for r in runs}):
        print(f"shapes {kind}: " + ", ".join(f"{n} {v}" for n, v in zip(SHAPE, shapes[kind])))
    if large is not None:
        print(f"(e), (f): vocabulary {WT103_WORDS:,}, Zipf-distributed synthetic tokens, untied"
              + (f", cutoffs {','.join(map(str, args.cutoffs))}" if "e" in args.configs else ""))


def chosen_runs(args, shapes, group):
    """The configurations --configs names that can run here, or a SettingsError."""
    runs = [r for r in RUNS if r["label"] in args.configs]
    if group.size > 1 and any(r["label"] == "d" for r in runs):
        print("(d) is left out under torchrun: its hand-written update has no all-reduce")
        runs = [r for r in runs if r["label"] != "d"]
    for kind in {r.get("shape", r["kind"]) for r in runs}:
        if shapes[kind][3] % group.size:
            raise SettingsError(f"the {kind} batch size {shapes[kind][3]} does not split "
                                f"evenly over {group.size} processes; give a multiple of "
                                f"{group.size} (--{kind}-batch-size)")
    if args.cutoffs[-1] >= WT103_WORDS:
        raise SettingsError(f"--cutoffs must stay below {WT103_WORDS:,}")
    if "e" in args.configs and shapes["awd"][1] // CLUSTER_SHRINK ** len(args.cutoffs) < 1:
        raise SettingsError(f"(e): with {len(args.cutoffs)} --cutoffs the adaptive softmax's "
                            f"last cluster would have no features at --awd-nhid "
                            f"{shapes['awd'][1]}; give fewer cutoffs or a larger --awd-nhid")
    return runs


def print_table(rows, timings, shapes, group, device, peak_flops, precisions):
    """One row per configuration and precision (the median time of its repeats; the others'
    figures from its first, all repeats starting from the same seed and data), with its
    FLOP/s as a share of `peak_flops` (a process's, float32's), the ratios between
    configurations at the first precision, and each precision's speed relative to the
    first's."""
    memory = "peak GPU memory" if device.type == "cuda" else "process peak RSS"
    per_process = f" {'tok/s/proc':>10}" if group.size > 1 else ""
    several = len(precisions) > 1
    print(f"{'configuration':<44} {'params':>11} {'ms/step':>9} {'tokens/s':>10}"
          f"{per_process} {'train ppl':>10} {'LSTM':>8} {'kernels':>8} {'re-packs':>8} "
          f"{memory:>16} {'GFLOP/step':>10} {'of peak':>7}")
    results = {}
    for r, precision in rows:
        label = r["label"]
        batch_size, bptt = shapes[r.get("shape", r["kind"])][3:]
        first = timings[label, precision][0]
        seconds = statistics.median(t["seconds"] for t in timings[label, precision])
        peak = max(group.gather(max(t["peak"] for t in timings[label, precision])))
        # Each process's own rate over its columns; the run's is their sum.
        rates = group.gather(batch_size // group.size * bptt / seconds)
        seconds = max(group.gather(seconds))  # the processes wait for the slowest
        results[label, precision] = seconds
        name = f"({label}) {r['title']}" + (f" [{precision}]" if several else "")
        per_process = f" {statistics.mean(rates):>10,.0f}" if group.size > 1 else ""
        print(f"{name:<44} {first['params']:>11,} {1000 * seconds:>9.1f} {sum(rates):>10,.0f}"
              f"{per_process} {ppl(first['train_loss']):>10.1f} {first['lstm_dtype']:>8} "
              f"{first['kernels']:>8} {first['repacks']:>8} {peak / 2**20:>13,.0f} MiB "
              f"{first['flops'] / 1e9:>10.3f} {first['flops'] / seconds / peak_flops:>7.1%}")
        base = precisions[0]
        if precision != base and (label, base) in results:
            print(f"{f'{label}: {precision}/{base} (speed of {precision} relative to {base})':<44} "
                  f"{'':>11} {results[label, base] / seconds:>9.3f}")
        for this, that in RATIOS:
            if label == that and precision == base and (this, base) in results:
                print(f"{f'{this}/{that} (speed of {this} relative to {that})':<44} "
                      f"{'':>11} {results[that, base] / results[this, base]:>9.3f}")


if __name__ == "__main__":
    main()
