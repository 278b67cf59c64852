"""Tests of data.py: corpus loading and counts, errors, batching, WikiText tokenisation, windows
for truncated BPTT, the exact scoring of a split."""

import math
import os

import numpy as np
import pytest
import torch

import data
from data import (EOS, UNK, Corpus, CorpusError, Vocabulary, batchify, detokenize,
                  get_batch, mean_nll, sample_seq_len, scored_targets, tokenize, windows)
from model import build_model
from util import process_exists

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIKITEXT2 = os.path.join(REPO, "data", "wikitext-2")
PENN = os.path.join(REPO, "..", "shared", "data", "penn")


@pytest.fixture(scope="module")
def wikitext2():
    return Corpus(WIKITEXT2)


def test_shipped_wikitext2_counts(wikitext2):
    assert len(wikitext2.dictionary) == 33278
    assert (len(wikitext2.train), len(wikitext2.valid), len(wikitext2.test)) == (
        2088628, 217646, 245569)
    assert wikitext2.unk_replaced == {"valid": 0, "test": 0}
    assert wikitext2.train.dtype == torch.int64 and wikitext2.train.dim() == 1


def test_the_corpus_knows_the_sha256_of_its_files(wikitext2):
    # the digests of the official wikitext-2-v1.zip members
    assert wikitext2.sha256 == {
        "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
        "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
        "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"}


def test_shipped_wikitext2_ends_lines_with_eos(wikitext2):
    vocab = wikitext2.dictionary
    with open(os.path.join(WIKITEXT2, "wiki.valid.tokens"), encoding="utf-8") as f:
        first_lines = [next(f) for _ in range(3)]
    expected = [t for line in first_lines for t in line.split() + [EOS]]
    assert vocab.decode(wikitext2.valid[: len(expected)]) == expected


@pytest.mark.skipif(not os.path.isdir(PENN), reason="../shared/data/penn not present")
def test_penn_treebank_layout_and_counts():
    penn = Corpus(PENN)
    assert len(penn.dictionary) == 10000
    assert (len(penn.train), len(penn.valid), len(penn.test)) == (929589, 73760, 82430)


def test_vocabulary_comes_from_train_and_unknown_words_map_to_unk(capsys, make_corpus):
    path = make_corpus("a b a\nc\n", "a z\n", "y y b\n")
    corpus = Corpus(path)
    vocab = corpus.dictionary
    assert vocab.idx2word == ["a", "b", EOS, "c", UNK]  # order of first appearance
    assert vocab.decode(corpus.valid) == ["a", UNK, EOS]
    assert vocab.decode(corpus.test) == [UNK, UNK, "b", EOS]
    assert corpus.unk_replaced == {"valid": 1, "test": 2}
    assert "1 in valid, 2 in test" in capsys.readouterr().err


def test_wikitext_layout_is_recognised(make_corpus):
    names = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")
    corpus = Corpus(make_corpus(" x y \n\n", "x\n", "y\n", names=names))
    assert corpus.dictionary.decode(corpus.train) == ["x", "y", EOS, EOS]


@pytest.mark.parametrize("case, fragment", [
    ("missing_dir", "does not exist"),
    ("missing_split", "lacks test.txt"),
    ("no_layout", "holds neither"),
    ("empty_split", "is empty"),
    ("not_utf8", "is not UTF-8"),
])
def test_bad_corpus_gives_an_error_naming_the_path(tmp_path, case, fragment):
    root = tmp_path / "corpus"
    root.mkdir()
    texts = {"empty_split": ("a b\n", "\n\n", "a\n"), "not_utf8": ("a b\n", "a\n", "a\n")}
    for name, text in zip(("train.txt", "valid.txt", "test.txt"), texts.get(case, ())):
        (root / name).write_text(text)
    if case == "missing_dir":
        root = tmp_path / "nowhere"
        culprit = root
    elif case == "missing_split":
        (root / "train.txt").write_text("a\n")
        (root / "valid.txt").write_text("a\n")
        culprit = root
    elif case == "no_layout":
        (root / "notes.md").write_text("a\n")
        culprit = root
    elif case == "empty_split":
        culprit = root / "valid.txt"
    else:
        (root / "test.txt").write_bytes(b"caf\xe9 latte\n")
        culprit = root / "test.txt"
    with pytest.raises(CorpusError) as error:
        Corpus(str(root))
    assert str(culprit) in str(error.value) and fragment in str(error.value)


def test_batchify_columns_are_contiguous_streams():
    data = torch.arange(23)
    batched = batchify(data, 4)  # 5 steps, 3 tokens dropped
    assert batched.shape == (5, 4)
    for column in range(4):
        assert batched[:, column].tolist() == list(range(column * 5, column * 5 + 5))


