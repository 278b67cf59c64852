"""settings.py: every setting of a training run, declared once (SETTINGS), and what is made
from that table: train.py's flags and their help, each model's defaults, the recipes on top
of them, the settings of a fresh, resumed or fine-tuned run, and the command that resumes
one. Also the flag types that check values, and the error for settings that make no run.

A new hyperparameter is one entry of SETTINGS; the run's code reads it as settings[name],
checkpoints save it, and runs saved before it existed resume with its default.
"""

import argparse
import math
import os
import re
import shlex
import sys
import zipfile
from dataclasses import dataclass

from model import CLUSTER_SHRINK
from schedule import SCHEDULES

# The shipped WikiText-2, beside this file.
DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "wikitext-2")


class SettingsError(ValueError):
    """Settings that do not make a valid run; the message names the flag."""


# --- Flag types ---------------------------------------------------------------------------

def checked(kind, test, requirement):
    """An argparse type: `kind(text)`, finite, passing `test`, else "must <requirement>"."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must {requirement} (got {text!r})") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number (got {text})")
        if not test(value):
            raise argparse.ArgumentTypeError(f"must {requirement} (got {text})")
        return value

    parse.__name__ = kind.__name__
    return parse


COUNT = checked(int, lambda v: v >= 1, "be at least 1")
POSITIVE = checked(float, lambda v: v > 0, "be positive")
NON_NEGATIVE = checked(float, lambda v: v >= 0, "not be negative")
DROPOUT = checked(float, lambda v: 0 <= v < 1, "be in [0, 1)")
FRACTION = checked(float, lambda v: 0 <= v <= 1, "be in [0, 1]")
SEED = checked(int, lambda v: 0 <= v < 2**32, "be in [0, 2**32)")
BPTT = checked(int, lambda v: v >= 2, "be at least 2")


def cutoff_list(text):
    """An argparse type: "20000,60000" -> [20000, 60000], positive and increasing."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers (got {text!r})")
    if any(v < 1 for v in values) or any(a >= b for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"must be positive and increasing (got {text})")
    return values


