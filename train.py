"""train.py: train the baseline LSTM or AWD-LSTM language model with truncated BPTT.

    python train.py --model awd                      # the paper's WikiText-2 recipe, NT-ASGD
    python train.py --model lstm                     # the PyTorch example's recipe
    python train.py --model awd --resume checkpoints/awd.state.pt
    python train.py --model awd --finetune checkpoints/awd.pt
    torchrun --standalone --nproc_per_node 4 train.py --model awd     # 4 GPUs, one batch

For --save checkpoints/awd.pt a run writes the best model so far (awd.pt), the latest
training state (awd.state.pt, written after every epoch, on Ctrl-C and every --save-every
minutes), one metrics row per epoch (awd.csv) and its final numbers (awd.json), and holds
awd.lock while it runs. Ctrl-C or SIGTERM stops after the current batch, saves the state
and tests the best model; --resume then continues exactly where the run stopped. Under
torchrun the processes split every batch's columns (DistributedDataParallel), and the main
process alone prints and writes (distributed.py).

The file reads top to bottom: flags, the run's settings, set-up, the epoch loop, the end.
"""

import argparse
import contextlib
import os
import shlex
import sys
import time

import torch

import checkpoint
import distributed
import provenance
from bptt import evaluate, mean_seq_len, ppl
from checkpoint import CheckpointError
import budget
from config import (COMMON, COUNT, DROPOUT, FRACTION, NON_NEGATIVE, POSITIVE, PRECISIONS, PRESETS,
                    RECIPES, SEED, Parser, SettingsError, checked, cutoff_list, describe_device,
                    out_of_memory, set_precision)
from data import DEFAULT_DATA, Corpus, CorpusError, check_batch_size
from model import CLUSTER_SHRINK, architecture, count_parameters
from runlog import RunLog, SaveLock, plural
from trainer import AVERAGING, OPTIMIZERS, StopRequest, Trainer, TrainingError

# --- Flags ---------------------------------------------------------------------------------

DEFAULT_LOG_INTERVAL = 50


