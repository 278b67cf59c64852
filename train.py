"""train.py: train the baseline LSTM or AWD-LSTM language model with truncated BPTT.

    python train.py --model awd                      # the paper's WikiText-2 recipe, NT-ASGD
    python train.py --recipe 1cycle                  # Gugger and Howard's 90-epoch recipe
    python train.py --model lstm                     # the PyTorch example's recipe
    python train.py --model awd --resume checkpoints/awd.state.pt
    python train.py --model awd --finetune checkpoints/awd.pt
    torchrun --standalone --nproc_per_node 4 train.py --model awd     # 4 GPUs, one batch

For --save checkpoints/awd.pt a run writes the best model so far (awd.pt), the latest
training state (awd.state.pt, written after every epoch, on a stop and every --save-every
minutes), one metrics row per epoch (awd.csv) and its final numbers (awd.json), and holds
awd.lock while it runs (runfiles.py names them). Ctrl-C, SIGTERM or SIGHUP stops after the
current batch, saves the state and tests the best model (signals.py); --resume then
continues exactly where the run stopped. A failed write (a full disk) or a lost torchrun
process ends in one line that says what is intact and how to resume (docs/faults.md).
Under torchrun the processes split every batch's columns (DistributedDataParallel), and
the main process alone prints and writes (distributed.py). Every flag is a setting of
settings.py.

The file reads top to bottom: the run (set-up, the epoch loop, the end), then its parts.
"""

import argparse
import contextlib
import math
import os
import shlex
import sys
import time

import torch

import checkpoint
import distributed
import signals
from checkpoint import CheckpointError
from data import Corpus, CorpusError, check_batch_size, mean_nll, mean_seq_len
from devices import (check_bf16, describe_device, keep_freed_memory, out_of_memory,
                     resolve_precision, set_precision)
from distributed import SYNC_SECONDS
from progress import describe_reserve, measure_reserve
from runfiles import RunFiles
from runlog import RunLog, SaveLock
from settings import (Parser, SettingsError, add_flags, finetune_settings, fresh_settings,
                      resume_command, resumed_settings)
from trainer import Trainer, TrainingError
from util import WriteFailed, duration, listing, plural, ppl


# The README's first run: the best model that 30 minutes of a 2-core CPU train here.
FIRST_RUN = "python train.py --recipe cpu30"


def parse_args(argv=None):
    p = Parser(description="Train an LSTM language model (baseline or AWD-LSTM) with truncated "
                           "BPTT.",
               epilog="Defaults in brackets: awd = Merity et al.'s WikiText-2 recipe, lstm = "
                      "the PyTorch example's; --recipe, then every flag, overrides them.")
    add_flags(p)
    args = p.parse_args(argv)
    if args.resume and args.finetune:
        p.error("--resume and --finetune exclude each other")
    return args


# --- The run --------------------------------------------------------------------------------

def train(args, stack, group, device, argv):
    """The whole run, on this process (under torchrun, one of several: `group`); what it
    opens (the lock, the run's record) is entered on `stack`. `argv` is the command line's
    arguments, for the run's provenance."""
    started = time.time()  # a budget counts from here
    if group.torchrun:
        print(f"torchrun: {group.describe()}"
              + (", which trains as without torchrun" if group.size == 1 else ""))
    # Set-up, on every process alone; no process trains unless every one passed it.
    try:
        trainer, log = set_up(args, stack, group, device, shlex.join(
            distributed.launch_command(group) + ["train.py"] + argv))
        error = None
    except (CorpusError, CheckpointError, SettingsError) as e:
        error = e
    group.stop_if_any_failed(error)
    try:
        trainer.join_processes()
        announce(trainer, args, device)
        start_the_clock(trainer, started)  # (a budget's measurement writes a state)
        stopped = run_epochs(trainer, args, log)
        say_why_it_ended(trainer, args, stopped)
        try:
            test_loss = test_best_model(trainer, device)
        except (KeyboardInterrupt, MemoryError, RuntimeError) as e:  # (Ctrl-C, SIGTERM, SIGHUP)
            if not isinstance(e, KeyboardInterrupt) and not out_of_memory(e):
                raise
            log.finished(summarize(trainer, None, stopped=True, test_interrupted=True))
            if isinstance(e, KeyboardInterrupt):
                raise
            raise TrainingError(test_out_of_memory(trainer, args, e)) from None
        summary = summarize(trainer, test_loss, stopped=stopped)
        if summary["budget_used"] is not None:
            budget_minutes = trainer.s["budget_minutes"]
            print(f"budget: {summary['budget_used'] * budget_minutes:.1f} of its "
                  f"{budget_minutes:g} minutes used ({summary['budget_used']:.1%})")
        log.finished(summary)
    except WriteFailed as e:  # a full disk, a read-only directory
        signals.ignore_stops()  # (until main has said what is left)
        raise TrainingError(f"{e}. {what_is_left(trainer, args)}") from None
    except RuntimeError as e:  # under torchrun: another process died
        reason = distributed.lost_peer(e) if group.size > 1 else None
        if reason is None:
            raise
        signals.ignore_stops()  # (torchrun stops every process once one is lost)
        raise TrainingError(f"another process of this run was lost ({group.backend}: "
                            f"{reason}). {what_is_left(trainer, args)}") from None


