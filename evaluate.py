"""evaluate.py: perplexity of a checkpoint, plain, with a continuous cache pointer, or with
dynamic evaluation.

    python evaluate.py --checkpoint checkpoints/awd.pt                    # test, batch 1
    python evaluate.py --checkpoint checkpoints/awd.pt --cache            # + cache pointer
    python evaluate.py --checkpoint checkpoints/awd.pt --tune-cache       # theta, lambda on valid
    python evaluate.py --checkpoint checkpoints/awd.pt --dynamic          # dynamic evaluation
    python evaluate.py --checkpoint checkpoints/awd.pt --tune-dynamic     # lr, decay on valid

Continuous cache pointer (Grave et al., 2017): keep the last W last-layer hidden states h_i
with the words x_(i+1) that followed them; for the current state h_t,
    p(w) = lambda * sum_i softmax_i(theta * <h_i, h_t>) [x_(i+1) = w] + (1 - lambda) * p_model(w).
Dynamic evaluation (Krause et al., 2018): after scoring each segment of the text, take a
gradient step on it, scaled per weight by the RMS of training gradients and pulled back
toward the trained weights. Both only read the checkpoint; the file is never written.

Perplexity is exp of the mean negative log-likelihood over every target token of the
batchified split (at batch size 1: every token after the first).
"""

import argparse
import itertools
import math
import sys
import time

import torch

import checkpoint
from checkpoint import CheckpointError
from data import (Corpus, CorpusError, batchify, check_batch_size, mean_nll, scored_targets,
                  windows)
from devices import PRECISIONS, keep_freed_memory, out_of_memory, pick_device, set_precision
from model import build_model, detach_hidden, without_dropout
from settings import (COUNT, DEFAULT_DATA, FRACTION, NON_NEGATIVE, POSITIVE, Parser,
                      SettingsError, ShowDefaults)
from util import duration, ppl, progress_bar


# --- Plain and cache evaluation: one streaming pass over a split -------------------------

def cache_distribution(p_model, history_states, history_words, state, theta, lam):
    """The full cache-mixed distribution at one position (for inspection and tests).
    p_model: (ntoken,) probabilities; history_states: (n, d); history_words: (n,); state: (d,)."""
    if len(history_words) == 0:
        return p_model
    attention = torch.softmax(theta * history_states @ state, dim=0)  # (n,)
    p_cache = torch.zeros_like(p_model).index_add_(0, history_words, attention)
    return lam * p_cache + (1 - lam) * p_model


class CachePointer:
    """Scores a split segment by segment (as data.mean_nll's on_segment) under the cache
    mixture, for a whole grid of (theta, lambda) at once. Each batch column is its own text
    with its own cache of the last `window` pairs (h_i, x_(i+1)). Only the target's
    probability is needed:
        p(x_(t+1)) = lambda * sum_i attn_i [x_(i+1) = x_(t+1)] + (1 - lambda) * p_model,
    and the dot products <h_i, h_t> serve every theta. Memory stays bounded by the window."""

    def __init__(self, window, thetas, lams):
        self.window = window
        self.thetas = [float(t) for t in thetas]
        self.lams = torch.tensor(lams, dtype=torch.float64)
        self.states = self.words = None  # history: (n, batch, d) and (n, batch)
        self.total_nll = torch.zeros(len(self.thetas), len(lams), dtype=torch.float64)

    def add(self, logp, states, targets):
        """logp, targets: (T, batch); states: (T, batch, d), the states that predicted them."""
        if self.states is None:  # (the sums stay on the device: no wait for it per window)
            self.states, self.words = states[:0], targets[:0]
            self.total_nll = self.total_nll.to(states.device)
        n, steps = self.words.size(0), targets.size(0)
        keys = torch.cat([self.states, states])  # (n + T, batch, d)
        key_words = torch.cat([self.words, targets])  # (n + T, batch)
        scores = torch.einsum("tbd,sbd->bts", states.float(), keys.float())  # (batch, T, n + T)
        query_pos = n + torch.arange(steps, device=keys.device).unsqueeze(1)
        key_pos = torch.arange(n + steps, device=keys.device).unsqueeze(0)
        visible = (key_pos < query_pos) & (key_pos >= query_pos - self.window)  # (T, n + T)
        match = (key_words.T.unsqueeze(1) == targets.T.unsqueeze(2)) & visible  # (batch, T, n+T)
        has_history = visible.any(dim=1)  # (T,): the first token of a column has no cache
        p_model = logp.T.double().exp()  # (batch, T)
        lams = self.lams.to(keys.device).view(-1, 1, 1)
        for a, theta in enumerate(self.thetas):
            attention = torch.softmax((theta * scores).masked_fill(~visible, float("-inf")),
                                      dim=-1).nan_to_num(0.0)
            p_cache = (attention * match).sum(dim=-1).double()  # (batch, T)
            mixed = torch.where(has_history, lams * p_cache + (1 - lams) * p_model, p_model)
            self.total_nll[a] -= mixed.log().sum(dim=(1, 2))
        self.states, self.words = keys[-self.window:], key_words[-self.window:]