def parse_args(argv=None):
    p = Parser(
        description="Train an LSTM language model (baseline or AWD-LSTM) with truncated BPTT.",
        epilog="Defaults in brackets are the presets: awd = Merity et al.'s WikiText-2 "
               "recipe, lstm = the PyTorch example's. Every flag overrides its preset entry.")

    def preset(name, kind, help):
        shown = ", ".join(f"{m}: {PRESETS[m][name]}" for m in PRESETS if name in PRESETS[m])
        p.add_argument(f"--{name}", type=kind, default=None, help=f"{help} [{shown}]")

    p.add_argument("--model", choices=PRESETS, default=None,
                   help="which model (default awd, or the --recipe's; with --resume or "
                        "--finetune, the checkpoint's)")
    p.add_argument("--recipe", choices=("paper",) + tuple(RECIPES), default=None,
                   help="paper: the model's preset; 1cycle: Gugger and Howard's Adam on a "
                        "1cycle schedule for AWD-LSTM, 90 epochs (lr 5e-3, batch 100, clip "
                        "0.12, dropouts 0.4/0.2/0.6/0.1/0.5, AR/TAR 3/1.5); flags given "
                        "override it [paper]")
    p.add_argument("--data", default=None,
                   help="corpus directory (default: data/wikitext-2 beside this script)")
    preset("emsize", COUNT, "embedding size")
    preset("nhid", COUNT, "hidden units per LSTM layer")
    preset("nlayers", COUNT, "LSTM layers")
    preset("dropout", DROPOUT, "dropout on the last layer's output (and on the embedding "
                               "and between layers for lstm)")
    preset("dropouth", DROPOUT, "locked dropout between LSTM layers (awd)")
    preset("dropouti", DROPOUT, "locked dropout on the embedding output (awd)")
    preset("dropoute", DROPOUT, "embedding dropout: whole word types (awd)")
    preset("wdrop", DROPOUT, "DropConnect on the hidden-to-hidden matrices (awd)")
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=None,
                   help="tie decoder and embedding weights [awd: True, lstm: True]")
    p.add_argument("--cutoffs", type=cutoff_list, default=None, metavar="N,N,...",
                   help="an adaptive softmax instead of the full one, for large vocabularies: "
                        "the frequency ranks where its head and each cluster end, e.g. "
                        "20000,60000 (needs --no-tied) [full softmax]")
    preset("lr", POSITIVE, "learning rate (the peak of a onecycle or 1cycle schedule)")
    preset("clip", POSITIVE, "gradient clipping (total norm)")
    preset("epochs", COUNT, "epochs to train (the upper limit when fine-tuning)")
    preset("batch_size", COUNT, "training batch size")
    preset("bptt", checked(int, lambda v: v >= 2, "be at least 2"), "BPTT length")
    p.add_argument("--variable-bptt", dest="variable_bptt", default=None,
                   action=argparse.BooleanOptionalAction,
                   help="random BPTT length per batch, lr scaled to match [awd: True, "
                        "lstm: False]")
    preset("alpha", NON_NEGATIVE, "activation regularisation (AR) weight")
    preset("beta", NON_NEGATIVE, "temporal activation regularisation (TAR) weight")
    preset("wdecay", NON_NEGATIVE, "weight decay")
    p.add_argument("--schedule", choices=("ntasgd", "anneal", "onecycle", "1cycle"),
                   default=None,
                   help="ntasgd: switch to weight averaging when validation stalls; anneal: "
                        "divide lr by 4 when validation does not improve; onecycle: "
                        "torch's OneCycleLR over the planned steps, peaking at --lr, weights "
                        "averaged from --average-start; 1cycle: Gugger and Howard's four "
                        "phases over the planned steps, no averaging [awd: ntasgd, lstm: "
                        "anneal]")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="torch.optim.SGD, Adam (L2 weight decay) or AdamW (decoupled), with "
                        "--lr and --wdecay [sgd]")
    p.add_argument("--warmup", type=FRACTION, default=None,
                   help=f"onecycle: fraction of the steps spent raising the lr "
                        f"[{COMMON['warmup']}]")
    p.add_argument("--average-start", dest="average_start", type=FRACTION, default=None,
                   help="planned runs (onecycle, or a budget): average the weights from this "
                        f"fraction of the steps on (ntasgd may start earlier) "
                        f"[{COMMON['average_start']}]")
    p.add_argument("--budget-minutes", dest="budget_minutes", type=POSITIVE, default=None,
                   help="finish training, validation and the test within this wall time: "
                        "the run measures its speed, plans the epochs that fit (--epochs is "
                        "the most) and ends early if it falls behind")
    preset("nonmono", COUNT, "NT-ASGD non-monotone interval")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=COUNT, default=None,
                   help=f"validation batch size [{COMMON['eval_batch_size']}]")
    p.add_argument("--test-batch-size", dest="test_batch_size", type=COUNT, default=None,
                   help=f"test batch size [{COMMON['test_batch_size']}]")
    preset("seed", SEED, "random seed")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="torch: PyTorch's defaults (float32; cuDNN's LSTMs may use "
                        "TensorFloat-32); fp32: IEEE float32; tf32: TensorFloat-32 matmuls "
                        "and cuDNN LSTMs (NVIDIA GPUs); bf16: training steps in bfloat16 "
                        "(LSTMs and decoder; loss, weights and optimizer float32), evaluation "
                        "in float32 [torch]")
    p.add_argument("--save", default=None,
                   help="best-model checkpoint path (default checkpoints/<model>.pt; "
                        "<model>-finetune.pt when fine-tuning)")
    p.add_argument("--resume", metavar="STATE",
                   help="continue a run exactly from its training state (<save>.state.pt)")
    p.add_argument("--finetune", metavar="CHECKPOINT",
                   help="fine-tune a trained model: restart from its averaged weights in "
                        "averaging mode, stop at the first non-monotone trigger")
    p.add_argument("--overwrite", action="store_true",
                   help="let a new run replace existing checkpoints at --save")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train (default auto: CUDA when available, else CPU)")
    p.add_argument("--max-batches", dest="max_batches", type=COUNT, default=None,
                   help="cap the training batches per epoch (smoke runs)")
    p.add_argument("--log-interval", dest="log_interval", type=COUNT,
                   default=DEFAULT_LOG_INTERVAL,
                   help=f"batches between progress-bar updates (default {DEFAULT_LOG_INTERVAL})")
    p.add_argument("--save-every", dest="save_every", metavar="MINUTES", type=POSITIVE,
                   default=None, help="also save the training state every MINUTES within an "
                                      "epoch, to resume from exactly (default: at the end of "
                                      "each epoch only)")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="also log to TensorBoard event files in DIR (needs tensorboard)")
    args = p.parse_args(argv)
    if args.resume and args.finetune:
        p.error("--resume and --finetune exclude each other")
    return args