def run_epochs(trainer, args, log):
    """The epoch loop (after fine-tuning's validation of its start): train, validate and
    apply the schedule, save the state; returns whether a stop (Ctrl-C, SIGTERM, SIGHUP)
    ended it. A stop that any process received ends the loop on all of them."""
    group = trainer.group
    if args.finetune:
        start = trainer.measure_start()
        print(f"fine-tuning {args.finetune} in averaging mode from valid ppl {ppl(start):.2f}; "
              f"writing {trainer.files.model} whenever validation improves on it")
    when = ("after the current batch" if group.size == 1 else
            f"at the next sync point (within {SYNC_SECONDS:g} s)")
    if trainer.resumed:  # (the state's rows: a row that a failed write lost is written now)
        log.state_saved(trainer.metrics, trainer.provenance)
    with signals.StopRequest(when) as stop:
        stopped = group.any(stop.requested)
        while not trainer.finished and not stopped:
            train_loss = trainer.train_epoch(
                stop, args.log_interval, on_progress=log.progress,
                save_every=args.save_every and 60 * args.save_every)
            if train_loss is not None:
                log.epoch_ended(trainer.end_epoch(train_loss),
                                trainer.progress.training_left(time.time()))
            trainer.save_state()
            log.state_saved(trainer.metrics, trainer.provenance)
            stopped = train_loss is None or group.any(stop.requested)
    return stopped


def say_why_it_ended(trainer, args, stopped):
    """"finished after N epochs", or where the state is and the command that resumes it."""
    if not stopped:
        print(f"finished after {plural(trainer.epoch, 'epoch')}")
        return
    group = trainer.group
    machines = " on each machine, with this run's rendezvous flags" if group.machines > 1 else ""
    resume = resume_command(args, trainer.files.state, distributed.launch_command(group))
    print(f"stopped; training state saved to {trainer.files.state} (continue with: {resume}"
          f"{machines})")


def test_out_of_memory(trainer, args, error):
    """What to do when the final test ran out of memory: the trained files are intact."""
    s, model, group = trainer.s, trainer.files.model, trainer.group
    lower = ""
    if s["test_batch_size"] > 1:  # (a resume may change it)
        others = argparse.Namespace(**dict(vars(args), test_batch_size=None))
        lower = (", or test at batch 1: " + resume_command(
            others, trainer.files.state, distributed.launch_command(group))
            + " --test-batch-size 1")
    kept = trainer.files.on_disk(model, trainer.files.state)
    if model not in kept:  # (removed meanwhile: nothing left to test)
        return (f"out of memory in the final test ({checkpoint.one_line(error)[:120]}) at "
                f"--test-batch-size {s['test_batch_size']}, and {model} is no longer on disk")
    return (f"out of memory in the final test ({checkpoint.one_line(error)[:120]}) at "
            f"--test-batch-size {s['test_batch_size']}; {listing(kept)} on disk: test the "
            f"model with python evaluate.py --checkpoint {model} --bptt "
            f"{max(s['bptt'] // 2, 2)}{lower if trainer.files.state in kept else ''}")


