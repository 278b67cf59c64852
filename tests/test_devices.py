"""Tests of devices.py: what each --precision sets, and what bf16 runs."""

import pytest
import torch

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