# --- Dynamic evaluation ------------------------------------------------------------------
#
# Krause et al.'s rule, in the convention of their code's --ms option: the statistics are
# the root mean square over training windows of each weight's gradient of the window's
# mean loss,  rms = sqrt(mean_windows(g^2)).  After a segment is scored, every weight w
# (trained value w0) moves by
#     - lr * g / (rms + eps)  +  decay * rate * (w0 - w),
#     rate = rms / (sum over weight tensors of mean(rms)),  at most 1 / decay (the clip),
# g being the gradient of the segment's mean loss. Their WikiText-2 setting (lr 0.002,
# eps 0.001) was given in the other convention, rms = sqrt(sum_windows(g^2)), with the
# statistics over the whole training split at batch 100 and BPTT 5: 4,177 windows, so
# their rms is sqrt(4177) = 64.6 times ours and lr and eps translate to 0.002 / 64.6 and
# 0.001 / 64.6. The decay (their lambda, 0.02) is a ratio and translates unchanged.
DYN_DEFAULTS = dict(lr=3.09e-5, eps=1.55e-5, decay=0.02, segment=5, stat_batch_size=100,
                    stat_bptt=5)


def trainable_copy(model):
    """The same weights in a model with every dropout at zero, kept in training mode:
    cuDNN computes LSTM gradients only in training mode, and zero dropout keeps it exact."""
    clone = build_model(without_dropout(model.config)).to(next(model.parameters()).device)
    clone.load_state_dict(model.state_dict())
    return clone.train()


ESTIMATE_AFTER = 20  # windows timed before saying how long a pass will take
PARTIAL_EVERY = 1000  # segments between the partial figures of dynamic evaluation in a log


def say_estimate(what, done, total, started):
    """On stderr: how long the rest of a pass of `total` windows will take, from the first
    `done` (the pass began at `started`)."""
    left = (time.perf_counter() - started) / done * (total - done)
    print(f"{what}: {total:,} windows, about {duration(left)} to go (from the first {done})",
          file=sys.stderr)


def gradient_rms(model, data, batch_size, bptt, batches=None):
    """Root mean square, over `batches` windows of `data` (all of them when None), of each
    weight's gradient of the window's mean cross-entropy."""
    source = batchify(data, batch_size).to(next(model.parameters()).device)
    squares = [torch.zeros_like(p) for p in model.parameters()]
    hidden = model.init_hidden(batch_size)
    n, started = 0, time.perf_counter()
    total = min(math.ceil((source.size(0) - 1) / bptt), batches or math.inf)
    for _, inputs, targets in progress_bar(itertools.islice(windows(source, bptt), batches),
                                           "gradient stats", total=total):
        model.zero_grad(set_to_none=True)
        out = model(inputs, detach_hidden(hidden))
        hidden = out.hidden
        model.loss(out, targets).backward()
        for square, p in zip(squares, model.parameters()):
            if p.grad is not None:  # (an adaptive softmax cluster no target reached: zero)
                square += p.grad ** 2
        n += 1
        if n == ESTIMATE_AFTER and total > n:
            say_estimate("gradient statistics", n, total, started)
    return [torch.sqrt(square / n) for square in squares]


def decay_rates(rms, decay, clip=True):
    """Each weight's pull toward its trained value, decay * rms / sum(mean rms), clipped at
    1 (a pull of 1 lands exactly on the trained weight; more would overshoot it)."""
    total = sum(r.mean() for r in rms)
    rates = [r / total for r in rms]
    if clip and decay > 0:
        rates = [r.clamp(max=1 / decay) for r in rates]
    return [decay * r for r in rates]