# --- The run's settings --------------------------------------------------------------------

RESUMABLE = ("epochs", "data", "precision")  # settings that a resumed run may change


def resolve_settings(args):
    """The run's full settings: a preset (fresh run), the saved run (--resume) or the trained
    model's run (--finetune), with the flags given on the command line on top. Returns them
    and the checkpoint they came from (None for a fresh run)."""
    given = {k: v for k, v in vars(args).items()
             if v is not None and k in set(PRESETS["awd"]) | set(COMMON) | {"model", "data"}}

    if args.resume:
        state = checkpoint.load(args.resume, kind="state")
        settings = dict(state["args"])
        if args.save and args.save != settings["save"]:
            raise SettingsError(f"--save cannot change when resuming; the run keeps writing "
                                f"to {settings['save']}")
        settings = {**COMMON, **settings}  # states from before some settings existed
        for name, value in given.items():
            if name not in RESUMABLE and value != settings.get(name):
                raise SettingsError(
                    f"--{name} cannot change when resuming ({args.resume} was run with "
                    f"{settings.get(name)}); only --epochs, --data, --precision and the run "
                    "options (--device, --max-batches, --log-interval, --save-every, "
                    "--tensorboard) can")
        settings.update({k: given[k] for k in RESUMABLE if k in given})
        return settings, state

    if args.finetune:
        trained = checkpoint.load(args.finetune, kind="model")
        settings = {**COMMON, **trained["args"]}  # models from before some settings existed
        for name in ("model",) + architecture(settings["model"]):
            if name in given and given[name] != settings.get(name):
                raise SettingsError(
                    f"--{name} cannot change when fine-tuning: {args.finetune} has "
                    f"{name}={settings.get(name)}")
        settings.update(given)
        settings["finetune"] = args.finetune
        stem, ext = os.path.splitext(args.finetune)
        settings["save"] = args.save or f"{stem}-finetune{ext or '.pt'}"
        return settings, trained

    recipe = RECIPES.get(given.get("recipe"), {})
    model = given.get("model", recipe.get("model", "awd"))
    if recipe and recipe["model"] != model:
        raise SettingsError(f"--recipe {given['recipe']} trains --model {recipe['model']}; "
                            f"it does not apply to --model {model}")
    for name in [n for n in architecture("awd") if n not in architecture(model)]:
        if name in given:
            raise SettingsError(f"--{name} applies to --model awd only")
    settings = {**PRESETS[model], **COMMON, **recipe, **given, "model": model,
                "finetune": None}
    if model == "lstm" and settings["tied"] and settings["emsize"] != settings["nhid"]:
        raise SettingsError(
            f"--model lstm ties the decoder to the embedding, which needs --emsize equal to "
            f"--nhid (got {settings['emsize']} and {settings['nhid']}); make them equal or "
            "pass --no-tied")
    if settings["cutoffs"] and settings["tied"]:
        raise SettingsError(
            "--cutoffs makes the output layer an adaptive softmax, which has no single output "
            "matrix to tie to the embedding; add --no-tied")
    if settings["nhid"] // CLUSTER_SHRINK ** len(settings["cutoffs"]) < 1:
        raise SettingsError(
            f"with {len(settings['cutoffs'])} --cutoffs the adaptive softmax's last cluster "
            f"would have no features (--nhid {settings['nhid']} shrinks {CLUSTER_SHRINK}x per "
            "cluster); give fewer cutoffs or a larger --nhid")
    settings.setdefault("data", DEFAULT_DATA)
    settings["save"] = args.save or os.path.join("checkpoints", f"{model}.pt")
    return settings, None


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
    trainer.join_processes()
    settings, corpus = trainer.s, trainer.corpus
    model_path, state_file = settings["save"], checkpoint.state_path(settings["save"])

    n_params = count_parameters(trainer.model)
    batch = (f"batch {settings['batch_size']} = {group.size} x {trainer.train_data.size(1)} "
             "columns | " if group.size > 1 else "")
    print(f"device: {device.type} ({describe_device(device)}, {settings['precision']}) | "
          f"{batch}model: {settings['model']}, "
          f"{n_params:,} parameters | vocabulary {len(corpus.dictionary):,} | "
          f"train {len(corpus.train):,} tokens")
    if device.type == "cpu" and n_params > 10_000_000:
        print("note: on a CPU a model this size trains slowly: the full AWD-LSTM ran at about "
              "1,000 tokens/s on a 2-core machine,\n  35 minutes per WikiText-2 epoch, so the "
              "750-epoch recipe takes weeks. A run that finishes in minutes:\n  python "
              "train.py --model awd --emsize 200 --nhid 400 --batch_size 20 --epochs 2 "
              "--max-batches 200 --save checkpoints/awd-small.pt")
    if args.resume:
        print(f"resuming {args.resume} after epoch {trainer.epoch}"
              + (" (mid-epoch)" if trainer.position else ""))
    if settings["budget_minutes"] or settings["schedule"] in ("onecycle", "1cycle"):
        plan_run(trainer, args, started)
        if settings["schedule"] == "1cycle":
            print(trainer.scheduler.describe(settings["lr"]))
    if args.save_every:
        print(f"saving the training state to {state_file} every "
              f"{args.save_every:g} minutes within an epoch too")
    if args.finetune:
        start = trainer.measure_start()
        print(f"fine-tuning {args.finetune} in averaging mode from valid ppl {ppl(start):.2f}; "
              f"writing {model_path} whenever validation improves on it")

    # The epoch loop: train, validate and apply the schedule, save the state. A stop that
    # any process received ends the loop on all of them.
    when = ("after the current batch" if group.size == 1 else
            f"at the next check point (within --log-interval {args.log_interval} batches)")
    with StopRequest(when) as stop:
        stopped = group.any(stop.requested)
        while trainer.epoch < settings["epochs"] and not trainer.done and not stopped:
            train_loss = trainer.train_epoch(
                stop, args.max_batches, args.log_interval, on_progress=log.progress,
                save_every=args.save_every and 60 * args.save_every)
            if train_loss is not None:
                log.epoch_ended(trainer.end_epoch(train_loss))
            trainer.save_state()
            log.state_saved(trainer.metrics, trainer.provenance)
            stopped = train_loss is None or group.any(stop.requested)

    # The end: say why the run stopped, test the best model of this run, write the summary.
    if stopped:
        machines = (" on each machine, with this run's rendezvous flags"
                    if group.machines > 1 else "")
        print(f"stopped; training state saved to {state_file} "
              f"(continue with: {resume_command(args, state_file, group)}{machines})")
    else:
        print(f"finished after {plural(trainer.epoch, 'epoch')}")
    log.finished(summarize(trainer, test_best_model(trainer, device), stopped=stopped))