def check_output_file(path, flag):
    """Refuse an output file that cannot be written, before any work is done."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SettingsError(f"{flag} {path}: the directory {directory} does not exist; create "
                            "it or choose another path")
    if os.path.isdir(path):
        raise SettingsError(f"{flag} {path} is a directory; give a file name")
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise SettingsError(f"{flag} {path} cannot be written (permission denied)")
    if os.path.isfile(path) and zipfile.is_zipfile(path):  # torch.save writes zip archives
        raise SettingsError(f"{flag} {path} is a checkpoint (or another archive); writing "
                            "there would destroy it, so choose another file")


class ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Help that ends each flag's text with its default, unless there is none to show (None
    or False) or the text already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one line on stderr ("error: --lr must be positive (got -1)")
    and exit status 1, like every other refusal of these scripts; and every flag accepted
    with dashes or underscores (--batch_size and --batch-size), help showing the one
    spelling each flag was declared with."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        known = self._option_string_actions  # every declared "--flag" spelling
        respelled = []
        for arg in args:
            flag, equals, value = arg.partition("=")
            if flag.startswith("--") and flag not in known:
                for other in (flag.replace("_", "-"), "--" + flag[2:].replace("-", "_")):
                    if other in known:
                        flag = other
                        break
            respelled.append(flag + equals + value)
        return super().parse_known_args(respelled, namespace)

    def error(self, message):
        # argparse writes "argument --lr: must be ..."; the flag reads better as the subject.
        message = re.sub(r"^argument ([^:/ ]+)\S*: (?=must )", r"\1 ", message)
        raise SystemExit(f"error: {message}")


# --- The table ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    name: str
    type: object  # an argparse type; bool: a --name/--no-name switch; a tuple: the choices
    default: object  # a value, or one per model: {"awd": ..., "lstm": ...}
    help: str
    part: str = "training"  # "model" (fixed when fine-tuning), "training", or "run": an
    #                          option of this command alone, not saved with the run
    models: tuple = ("awd", "lstm")  # the models it applies to
    resumable: bool = False  # a resumed run may change it
    flag: str = None  # its spelling, when not --name-with-dashes (the AWD-LSTM code's)
    metavar: str = None
    shown: str = None  # how --help shows the default, when not as it is


S = Setting
MODEL, RUN, AWD = "model", "run", ("awd",)
SETTINGS = (
    # What to train. The model's defaults: awd is Merity et al.'s WikiText-2 recipe, lstm
    # the PyTorch word-language-model example's "medium" model (lr / 4 on a plateau).
    S("model", ("awd", "lstm"), "awd", "which model (or the --recipe's)", MODEL),
    S("recipe", ("paper", "1cycle", "cpu30"), "paper", "paper: the model's defaults; 1cycle: "
      "Gugger and Howard's 90-epoch AWD-LSTM recipe, Adam on a 1cycle schedule (lr 5e-3, "
      "batch 100, clip 0.12, dropouts 0.4/0.2/0.6/0.1/0.5, AR/TAR 3/1.5); cpu30: the best "
      "model 30 minutes of a 2-core CPU train (a 400-unit LSTM, adaptive softmax, ASGD)"),
    S("data", str, DEFAULT_DATA, "corpus directory", resumable=True,
      shown="data/wikitext-2 beside train.py"),
    S("emsize", COUNT, {"awd": 400, "lstm": 650}, "embedding size", MODEL),
    S("nhid", COUNT, {"awd": 1150, "lstm": 650}, "hidden units per LSTM layer", MODEL),
    S("nlayers", COUNT, {"awd": 3, "lstm": 2}, "LSTM layers", MODEL),
    S("dropout", DROPOUT, {"awd": 0.4, "lstm": 0.5}, "dropout on the last layer's output (and "
      "on the embedding and between layers for lstm)", MODEL),
    S("dropouth", DROPOUT, {"awd": 0.2}, "locked dropout between LSTM layers", MODEL, AWD),
    S("dropouti", DROPOUT, {"awd": 0.65}, "locked dropout on the embedding output", MODEL, AWD),
    S("dropoute", DROPOUT, {"awd": 0.1}, "embedding dropout: whole word types", MODEL, AWD),
    S("wdrop", DROPOUT, {"awd": 0.5}, "DropConnect on the hidden-to-hidden matrices", MODEL,
      AWD),
    S("tied", bool, True, "tie decoder and embedding weights", MODEL),
    S("cutoffs", cutoff_list, [], "an adaptive softmax for large vocabularies: the frequency "
      "ranks where its head and each cluster end, e.g. 20000,60000 (needs --no-tied)", MODEL,
      metavar="N,N,..."),
    # How to train it.
    S("lr", POSITIVE, {"awd": 30.0, "lstm": 20.0}, "learning rate (the peak of a onecycle or "
      "1cycle schedule)"),
    S("clip", POSITIVE, 0.25, "gradient clipping (total norm)"),
    S("epochs", COUNT, {"awd": 750, "lstm": 40}, "epochs to train (the upper limit when "
      "fine-tuning or under a budget)", resumable=True),
    S("batch_size", COUNT, {"awd": 80, "lstm": 20}, "training batch size", flag="--batch_size"),
    S("bptt", BPTT, {"awd": 70, "lstm": 35}, "BPTT length"),
    S("variable_bptt", bool, {"awd": True, "lstm": False}, "random BPTT length per batch"),
    S("lr_by_window", bool, True, "scale each step's lr by its window length / --bptt"),
    S("alpha", NON_NEGATIVE, {"awd": 2.0, "lstm": 0.0}, "activation regularisation (AR) "
      "weight"),
    S("beta", NON_NEGATIVE, {"awd": 1.0, "lstm": 0.0}, "temporal activation regularisation "
      "(TAR) weight"),
    S("wdecay", NON_NEGATIVE, {"awd": 1.2e-6, "lstm": 0.0}, "weight decay"),
    S("optimizer", ("sgd", "adam", "adamw"), "sgd", "torch.optim.SGD, Adam (L2 weight decay) "
      "or AdamW (decoupled), with --lr and --wdecay"),
    S("schedule", tuple(SCHEDULES), {"awd": "ntasgd", "lstm": "anneal"}, "; ".join(
      f"{name}: {schedule.summary}" for name, schedule in SCHEDULES.items())),
    S("nonmono", COUNT, 5, "NT-ASGD non-monotone interval"),
    S("warmup", FRACTION, 0.3, "onecycle: the share of the run over which the lr rises"),
    S("cooldown", FRACTION, 1.0, "linear: the share of the run, at its end, over which the lr "
      "falls to 0"),
    S("average_start", FRACTION, 0.75, "average the weights from this share of the run on "
      "(onecycle, and ntasgd under a budget, whose trigger may start it earlier)"),
    S("budget_minutes", POSITIVE, None, "finish training, validation and the test within this "
      "wall time: the run trains until the time it keeps for its end (measured first), and "
      "its schedule follows the share of the training time passed"),
    S("eval_batch_size", COUNT, 10, "validation batch size"),
    S("test_batch_size", COUNT, 1, "test batch size", resumable=True),
    S("seed", SEED, {"awd": 1882, "lstm": 1111}, "random seed"),
    S("precision", ("auto", "torch", "fp32", "tf32", "bf16"), "torch", "auto: bf16 on a CPU "
      "whose bfloat16 matmuls are measured faster than its float32 ones, else torch; torch: "
      "PyTorch's defaults "
      "(float32; cuDNN's LSTMs may use TensorFloat-32); fp32: IEEE float32; tf32: "
      "TensorFloat-32 matmuls and LSTMs (NVIDIA GPUs); bf16: training steps in bfloat16, "
      "loss, weights and optimizer in float32", resumable=True),
    S("save", str, None, "best-model checkpoint path (default checkpoints/<model>.pt, "
      "<recipe>.pt for a --recipe, <model>-finetune.pt when fine-tuning)"),
    # Options of this command, not of the run: a resume is given them again.
    S("resume", str, None, "continue a run exactly from its training state (<save>.state.pt)",
      RUN, metavar="STATE"),
    S("finetune", str, None, "fine-tune a trained model: restart from its averaged weights in "
      "averaging mode, stop at the first non-monotone trigger", RUN, metavar="CHECKPOINT"),
    S("overwrite", "switch", False, "let a new run replace existing checkpoints at --save", RUN),
    S("data_changed", "switch", False, "resume although the data files changed since the run "
      "last trained on them (it is then another run, and its provenance says so)", RUN),
    S("device", ("auto", "cpu", "cuda"), "auto", "where to train (auto: CUDA when available, "
      "else the CPU)", RUN),
    S("max_batches", COUNT, None, "cap the training batches per epoch (smoke runs; the run's "
      "state keeps it, so a resume trains the same capped epochs)"),
    S("log_interval", COUNT, 50, "batches between progress-bar updates", RUN),
    S("save_every", POSITIVE, None, "also save the training state every MINUTES within an "
      "epoch, to resume from exactly", RUN, metavar="MINUTES"),
    S("sync_timeout", POSITIVE, 5.0, "under torchrun: how long a process waits for the others "
      "before it reports one hung or stopped", RUN, metavar="MINUTES"),
    S("tensorboard", str, None, "also log to TensorBoard event files in DIR (needs "
      "tensorboard)", RUN, metavar="DIR"),
)
BY_NAME = {s.name: s for s in SETTINGS}

# Other recipes for a model, each its changes to the model's defaults (--recipe).
RECIPES = {
    # Gugger and Howard (2018), "AdamW and Super-convergence is now the fastest way to
    # train neural nets" (fast.ai), code sgugger/Adam-experiments (train_rnn.py): Adam on a
    # 1cycle schedule, 90 epochs for 750; valid / test 68.7 / 65.5 reported. Its loop
    # (fastai 0.7's) takes the same lr whatever a window's length.
    "1cycle": dict(model="awd", optimizer="adam", schedule="1cycle", lr=5e-3, epochs=90,
                   batch_size=100, bptt=70, clip=0.12, wdecay=1.2e-6, alpha=3.0, beta=1.5,
                   dropouti=0.6, dropout=0.4, wdrop=0.5, dropoute=0.1, dropouth=0.2,
                   lr_by_window=False),
    # The README's first run: the best model 30 minutes of a 2-core CPU train here, chosen
    # by measured pilots (results/cpu30/): a 400-unit LSTM, an adaptive softmax, SGD at the
    # PyTorch example's lr and batch, averaged (ASGD) over the last quarter of the steps.
    "cpu30": dict(model="lstm", emsize=400, nhid=400, nlayers=1, tied=False,
                  cutoffs=[2000, 10000], dropout=0.2, batch_size=20, bptt=35, lr=20.0,
                  optimizer="sgd", schedule="ntasgd", budget_minutes=30.0, epochs=50),
}


def default(setting, model):
    """A setting's default for `model` (None where it does not apply)."""
    if isinstance(setting.default, dict):
        return setting.default.get(model)
    return setting.default