@torch.no_grad()
def dynamic_update(params, originals, step_sizes, pulls):
    """One step of the rule above on every weight, from the gradients in p.grad:
    w += -step_size * g + pull * (w0 - w), with step_size = lr / (rms + eps), in place."""
    for p, w0, step_size, pull in zip(params, originals, step_sizes, pulls):
        pulled = (w0 - p).mul_(pull)
        if p.grad is not None:  # (an adaptive softmax cluster no target reached: no step)
            p.addcmul_(p.grad, step_size, value=-1)
        p.add_(pulled)


def dynamic_nll(model, data, batch_size, segment, lr, eps, pulls, rms, progress="dynamic"):
    """Summed NLL of every target of `data` and the target count under dynamic evaluation:
    each segment is scored with the current weights, then the weights take one step.
    The model's weights are changed; `trainable_copy` gives a model to spend."""
    params = list(model.parameters())
    originals = [p.detach().clone() for p in params]
    step_sizes = [lr / (r + eps) for r in rms]
    source = batchify(data, batch_size).to(originals[0].device)
    hidden = model.init_hidden(batch_size)
    total = torch.zeros((), dtype=torch.float64, device=originals[0].device)
    segments, started = math.ceil((source.size(0) - 1) / segment), time.perf_counter()
    bar = progress_bar(windows(source, segment), progress, total=segments)
    for n, (row, inputs, targets) in enumerate(bar):
        model.zero_grad(set_to_none=True)
        out = model(inputs, detach_hidden(hidden))
        hidden = out.hidden
        logp = model.target_log_probs(out, targets)  # as in plain evaluation, to the bit
        total -= logp.detach().double().sum()
        (-logp.mean()).backward()
        dynamic_update(params, originals, step_sizes, pulls)
        if n + 1 == ESTIMATE_AFTER and segments > n + 1:
            say_estimate(progress, n + 1, segments, started)
        if not bar.disable and n % 50 == 0:
            bar.set_postfix(ppl=f"{ppl(total.item() / ((row + len(inputs)) * batch_size)):.2f}")
        elif bar.disable and (n + 1) % PARTIAL_EVERY == 0 and n + 1 < segments:
            # (a log gets no bar: these lines say how far it got, should the run be cut)
            print(f"{progress}: {n + 1:,} of {segments:,} segments, ppl so far "
                  f"{ppl(total.item() / ((row + len(inputs)) * batch_size)):.2f}",
                  file=sys.stderr)
    return total.item(), scored_targets(len(data), batch_size)


# --- Command line ------------------------------------------------------------------------

