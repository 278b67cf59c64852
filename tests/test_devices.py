"""Tests of devices.py: what each --precision sets, what bf16 runs, and freed CPU memory
kept for reuse."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import devices
import runlog
import train
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
        assert not devices.cpu_has_bf16()
        return
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    s = defaults("awd")
    tokens = torch.randint(0, 20, (6, 2))
    loss, _ = train_step(Objective(model, s["alpha"], s["beta"]), optimizer, tokens, tokens,
                         model.init_hidden(2), s["clip"], "bf16")
    assert torch.isfinite(loss) and next(model.parameters()).dtype == torch.float32
    set_precision("torch", torch.device("cpu"))


def test_a_cpu_without_bfloat16_refuses_bf16_in_one_line_and_auto_trains_float32(
        random_text, tmp_path, tiny, monkeypatch, capsys):
    """As on an AVX2-only CPU (simulated): bf16 there would be slower than float32."""
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    common = tiny["lstm"] + ["--data", random_text, "--epochs", "1", "--max-batches", "3"]
    with pytest.raises(SystemExit) as refused:
        train.main(common + ["--precision", "bf16", "--save", str(tmp_path / "b.pt")])
    message = str(refused.value.code)
    assert message.startswith("error: --precision bf16: this CPU has no bfloat16 "
                              "instructions") and "\n" not in message
    assert not (tmp_path / "b.state.pt").exists()
    train.main(common + ["--precision", "auto", "--save", str(tmp_path / "a.pt")])
    out = capsys.readouterr().out
    assert "precision torch (auto: float32, this CPU has no bfloat16 instructions)" in out
    assert checkpoint.load(str(tmp_path / "a.state.pt"))["args"]["precision"] == "torch"


@pytest.mark.parametrize("speedup, chosen", [(1.6, "bf16"), (0.61, "torch")])
def test_auto_takes_bf16_only_where_the_cpus_bfloat16_matmuls_pay(monkeypatch, speedup, chosen):
    """An AMD EPYC with AVX-512 BF16 multiplies faster in bfloat16; this repository's Intel
    Xeon, with the same instructions and no AMX, at 0.61 times float32's rate."""
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(devices, "bf16_matmul_speedup", lambda device: speedup)
    precision, why = devices.resolve_precision("auto", torch.device("cpu"))
    assert precision == chosen and f"{speedup:.2f} times as fast" in why
    assert devices.resolve_precision("auto", torch.device("cuda"))[0] == "torch"
    assert devices.resolve_precision("fp32", torch.device("cpu")) == ("fp32", None)


def test_the_bf16_matmul_speedup_is_measured_here():
    assert 0.05 < devices.bf16_matmul_speedup(torch.device("cpu"), n=256) < 20


@pytest.mark.skipif(not devices.cpu_has_bf16(), reason="this CPU has no bfloat16 instructions")
@pytest.mark.parametrize("decoder", [["--cutoffs", "20,40", "--no-tied"], []],
                         ids=["adaptive", "full"])
def test_on_a_cpu_with_bfloat16_a_bf16_run_follows_the_float32_validation_curve(
        make_corpus, tmp_path, tiny, decoder):
    """200 steps (4 epochs of 50) of a small baseline, its softmax adaptive or full, in
    float32 and in bf16, on text from a chain in which each of 60 words has 3 successors:
    each epoch's validation perplexity within 2%."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    successors = {w: rng.choice(words, size=3, replace=False) for w in words}

    def text(lines, word="w0"):
        out = []
        for _ in range(lines):
            line = [word := rng.choice(successors[word]) for _ in range(12)]
            out.append(" ".join(line) + "\n")
        return "".join(out)

    data = make_corpus(text(500), text(60), text(60))
    common = tiny["lstm"] + ["--emsize", "32", "--nhid", "32", "--data", data, "--epochs", "4",
                             "--max-batches", "50", "--schedule", "ntasgd", "--lr", "10"]
    curves = {}
    for precision in ("fp32", "bf16"):
        train.main(common + decoder + ["--precision", precision,
                                       "--save", str(tmp_path / f"{precision}.pt")])
        curves[precision] = [float(row["valid_ppl"])
                             for row in runlog.read_metrics(tmp_path / f"{precision}.csv")]
    assert len(curves["bf16"]) == 4 and curves["fp32"][-1] < 0.8 * curves["fp32"][0]  # learns
    for fp32, bf16 in zip(curves["fp32"], curves["bf16"]):
        assert abs(bf16 / fp32 - 1) < 0.02, curves


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
