"""budget.py: fit a training run into a wall-clock budget (train.py --budget-minutes).

Before the first batch the run measures itself on throwaway copies (the model, optimizer
and random-number state it will train with are left untouched): seconds per training step,
and seconds for one validation pass, for the final test pass, for an epoch's checkpoint
writes and for an update of the weight average (when the run averages). `plan` then fixes
the number of epochs whose training and validation fit, after the test and a safety
margin, and the step from which the weights are averaged. The plan is printed and kept in
the training state; plans.Plan keeps the run to it as it goes.
"""

import itertools
import math
import os
import time

import torch

from data import mean_nll, windows
from optim import RunningAverage
from plans import epochs_in_words
from util import remove_quietly, size_in_words, tensor_bytes

# Part of the budget kept free for what the measurements cannot see (the first CUDA
# kernels, jitter): 2% of it, at least 2 seconds (the deadline, not the margin, is what
# keeps a run that slows down inside its budget: plans.py). Epochs also cost a little more
# than their measured parts (Python around the loop, the metrics file): 3% measured on
# tiny CPU runs, where that overhead weighs most.
MARGIN_FRACTION, MARGIN_MIN_S, EPOCH_OVERHEAD = 0.02, 2.0, 1.03


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(trainer, warmup=2, steps=20):
    """Seconds per training step, per update of the weight average (0 for a run that does
    not average), per validation pass, per test pass and for the checkpoint writes of an
    epoch (and the bytes those write), measured on copies of the trainer's model and
    optimizer (and a probe file, removed); the RNG states are restored
    afterwards. Under torchrun every process measures together (its steps and passes talk
    to the others) and the main process's figures are returned to all, so that all of them
    plan alike."""
    s, device, group = trainer.s, trainer.device, trainer.group
    rng_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    model, optimizer, step = trainer.spare_copy()
    step_s = step_seconds(step, model, trainer.train_data, s["bptt"], warmup, steps)
    average_s = average_seconds(model, warmup, steps) if trainer.schedule.averages else 0.0

    def pass_seconds(data, batch_size):
        # Time a slice of about 8 windows and scale to the split; mean_nll's own first
        # call pays for warm-up, so take the second of two.
        part = data[: batch_size * s["bptt"] * 8 + 1]
        for _ in range(2):
            started = time.perf_counter()
            mean_nll(model, part, batch_size, s["bptt"], group=group)
            synchronize(device)
        return (time.perf_counter() - started) * len(data) / len(part)

    valid_s = pass_seconds(trainer.corpus.valid, s["eval_batch_size"])
    test_s = pass_seconds(trainer.corpus.test, s["test_batch_size"])
    save_s, save_bytes = write_seconds(trainer, optimizer)
    torch.set_rng_state(rng_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)
    return group.broadcast(dict(step_s=step_s, average_s=average_s, valid_s=valid_s,
                                test_s=test_s, save_s=save_s, save_bytes=save_bytes))


def step_seconds(step, model, data, bptt, warmup, steps):
    """Mean seconds of `steps` calls of `step(inputs, targets, hidden)` (a training step of
    `model`, Trainer.spare_copy's) on consecutive windows of `data`, after `warmup`."""
    batches = windows(data, bptt)
    hidden = model.init_hidden(data.size(1))

    def run(n):
        nonlocal hidden
        for _, inputs, targets in itertools.islice(batches, n):
            _, hidden = step(inputs, targets, hidden)
        synchronize(data.device)

    run(warmup)
    started = time.perf_counter()
    run(steps)
    return (time.perf_counter() - started) / steps


def average_seconds(model, warmup, updates):
    """Mean seconds of an update of a running average of `model`'s weights (optim.py's,
    which a run that averages makes after every step from its plan's average_from on)."""
    averaged = RunningAverage(model)
    for _ in range(warmup):
        averaged.update_parameters(model)
    synchronize(next(model.parameters()).device)
    started = time.perf_counter()
    for _ in range(updates):
        averaged.update_parameters(model)
    synchronize(next(model.parameters()).device)
    return (time.perf_counter() - started) / updates


def write_seconds(trainer, stepped_optimizer):
    """(seconds, bytes) of an epoch's checkpoint writes: the training state, and the model
    whenever validation improves. The disk's speed comes from a probe, the trainer's state
    as it is now (written, timed and removed); the bytes from what the run's state will
    hold: its optimizer's state after steps (that of `stepped_optimizer`, the copy that took
    them: Adam keeps two moments per weight, which the run's own optimizer, not yet
    stepped, lacks) and the averaged weights of a run that averages."""
    probe = trainer.files.probe(os.getpid())
    started = time.perf_counter()
    try:
        trainer.save_state(probe)
        probe_bytes = os.path.getsize(probe) if trainer.group.main else 1
    finally:
        remove_quietly(probe)
    seconds = time.perf_counter() - started
    weights = tensor_bytes(trainer.model.state_dict())
    state = (probe_bytes - tensor_bytes(trainer.optimizer.state_dict())
             + tensor_bytes(stepped_optimizer.state_dict())
             + (weights if trainer.schedule.averages and trainer.averaged is None else 0))
    written = state + weights  # (the model file: its weights, and a small header)
    return seconds * written / probe_bytes, written