def set_up(args, stack, group, device, command):
    """What comes before the first batch and may refuse the run: the settings, the lock on
    --save and the run's record (the main process's), the corpus, the checks that need it,
    and the Trainer, restored when resuming. Talks to no other process, so that each one
    can fail alone; returns (trainer, runlog.RunLog)."""
    settings, loaded = resolve_settings(args)
    if args.model and args.model != settings["model"]:
        raise SettingsError(f"--model {args.model} does not match the checkpoint's model "
                            f"{settings['model']}")
    model_path, state_file = settings["save"], checkpoint.state_path(settings["save"])
    if group.main:  # the one process that writes
        if os.path.isdir(model_path):
            raise SettingsError(f"--save {model_path} is a directory; give the path of the "
                                f"model file, e.g. "
                                f"{os.path.join(model_path, settings['model'] + '.pt')}")
        stack.enter_context(SaveLock(model_path))  # before anything at --save is touched
        if not args.resume and not args.overwrite:
            for path in (model_path, state_file):
                if os.path.exists(path):
                    raise SettingsError(
                        f"{path} exists and a new run would replace it; continue that run "
                        f"with --resume {state_file}, choose another --save, or pass "
                        "--overwrite")
    set_precision(settings["precision"], device)
    log = stack.enter_context(RunLog(settings, args.tensorboard, writes=group.main))
    corpus = Corpus(settings["data"])
    if loaded is not None:
        checkpoint.check_vocabulary(args.resume or args.finetune, loaded["vocab"], corpus)
    check_corpus_fits(settings, corpus, device, group)

    source = args.resume or args.finetune
    if source:  # the weights must fit the configuration before a Trainer is built
        checkpoint.build(source, loaded)
    trainer = Trainer(settings, corpus, device,
                      weights=loaded["model"] if args.finetune else None, group=group)
    if args.resume:
        try:
            trainer.load_state(loaded)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{args.resume} cannot be resumed: part of its training "
                                  f"state does not fit ({checkpoint.one_line(e)})") from None
    trainer.provenance.append(provenance.record(command, device, corpus, group.describe()))
    return trainer, log