def what_is_left(trainer, args):
    """After a failure: which of the run's files are intact, and how to go on."""
    state_file = trainer.files.state
    kept = trainer.files_on_disk() + trainer.files.on_disk(trainer.files.metrics)
    files = (f"{listing(kept)} intact (every write is atomic)" if kept
             else "the run had written no file yet")
    again = " (with --overwrite)" if kept else ""
    if not os.path.exists(state_file):
        return f"{files}; start the run again{again} once the cause is mended"
    try:
        saved = checkpoint.load(state_file, kind="state")
    except CheckpointError as e:
        return f"{files}, but {e}"
    where = (f"in epoch {saved['epoch'] + 1}" if saved.get("position") is not None
             else f"after epoch {saved['epoch']}")
    resume = resume_command(args, state_file, distributed.launch_command(trainer.group))
    return (f"{files}; its training state ({where}) continues once the cause is mended: "
            f"{resume}")


def set_up(args, stack, group, device, command):
    """What comes before the first batch and may refuse the run: the settings, the lock on
    --save and the run's record (the main process's), the corpus, the checks that need it,
    and the Trainer, restored when resuming. Talks to no other process, so that each one
    can fail alone; returns (trainer, runlog.RunLog)."""
    continue_after_restart(args)
    source = args.resume or args.finetune
    loaded = checkpoint.load(source, kind="state" if args.resume else "model") if source else None
    settings = (resumed_settings(args, loaded["args"]) if args.resume else
                finetune_settings(args, loaded["args"]) if args.finetune else fresh_settings(args))
    model_path, state_file = settings["save"], RunFiles(settings["save"]).state
    if group.main:  # the one process that writes
        if os.path.isdir(model_path):
            raise SettingsError(f"--save {model_path} is a directory; give the path of the "
                                f"model file, e.g. "
                                f"{os.path.join(model_path, settings['model'] + '.pt')}")
        stack.enter_context(SaveLock(model_path))  # before anything at --save is touched
        if args.resume:
            checkpoint.check_not_behind(args.resume, loaded, model_path, state_file)
        if not args.resume and not args.overwrite:
            for path in (model_path, state_file):
                if os.path.exists(path):
                    raise SettingsError(
                        f"{path} exists and a new run would replace it; continue that run "
                        f"with --resume {state_file}, choose another --save, or pass "
                        "--overwrite")
    settings["precision"], why = resolve_precision(settings["precision"], device)
    if why:  # (--precision auto: the choice is saved with the run's settings)
        print(f"precision {settings['precision']} ({why})")
    set_precision(settings["precision"], device)
    log = stack.enter_context(RunLog(settings, args.tensorboard, writes=group.main))
    corpus = Corpus(settings["data"])
    if loaded is not None:
        checkpoint.check_vocabulary(source, loaded["vocab"], corpus)
    if args.resume:
        checkpoint.check_same_data(args.resume, loaded, corpus, args.data_changed)
    check_corpus_fits(settings, corpus, device, group)
    if loaded is not None:  # the weights must fit the configuration before a Trainer is built
        checkpoint.build(source, loaded)
    trainer = Trainer(settings, corpus, device,
                      weights=loaded["model"] if args.finetune else None, group=group)
    if settings["precision"] == "bf16":
        check_bf16(device, trainer.model, trainer.train_data.size(1))
    if args.resume:
        try:
            trainer.load_state(loaded)
        except KeyError as e:  # (Trainer.load_state_dict reads the parts it needs)
            raise CheckpointError(f"{args.resume} lacks {e.args[0]}: it was changed after "
                                  "train.py wrote it, or is damaged") from None
        except (TypeError, ValueError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{args.resume} cannot be resumed: part of its training "
                                  f"state does not fit ({checkpoint.one_line(e)})") from None
    trainer.provenance.append(checkpoint.provenance_record(
        command, device, describe_device(device), corpus, group.describe()))
    return trainer, log


