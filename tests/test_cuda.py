"""The CUDA path of training (skipped without a GPU; run with python -m pytest -m cuda):
bf16 follows fp32, cuDNN keeps its packed weights through averaging, resume on CUDA."""

import warnings

import numpy as np
import pytest
import torch

import checkpoint
import runlog
import train

pytestmark = pytest.mark.cuda
TINY = ["--model", "awd", "--emsize", "32", "--nhid", "64", "--batch_size", "8", "--bptt", "16",
        "--device", "cuda", "--seed", "5"]


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    # A little structure to learn: each line repeats its first half.
    lines = []
    for _ in range(600):
        half = " ".join(rng.choice(words, size=6))
        lines.append(f"{half} {half}\n")
    for name, part in (("train.txt", lines[:480]), ("valid.txt", lines[480:540]),
                       ("test.txt", lines[540:])):
        (tmp_path / name).write_text("".join(part))
    return str(tmp_path)


def valid_losses(path):
    return [float(r["valid_loss"]) for r in runlog.read_metrics(path)]


def test_bf16_follows_the_fp32_validation_curve(corpus, tmp_path):
    for precision in ("fp32", "bf16"):
        train.main(TINY + ["--data", corpus, "--epochs", "10", "--precision", precision,
                           "--save", str(tmp_path / f"{precision}.pt")])
    fp32, bf16 = valid_losses(tmp_path / "fp32.csv"), valid_losses(tmp_path / "bf16.csv")
    for a, b in zip(fp32, bf16):
        assert abs(np.exp(b) / np.exp(a) - 1) < 0.02  # perplexities within 2%


def test_no_cudnn_repack_warning_through_the_switch_and_fine_tuning(corpus, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.main(TINY + ["--data", corpus, "--epochs", "6", "--nonmono", "1",
                           "--save", str(tmp_path / "awd.pt")])
        train.main(["--finetune", str(tmp_path / "awd.pt"), "--epochs", "2", "--device", "cuda"])
    assert checkpoint.load(str(tmp_path / "awd.state.pt"), kind="state")["averaged"] is not None
    assert not [w for w in caught if "contiguous chunk of memory" in str(w.message)]


def test_resume_on_cuda_matches_never_stopping(corpus, tmp_path):
    common = TINY + ["--data", corpus, "--nonmono", "1"]
    train.main(common + ["--epochs", "4", "--save", str(tmp_path / "straight.pt")])
    train.main(common + ["--epochs", "2", "--save", str(tmp_path / "split.pt")])
    train.main(["--resume", str(tmp_path / "split.state.pt"), "--epochs", "4"])
    a = checkpoint.load(str(tmp_path / "straight.state.pt"), kind="state")["model"]
    b = checkpoint.load(str(tmp_path / "split.state.pt"), kind="state")["model"]
    for name in a:  # cuDNN is not bitwise deterministic; the runs must agree closely
        assert torch.allclose(a[name], b[name], rtol=1e-3, atol=1e-4), name
