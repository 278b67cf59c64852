"""Tests of generate.py on the tiny model that conftest.py trains."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import generate
from data import Vocabulary
from devices import float32_math, set_precision
from model import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def lstm(trained):
    """The tiny baseline that conftest.py trains, on text where <unk> is the commonest word
    after "the" (the tiny AWD-LSTM, regularised hard, learns that more slowly)."""
    return trained["lstm"]


def sample(path, prompt="the", words=30, **kw):
    model, vocab, _ = checkpoint.load_model(path)
    return generate.generate(model, vocab, prompt.split(), words, **kw)


def greedy_by_hand(path, prompt, words):
    """Argmax decoding written out step by step, with <unk> excluded."""
    model, vocab, _ = checkpoint.load_model(path)
    ids = vocab.encode(prompt)
    unk = vocab.word2idx["<unk>"]
    out = model(torch.tensor(ids).view(-1, 1), model.init_hidden(1))
    tokens = []
    for _ in range(words):
        logits = out.logits[-1, 0].clone()
        logits[unk] = float("-inf")
        token = int(logits.argmax())
        tokens.append(vocab.idx2word[token])
        out = model(torch.tensor([[token]]), out.hidden)
    return tokens


def test_same_seed_same_text_and_another_seed_other_text(lstm):
    assert sample(lstm, seed=5) == sample(lstm, seed=5)
    assert sample(lstm, seed=5, words=60) != sample(lstm, seed=6, words=60)


def test_temperature_zero_follows_the_argmax(lstm):
    tokens = sample(lstm, prompt="the", words=15, temperature=0)
    assert tokens == ["the"] + greedy_by_hand(lstm, ["the"], 15)


def test_top_k_one_equals_greedy(lstm):
    greedy = sample(lstm, words=15, temperature=0)
    assert sample(lstm, words=15, top_k=1, seed=1) == greedy
    assert sample(lstm, words=15, top_k=1, seed=2) == greedy


def test_output_begins_with_the_prompt(lstm):
    tokens = sample(lstm, prompt="a park , the", words=5)
    assert tokens[:4] == ["a", "park", ",", "the"] and len(tokens) == 9


def test_unk_is_never_sampled_unless_allowed(lstm):
    assert "<unk>" not in sample(lstm, words=200, temperature=1.5)
    assert "<unk>" in sample(lstm, words=200, allow_unk=True)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.15, 0.5, 0.3, 0.05]))
    kept = torch.isfinite(generate.filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [False, True, True, False]  # 0.5 < 0.7 <= 0.5 + 0.3
    kept = torch.isfinite(generate.filter_logits(logits, top_p=0.4))
    assert kept.tolist() == [False, True, False, False]
    kept = torch.isfinite(generate.filter_logits(logits, top_k=3))
    assert kept.tolist() == [True, True, True, False]


def run_cli(args):
    return subprocess.run([sys.executable, os.path.join(REPO, "generate.py")] + args,
                          capture_output=True, text=True, timeout=120)


def test_command_line_round_trip(lstm, tmp_path):
    result = run_cli(["--checkpoint", lstm, "--prompt", "The dog's park", "--words", "20"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The dog's park")
    assert "not in the vocabulary, read as <unk>: 's, The, dog" in result.stderr
    assert " @-@ " not in result.stdout and " ," not in result.stdout
    generate.main(["--checkpoint", lstm, "--prompt", "the park", "--raw", "--words", "20",
                   "--outf", str(tmp_path / "out.txt")])  # (in this process: no new start-up)
    text = (tmp_path / "out.txt").read_text()  # WikiText tokens, <eos> as a line break
    vocab = checkpoint.load(lstm)["vocab"]
    assert text.split()[:2] == ["the", "park"] and all(w in vocab for w in text.split())


@pytest.mark.parametrize("args, fragment", [
    (["--checkpoint", "missing.pt"], "does not exist"),
    (["--temperature", "-1"], "--temperature must not be negative"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--words", "0"], "--words must be at least 1"),
    (["--temperature", "inf"], "--temperature must be a finite number (got inf)"),
    (["--temperature", "nan"], "--temperature must be a finite number (got nan)"),
    (["--outf", "/nonexistent-dir/out.txt"], "the directory /nonexistent-dir does not exist"),
    (["--outf", "."], "is a directory"),
])
def test_bad_arguments_give_one_clean_error_line(lstm, args, fragment):
    if args[0] != "--checkpoint":
        args = ["--checkpoint", lstm] + args
    with pytest.raises(SystemExit) as exit_:
        generate.main(args)
    message = exit_.value.code
    assert message.startswith("error: ") and fragment in message and "\n" not in message


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    result = run_cli(["--checkpoint", str(junk)])
    assert result.returncode != 0
    assert result.stderr.strip() == (f"error: {junk} is not a checkpoint of this project "
                                     "(train.py writes them)")


def test_info_prints_how_the_checkpoint_was_trained(lstm, capsys):
    generate.main(["--checkpoint", lstm, "--info"])
    out = capsys.readouterr().out
    assert out.startswith(f"{lstm}: model checkpoint of a baseline LSTM, ")
    summary = json.load(open(lstm.replace(".pt", ".json")))  # what train.py tested
    assert f", test ppl {summary['test_ppl']:.2f} (batch 1)" in out.splitlines()[0]
    assert "settings: " in out and "batch_size=4" in out
    assert "started 20" in out and "python train.py --model lstm" in out
    assert "torch " + torch.__version__ in out and "sha256 train " in out


def test_outf_never_overwrites_a_checkpoint(lstm, tmp_path):
    copy = tmp_path / "copy.pt"
    copy.write_bytes(open(lstm, "rb").read())
    with pytest.raises(SystemExit) as exit_:
        generate.main(["--checkpoint", lstm, "--outf", str(copy)])
    assert "is a checkpoint" in exit_.value.code
    assert copy.read_bytes() == open(lstm, "rb").read()


def test_sampling_applies_the_checkpoints_precision_or_the_flags(lstm, capsys):
    cpu = torch.device("cpu")
    set_precision("fp32", cpu)  # what an earlier script in the process may have left
    generate.main(["--checkpoint", lstm, "--words", "3"])  # trained with "torch"
    assert float32_math() == ("ieee", "tf32")
    generate.main(["--checkpoint", lstm, "--words", "3", "--precision", "fp32"])
    assert float32_math() == ("ieee", "ieee")
    set_precision("torch", cpu)


def test_a_weak_model_samples_other_words_after_another_prompt(tmp_path):
    torch.manual_seed(0)  # an untrained model: its next-word guesses ignore the prompt
    words = [f"w{i}" for i in range(50)] + ["<eos>", "<unk>"]
    model = build_model(dict(model="lstm", ntoken=len(words), emsize=8, nhid=8)).eval()
    vocab = Vocabulary(words)
    first, second = (generate.generate(model, vocab, [prompt], 20, seed=1111)[1:]
                     for prompt in ("w1", "w2"))
    assert first != second
    assert generate.generate(model, vocab, ["w1"], 20, seed=1111)[1:] == first


def test_ctrl_c_while_sampling_is_one_line_and_exit_130(lstm, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "generate", interrupted)
    with pytest.raises(SystemExit) as exit_:
        generate.main(["--checkpoint", lstm])
    assert exit_.value.code == 130 and capsys.readouterr().err.strip() == (
        "interrupted; nothing was written")


def test_a_full_disk_leaves_the_earlier_outf_as_it_was(lstm, tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    out.write_text("an earlier sample\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SystemExit) as exit_:
        generate.main(["--checkpoint", lstm, "--words", "5", "--outf", str(out)])
    assert exit_.value.code.startswith(f"error: --outf: cannot write {out} (No space left")
    assert out.read_text() == "an earlier sample\n" and os.listdir(tmp_path) == ["out.txt"]
