"""config.py: what every script needs before it starts: the training recipes (presets),
flag types that argparse checks, the error for settings that do not make a run, and the
choice, description and numeric precision of the device.
"""

import argparse
import math
import os
import re
import sys
import zipfile

import torch

from model import LSTMLayer

# Each preset is a full recipe; any flag overrides its entry.
PRESETS = {
    # Merity et al. (2017), WikiText-2.
    "awd": dict(emsize=400, nhid=1150, nlayers=3, dropout=0.4, dropouth=0.2, dropouti=0.65,
                dropoute=0.1, wdrop=0.5, tied=True, lr=30.0, clip=0.25, epochs=750,
                batch_size=80, bptt=70, variable_bptt=True, alpha=2.0, beta=1.0,
                wdecay=1.2e-6, schedule="ntasgd", nonmono=5, seed=1882),
    # PyTorch word-language-model example, "medium" model: SGD, lr / 4 on a plateau.
    "lstm": dict(emsize=650, nhid=650, nlayers=2, dropout=0.5, tied=True, lr=20.0,
                 clip=0.25, epochs=40, batch_size=20, bptt=35, variable_bptt=False,
                 alpha=0.0, beta=0.0, wdecay=0.0, schedule="anneal", nonmono=5, seed=1111),
}
# Settings both recipes share: validation at batch 10 and test at 1 as in the paper; the
# optimizer; the one-cycle schedule's warm-up fraction and, for a planned run (a budget or
# --schedule onecycle), the fraction of its steps after which the weights are averaged.
COMMON = dict(eval_batch_size=10, test_batch_size=1, precision="torch", optimizer="sgd",
              warmup=0.3, average_start=0.75, budget_minutes=None, cutoffs=[],
              recipe="paper")
# Other recipes for the same model, each its changes to the model's preset (--recipe).
RECIPES = {
    # Gugger and Howard (2018), "AdamW and Super-convergence is now the fastest way to
    # train neural nets" (fast.ai), code sgugger/Adam-experiments (train_rnn.py): Adam on a
    # 1cycle schedule, 90 epochs for AWD-LSTM's 750; valid / test 68.7 / 65.5 reported.
    # Dropouts in their order input, output, weight, embedding, hidden: 0.6/0.4/0.5/0.1/0.2.
    "1cycle": dict(model="awd", optimizer="adam", schedule="1cycle", lr=5e-3, epochs=90,
                   batch_size=100, bptt=70, clip=0.12, wdecay=1.2e-6, alpha=3.0, beta=1.5,
                   dropouti=0.6, dropout=0.4, wdrop=0.5, dropoute=0.1, dropouth=0.2),
}


class SettingsError(ValueError):
    """Settings that do not make a valid run; the message names the flag."""


# --- Flags --------------------------------------------------------------------------------

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


# --- Device -------------------------------------------------------------------------------

def pick_device(name):
    """torch.device for --device auto|cpu|cuda (auto: CUDA when PyTorch sees a GPU)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda: no CUDA device is available to PyTorch; "
                            "use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def describe_device(device):
    """"NVIDIA H100 80GB HBM3" or "2 threads": what the run's speed depends on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{threads} thread{'s' if threads > 1 else ''}"


def out_of_memory(error):
    """Whether `error` (a MemoryError or RuntimeError) says the device ran out of memory."""
    return (isinstance(error, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(error) or "out of memory" in str(error))


PRECISIONS = ("torch", "fp32", "tf32", "bf16")


def set_precision(precision, device, training=True):
    """Apply --precision to this process, the same way in every script:
        torch  PyTorch's own defaults: float32, matmuls in IEEE float32, cuDNN's LSTMs
               allowed TensorFloat-32 (on GPUs that have it)
        fp32   IEEE float32 everywhere
        tf32   TensorFloat-32 in matmuls and cuDNN's LSTMs (NVIDIA GPUs only)
        bf16   training steps under bfloat16 autocast (bptt.train_step; the LSTMs in
               bfloat16 too, model.LSTMLayer), everything else as fp32
    On the CPU all four compute float32 parts alike (IEEE). Evaluation and sampling
    (`training` False) always run in float32 and take only the option's float32 math, so a
    checkpoint trained with any option is read anywhere; training raises SettingsError
    where the device cannot run the option."""
    if training and precision == "tf32" and device.type != "cuda":
        raise SettingsError("--precision tf32 needs an NVIDIA GPU (TF32 is a tensor-core "
                            "format); on the CPU use --precision fp32")
    if training and precision == "bf16":
        check_bf16(device)
    matmul = "tf32" if precision == "tf32" else "ieee"
    lstm = "tf32" if precision in ("tf32", "torch") else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = matmul
        torch.backends.cudnn.rnn.fp32_precision = lstm
    else:
        torch.backends.cuda.matmul.allow_tf32 = matmul == "tf32"
        torch.backends.cudnn.allow_tf32 = lstm == "tf32"


def float32_math():
    """(matmuls, cuDNN's LSTMs): how this process computes float32 on CUDA, "ieee" or
    "tf32" for each (set_precision sets both)."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        return (torch.backends.cuda.matmul.fp32_precision,
                torch.backends.cudnn.rnn.fp32_precision)
    return tuple("tf32" if on else "ieee" for on in (torch.backends.cuda.matmul.allow_tf32,
                                                     torch.backends.cudnn.allow_tf32))


def check_bf16(device):
    """Run a tiny weight-dropped LSTM step under bf16 autocast, or say why this device
    cannot."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SettingsError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not "
                            "support bfloat16; use --precision torch (or fp32, tf32)")
    layer = LSTMLayer(8, 8, weight_dropout=0.5).to(device)
    hidden = (torch.zeros(1, 1, 8, device=device),) * 2
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            output, _ = layer(torch.zeros(2, 1, 8, device=device), hidden)
        output.float().sum().backward()
    except RuntimeError as e:
        reason = str(e).strip().split(". ")[0][:160]
        raise SettingsError(f"--precision bf16: PyTorch cannot run an LSTM in bfloat16 on this "
                            f"{device.type} ({reason}); use --precision torch here") from None