def plan(budget_s, spent_s, speed, steps_per_epoch, max_epochs, average_start):
    """The schedule that fits: {"epochs", "batches_per_epoch", "last_epoch_batches",
    "total_steps", "average_from", "train_deadline_s"}. Times are seconds from the run's
    start; `spent_s` have passed.

    Whole epochs of `steps_per_epoch` steps plus a validation each, then the test pass,
    inside `budget_s` less a margin, and in the time left over a last, shorter epoch when
    a tenth of one fits; if not even one epoch fits, one shortened epoch. Averaging starts
    at step `average_start * total_steps` (average_start in [0, 1]), and its updates make
    the steps from there on slower by speed["average_s"]: spread over all steps here."""
    margin = max(MARGIN_FRACTION * budget_s, MARGIN_MIN_S)
    available = budget_s - spent_s - speed["test_s"] - margin
    per_epoch = EPOCH_OVERHEAD * (speed["valid_s"] + speed["save_s"])
    step_s = speed["step_s"] + (1 - average_start) * speed.get("average_s", 0.0)
    epoch_s = EPOCH_OVERHEAD * steps_per_epoch * step_s + per_epoch
    epochs = min(max_epochs, math.floor(available / epoch_s)) if epoch_s > 0 else max_epochs
    last = steps_per_epoch
    if epochs < max_epochs:  # the time left over: a shorter last epoch, or a shortened one
        spare = available - max(epochs, 0) * epoch_s - per_epoch
        steps = min(steps_per_epoch, math.floor(spare / (EPOCH_OVERHEAD * step_s)))
        if epochs < 1 or steps >= steps_per_epoch // 10:
            epochs, last = max(epochs, 0) + 1, max(steps, 1)
    # Training must stop by the deadline to leave time for a validation and the test.
    layout = fixed_plan(epochs, steps_per_epoch if epochs > 1 else last, average_start,
                        budget_s=budget_s, last_epoch_batches=last,
                        train_deadline_s=budget_s - margin - speed["test_s"] - speed["valid_s"]
                        - speed["save_s"], step_s=speed["step_s"])
    # What a plan that re-fits must know: how far it may grow (--epochs), what an epoch's end
    # costs, and what averaging adds to a step (plans.Plan.pace_to_come).
    return dict(layout, max_epochs=max_epochs, epoch_end_s=per_epoch,
                average_s=speed.get("average_s", 0.0))


def fixed_plan(epochs, steps_per_epoch, average_start, budget_s=None, train_deadline_s=None,
               last_epoch_batches=None, step_s=None):
    """The plan of a run without a budget (--schedule onecycle): its epochs as given (the
    last one of `last_epoch_batches` steps when given). A budget's plan also keeps the
    measured seconds of a step, which a re-fit compares with the pace it meets."""
    last = steps_per_epoch if last_epoch_batches is None else last_epoch_batches
    total = (epochs - 1) * steps_per_epoch + last
    return dict(epochs=epochs, batches_per_epoch=steps_per_epoch, last_epoch_batches=last,
                total_steps=total, average_from=math.floor(average_start * total),
                budget_s=budget_s, train_deadline_s=train_deadline_s, step_s=step_s)


def describe(p, speed, started_at, averages=True):
    """The plan as the lines train.py prints (`averages`: whether the run's schedule
    averages the weights: schedule.Schedule.averages)."""
    end = time.strftime("%H:%M:%S", time.localtime(started_at + p["budget_s"]))
    averaging = f", averaging from step {p['average_from']:,}" if averages else ""
    average = (f" (and {speed['average_s'] * 1000:.1f} ms to update the average)"
               if speed.get("average_s") else "")
    return (f"budget {p['budget_s'] / 60:g} min: measured {speed['step_s'] * 1000:.1f} ms per "
            f"step{average}, {speed['valid_s']:.1f} s per validation, {speed['save_s']:.2f} s of "
            f"checkpoint writes per epoch ({size_in_words(speed['save_bytes'])}), "
            f"{speed['test_s']:.1f} s for the test\nplan: {epochs_in_words(p)}{averaging}; "
            f"training stops by {p['train_deadline_s'] / 60:.1f} min at the latest; the run "
            f"ends by {end}")