def check_corpus_fits(s, corpus, device, group):
    """Before the first batch: every split is long enough for its batch size, the batch splits
    evenly over the processes, the largest window fits the device; what variable BPTT does."""
    if s["batch_size"] % group.size:
        raise SettingsError(f"--batch_size {s['batch_size']} does not split evenly over "
                            f"{group.size} processes (each trains an equal share of a "
                            f"batch's columns); give a multiple of {group.size}")
    for split, flag, batch in (("train", "--batch_size", s["batch_size"]),
                               ("valid", "--eval-batch-size", s["eval_batch_size"]),
                               ("test", "--test-batch-size", s["test_batch_size"])):
        check_batch_size(corpus, split, batch, flag)
    words, cutoffs = len(corpus.dictionary), s["cutoffs"]
    if cutoffs and cutoffs[-1] >= words:
        raise SettingsError(f"--cutoffs must stay below the vocabulary's {words:,} words (got "
                            f"{','.join(map(str, cutoffs))})")
    longest = s["bptt"] + (15 if s["variable_bptt"] else 0)  # 3 sd above the mean
    outputs = cutoffs[0] + len(cutoffs) if cutoffs else words  # the (adaptive) head's width
    batch = s["batch_size"] // group.size  # this process's columns
    # Per logit: float32 logits, their log-softmax and its gradient (12 bytes); under bf16,
    # bfloat16 logits and their gradient, and a float32 copy for the loss (16 bytes).
    logits = (16 if s["precision"] == "bf16" else 12) * longest * batch * outputs
    available = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else
                 os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if logits > available:
        raise SettingsError(f"a training window of --bptt {s['bptt']} x {batch} columns over "
                            f"{outputs:,} outputs needs about {logits / 2**30:,.1f} GiB for "
                            f"its output layer alone, more than the {available / 2**30:,.1f} "
                            f"GiB of this {device.type}; lower --bptt or --batch_size")
    if s["variable_bptt"] and abs(mean_seq_len(s["bptt"]) - s["bptt"]) > 0.1 * s["bptt"]:
        print(f"note: variable BPTT draws window lengths around --bptt {s['bptt']} but never "
              f"below 5 (AWD-LSTM's rule), so windows average {mean_seq_len(s['bptt']):.1f} "
              f"tokens; --no-variable-bptt keeps them at {s['bptt']}")


def continue_after_restart(args):
    """Under torchrun's --max-restarts, a process that torchrun started again after a
    failure continues the run from its own latest training state, as --resume would (or,
    when the failure came before the first state, starts it again over its own files)."""
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if not restart or args.resume:
        return
    if args.finetune:
        trained = checkpoint.load(args.finetune, kind="model")["args"]
        save = finetune_settings(args, trained)["save"]
    else:
        save = fresh_settings(args)["save"]
    state_file = RunFiles(save).state
    if os.path.exists(state_file):
        print(f"torchrun restart {restart}: continuing from {state_file}")
        args.resume, args.finetune = state_file, None
    else:
        print(f"torchrun restart {restart}: no training state was saved yet; starting again")
        args.overwrite = True


def announce(trainer, args, device):
    """What the run prints before anything slow: the device and model, where a resume
    continues, and mid-epoch saves."""
    s, corpus, group = trainer.s, trainer.corpus, trainer.group
    n_params = trainer.n_parameters
    batch = (f"batch {s['batch_size']} = {group.size} x {trainer.train_data.size(1)} "
             "columns | " if group.size > 1 else "")
    print(f"device: {device.type} ({describe_device(device)}, {s['precision']}) | "
          f"{batch}model: {s['model']}, {n_params:,} parameters | vocabulary "
          f"{len(corpus.dictionary):,} | train {len(corpus.train):,} tokens")
    if device.type == "cpu" and n_params > 10_000_000 and not s["budget_minutes"]:
        print(f"note: on a CPU a model this size trains slowly (an epoch of the paper's "
              f"AWD-LSTM took 40 minutes on 2 cores of an Intel Xeon: docs/speed.md), and "
              f"{s['epochs']} epochs take a long time; training anyway (Ctrl-C stops it, "
              f"saving the state).\n"
              f"  A model worth sampling in 30 minutes of a CPU: {FIRST_RUN}")
    if args.resume:
        where = (f"in epoch {trainer.epoch + 1}, after its batch {trainer.position.batches}"
                 if trainer.position is not None else f"after epoch {trainer.epoch}")
        print(f"resuming {args.resume} {where}")
    if args.save_every:
        print(f"saving the training state to {trainer.files.state} every "
              f"{args.save_every:g} minutes within an epoch too")


