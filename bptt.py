"""bptt.py: running a language model over batched text with truncated BPTT: the windows of
a batchified split, one training step, the exact evaluation loop, and perplexity.

train.py, evaluate.py and bench.py all walk a split the same way: `windows` yields
consecutive (inputs, targets) windows of a (steps, batch) tensor made by data.batchify,
and the hidden state of one window is fed to the next.
"""

import functools
import math
import sys

import numpy as np
import torch
from tqdm import tqdm

from data import batchify, get_batch
from distributed import SINGLE
from model import detach_hidden


def ppl(loss):
    """Perplexity of a mean negative log-likelihood (inf rather than an overflow)."""
    return math.exp(loss) if loss < 700 else float("inf")


def scored_targets(n_tokens, batch_size):
    """How many targets a split of `n_tokens` has once batchified: each of the batch_size
    columns of n_tokens // batch_size tokens predicts all but its first token."""
    return (n_tokens // batch_size - 1) * batch_size


def windows(source, seq_len, start=0, min_len=1):
    """Yield (row, inputs, targets) for consecutive windows of `source` (steps, batch) from
    row `start`, each (length, batch) with targets one row ahead of inputs. `seq_len` is an
    int or a callable drawing each window's length just before that window is cut (the
    variable BPTT of AWD-LSTM). Stops when fewer than `min_len` targets remain."""
    row = start
    while source.size(0) - 1 - row >= min_len:
        length = seq_len() if callable(seq_len) else seq_len
        inputs, targets = get_batch(source, row, length)
        yield row, inputs, targets
        row += inputs.size(0)


def sample_seq_len(rng, bptt):
    """AWD-LSTM's variable BPTT: around bptt (p = 0.95) or bptt / 2, sd 5, at least 5."""
    base = bptt if rng.random() < 0.95 else bptt / 2
    return max(5, int(rng.normal(base, 5)))


@functools.lru_cache
def mean_seq_len(bptt, draws=20000):
    """The mean window length that sample_seq_len gives, from draws of a private generator
    (so the run's own random state is untouched): about 0.975 * bptt when bptt is large,
    more when the floor of 5 matters."""
    rng = np.random.default_rng(0)
    return sum(sample_seq_len(rng, bptt) for _ in range(draws)) / draws


def activation_regularization(out, alpha, beta):
    """AR: alpha * mean(h^2) of the dropped last layer; TAR: beta * mean((h_t+1 - h_t)^2)
    of the undropped one."""
    penalty = 0.0
    if alpha:  # (in float32 whatever dtype the LSTMs computed in)
        penalty = penalty + alpha * out.dropped_output.float().pow(2).mean()
    raw = out.raw_output.float()
    if beta and raw.size(0) > 1:
        penalty = penalty + beta * (raw[1:] - raw[:-1]).pow(2).mean()
    return penalty


class Objective(torch.nn.Module):
    """What a training step minimises, as one module: the model's mean cross-entropy on the
    targets, and the AR/TAR penalty (weights `alpha`, `beta`). Under torchrun it is this
    module that DistributedDataParallel wraps: DDP follows only what its forward computes,
    and an adaptive softmax scores the targets outside the model's forward."""

    def __init__(self, model, alpha, beta):
        super().__init__()
        self.model, self.alpha, self.beta = model, alpha, beta

    def forward(self, inputs, hidden, targets):
        """(cross-entropy, penalty, new hidden state)"""
        out = self.model(inputs, hidden)
        loss = self.model.loss(out, targets)
        return loss, activation_regularization(out, self.alpha, self.beta), out.hidden


def train_step(objective, optimizer, inputs, targets, hidden, lr, s):
    """One truncated-BPTT step: forward from `hidden` (detached here) through `objective`
    (an Objective, or its DDP wrapper), backward, clipping at s["clip"], an optimizer step
    at `lr`. With s["precision"] == "bf16" the forward and the loss run under bf16
    autocast; weights, gradients and the optimizer stay float32. Returns the cross-entropy
    (a tensor, so the caller decides when to synchronise) and the new hidden state."""
    bf16 = s.get("precision") == "bf16"
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, penalty, hidden = objective(inputs, detach_hidden(hidden), targets)
    optimizer.zero_grad(set_to_none=True)
    (loss + penalty).backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), s["clip"])
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return loss.detach(), hidden


def progress_bar(iterable=None, desc=None, **kwargs):
    """A tqdm bar on a terminal only: redirected output (log files) gets none."""
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True,
                disable=desc is None or not sys.stderr.isatty(), **kwargs)


@torch.no_grad()
def evaluate(model, data, batch_size, bptt, progress=None, on_segment=None, group=SINGLE):
    """Mean negative log-likelihood per target token of `data` (1-D token ids), exact: every
    target of the batchified split is scored once, summed in float64. `on_segment`, when
    given, also receives each window's target log-probabilities (T, batch), last-layer
    states (T, batch, features) and targets (T, batch): the cache pointer reads them.
    Under torchrun (`group`) each process scores its own columns and the sums are added:
    the columns are independent streams, so the result is the one process's."""
    model.eval()
    device = next(model.parameters()).device
    source = batchify(data, batch_size)[:, group.columns(batch_size)].contiguous().to(device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    if source.size(1) > 0:  # (a process may have no columns: test batch 1 on several)
        hidden = model.init_hidden(source.size(1))
        bar = progress_bar(windows(source, bptt), progress if group.main else None,
                           total=math.ceil((source.size(0) - 1) / bptt))
        for n, (row, inputs, targets) in enumerate(bar):
            out = model(inputs, hidden)
            hidden = out.hidden
            logp = model.target_log_probs(out, targets)  # (T, batch), float32
            total -= logp.double().sum()
            if on_segment is not None:
                on_segment(logp, out.raw_output, targets)
            if not bar.disable and n % 20 == 0:  # running perplexity: a sync, terminals only
                scored = (row + len(inputs)) * source.size(1)
                bar.set_postfix(ppl=f"{ppl(total.item() / scored):.2f}")
    return group.sum(total).item() / scored_targets(len(data), batch_size)