def test_get_batch_targets_are_inputs_shifted_by_one():
    batched = batchify(torch.arange(40), 2)  # (20, 2)
    inputs, targets = get_batch(batched, 3, 5)
    assert inputs.shape == targets.shape == (5, 2)
    assert torch.equal(targets[:-1], inputs[1:])
    assert torch.equal(targets, batched[4:9])
    inputs, targets = get_batch(batched, 16, 5)  # only 3 rows of targets remain
    assert inputs.shape == (3, 2) and torch.equal(targets, batched[17:20])


def test_batchify_rejects_a_split_too_short():
    with pytest.raises(CorpusError, match="too short"):
        batchify(torch.arange(5), 4)


def test_vocabulary_encode_decode():
    vocab = Vocabulary(["the", "cat", "the", UNK])
    assert vocab.encode(["cat", "dog", "the"]) == [1, 2, 0]
    assert vocab.decode(torch.tensor([1, 0])) == ["cat", "the"]
    assert "dog" not in vocab and len(vocab) == 3


def test_tokenize_follows_wikitext_conventions():
    text = 'The 1,000-year-old man\'s dog didn\'t bark at Mr. Lee (U.S.) for $3.5 "today".'
    assert tokenize(text) == [
        "The", "1", "@,@", "000", "@-@", "year", "@-@", "old", "man", "'s", "dog", "didn",
        "'t", "bark", "at", "Mr.", "Lee", "(", "U.S.", ")", "for", "$", "3", "@.@", "5",
        '"', "today", '"', "."]


def test_detokenize_gives_readable_text():
    tokens = ("In 1 @,@ 000 the well @-@ known player 's team , " '" the best " , '
              "won ( 3 @.@ 5 % ) . <eos> Next line").split()
    assert detokenize(tokens) == (
        'In 1,000 the well-known player\'s team, "the best", won (3.5%).\nNext line')


def real_lines():
    with open(os.path.join(WIKITEXT2, "wiki.valid.tokens"), encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def test_tokenize_inverts_detokenize_on_real_lines():
    lines = real_lines()
    kept = [tokens for tokens in lines if tokenize(detokenize(tokens)) == tokens]
    # Not every line can survive: WikiText writes numbers it did not keep as <unk>, so
    # "16 @,@ <unk>" reads back as a plain comma. Nine lines in ten must.
    assert len(kept) >= 0.9 * len(lines)
    for marker in ["@-@", "@,@", "@.@", "'s", "'t", '"', "(", "$", "%", "="]:
        assert any(marker in tokens for tokens in kept), marker


def test_a_large_corpus_is_cached_and_the_cache_follows_the_files(tmp_path, monkeypatch,
                                                                  capsys, make_corpus):
    path = make_corpus("a b a\nc\n", "a z\n", "y y b\n")
    first = Corpus(path, cache_min_bytes=0)  # every corpus counts as large here
    assert os.path.exists(os.path.join(path, data.CACHE_NAME))

    def no_reading(*args, **kw):
        raise AssertionError("read the files although the cache holds them")

    with monkeypatch.context() as m:
        m.setattr(data, "read_split", no_reading)
        again = Corpus(path, cache_min_bytes=0)
    assert again.dictionary.idx2word == first.dictionary.idx2word
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(again, split), getattr(first, split))
    assert again.sha256 == first.sha256 and again.unk_replaced == first.unk_replaced
    assert "1 in valid, 2 in test" in capsys.readouterr().err  # said on every read

    with open(os.path.join(path, "test.txt"), "w") as f:  # other files: the cache is stale
        f.write("c c\n")
    changed = Corpus(path, cache_min_bytes=0)
    assert changed.dictionary.decode(changed.test) == ["c", "c", EOS]
    open(os.path.join(path, data.CACHE_NAME), "wb").write(b"damaged")
    assert torch.equal(Corpus(path, cache_min_bytes=0).test, changed.test)
    small = make_corpus("a\n", "a\n", "a\n")
    Corpus(small)  # below CACHE_MIN_BYTES: read directly, nothing written
    assert sorted(os.listdir(small)) == ["test.txt", "train.txt", "valid.txt"]


def test_a_damaged_cache_is_said_and_the_corpus_read_again(tmp_path, capsys, make_corpus):
    rng = np.random.default_rng(0)
    text = "".join(" ".join(f"w{i}" for i in rng.integers(0, 30, 10)) + "\n"
                   for _ in range(300))  # 3,300 ids: 26 KiB of int64
    path = make_corpus(text, "w1 w2\n", "w3\n")
    first = Corpus(path, cache_min_bytes=0)
    cache = os.path.join(path, data.CACHE_NAME)
    raw = bytearray(open(cache, "rb").read())
    start = raw.find(first.train.numpy().tobytes()[:800]) + 8192
    assert start > 8192
    raw[start:start + 4096] = bytes(4096)  # 4 KiB of token ids zeroed
    open(cache, "wb").write(bytes(raw))
    capsys.readouterr()
    again = Corpus(path, cache_min_bytes=0)
    assert f"{cache} is damaged" in capsys.readouterr().err
    assert torch.equal(again.train, first.train)  # read from the files, not the cache
    assert torch.equal(Corpus(path, cache_min_bytes=0).train, first.train)  # cache rewritten
    assert "damaged" not in capsys.readouterr().err


