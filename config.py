"""config.py: what every script needs before it starts: the training recipes (presets),
flag types that argparse checks, the error for settings that do not make a run, and the
choice and description of the device.
"""

import argparse
import math
import re

import torch

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
# Evaluation batch sizes of both recipes: validation at 10, test at 1 as in the paper.
COMMON = dict(eval_batch_size=10, test_batch_size=1)


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
        if not (math.isfinite(value) and test(value)):
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


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one line on stderr ("error: --lr must be positive (got -1)")
    and exit status 1, like every other refusal of these scripts."""

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
