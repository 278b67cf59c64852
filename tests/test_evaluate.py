"""Tests of evaluate.py: plain perplexity, the cache pointer, dynamic evaluation."""

import math
import os

import pytest
import torch

import checkpoint
import evaluate
from data import Corpus, batchify, mean_nll
from devices import float32_math, set_precision
from model import ModelOutput, WordScores, detach_hidden


@pytest.fixture(scope="module")
def awd(trained):
    """The tiny AWD-LSTM that conftest.py trains: its checkpoint's path, the model and the
    corpus, whose test split repeats one 15-word sequence."""
    model, _, _ = checkpoint.load_model(trained["awd"])
    return dict(path=trained["awd"], model=model, corpus=Corpus(trained["data"]),
                root=trained["data"])


def segment_outputs(model, data):
    """The model's probabilities, last-layer states and targets over `data` at batch 1."""
    with torch.no_grad():
        out = model(data[:-1].view(-1, 1), model.init_hidden(1))
    return torch.softmax(out.logits[:, 0], -1), out.raw_output[:, 0], data[1:]


def test_the_cache_mixed_distribution_sums_to_one_for_every_token(awd):
    probs, states, targets = segment_outputs(awd["model"], awd["corpus"].test[:60])
    for t in range(len(targets)):
        lo = max(0, t - 20)
        mixed = evaluate.cache_distribution(probs[t], states[lo:t], targets[lo:t], states[t],
                                            theta=0.7, lam=0.3)
        assert mixed.min() >= 0 and math.isclose(mixed.sum().item(), 1.0, abs_tol=1e-5)


def test_streaming_cache_matches_the_full_distribution_computed_by_hand(awd):
    data = awd["corpus"].test[:90]
    probs, states, targets = segment_outputs(awd["model"], data)
    window, theta, lam = 20, 0.7, 0.3
    by_hand = 0.0
    for t in range(len(targets)):
        lo = max(0, t - window)
        mixed = evaluate.cache_distribution(probs[t], states[lo:t], targets[lo:t], states[t],
                                            theta, lam)
        by_hand -= math.log(mixed[targets[t]].item())
    cache = evaluate.CachePointer(window, [theta], [lam])
    mean_nll(awd["model"], data, batch_size=1, bptt=7, on_segment=cache.add)
    assert math.isclose(cache.total_nll.item(), by_hand, rel_tol=1e-5)