def start_the_clock(trainer, started):
    """Under a budget, measure what the run keeps for its end (once, before a fresh run's
    first step: a resumed run keeps its measurement and the part of its budget it has not
    used), start the clock and say when training and the run will end; refuse a budget
    that leaves no time to train. Then the schedule's line, if it has one."""
    s, clock = trainer.s, trainer.progress.clock
    if clock is not None:
        reserve = measure_reserve(trainer) if clock.reserve_s is None else None
        left = clock.start(started, reserve and reserve["reserve_s"])
        now = time.time()
        if left <= 0 and reserve is None:  # a resumed run whose training time is over
            trainer.progress.agree(1.0, late=True)
            rest = ("validates the epoch it was in, saves it and tests the best model"
                    if trainer.position is not None else "tests the best model")
            print(f"budget {s['budget_minutes']:g} min: its training time is over; the run "
                  f"{rest}")
            return
        if left <= 0:
            needed = (clock.budget_s - left) / 60
            raise SettingsError(
                f"--budget-minutes {s['budget_minutes']:g} leaves no time to train: "
                f"{duration(now - started)} went to set-up and {clock.reserve_s:.1f} s must be "
                "kept for the end (a validation, checkpoint writes, the test, a margin); a "
                f"budget needs more than {math.ceil(needed * 10) / 10:g} minutes here")
        until = time.strftime("%H:%M:%S", time.localtime(now + left))
        end = time.strftime("%H:%M:%S", time.localtime(now + left + clock.reserve_s))
        kept = (describe_reserve(reserve) if reserve else
                f"{clock.reserve_s:.1f} s (measured when the run started)")
        averaging = trainer.schedule.average_from
        averaging = ("" if averaging is None else ", averaging the weights" if
                     trainer.averaged is not None else f", averaging from {averaging:.0%} of it")
        print(f"budget {s['budget_minutes']:g} min: keeps {kept} for the end; trains for "
              f"{duration(left)}, until {until} (or to the end of epoch {s['epochs']}, "
              f"--epochs, should that come first){averaging}; the run ends by about {end}")
    line = trainer.schedule.describe()
    if line:
        print(line)


def test_best_model(trainer, device):
    """Test loss of the best model this run saved (None if there is none to test), at the
    test batch size (1 in the paper). Under torchrun the main process reads the file and
    sends the weights to the others (which may not see its disk), and each tests its
    columns."""
    path, group = trainer.files.model, trainer.group
    saved, why_not = group.broadcast(best_model_on_disk(trainer) if group.main else None)
    if saved is None:
        print(why_not)
        return None
    s = trainer.s
    model = checkpoint.build(path, saved).to(device)
    test_loss = mean_nll(model, trainer.corpus.test, s["test_batch_size"], s["bptt"],
                         progress="testing", group=group)
    print(f"best model ({path}, epoch {saved['epoch']}): valid ppl {saved['valid_ppl']:.2f} "
          f"| test ppl {ppl(test_loss):.2f} (batch size {s['test_batch_size']})")
    return test_loss


def best_model_on_disk(trainer):
    """(the run's best model as its file holds it now, None) or (None, why there is none
    to test), read from the disk at this moment: a user may have removed, replaced or cut
    short the file while the run went on."""
    path, rows = trainer.files.model, trainer.metrics
    written = [row["epoch"] for row in rows if row.get("saved") == "yes"]
    if not written:  # (a file there now is an earlier run's, or a user's)
        earlier = f" ({path} on disk is not this run's)" if os.path.exists(path) else ""
        if trainer.s["finetune"] and trainer.epoch:
            return None, (f"fine-tuning never improved on the validation perplexity of "
                          f"{trainer.s['finetune']} ({ppl(trainer.best_valid_loss):.2f}); "
                          f"it wrote no model{earlier}")
        return None, f"no epoch has finished yet, so there is no best model to test{earlier}"
    if not os.path.exists(path):
        return None, (f"the best model {path} (written after epoch {written[-1]}) is no "
                      "longer on disk: there is nothing to test")
    try:
        saved = checkpoint.load(path, kind="model")
    except CheckpointError as e:
        return None, f"the best model cannot be tested: {e}"
    if saved["valid_loss"] != trainer.best_valid_loss:
        return None, (f"{path} is not this run's best model (its validation perplexity "
                      f"{saved['valid_ppl']:.2f}, this run's best "
                      f"{ppl(trainer.best_valid_loss):.2f}): it was replaced since epoch "
                      f"{written[-1]} wrote it; not testing it")
    return saved, None


