"""Tests of bench.py: it compares like with like, and prints every figure."""

import re

import pytest
import torch

import bench
from model import build_model
from settings import defaults
from trainer import Objective, train_step


def test_the_example_style_step_computes_the_same_update_as_train_step():
    s = dict(defaults("lstm"), dropout=0.0)
    torch.manual_seed(0)
    inputs, targets = torch.randint(0, 50, (7, 3)), torch.randint(0, 50, (7, 3))
    updated = []
    for step in (train_step, bench.example_style_step):
        torch.manual_seed(1)
        model = build_model(dict(model="lstm", ntoken=50, emsize=8, nhid=8, nlayers=2,
                                 dropout=0.0, tied=True))
        optimizer = torch.optim.SGD(model.parameters(), lr=s["lr"])
        loss, _ = step(Objective(model, 0.0, 0.0), optimizer, inputs, targets,
                       model.init_hidden(3), s["clip"], "torch")
        updated.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*updated):
        assert torch.allclose(a, b, atol=1e-6)


def test_bench_prints_every_configuration_with_positive_figures(capsys):
    tiny = []
    for kind in ("awd", "lstm", "cpu30"):
        tiny += [f"--{kind}-emsize", "16", f"--{kind}-nhid", "16", f"--{kind}-nlayers", "2",
                 f"--{kind}-batch-size", "2", f"--{kind}-bptt", "5"]
    bench.main(["--device", "cpu", "--steps", "2", "--warmup", "1", "--repeats", "1",
                "--configs", "abcdefghi", "--peak-n", "64"] + tiny)
    out = capsys.readouterr().out
    peak = float(re.search(r"^peak: ([\d,.]+) GFLOP/s \(64 x 64", out, re.M).group(1))
    for label in "abcdefghi":  # params, ms/step, tokens/s, train ppl, LSTM dtype, kernels,
        row = re.search(rf"^\({label}\) .*?\s([\d,]+)\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)\s+"
                        r"(\w+)\s+(\w+)\s+(\d+)\s+([\d,]+) MiB\s+([\d.]+)\s+([\d.]+)%$", out,
                        re.M)  # re-packs, MiB, GFLOP per step, its rate as a share of the peak
        assert row, label
        assert float(row.group(2)) > 0 and int(row.group(3).replace(",", "")) > 0
        assert float(row.group(4)) > 1 and row.group(5) == "float32"
        assert row.group(6) in ("onednn", "native")  # no cuDNN on the CPU
        assert row.group(7) == "0"  # and so no re-packs
        # (tiny shapes: a share of 0.0%, or, with the other core busy during the 64 x 64
        # matmuls, a peak printed as 0.0 GFLOP/s)
        assert float(row.group(9)) > 0 and float(row.group(10)) >= 0 and peak >= 0
    for ratio in ("a/b", "c/d", "e/f", "g/h", "a/i"):
        assert re.search(rf"^{ratio} .*\s\d+\.\d{{3}}$", out, re.M), ratio
    # (e) and (f) have WikiText-103's vocabulary: the full softmax's 267,735 x 16 decoder
    # outweighs the adaptive softmax's head of 20,002 words and its two narrow clusters
    params = {label: int(re.search(rf"^\({label}\) .*?\s([\d,]+)\s+[\d.]+\s", out,
                                   re.M).group(1).replace(",", "")) for label in "aef"}
    assert params["e"] > params["a"] and params["f"] - params["e"] > 3_000_000


def test_figures_come_as_they_are_measured_so_that_a_run_cut_short_still_says_them(capsys):
    every, steps = bench.PROGRESS_EVERY, 2 * bench.PROGRESS_EVERY + 1
    bench.main(["--device", "cpu", "--steps", str(steps), "--warmup", "0", "--repeats", "2",
                "--configs", "a", "--awd-emsize", "8", "--awd-nhid", "8", "--awd-batch-size",
                "2", "--awd-bptt", "4"])
    lines = capsys.readouterr().out.splitlines()
    table = next(i for i, line in enumerate(lines) if line.startswith("configuration"))
    before = [line for line in lines[:table] if line.startswith("(a) ")]
    assert [line.split(":")[0] for line in before] == [
        f"(a) {r}/2" + part for r in (1, 2) for part in (
            f", after {every} of {steps} timed steps", f", after {2 * every} of {steps} "
            "timed steps", "")]
    assert all(re.search(r": [\d.]+ ms/step, [\d,]+ tokens/s, train ppl [\d,.]+", line)
               for line in before)
    assert before[2].endswith("LSTMs in float32 on onednn kernels, 0 re-packs") or \
        before[2].endswith("LSTMs in float32 on native kernels, 0 re-packs")


def test_counts_below_one_are_one_clean_error_line():
    for flag in ("--steps", "--repeats"):
        with pytest.raises(SystemExit) as exit_:
            bench.main([flag, "0"])
        assert exit_.value.code == f"error: {flag} must be at least 1 (got 0)"


def test_a_missing_corpus_or_running_out_of_memory_is_one_clean_error_line(tmp_path,
                                                                            monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--data", str(tmp_path / "nowhere")])
    assert exit_.value.code.startswith("error: corpus directory ")

    def out_of_memory(*args, **kw):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    monkeypatch.setattr(bench, "time_steps", out_of_memory)
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--steps", "1", "--repeats", "1"])
    assert exit_.value.code.startswith("error: out of memory; lower the batch size")


def test_a_steps_flops_are_its_matmuls_and_its_lstms_forward_and_backward():
    """One LSTM layer (in 4, hidden 3) and a full softmax over 10 words, batch 2 x BPTT 5:
    the counter sees the decoder's matmuls (forward, and the input and weight gradients),
    and each LSTM token adds 24 h (in + h)."""
    run = dict(label="x", kind="lstm", regularised=False, settings=dict(tied=False))
    tokens = torch.randint(0, 10, (200,))
    t = bench.time_steps(run, (4, 3, 1, 2, 5), tokens, 10, torch.device("cpu"), 1, 0, "torch")
    decoder = 3 * 2 * 10 * 3 * 10  # 3 matmuls of 2 (10 tokens x 3 features x 10 words)
    lstm = 10 * 24 * 3 * (4 + 3) if t["kernels"] != "native" else 0
    assert t["flops"] >= decoder + lstm
    assert t["flops"] <= decoder + lstm + 10 * 24 * 3 * (4 + 3)  # (native: the counter's)
