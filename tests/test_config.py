"""Tests of config.py: flag types refuse what makes no run, in one line naming the flag;
the precision switch."""

import pytest
import torch

from bptt import Objective, train_step
from config import (COUNT, DROPOUT, POSITIVE, PRESETS, SEED, Parser, SettingsError,
                    float32_math, set_precision)
from model import build_model


def parse(kind, text):
    p = Parser(prog="x")
    p.add_argument("--flag", type=kind)
    return p.parse_args(["--flag", text]).flag


@pytest.mark.parametrize("kind, text, fragment", [
    (COUNT, "0", "--flag must be at least 1 (got 0)"),
    (COUNT, "2.5", "--flag must be at least 1 (got '2.5')"),
    (POSITIVE, "-1", "--flag must be positive (got -1)"),
    (POSITIVE, "nan", "--flag must be a finite number (got nan)"),
    (POSITIVE, "inf", "--flag must be a finite number (got inf)"),
    (DROPOUT, "1", "--flag must be in [0, 1) (got 1)"),
    (SEED, "-1", "--flag must be in [0, 2**32) (got -1)"),
])
def test_bad_values_are_one_line_errors_naming_the_flag(kind, text, fragment):
    with pytest.raises(SystemExit) as exit_:
        parse(kind, text)
    assert exit_.value.code == f"error: {fragment}"


def test_good_values_pass_through():
    assert parse(COUNT, "3") == 3 and parse(POSITIVE, "0.5") == 0.5
    assert parse(DROPOUT, "0") == 0.0 and parse(SEED, "0") == 0


def test_other_parse_errors_are_one_line_too():
    with pytest.raises(SystemExit) as exit_:
        Parser(prog="x").parse_args(["--nope"])
    assert exit_.value.code == "error: unrecognized arguments: --nope"


def test_presets_share_their_keys():
    assert set(PRESETS["lstm"]) <= set(PRESETS["awd"])


def test_tf32_on_the_cpu_says_why_not():
    with pytest.raises(SettingsError, match="tf32 needs an NVIDIA GPU"):
        set_precision("tf32", torch.device("cpu"))


def test_bf16_on_the_cpu_trains_or_says_why_not():
    """Whether a CPU runs bf16 LSTMs depends on it (oneDNN needs bf16 instructions)."""
    try:
        set_precision("bf16", torch.device("cpu"))
    except SettingsError as e:
        assert "--precision bf16" in str(e) and "use --precision fp32" in str(e)
        return
    torch.manual_seed(0)
    model = build_model(dict(model="awd", ntoken=20, emsize=8, nhid=8, nlayers=2))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    s = dict(PRESETS["awd"], precision="bf16")
    tokens = torch.randint(0, 20, (6, 2))
    loss, _ = train_step(Objective(model, s["alpha"], s["beta"]), optimizer, tokens, tokens,
                         model.init_hidden(2), 1.0, s)
    assert torch.isfinite(loss) and next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("precision, math", [
    ("fp32", ("ieee", "ieee")),  # TF32 off where PyTorch leaves it on
    ("torch", ("ieee", "tf32")),  # PyTorch's own defaults, restored
    ("bf16", ("ieee", "ieee")),  # its float32 parts
])
def test_each_precision_sets_the_float32_math_of_matmuls_and_lstms(precision, math):
    set_precision("tf32" if math[1] == "ieee" else "fp32", torch.device("cpu"), training=False)
    set_precision(precision, torch.device("cpu"))
    assert float32_math() == math
    set_precision("torch", torch.device("cpu"))


def test_evaluation_reads_a_tf32_or_bf16_checkpoint_anywhere():
    set_precision("tf32", torch.device("cpu"), training=False)  # refused only for training
    assert float32_math() == ("tf32", "tf32")
    set_precision("torch", torch.device("cpu"))


def test_every_flag_takes_dashes_or_underscores():
    p = Parser(prog="x")
    p.add_argument("--batch_size", type=COUNT)
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=COUNT)
    args = p.parse_args(["--batch-size", "3", "--eval_batch_size=4"])
    assert (args.batch_size, args.eval_batch_size) == (3, 4)
    with pytest.raises(SystemExit) as exit_:
        p.parse_args(["--batch-sizes", "3"])  # a flag that exists in neither spelling
    assert "unrecognized arguments: --batch-sizes" in exit_.value.code