def test_lambda_zero_gives_the_plain_result(awd):
    test = awd["corpus"].test
    cache = evaluate.CachePointer(100, [0.662, 0.3], [0.0])
    mean = mean_nll(awd["model"], test, batch_size=2, bptt=9, on_segment=cache.add)
    count = (len(test) // 2 - 1) * 2
    for row in cache.total_nll:
        assert math.isclose(row.item() / count, mean, rel_tol=1e-12)


def test_the_cache_lowers_perplexity_on_repeating_text(awd):
    cache = evaluate.CachePointer(100, [0.5], [0.3])
    test = awd["corpus"].test
    mean = mean_nll(awd["model"], test, 1, 70, on_segment=cache.add)
    assert cache.total_nll.item() / (len(test) - 1) < 0.9 * mean


def test_plain_perplexity_scores_every_target_once(awd):
    model, test = awd["model"], awd["corpus"].test
    probs, _, targets = segment_outputs(model, test)  # one forward over the whole text
    by_hand = -probs[torch.arange(len(targets)), targets].log().mean().item()
    assert math.isclose(mean_nll(model, test, 1, 70), by_hand, rel_tol=1e-5)


def test_dynamic_evaluation_with_zero_learning_rate_is_plain(awd):
    model, corpus = awd["model"], awd["corpus"]
    plain = mean_nll(model, corpus.test, 1, 5)
    count = len(corpus.test) - 1
    tuned = evaluate.trainable_copy(model)
    rms = evaluate.gradient_rms(tuned, corpus.train, 4, 10, batches=5)
    pulls = evaluate.decay_rates(rms, 0.02)
    total, dyn_count = evaluate.dynamic_nll(tuned, corpus.test, 1, 5, lr=0.0, eps=1e-5,
                                            pulls=pulls, rms=rms)
    assert dyn_count == count
    assert math.isclose(total / count, plain, rel_tol=1e-9)
    for p, q in zip(tuned.parameters(), model.parameters()):  # nothing moved
        assert torch.equal(p, q)


class BiasOnly(WordScores, torch.nn.Module):
    """A language model whose whole state is one parameter tensor: logits = b everywhere."""

    decoder = None  # a full softmax over `logits`

    def __init__(self, b):
        super().__init__()
        self.b = torch.nn.Parameter(b.clone())

    def init_hidden(self, batch_size):
        return torch.zeros(1)

    def forward(self, tokens, hidden):
        logits = self.b.expand(*tokens.shape, -1)
        return ModelOutput(logits, hidden, logits, logits)


def test_the_update_rule_matches_a_hand_computed_example():
    b0 = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
    data = torch.tensor([0, 1, 2, 1, 3, 1, 1])  # batch 1, segments of 3: targets 1 2 1 | 3 1 1
    rms, lr, eps, pull = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64), 0.7, 0.1, 0.3

    def by_hand():
        b, nll = b0.clone(), 0.0
        for targets in ([1, 2, 1], [3, 1, 1]):
            p = torch.softmax(b, 0)
            nll -= sum(math.log(p[t]) for t in targets)
            grad = p - torch.nn.functional.one_hot(torch.tensor(targets), 4).double().mean(0)
            b = b - lr * grad / (rms + eps) + pull * (b0 - b)  # the paper's rule, written out
        return nll, b

    model = BiasOnly(b0)
    total, count = evaluate.dynamic_nll(model, data, 1, 3, lr, eps, [torch.full_like(rms, pull)],
                                        [rms])
    expected_nll, expected_b = by_hand()
    # Scoring runs in float32, as plain evaluation does; the rule itself is exact.
    assert count == 6 and math.isclose(total, expected_nll, rel_tol=1e-6)
    assert torch.allclose(model.b.detach(), expected_b, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(expected_b, b0, atol=1e-2)  # the example moves the weights


def test_decay_rates_are_proportional_to_the_rms_and_clipped_at_one():
    rms = [torch.tensor([1.0, 3.0]), torch.tensor([2.0, 60.0])]  # sum of means = 2 + 31 = 33
    unclipped = evaluate.decay_rates(rms, 0.8, clip=False)
    assert torch.allclose(unclipped[0], 0.8 * torch.tensor([1.0, 3.0]) / 33)
    assert math.isclose(unclipped[1][1].item(), 0.8 * 60 / 33, rel_tol=1e-6)  # > 1: overshoot
    clipped = evaluate.decay_rates(rms, 0.8)
    assert clipped[1][1].item() == 1.0 and torch.equal(clipped[0], unclipped[0])


def test_gradient_rms_is_the_root_mean_square_over_windows(awd):
    model = evaluate.trainable_copy(awd["model"])
    train = awd["corpus"].train
    rms = evaluate.gradient_rms(model, train, 4, 10, batches=3)
    source = batchify(train, 4)
    squares, hidden = None, model.init_hidden(4)
    for i in range(3):  # three windows by hand
        model.zero_grad()
        out = model(source[10 * i:10 * i + 10], detach_hidden(hidden))
        hidden = out.hidden
        torch.nn.functional.cross_entropy(out.logits.flatten(0, 1),
                                          source[10 * i + 1:10 * i + 11].flatten()).backward()
        grads = [p.grad ** 2 for p in model.parameters()]
        squares = grads if squares is None else [a + g for a, g in zip(squares, grads)]
    for r, s in zip(rms, squares):
        assert torch.allclose(r, (s / 3).sqrt())


def test_dynamic_evaluation_adapts_to_repeating_text(awd):
    model, corpus = awd["model"], awd["corpus"]
    plain = mean_nll(model, corpus.test, 1, 5)
    tuned = evaluate.trainable_copy(model)
    rms = evaluate.gradient_rms(tuned, corpus.train, 4, 10)
    pulls = evaluate.decay_rates(rms, 0.02)
    total, count = evaluate.dynamic_nll(tuned, corpus.test, 1, 5, lr=3e-4, eps=1e-5,
                                        pulls=pulls, rms=rms)
    assert total / count < plain - 0.005  # measured: 4.0379 against 4.0485


def test_the_command_line_leaves_the_checkpoint_untouched(awd, capsys):
    before = open(awd["path"], "rb").read()
    evaluate.main(["--checkpoint", awd["path"], "--tune-dynamic", "--dyn-stat-batches", "2",
                   "--dyn-tune-tokens", "100"])
    evaluate.main(["--checkpoint", awd["path"], "--tune-cache", "--window", "50"])
    out = capsys.readouterr().out
    assert "best on valid (100 tokens): lr " in out and "dynamic (lr " in out
    assert "best on valid: theta" in out
    assert "plain" in out and "cache (W 50" in out and "(191 target tokens)" in out
    assert open(awd["path"], "rb").read() == before


@pytest.mark.parametrize("args, fragment", [
    (["--lambdasm", "1.5"], "--lambdasm must be in [0, 1]"),
    (["--window", "0"], "--window must be at least 1"),
    (["--dynamic", "--cache"], "does not combine"),
    (["--cache", "--theta", "nan"], "--theta must be a finite number (got nan)"),
    (["--cache", "--lambdasm", "inf"], "--lambdasm must be a finite number"),
    (["--dynamic", "--dyn-lr", "inf"], "--dyn-lr must be a finite number"),
    (["--dynamic", "--dyn-eps", "0"], "--dyn-eps must be positive"),
    (["--dynamic", "--dyn-decay", "-1"], "--dyn-decay must not be negative"),
    (["--batch_size", "1000"], "--batch_size 1000 is too large for the test split"),
    (["--dynamic", "--dyn-stat-batch-size", "100000"], "--dyn-stat-batch-size 100000 is too"),
])
def test_bad_arguments_give_one_clean_error_line(awd, args, fragment):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--checkpoint", awd["path"]] + args)
    assert exit_.value.code.startswith("error: ") and fragment in exit_.value.code


def test_info_and_a_warning_when_the_data_differ_from_the_training_data(awd, tmp_path,
                                                                         capsys):
    evaluate.main(["--checkpoint", awd["path"], "--info"])
    out = capsys.readouterr().out
    assert "model checkpoint of an AWD-LSTM" in out and "sha256 train " in out
    evaluate.main(["--checkpoint", awd["path"]])
    assert "warning" not in capsys.readouterr().err  # its own data
    other = tmp_path / "other"
    other.mkdir()
    for name in ("train.txt", "valid.txt"):
        (other / name).write_bytes(open(os.path.join(awd["root"], name), "rb").read())
    (other / "test.txt").write_text(open(os.path.join(awd["root"], "test.txt")).read()[::-1])
    evaluate.main(["--checkpoint", awd["path"], "--data", str(other)])
    err = capsys.readouterr().err
    assert "warning: the test split of " in err and "differs from the one this model was" in err


def test_evaluation_applies_the_checkpoints_precision_or_the_flags(awd, capsys):
    cpu = torch.device("cpu")
    set_precision("fp32", cpu)  # what an earlier script in the process may have left
    evaluate.main(["--checkpoint", awd["path"]])  # trained with the default, "torch"
    assert float32_math() == ("ieee", "tf32")
    evaluate.main(["--checkpoint", awd["path"], "--precision", "fp32"])
    assert float32_math() == ("ieee", "ieee")
    set_precision("torch", cpu)


def test_max_tokens_scores_only_the_first_tokens_of_the_split(awd, capsys):
    evaluate.main(["--checkpoint", awd["path"], "--max-tokens", "50", "--cache",
                   "--window", "20"])
    out = capsys.readouterr().out
    assert "first 50 tokens of the test split" in out and "(49 target tokens)" in out
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--checkpoint", awd["path"], "--max-tokens", "3", "--batch_size", "2"])
    assert "--max-tokens 3 leaves fewer than 2 tokens per column" in exit_.value.code


# --- The first hour -------------------------------------------------------------------------

def test_ctrl_c_is_one_line_and_exit_130(awd, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "mean_nll", interrupted)
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--checkpoint", awd["path"]])
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip() == ("interrupted; nothing was written (evaluate.py "
                                               "only reads the checkpoint)")


def test_dynamic_evaluation_says_how_long_it_will_take(awd, capsys):
    evaluate.main(["--checkpoint", awd["path"], "--dynamic", "--dyn-stat-batches", "30",
                   "--dyn-stat-batch-size", "4", "--max-tokens", "150"])
    err = capsys.readouterr().err
    assert "gradient statistics: 30 windows, about " in err and " to go (from the first 20)" in err
    assert "dynamic: 30 windows, about" in err  # 150 tokens at batch 1, segments of 5


def test_dynamic_evaluation_in_a_log_says_how_far_it_got_as_it_goes(awd, capsys, monkeypatch):
    """A log gets no progress bar; a pass cut short (a time cap) still leaves its figures."""
    monkeypatch.setattr(evaluate, "PARTIAL_EVERY", 10)
    evaluate.main(["--checkpoint", awd["path"], "--dynamic", "--dyn-stat-batches", "2",
                   "--dyn-stat-batch-size", "4", "--max-tokens", "151"])
    partial = [line for line in capsys.readouterr().err.splitlines()
               if line.startswith("dynamic: ") and "segments, ppl so far" in line]
    assert [line.split(",")[0] for line in partial] == [
        "dynamic: 10 of 30 segments", "dynamic: 20 of 30 segments"]
    assert all(float(line.rsplit(" ", 1)[1]) > 1 for line in partial)


def test_tuning_on_valid_warns_when_the_valid_split_differs(awd, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("train.txt", "test.txt"):
        (other / name).write_bytes(open(os.path.join(awd["root"], name), "rb").read())
    (other / "valid.txt").write_text(open(os.path.join(awd["root"], "valid.txt")).read()[::-1])
    evaluate.main(["--checkpoint", awd["path"], "--data", str(other), "--tune-cache",
                   "--window", "20"])
    err = capsys.readouterr().err
    assert "warning: the valid split of " in err and "warning: the test split" not in err


def test_help_names_every_flag_and_no_empty_default(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "--split {valid,test} the split to score (default: test)" in text
    assert "--device {auto,cpu,cuda} where to evaluate" in text


def test_the_result_lines_align_whatever_the_method(awd, capsys):
    evaluate.main(["--checkpoint", awd["path"], "--cache", "--window", "20"])
    lines = [line for line in capsys.readouterr().out.splitlines() if " ppl " in line]
    assert len(lines) == 2 and lines[0].index("(") == lines[1].index("(")
    assert lines[0].endswith("plain") and "cache (W 20" in lines[1]


def test_out_of_memory_is_one_line_that_names_the_flags_that_help(trained, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(evaluate, "mean_nll", out_of_memory)
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--checkpoint", trained["awd"], "--data", trained["data"]])
    message = exit_.value.code
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith("error: out of memory") and "lower --bptt (now 70)" in message


def test_the_cache_keeps_its_sums_where_its_inputs_are():
    """No read back to the host per window (on a GPU, a wait for it each time, 13 times per
    window with --tune-cache): the sums stay on the inputs' device. On the meta device,
    which holds no numbers, a copy to the host would fail."""
    cache = evaluate.CachePointer(10, [0.5, 1.0], [0.1, 0.2])
    for _ in range(2):
        cache.add(torch.randn(4, 2, device="meta"), torch.randn(4, 2, 3, device="meta"),
                  torch.randint(0, 5, (4, 2), device="meta"))
    assert cache.total_nll.device.type == "meta" and cache.total_nll.shape == (2, 2)
