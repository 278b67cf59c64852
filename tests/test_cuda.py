"""The CUDA path of training (skipped without a GPU; run with python -m pytest -m cuda):
bf16 follows fp32 and runs the LSTMs in bfloat16 on cuDNN, no step re-packs cuDNN's
weights, resume on CUDA, the random state of the run's own GPU (the baseline's exact resume
on CUDA is in test_train.py)."""

import itertools
import warnings

import numpy as np
import pytest
import torch

import checkpoint
import runlog
import train
from bench import LSTMKernels
from data import Corpus, batchify, windows
from devices import check_bf16, set_precision
from model import build_model, model_config
from settings import DEFAULT_DATA, defaults
from trainer import Objective, train_step

pytestmark = pytest.mark.cuda
# conftest.py's tiny AWD-LSTM, a little wider, on the GPU
ON_GPU = ["--emsize", "32", "--nhid", "64", "--batch_size", "8", "--bptt", "16", "--device",
          "cuda", "--seed", "5"]


@pytest.fixture
def gpu_tiny(tiny):
    return tiny["awd"] + ON_GPU


@pytest.fixture
def corpus(make_corpus):
    """A little structure to learn: each line repeats its first half."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    lines = [f"{half} {half}\n" for half in (" ".join(rng.choice(words, size=6))
                                             for _ in range(600))]
    return make_corpus("".join(lines[:480]), "".join(lines[480:540]), "".join(lines[540:]))


def valid_losses(path):
    return [float(r["valid_loss"]) for r in runlog.read_metrics(path)]


def test_bf16_follows_the_fp32_validation_curve(corpus, tmp_path, gpu_tiny):
    """At 256 hidden units, where cuDNN takes the standard algorithm of the full model, not
    its persistent small-hidden one (up to 192 units: docs/training.md), whose bfloat16
    support is another question. One epoch's validation swings by 10% at lr 30; the best
    validation perplexity and the mean of the last three epochs' are steadier."""
    wide = gpu_tiny + ["--emsize", "256", "--nhid", "256"]  # (the last layer: emsize wide)
    for precision in ("fp32", "bf16"):
        train.main(wide + ["--data", corpus, "--epochs", "10", "--precision", precision,
                           "--save", str(tmp_path / f"{precision}.pt")])
    fp32, bf16 = (np.exp(valid_losses(tmp_path / f"{p}.csv")) for p in ("fp32", "bf16"))
    assert abs(bf16.min() / fp32.min() - 1) < 0.03
    assert abs(bf16[-3:].mean() / fp32[-3:].mean() - 1) < 0.03


def test_no_cudnn_repack_warning_through_the_switch_and_fine_tuning(corpus, tmp_path, gpu_tiny):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.main(gpu_tiny + ["--data", corpus, "--epochs", "6", "--nonmono", "1",
                           "--save", str(tmp_path / "awd.pt")])
        train.main(["--finetune", str(tmp_path / "awd.pt"), "--epochs", "2", "--device", "cuda"])
    assert checkpoint.load(str(tmp_path / "awd.state.pt"), kind="state")["averaged"] is not None
    assert not [w for w in caught if "contiguous chunk of memory" in str(w.message)]


def test_resume_on_cuda_matches_never_stopping(corpus, tmp_path, gpu_tiny):
    common = gpu_tiny + ["--data", corpus, "--nonmono", "1"]
    train.main(common + ["--epochs", "4", "--save", str(tmp_path / "straight.pt")])
    train.main(common + ["--epochs", "2", "--save", str(tmp_path / "split.pt")])
    train.main(["--resume", str(tmp_path / "split.state.pt"), "--epochs", "4"])
    a = checkpoint.load(str(tmp_path / "straight.state.pt"), kind="state")["model"]
    b = checkpoint.load(str(tmp_path / "split.state.pt"), kind="state")["model"]
    for name in a:  # cuDNN is not bitwise deterministic; the runs must agree closely
        assert torch.allclose(a[name], b[name], rtol=1e-3, atol=1e-4), name


