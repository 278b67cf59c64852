"""Tests of devices.py: what each --precision sets, what bf16 runs, and freed CPU memory
kept for reuse."""

import os
import subprocess
import sys

import pytest
import torch

import devices
from devices import check_bf16, float32_math, set_precision
from model import build_model
from settings import SettingsError, defaults
from trainer import Objective, train_step


def test_tf32_on_the_cpu_says_why_not():
    with pytest.raises(SettingsError, match="tf32 needs an NVIDIA GPU"):
        set_precision("tf32", torch.device("cpu"))


def test_bf16_on_the_cpu_trains_or_says_why_not():
    """Whether a CPU runs bf16 LSTMs depends on it (oneDNN needs bf16 instructions)."""
    torch.manual_seed(0)
    model = build_model(dict(model="awd", ntoken=20, emsize=8, nhid=8, nlayers=2))
    set_precision("bf16", torch.device("cpu"))
    try:
        check_bf16(torch.device("cpu"), model, 2)
    except SettingsError as e:
        assert "--precision bf16" in str(e) and "use --precision torch" in str(e)
        return
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    s = defaults("awd")
    tokens = torch.randint(0, 20, (6, 2))
    loss, _ = train_step(Objective(model, s["alpha"], s["beta"]), optimizer, tokens, tokens,
                         model.init_hidden(2), s["clip"], "bf16")
    assert torch.isfinite(loss) and next(model.parameters()).dtype == torch.float32
    set_precision("torch", torch.device("cpu"))


@pytest.mark.parametrize("precision, math", [
    ("fp32", ("ieee", "ieee")),  # TF32 off where PyTorch leaves it on
    ("torch", ("ieee", "tf32")),  # PyTorch's own defaults, restored
    ("bf16", ("ieee", "tf32")),  # cuDNN's bf16 LSTMs on tensor cores, not FMA math
])
def test_each_precision_sets_the_float32_math_of_matmuls_and_lstms(precision, math):
    other = "tf32" if math[1] == "ieee" else "fp32"
    set_precision(other, torch.device("cpu"), training=False)
    set_precision(precision, torch.device("cpu"))
    assert float32_math() == math
    set_precision("torch", torch.device("cpu"))


@pytest.mark.parametrize("precision", ["fp32", "torch", "tf32", "bf16"])
def test_every_precision_leaves_torchs_own_tf32_getters_working(precision):
    """torch >= 2.9 keeps per-operator flags beside the older switches; one of them set
    alone (cuDNN's RNN flag, say, with its conv flag left at "tf32") makes torch's own
    getters raise, and any library that reads them fails."""
    set_precision(precision, torch.device("cpu"), training=False)
    lstm_tf32 = precision != "fp32"
    assert torch.backends.cudnn.allow_tf32 == lstm_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == (precision == "tf32")
    assert torch.get_float32_matmul_precision() == ("high" if precision == "tf32" else "highest")
    if hasattr(torch.backends.cudnn, "rnn"):  # torch >= 2.9: the per-operator flags agree
        assert (torch.backends.cudnn.rnn.fp32_precision == "tf32") == lstm_tf32
        assert (torch.backends.cudnn.conv.fp32_precision == "tf32") == lstm_tf32
    set_precision("torch", torch.device("cpu"))


def test_evaluation_reads_a_tf32_or_bf16_checkpoint_anywhere():
    set_precision("tf32", torch.device("cpu"), training=False)  # refused only for training
    assert float32_math() == ("tf32", "tf32")
    set_precision("torch", torch.device("cpu"))


# --- Processes under torchrun ------------------------------------------------------------------


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTS = """
import resource, torch, devices

def faults():  # minor page faults of 20 blocks of 64 MB, each freed at once, as a step's
    for _ in range(10):  # gradients are (the first large blocks are faulted in either way)
        torch.empty(2**24).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.empty(2**24).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

without = faults()  # glibc's defaults first: the setting lasts for the process
print(without, devices.keep_freed_memory(torch.device("cpu")), faults())
"""


def test_on_the_cpu_freed_memory_is_reused_without_page_faults():
    """glibc maps every 64 MB block afresh (16,384 pages faulted in each time); kept, the
    process reuses the memory it freed. A count of faults, not a timing."""
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.split()
    without, kept, with_keep = int(out[0]), out[1] == "True", int(out[2])
    if not kept:
        pytest.skip("no glibc mallopt here")
    assert without > 20 * 10_000 and with_keep < 1_000
    assert not devices.keep_freed_memory(torch.device("cuda"))  # nothing changes on a GPU