def parse_args(argv=None):
    p = Parser(description="Perplexity of a checkpoint: plain, with a continuous cache "
               "pointer, or with dynamic evaluation.", formatter_class=ShowDefaults)
    p.add_argument("--checkpoint", required=True, help="a model checkpoint written by train.py")
    p.add_argument("--data", default=None,
                   help="corpus directory (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=("valid", "test"), default="test",
                   help="the split to score")
    p.add_argument("--batch_size", type=COUNT, default=1, help="the paper evaluates test at 1")
    p.add_argument("--bptt", type=COUNT, default=70, help="tokens per forward pass")
    p.add_argument("--max-tokens", dest="max_tokens", type=COUNT, default=None,
                   help="score only the first N tokens of --split (default: all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to evaluate (auto: CUDA when available, else the CPU)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="float32 math as train.py --precision sets it (bf16: its float32 "
                        "parts; evaluation is float32); default: the checkpoint's")
    p.add_argument("--info", action="store_true",
                   help="print how the checkpoint was trained (settings, command, commit, "
                        "versions, device, data) and exit")
    g = p.add_argument_group("continuous cache pointer")
    g.add_argument("--cache", action="store_true", help="mix in the cache pointer")
    g.add_argument("--window", type=COUNT, default=3785, help="cache size W")
    g.add_argument("--theta", type=NON_NEGATIVE, default=0.662, help="attention sharpness")
    g.add_argument("--lambdasm", type=FRACTION, default=0.1279, help="cache weight lambda")
    g.add_argument("--tune-cache", dest="tune_cache", action="store_true",
                   help="grid-search theta and lambda on valid, then report --split with them")
    g = p.add_argument_group("dynamic evaluation (Krause et al. 2018; the defaults are their "
                             "WikiText-2 setting: docs/evaluation.md)")
    g.add_argument("--dynamic", action="store_true", help="dynamic evaluation")
    g.add_argument("--tune-dynamic", dest="tune_dynamic", action="store_true",
                   help="grid-search --dyn-lr (x0.5 to x4) and --dyn-decay on valid, then "
                        "report --split with the best pair")
    g.add_argument("--dyn-lr", dest="dyn_lr", type=NON_NEGATIVE, default=DYN_DEFAULTS["lr"],
                   help="step size (0: plain evaluation)")
    g.add_argument("--dyn-eps", dest="dyn_eps", type=POSITIVE, default=DYN_DEFAULTS["eps"],
                   help="added to the gradient RMS in the step's denominator")
    g.add_argument("--dyn-decay", dest="dyn_decay", type=NON_NEGATIVE,
                   default=DYN_DEFAULTS["decay"], help="pull toward the trained weights (lambda)")
    g.add_argument("--dyn-clip", dest="dyn_clip", action=argparse.BooleanOptionalAction,
                   default=True, help="clip each weight's decay rate at 1/lambda, so that a "
                                      "pull never overshoots the trained weight")
    g.add_argument("--dyn-segment", dest="dyn_segment", type=COUNT,
                   default=DYN_DEFAULTS["segment"], help="tokens scored between two updates")
    g.add_argument("--dyn-stat-batch-size", dest="dyn_stat_batch_size", type=COUNT,
                   default=DYN_DEFAULTS["stat_batch_size"],
                   help="batch size of the training windows for the gradient RMS")
    g.add_argument("--dyn-stat-bptt", dest="dyn_stat_bptt", type=COUNT,
                   default=DYN_DEFAULTS["stat_bptt"],
                   help="length of the training windows for the gradient RMS")
    g.add_argument("--dyn-stat-batches", dest="dyn_stat_batches", type=COUNT, default=None,
                   help="training windows for the gradient RMS (default: all of the "
                        "training split)")
    g.add_argument("--dyn-tune-tokens", dest="dyn_tune_tokens", type=COUNT, default=None,
                   help="tune on the first N tokens of valid only (default: all)")
    args = p.parse_args(argv)
    if (args.dynamic or args.tune_dynamic) and (args.cache or args.tune_cache):
        p.error("--dynamic does not combine with the cache here; run them apart")
    return args


# The --tune-cache grid, around the paper's WikiText-2 values (theta 0.662, lambda 0.1279);
# weaker models lean on the cache more, hence lambda up to 0.5.
THETAS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.662, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5]
LAMBDAS = [0.05, 0.1, 0.1279, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]


def report(name, split, nll, count):
    """One result line; the perplexity first, so that the lines align whatever the name."""
    print(f"{split} ppl {ppl(nll):9.2f}  ({count:,} target tokens)  {name}")


# The --tune-dynamic grid: multiples of --dyn-lr, and decays around Krause et al.'s 0.02.
DYN_LR_FACTORS = [0.5, 1, 2, 4]
DYN_DECAYS = [0.01, 0.02, 0.05]


def run_dynamic(args, model, corpus, data, count):
    report("plain", args.split, mean_nll(model, data, args.batch_size, args.bptt, "scoring"),
           count)
    tuned = trainable_copy(model)
    rms = gradient_rms(tuned, corpus.train, args.dyn_stat_batch_size, args.dyn_stat_bptt,
                       args.dyn_stat_batches)
    trained = {name: t.clone() for name, t in tuned.state_dict().items()}

    def dynamic_mean_nll(text, lr, decay, progress):
        tuned.load_state_dict(trained)
        pulls = decay_rates(rms, decay, args.dyn_clip)
        total, n = dynamic_nll(tuned, text, args.batch_size, args.dyn_segment, lr,
                               args.dyn_eps, pulls, rms, progress)
        return total / n

    if args.tune_dynamic:
        valid = corpus.valid[:args.dyn_tune_tokens]
        results = {(factor * args.dyn_lr, decay): dynamic_mean_nll(
                       valid, factor * args.dyn_lr, decay, f"tuning lr x{factor} decay {decay}")
                   for factor in DYN_LR_FACTORS for decay in DYN_DECAYS}
        (lr, decay), best = min(results.items(), key=lambda item: item[1])
        edge = lr in (DYN_LR_FACTORS[0] * args.dyn_lr, DYN_LR_FACTORS[-1] * args.dyn_lr) or \
            decay in (DYN_DECAYS[0], DYN_DECAYS[-1])
        print(f"best on valid ({len(valid):,} tokens): lr {lr:g}, decay {decay:g} (valid ppl "
              f"{ppl(best):.2f})"
              + ("; on the edge of the grid, so the optimum may lie beyond it" if edge else ""))
        args.dyn_lr, args.dyn_decay = lr, decay
    report(f"dynamic (lr {args.dyn_lr:g}, eps {args.dyn_eps:g}, decay {args.dyn_decay:g})",
           args.split, dynamic_mean_nll(data, args.dyn_lr, args.dyn_decay, "dynamic"), count)