# --- Windows for truncated BPTT ------------------------------------------------------------

def test_windows_cover_every_target_once_and_carry_on_in_order():
    source = batchify(torch.arange(103), 4)  # (25, 4)
    rows = [(row, inputs, targets) for row, inputs, targets in windows(source, 7)]
    assert [row for row, *_ in rows] == [0, 7, 14, 21]
    assert torch.equal(torch.cat([t for *_, t in rows]), source[1:])
    assert torch.equal(torch.cat([i for _, i, _ in rows]), source[:-1])


def test_windows_draw_each_length_just_before_cutting_it():
    source = batchify(torch.arange(200), 2)  # (100, 2)
    lengths = iter([5, 30, 2, 100])
    drawn = []

    def draw():
        drawn.append(next(lengths))
        return drawn[-1]

    sizes = [len(i) for _, i, _ in windows(source, draw, start=10)]
    assert sizes == [5, 30, 2, 52] and drawn == [5, 30, 2, 100]


def test_min_len_leaves_out_a_last_window_too_short():
    source = batchify(torch.arange(22), 2)  # (11, 2): 10 targets per column
    assert [len(i) for _, i, _ in windows(source, 3)] == [3, 3, 3, 1]
    assert [len(i) for _, i, _ in windows(source, 3, min_len=2)] == [3, 3, 3]


def test_variable_lengths_follow_the_awd_recipe():
    rng = np.random.default_rng(0)
    lengths = np.array([sample_seq_len(rng, 70) for _ in range(4000)])
    assert lengths.min() >= 5
    assert 0.03 < (lengths < 50).mean() < 0.07  # the bptt / 2 branch, p = 0.05
    assert abs(np.median(lengths) - 69.5) < 1.5


# --- Scoring a split ---------------------------------------------------------------------------

def test_scored_targets_counts_what_batchify_keeps():
    for n, batch in [(103, 4), (50, 1), (10, 10 // 2)]:
        assert scored_targets(n, batch) == batchify(torch.arange(n), batch)[1:].numel()


def test_mean_nll_is_exact_over_every_target(random_text):
    torch.manual_seed(0)
    corpus = Corpus(random_text)
    model = build_model(dict(model="lstm", ntoken=len(corpus.dictionary),
                                            emsize=8, nhid=8, nlayers=1)).eval()
    data = corpus.test
    with torch.no_grad():
        out = model(data[:-1].view(-1, 1), model.init_hidden(1))
    by_hand = -torch.log_softmax(out.logits[:, 0], -1)[torch.arange(len(data) - 1),
                                                        data[1:]].mean().item()
    assert math.isclose(mean_nll(model, data, 1, 7), by_hand, rel_tol=1e-5)


# --- Files saved by other tools (docs/faults.md) ------------------------------------------

def test_a_byte_order_mark_is_not_a_word(make_corpus):
    """Some editors save UTF-8 with a byte-order mark; the first word is still itself."""
    corpus = Corpus(make_corpus("\ufeffa b a\nb a\n", "\ufeffa b\n", "a\n"))
    assert corpus.dictionary.idx2word == ["a", "b", EOS, UNK]
    assert corpus.unk_replaced == {"valid": 0, "test": 0}


def test_nul_bytes_are_refused_naming_the_file_and_line(make_corpus):
    path = make_corpus("a b\nc d\n", "a b\n", "a\n")
    with open(os.path.join(path, "train.txt"), "ab") as f:
        f.write(b"e f\n" + b"\0" * 64 + b"\n")
    with pytest.raises(CorpusError, match=r"train\.txt, line 4: NUL bytes"):
        Corpus(path)


def a_pid_that_does_not_run():
    pid = 4_000_000
    while process_exists(pid):
        pid += 1
    return pid


def test_a_cache_write_killed_midway_leaves_no_temporary_behind(make_corpus, capsys):
    path = make_corpus("a b\nc d\n", "a b\n", "a\n")
    dead = os.path.join(path, f"{data.CACHE_NAME}.tmp{a_pid_that_does_not_run()}")
    alive = os.path.join(path, f"{data.CACHE_NAME}.tmp{os.getppid()}")  # (a write going on)
    for temporary in (dead, alive):
        open(temporary, "wb").write(b"\0" * 1000)
    Corpus(path, cache_min_bytes=0)
    assert not os.path.exists(dead) and os.path.exists(alive)
    assert "removed 1 temporary file" in capsys.readouterr().err
    assert os.path.exists(os.path.join(path, data.CACHE_NAME))