def full_size_awd_steps(steps, precision, s=defaults("awd")):
    """`steps` training steps of the paper's AWD-LSTM on WikiText-2 on the GPU: the losses,
    the dtypes the last LSTM layer computed in, and what LSTMKernels saw of them (the
    kernels that ran the LSTMs, the cuDNN re-packs)."""
    set_precision(precision, torch.device("cuda"))
    corpus = Corpus(DEFAULT_DATA)
    torch.manual_seed(0)
    config = model_config(dict(s, model="awd"), len(corpus.dictionary))
    model = build_model(config).cuda().train()
    objective = Objective(model, s["alpha"], s["beta"])
    optimizer = torch.optim.SGD(model.parameters(), lr=s["lr"], weight_decay=s["wdecay"])
    data = batchify(corpus.train, s["batch_size"]).cuda()
    hidden, losses, dtypes = model.init_hidden(s["batch_size"]), [], set()
    model.rnns[-1].register_forward_hook(lambda m, args, out: dtypes.add(out[0].dtype))
    with LSTMKernels() as kernels:
        for _, inputs, targets in itertools.islice(windows(data, s["bptt"]), steps):
            loss, hidden = train_step(objective, optimizer, inputs, targets, hidden, s["clip"],
                                      precision)
            losses.append(loss)
    set_precision("torch", torch.device("cuda"))
    return torch.stack(losses), dtypes, kernels


def test_under_bf16_the_lstms_run_in_bfloat16_on_cudnn_for_200_full_size_steps():
    """torch >= 2.10 sends bfloat16 LSTMs to cuDNN (>= 9.13, compute capability >= 8); an
    older one runs them on its own kernels, which this would show as "native"."""
    losses, dtypes, kernels = full_size_awd_steps(200, "bf16")
    assert dtypes == {torch.bfloat16} and kernels.path == "cudnn"
    assert torch.isfinite(losses).all() and losses[-20:].mean() < losses[:20].mean()


def test_the_bf16_probe_passes_at_the_full_models_shapes():
    model = build_model(dict(model="awd", ntoken=100, emsize=400, nhid=1150, nlayers=3)).cuda()
    set_precision("bf16", torch.device("cuda"))
    check_bf16(torch.device("cuda"), model, 80)  # the standard algorithm, not small-hidden
    set_precision("torch", torch.device("cuda"))


@pytest.mark.parametrize("precision", ["torch", "bf16"])
def test_no_training_step_repacks_the_lstm_weights(precision):
    """Weight drop once swapped a dropped matrix into nn.LSTM, which re-packed cuDNN's flat
    buffer at every call; now the weights reach cuDNN in its layout, with no copy."""
    _, _, kernels = full_size_awd_steps(5, precision)
    assert kernels.repacks == 0 and kernels.path == "cudnn"


def test_the_spare_copy_that_a_budget_measures_steps_on_packed_weights(corpus, tmp_path):
    """The copy a budget measures its reserve with is packed once, by design (a deep copy
    loses cuDNN's layout); its steps then re-pack nothing, like the run's own."""
    settings = {**defaults("lstm"), "emsize": 32, "nhid": 32, "batch_size": 8,
                "bptt": 16, "model": "lstm", "finetune": None, "save": str(tmp_path / "m.pt")}
    trainer = train.Trainer(settings, Corpus(corpus), torch.device("cuda"))
    model, _, step = trainer.spare_copy()
    hidden = model.init_hidden(trainer.train_data.size(1))
    with LSTMKernels() as kernels:
        for _, inputs, targets in itertools.islice(windows(trainer.train_data, 16), 5):
            _, hidden = step(inputs, targets, hidden)
    assert kernels.repacks == 0 and kernels.path == "cudnn"


def test_a_state_holds_the_random_state_of_its_own_gpu_only(corpus, tmp_path, gpu_tiny):
    train.main(gpu_tiny + ["--data", corpus, "--epochs", "1", "--save", str(tmp_path / "m.pt")])
    rng = checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")["rng"]
    assert len(rng["cuda"]) == 1