def run(args):
    if args.info:
        print("\n".join(checkpoint.describe(args.checkpoint)))
        return
    device = pick_device(args.device)
    keep_freed_memory(device)
    model, _, saved = checkpoint.load_model(args.checkpoint, device)
    set_precision(args.precision or checkpoint.precision(saved), device, training=False)
    corpus = Corpus(args.data or saved["args"].get("data") or DEFAULT_DATA)
    checkpoint.check_vocabulary(args.checkpoint, saved["vocab"], corpus)
    splits = [args.split] + (["valid"] if (args.tune_cache or args.tune_dynamic)
                             and args.split != "valid" else [])
    for split in splits:  # (tuning reads the valid split too)
        differs = checkpoint.data_differs(saved.get("provenance", []), corpus, split)
        if differs:
            print(differs, file=sys.stderr)
    data = getattr(corpus, args.split)[:args.max_tokens]  # (None: all of it)
    needs = [(args.split, "--batch_size", args.batch_size)]
    if args.tune_cache or args.tune_dynamic:
        needs.append(("valid", "--batch_size", args.batch_size))
    if args.dynamic or args.tune_dynamic:
        needs.append(("train", "--dyn-stat-batch-size", args.dyn_stat_batch_size))
    for split, flag, batch in needs:
        check_batch_size(corpus, split, batch, flag)
    if len(data) // args.batch_size < 2:
        raise SettingsError(f"--max-tokens {args.max_tokens} leaves fewer than 2 tokens per "
                            f"column at --batch_size {args.batch_size}; give at least "
                            f"{2 * args.batch_size}")
    count = scored_targets(len(data), args.batch_size)
    part = f"first {len(data):,} tokens of the " if args.max_tokens else ""
    print(f"{args.checkpoint}: {saved['config']['model']} model, best at epoch "
          f"{saved['epoch']} | {part}{args.split} split of {corpus.path} | batch "
          f"{args.batch_size}")

    if args.dynamic or args.tune_dynamic:
        run_dynamic(args, model, corpus, data, count)
        return

    if args.tune_cache:
        grid = CachePointer(args.window, THETAS, LAMBDAS)
        mean_nll(model, corpus.valid, args.batch_size, args.bptt, "tuning on valid", grid.add)
        valid_count = scored_targets(len(corpus.valid), args.batch_size)
        a, b = divmod(int(torch.argmin(grid.total_nll)), len(LAMBDAS))
        args.theta, args.lambdasm = THETAS[a], LAMBDAS[b]
        edge = a in (0, len(THETAS) - 1) or b in (0, len(LAMBDAS) - 1)
        print(f"best on valid: theta {args.theta}, lambda {args.lambdasm} (valid ppl "
              f"{ppl(grid.total_nll[a, b].item() / valid_count):.2f})"
              + ("; on the edge of the grid, so the optimum may lie beyond it" if edge else ""))
    cache = None
    if args.cache or args.tune_cache:
        cache = CachePointer(args.window, [args.theta], [args.lambdasm])
    plain = mean_nll(model, data, args.batch_size, args.bptt, "scoring",
                     cache.add if cache else None)
    report("plain", args.split, plain, count)
    if cache is not None:
        report(f"cache (W {args.window}, theta {args.theta}, lambda {args.lambdasm})",
               args.split, cache.total_nll.item() / count, count)


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (CheckpointError, CorpusError, SettingsError) as e:
        sys.exit(f"error: {e}")
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if not out_of_memory(e):
            raise
        sys.exit(f"error: out of memory ({checkpoint.one_line(e)[:120]}); lower --bptt (now "
                 f"{args.bptt}) or --batch_size (now {args.batch_size})"
                 + (f" or --window (now {args.window})" if args.cache else "")
                 + "; evaluate.py writes nothing")
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written (evaluate.py only reads the checkpoint)",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