def defaults(model):
    """The settings a run of `model` starts from: every saved setting's default."""
    return {s.name: default(s, model) for s in SETTINGS
            if s.part != RUN and model in s.models}


def flag(setting):
    return setting.flag or "--" + setting.name.replace("_", "-")


def add_flags(parser):
    """One flag per setting, default None (so that a run knows what was given), its help
    ending in the defaults: [awd: 30.0, lstm: 20.0]."""
    for s in SETTINGS:
        shown = (", ".join(f"{m}: {v}" for m, v in s.default.items())
                 if isinstance(s.default, dict) else s.shown or s.default)
        text = f"{s.help} [{shown}]" if s.default not in (None, False) else s.help
        value = s.default if s.part == RUN else None  # (a resume is given run options anew)
        if s.type == "switch":
            parser.add_argument(flag(s), dest=s.name, action="store_true", help=s.help)
        elif s.type is bool:
            parser.add_argument(flag(s), dest=s.name, action=argparse.BooleanOptionalAction,
                                default=value, help=text)
        else:
            how = (dict(choices=s.type) if isinstance(s.type, tuple)
                   else dict(type=s.type, metavar=s.metavar))
            parser.add_argument(flag(s), dest=s.name, default=value, help=text, **how)


def given(args):
    """The settings given on the command line (run options aside): name -> value."""
    return {s.name: getattr(args, s.name) for s in SETTINGS
            if s.part != RUN and getattr(args, s.name) is not None}