def check_corpus_fits(s, corpus, device, group):
    """What can be known before the first batch: every split is long enough for its batch
    size, the batch splits evenly over torchrun's processes, this process's largest window
    fits in the device's free memory, and what variable BPTT makes of --bptt."""
    if s["batch_size"] % group.size:
        raise SettingsError(
            f"--batch_size {s['batch_size']} does not split evenly over {group.size} "
            "processes (each trains an equal share of a batch's columns); give a multiple "
            f"of {group.size}")
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
        raise SettingsError(
            f"a training window of --bptt {s['bptt']} x {batch} columns over "
            f"{outputs:,} outputs needs about {logits / 2**30:,.1f} GiB for its "
            f"output layer alone, more than the {available / 2**30:,.1f} GiB of this "
            f"{device.type}; lower --bptt or --batch_size")
    if s["variable_bptt"] and abs(mean_seq_len(s["bptt"]) - s["bptt"]) > 0.1 * s["bptt"]:
        print(f"note: variable BPTT draws window lengths around --bptt {s['bptt']} but never "
              f"below 5 (AWD-LSTM's rule), so windows average "
              f"{mean_seq_len(s['bptt']):.1f} tokens; --no-variable-bptt keeps them at "
              f"{s['bptt']}")


def resume_command(args, state_file, group=distributed.SINGLE):
    """The command that continues this run (under torchrun, on as many processes): --resume
    plus the options this one was given that a resume may set again."""
    command = distributed.launch_command(group) + ["train.py", "--resume", state_file]
    for name in ("epochs", "data", "precision", "max_batches", "save_every", "tensorboard"):
        value = getattr(args, name)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    if args.device != "auto":
        command += ["--device", args.device]
    if args.log_interval != DEFAULT_LOG_INTERVAL:
        command += ["--log-interval", str(args.log_interval)]
    return shlex.join(command)


