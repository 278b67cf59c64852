"""What the tests share: tiny corpora, the tiny model flags, one trained tiny checkpoint per
model (made once per session), and the rule that every test runs on the CPU whatever the
machine but those marked `cuda`, which skip without a GPU.

Tests never read or write the repository's own checkpoints/ (or anything else a user
makes): each runs in a temporary directory of its own.
"""

import numpy as np
import pytest
import torch

import train
import trainer

# The tiny models most tests train: seconds on a CPU.
TINY = {"awd": ["--model", "awd", "--emsize", "16", "--nhid", "24", "--batch_size", "4",
                "--bptt", "12", "--seed", "3"],
        "lstm": ["--model", "lstm", "--emsize", "16", "--nhid", "16", "--batch_size", "4",
                 "--bptt", "12", "--seed", "3"]}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def away_from_the_repository(tmp_path, monkeypatch):
    """Every test runs in a temporary directory of its own, so that what a run writes by
    default (checkpoints/<model>.pt, relative to the working directory) never touches the
    repository's checkpoints/, nor does a user's run there change what a test sees."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def cpu_unless_marked_cuda(request, monkeypatch):
    """Hide the GPU from unmarked tests: from this process (--device auto picks the CPU)
    and from the processes they start (CUDA_VISIBLE_DEVICES)."""
    if "cuda" in request.keywords:
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def write_corpus(root, train_text, valid_text, test_text,
                 names=("train.txt", "valid.txt", "test.txt")):
    """A corpus directory of three splits (the Penn Treebank layout unless `names`)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in zip(names, (train_text, valid_text, test_text)):
        (root / name).write_text(text, encoding="utf-8")
    return str(root)


def random_lines(rng, words, n, length=(4, 12)):
    return "".join(" ".join(rng.choice(words, size=rng.integers(*length))) + "\n"
                   for _ in range(n))


@pytest.fixture
def make_corpus(tmp_path):
    """write_corpus into a fresh directory of this test's: make_corpus(train, valid, test)."""
    count = iter(range(1000))
    return lambda *texts, **kw: write_corpus(tmp_path / f"corpus{next(count)}", *texts, **kw)


@pytest.fixture(scope="session")
def random_text(tmp_path_factory):
    """Random words (30 of them): a model can only overfit the training split."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    return write_corpus(tmp_path_factory.mktemp("random"), random_lines(rng, words, 120),
                        random_lines(rng, words, 20), random_lines(rng, words, 20))


@pytest.fixture(scope="session")
def repeating(tmp_path_factory):
    """A corpus where every token is determined by the one before it."""
    line = "a b c d e f g h i j\n"
    return write_corpus(tmp_path_factory.mktemp("repeating"), line * 60, line * 30, line * 30)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny model of each kind trained for two epochs, as train.py leaves it: "awd" and
    "lstm" (the model checkpoints; <stem>.state.pt beside them) and "data". The training
    text mixes random words with a sentence in which <unk> is the commonest word; the test
    split repeats one 15-word sequence, so each of its words recurs within any cache window
    of 15 or more."""
    root = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    sentence = "the <unk> sat on a <unk> , the <unk> ran to the <unk> park .\n"
    motif = " ".join(rng.choice(words, size=15)) + "\n"
    train_text = "".join(sentence + random_lines(rng, words, 1, (8, 9)) for _ in range(75))
    data = write_corpus(root / "corpus", train_text, random_lines(rng, words, 20, (8, 9)),
                        motif * 12)
    paths = {"data": data}
    for kind in ("awd", "lstm"):
        paths[kind] = str(root / f"{kind}.pt")
        train.main(TINY[kind] + ["--data", data, "--epochs", "2", "--save", paths[kind]])
    return paths


@pytest.fixture
def stop_in_epoch(monkeypatch):
    """stop_in_epoch(n): until the test's monkeypatch.undo(), every run asks to stop as its
    epoch n (1 for the first) begins, as Ctrl-C would: that epoch trains one batch more,
    then the run saves its state (the position within the epoch) and ends."""
    original = trainer.Trainer.train_epoch

    def stop_in(n):
        def train_epoch(self, stop, *args, **kwargs):
            if self.epoch + 1 == n:
                stop.requested = True
            return original(self, stop, *args, **kwargs)

        monkeypatch.setattr(trainer.Trainer, "train_epoch", train_epoch)

    return stop_in


@pytest.fixture
def tiny():
    """The tiny models' flags, by model: tiny["awd"] + ["--data", ...]."""
    return {kind: list(flags) for kind, flags in TINY.items()}