def summarize(trainer, test_loss, stopped, test_interrupted=False):
    """The run's final numbers, for <save stem>.json: the model file (None when no epoch
    wrote one, or its test was interrupted), the minutes of training and validation so
    far, an unfinished epoch's included, and the share of a budget used."""
    rows, model, clock = trainer.metrics, trainer.files.model, trainer.progress.clock
    best = min(rows, key=lambda r: r["valid_loss"]) if rows else None
    return dict(budget_used=round(clock.used(time.time()) / clock.budget_s, 4)
                if clock is not None and clock.started is not None else None,
        model=model if test_loss is not None or (
            test_interrupted and os.path.exists(model)) else None,
        epochs=trainer.epoch, stopped=stopped, minutes=round(trainer.seconds_trained() / 60, 2),
        best_epoch=best and best["epoch"], best_valid_ppl=best and best["valid_ppl"],
        test_ppl=None if test_loss is None else round(ppl(test_loss), 3),
        test_loss=None if test_loss is None else round(test_loss, 6),
        test_batch_size=trainer.s["test_batch_size"], test_interrupted=test_interrupted,
        provenance=trainer.provenance)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    # Under torchrun every process runs this; the main one (rank 0) speaks for all, and
    # the others' output goes nowhere, except for errors that are theirs alone.
    rank = distributed.environment_rank()
    ending = None  # what sys.exit is given, once the run has ended early
    try:
        with contextlib.ExitStack() as stack:  # what the run opens closes on any exit
            stack.enter_context(signals.signals_as_ctrl_c())
            stack.enter_context(signals.output_that_outlives_its_reader())
            stack.enter_context(distributed.only_main_prints())
            try:
                args = parse_args(argv)
                group, device = stack.enter_context(distributed.start(args.device,
                                                                      args.sync_timeout))
                keep_freed_memory(device)  # (on the CPU: large tensors without page faults)
                train(args, stack, group, device, argv)
            except BaseException as error:
                # From here no stop signal cuts the run's last words short: under torchrun,
                # torchrun sends SIGTERM to every process once one of them is lost, at a
                # moment no process can foresee (the outermost block puts them back).
                signals.ignore_stops()
                ending = how_it_ended(error, rank)
                raise
    except BaseException:
        if ending is None:
            raise
        sys.exit(ending)


def how_it_ended(error, rank):
    """What sys.exit is given when a run ends early with `error`: the line that says why
    (exit status 1), or a status; None for an error this code does not explain (its
    traceback follows). An error that every process of a torchrun run has is said by the
    main process alone."""
    where = f" (process {rank})" if "WORLD_SIZE" in os.environ else ""
    if isinstance(error, (CorpusError, CheckpointError, SettingsError, TrainingError)):
        return f"error: {error}" if rank == 0 else 1
    if isinstance(error, SystemExit):  # a flag error (on every process) or --help
        return 1 if rank != 0 and isinstance(error.code, str) else error.code
    if isinstance(error, (MemoryError, RuntimeError)) and out_of_memory(error):
        # (torch.OutOfMemoryError is a RuntimeError; each process says its own)
        return (f"error{where}: out of memory ({checkpoint.one_line(error)[:120]}); lower "
                "--batch_size or --bptt (or --eval-batch-size); files already saved are intact")
    if isinstance(error, KeyboardInterrupt):  # a second stop, or one outside the loop
        print(f"\naborted{where}; checkpoints on disk are intact (every write is atomic)",
              file=sys.stderr)
        return 130
    return None


if __name__ == "__main__":
    main()