# --- A run's settings ---------------------------------------------------------------------

def fresh_settings(args):
    """A new run's settings: the model's defaults, the recipe's, then the flags given."""
    flags = given(args)
    recipe = RECIPES.get(flags.get("recipe"), {})
    model = flags.get("model", recipe.get("model", "awd"))
    if recipe and recipe["model"] != model:
        raise SettingsError(f"--recipe {flags['recipe']} trains --model {recipe['model']}; "
                            f"it does not apply to --model {model}")
    for name in flags:
        if model not in BY_NAME[name].models:
            raise SettingsError(f"{flag(BY_NAME[name])} applies to --model "
                                f"{' or '.join(BY_NAME[name].models)} only")
    s = {**defaults(model), **recipe, **flags, "model": model, "finetune": None}
    if model == "lstm" and s["tied"] and s["emsize"] != s["nhid"]:
        raise SettingsError(
            f"--model lstm ties the decoder to the embedding, which needs --emsize equal to "
            f"--nhid (got {s['emsize']} and {s['nhid']}); make them equal or pass --no-tied")
    if s["cutoffs"] and s["tied"]:
        raise SettingsError(
            "--cutoffs makes the output layer an adaptive softmax, which has no single output "
            "matrix to tie to the embedding; add --no-tied")
    if s["nhid"] // CLUSTER_SHRINK ** len(s["cutoffs"]) < 1:
        raise SettingsError(
            f"with {len(s['cutoffs'])} --cutoffs the adaptive softmax's last cluster would "
            f"have no features (--nhid {s['nhid']} shrinks {CLUSTER_SHRINK}x per cluster); "
            "give fewer cutoffs or a larger --nhid")
    name = flags["recipe"] if recipe else model  # so that the README's commands never collide
    return {**s, "save": s["save"] or os.path.join("checkpoints", f"{name}.pt")}


def resumed_settings(args, saved):
    """The settings of the run a training state saved (`saved`, its settings), with the
    few a resume may change; a setting the state predates takes its default."""
    s = {**defaults(saved["model"]), **saved}
    unknown = sorted(set(saved) - set(BY_NAME) - {"finetune"})
    if unknown:
        print(f"warning: {args.resume} holds settings this code does not know "
              f"({', '.join(unknown)}: a newer version's?); resuming without them")
    if args.save and args.save != s["save"]:
        raise SettingsError(f"--save cannot change when resuming; the run keeps writing to "
                            f"{s['save']}")
    for name, value in given(args).items():
        if not BY_NAME[name].resumable and value != s.get(name) and name != "save":
            changeable = ", ".join(flag(x) for x in SETTINGS if x.resumable)
            raise SettingsError(f"{flag(BY_NAME[name])} cannot change when resuming "
                                f"({args.resume} was run with {s.get(name)}); only "
                                f"{changeable} and the run options can")
        s[name] = value
    return s


def finetune_settings(args, trained):
    """Fine-tuning's settings: those of the run that trained the model (`trained`), the
    flags given on top, the model's own fixed."""
    s = {**defaults(trained["model"]), **trained}
    for name, value in given(args).items():
        if BY_NAME[name].part == MODEL and value != s.get(name):
            raise SettingsError(f"{flag(BY_NAME[name])} cannot change when fine-tuning: "
                                f"{args.finetune} has {name}={s.get(name)}")
        s[name] = value
    stem, ext = os.path.splitext(args.finetune)
    s["finetune"] = args.finetune
    s["save"] = args.save or f"{stem}-finetune{ext or '.pt'}"
    return s


def resume_command(args, state_file, launcher=("python",)):
    """The command that continues a run: --resume plus the resumable settings and the run
    options that this one was given."""
    command = list(launcher) + ["train.py", "--resume", state_file]
    for s in SETTINGS:
        value = getattr(args, s.name)
        if (s.resumable or s.part == RUN) and s.type != "switch" and value is not None \
                and s.name not in ("resume", "finetune") and value != s.default:
            command += [flag(s), str(value)]
    return shlex.join(command)
