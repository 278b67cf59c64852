"""Tests of evaluate.py: plain perplexity, the cache pointer, dynamic evaluation."""

import math

import numpy as np
import pytest
import torch

import bptt
import checkpoint
import evaluate
import train
from data import Corpus


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny AWD-LSTM trained on random words; its test split repeats one 15-word
    sequence, so the words of each position recur within any cache window of 15+."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]

    def random_lines(n):
        return "".join(" ".join(rng.choice(words, size=8)) + "\n" for _ in range(n))

    motif = " ".join(rng.choice(words, size=15))
    (root / "train.txt").write_text(random_lines(150))
    (root / "valid.txt").write_text(random_lines(20))
    (root / "test.txt").write_text((motif + "\n") * 12)
    path = root / "awd.pt"
    train.main(["--model", "awd", "--data", str(root), "--emsize", "16", "--nhid", "24",
                "--batch_size", "4", "--bptt", "10", "--epochs", "2", "--save", str(path)])
    model, _, saved = checkpoint.load_model(str(path))
    return dict(path=str(path), model=model, corpus=Corpus(str(root)), root=str(root))


def segment_outputs(model, data):
    """The model's probabilities, last-layer states and targets over `data` at batch 1."""
    with torch.no_grad():
        out = model(data[:-1].view(-1, 1), model.init_hidden(1))
    return torch.softmax(out.logits[:, 0], -1), out.raw_output[:, 0], data[1:]


def test_the_cache_mixed_distribution_sums_to_one_for_every_token(trained):
    probs, states, targets = segment_outputs(trained["model"], trained["corpus"].test[:60])
    for t in range(len(targets)):
        lo = max(0, t - 20)
        mixed = evaluate.cache_distribution(probs[t], states[lo:t], targets[lo:t], states[t],
                                            theta=0.7, lam=0.3)
        assert mixed.min() >= 0 and math.isclose(mixed.sum().item(), 1.0, abs_tol=1e-5)


def test_streaming_cache_matches_the_full_distribution_computed_by_hand(trained):
    data = trained["corpus"].test[:90]
    probs, states, targets = segment_outputs(trained["model"], data)
    window, theta, lam = 20, 0.7, 0.3
    by_hand = 0.0
    for t in range(len(targets)):
        lo = max(0, t - window)
        mixed = evaluate.cache_distribution(probs[t], states[lo:t], targets[lo:t], states[t],
                                            theta, lam)
        by_hand -= math.log(mixed[targets[t]].item())
    cache = evaluate.CachePointer(window, [theta], [lam])
    bptt.evaluate(trained["model"], data, batch_size=1, bptt=7, on_segment=cache.add)
    assert math.isclose(cache.total_nll.item(), by_hand, rel_tol=1e-5)


def test_lambda_zero_gives_the_plain_result(trained):
    test = trained["corpus"].test
    cache = evaluate.CachePointer(100, [0.662, 0.3], [0.0])
    mean = bptt.evaluate(trained["model"], test, batch_size=2, bptt=9, on_segment=cache.add)
    count = (len(test) // 2 - 1) * 2
    for row in cache.total_nll:
        assert math.isclose(row.item() / count, mean, rel_tol=1e-12)


def test_the_cache_lowers_perplexity_on_repeating_text(trained):
    cache = evaluate.CachePointer(100, [0.5], [0.3])
    test = trained["corpus"].test
    mean = bptt.evaluate(trained["model"], test, 1, 70, on_segment=cache.add)
    assert cache.total_nll.item() / (len(test) - 1) < 0.9 * mean


def test_plain_perplexity_scores_every_target_once(trained):
    model, test = trained["model"], trained["corpus"].test
    probs, _, targets = segment_outputs(model, test)  # one forward over the whole text
    by_hand = -probs[torch.arange(len(targets)), targets].log().mean().item()
    assert math.isclose(bptt.evaluate(model, test, 1, 70), by_hand, rel_tol=1e-5)


def test_dynamic_evaluation_with_zero_learning_rate_is_plain(trained):
    model, corpus = trained["model"], trained["corpus"]
    plain = bptt.evaluate(model, corpus.test, 1, 70)
    count = len(corpus.test) - 1
    tuned = evaluate.trainable_copy(model)
    rms = evaluate.gradient_rms(tuned, corpus.train, 4, 10, batches=5)
    total, dyn_count = evaluate.dynamic_nll(tuned, corpus.test, 1, 5, lr=0.0, decay=0.02,
                                            rms=rms)
    assert dyn_count == count
    assert math.isclose(total / count, plain, rel_tol=1e-5)
    for p, q in zip(tuned.parameters(), model.parameters()):  # nothing moved
        assert torch.equal(p, q)


def test_dynamic_evaluation_adapts_to_repeating_text(trained):
    model, corpus = trained["model"], trained["corpus"]
    plain = bptt.evaluate(model, corpus.test, 1, 70)
    tuned = evaluate.trainable_copy(model)
    rms = evaluate.gradient_rms(tuned, corpus.train, 4, 10, batches=5)
    total, count = evaluate.dynamic_nll(tuned, corpus.test, 1, 5, lr=1e-3, decay=0.0, rms=rms)
    assert total / count < plain


def test_the_command_line_leaves_the_checkpoint_untouched(trained, capsys):
    before = open(trained["path"], "rb").read()
    evaluate.main(["--checkpoint", trained["path"], "--dynamic", "--dyn-stat-batches", "2"])
    evaluate.main(["--checkpoint", trained["path"], "--tune-cache", "--window", "50"])
    out = capsys.readouterr().out
    assert "dynamic (lr 2e-05)" in out and "best on valid: theta" in out
    assert "plain" in out and "cache (W 50" in out and "(191 target tokens)" in out
    assert open(trained["path"], "rb").read() == before


@pytest.mark.parametrize("args, fragment", [
    (["--lambdasm", "1.5"], "--lambdasm must be in [0, 1]"),
    (["--window", "0"], "--window must be at least 1"),
    (["--dynamic", "--cache"], "does not combine"),
])
def test_bad_arguments_give_one_clean_error_line(trained, args, fragment):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--checkpoint", trained["path"]] + args)
    assert exit_.value.code.startswith("error: ") and fragment in exit_.value.code