def plan_run(trainer, args, started):
    """Fix a planned run's schedule: from its measured speed under a budget, from --epochs
    otherwise; a resumed run keeps its plan and the part of its budget not yet spent."""
    s = trainer.s
    if args.resume and trainer.plan is not None:
        spent = (trainer.metrics[-1].get("elapsed_s", 0.0) if trainer.metrics else 0.0) + \
            (trainer.position["seconds"] if trainer.position else 0.0)
    elif s["budget_minutes"]:
        speed = budget.measure(trainer)
        plan = budget.plan(60 * s["budget_minutes"], time.time() - started, speed,
                           trainer.steps_per_epoch(args.max_batches), s["epochs"],
                           s["average_start"])
        s["epochs"] = plan["epochs"]
        trainer.set_plan(plan)
        print(budget.describe(plan, speed, started, averages=s["schedule"] in AVERAGING))
        spent = 0.0
    else:
        trainer.set_plan(budget.fixed_plan(s["epochs"], trainer.steps_per_epoch(args.max_batches),
                                           s["average_start"]))
        return
    if trainer.plan["train_deadline_s"] is not None:
        trainer.deadline = started - spent + trainer.plan["train_deadline_s"]


def test_best_model(trainer, device):
    """Test loss of the best model this run saved (None if it saved none), at the test batch
    size (1 in the paper). Under torchrun the main process reads the file and sends the
    weights to the others (which may not see its disk), and each tests its columns."""
    path, group = trainer.model_path, trainer.group
    saved = None
    if group.main and os.path.exists(path):
        saved = checkpoint.load(path, kind="model")
        if saved["valid_loss"] != trainer.best_valid_loss:  # an older run's
            saved = None
    saved = group.broadcast(saved)
    if saved is None:
        if trainer.s["finetune"] and trainer.epoch:
            print(f"fine-tuning never improved on the validation perplexity of "
                  f"{trainer.s['finetune']} ({ppl(trainer.best_valid_loss):.2f}); "
                  f"{path} was not written")
        else:
            print("no epoch has finished yet, so there is no best model to test")
        return None
    s = trainer.s
    model = checkpoint.build(path, saved).to(device)
    test_loss = evaluate(model, trainer.corpus.test, s["test_batch_size"], s["bptt"],
                         progress="testing", group=group)
    print(f"best model ({path}, epoch {saved['epoch']}): valid ppl {saved['valid_ppl']:.2f} "
          f"| test ppl {ppl(test_loss):.2f} (batch size {s['test_batch_size']})")
    return test_loss


def summarize(trainer, test_loss, stopped):
    """The run's final numbers, for <save stem>.json."""
    rows = trainer.metrics
    best = min(rows, key=lambda r: r["valid_loss"]) if rows else None
    return dict(
        model=trainer.model_path, epochs=trainer.epoch, stopped=stopped,
        minutes=round(rows[-1].get("elapsed_s", 0) / 60, 2) if rows else 0.0,
        best_epoch=best and best["epoch"], best_valid_ppl=best and best["valid_ppl"],
        test_ppl=None if test_loss is None else round(ppl(test_loss), 3),
        test_loss=None if test_loss is None else round(test_loss, 6),
        test_batch_size=trainer.s["test_batch_size"], provenance=trainer.provenance)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    # Under torchrun every process runs this; the main one (rank 0) speaks for all, and
    # the others' output goes nowhere, except for errors that are theirs alone.
    rank = distributed.environment_rank()
    where = f" (process {rank})" if "WORLD_SIZE" in os.environ else ""
    try:
        with contextlib.ExitStack() as stack:  # what the run opens closes on any exit
            stack.enter_context(distributed.only_main_prints())
            args = parse_args(argv)
            group, device = stack.enter_context(distributed.start(args.device))
            train(args, stack, group, device, argv)
    except (CorpusError, CheckpointError, SettingsError, TrainingError) as e:
        sys.exit(f"error: {e}" if rank == 0 else 1)  # every process has it: said once
    except SystemExit as e:  # a flag error (on every process) or --help
        sys.exit(1 if rank != 0 and isinstance(e.code, str) else e.code)
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if not out_of_memory(e):
            raise
        sys.exit(f"error{where}: out of memory ({checkpoint.one_line(e)[:120]}); lower "
                 "--batch_size or --bptt (or --eval-batch-size); files already saved are "
                 "intact")
    except KeyboardInterrupt:  # a second Ctrl-C, or one during the final test
        print(f"\naborted{where}; checkpoints on disk are intact (every write is atomic)",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
