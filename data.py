"""data.py: read a tokenized corpus, build its vocabulary, batch it for truncated BPTT, and
score a language model on a split exactly (mean_nll).

A corpus is a directory with three splits in the WikiText format (one sentence or
paragraph per line, tokens separated by spaces). Two layouts are accepted:
    wiki.train.tokens  wiki.valid.tokens  wiki.test.tokens    (WikiText-2 / -103)
    train.txt          valid.txt          test.txt            (Penn Treebank, Mikolov)
Every line, blank ones included, ends with one `<eos>` token: this is the convention
under which the published token counts hold (WikiText-2 train: 2,088,628 tokens).
Files are streamed line by line into int64 ids, so memory stays near 8 bytes per token
(a 100M-token corpus: about 1 GiB), and a large corpus is cached as ids beside its files
(with their checksum: a damaged cache is read again from the files).

The file also holds the WikiText-style tokenizer for free text (`tokenize`) and its
inverse (`detokenize`), which generate.py uses for prompts and for readable output.
"""

import array
import functools
import hashlib
import io
import math
import os
import re
import sys

import numpy as np
import torch

from util import (TMP_SUFFIX, file_sha256, ppl, progress_bar, remove_stale_temporaries,
                  write_atomically)

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
LAYOUTS = (
    {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"},
    {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
)


class CorpusError(ValueError):
    """A corpus directory or file that cannot be read; the message says which and why."""


class Vocabulary:
    """Word <-> id mapping; ids are given in order of first appearance."""

    def __init__(self, words=()):
        self.idx2word = []
        self.word2idx = {}
        for word in dict.fromkeys(words):  # unique words, in order of first appearance
            self.add(word)

    def add(self, word):
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self):
        return len(self.idx2word)

    def __contains__(self, word):
        return word in self.word2idx

    def encode(self, tokens):
        """Ids of `tokens`; a word outside the vocabulary becomes `<unk>`."""
        unk = self.word2idx[UNK]
        return [self.word2idx.get(token, unk) for token in tokens]

    def decode(self, ids):
        return [self.idx2word[int(i)] for i in ids]


def read_split(path, vocab, grow):
    """Stream one split file into token ids: each line's words plus `<eos>`; a word outside
    `vocab` is added to it when `grow` (the training split), else read as `<unk>`.
    Returns the ids (1-D int64), how many words became `<unk>` and the sha256 of the
    file's bytes (which checkpoints record, so that a model's data can be recognised).
    Memory stays at 8 bytes per token plus the vocabulary, whatever the file's size."""
    ids, unknown, offset, has_text = array.array("q"), 0, 0, False
    digest, lookup = hashlib.sha256(), vocab.word2idx
    unk = None if grow else lookup[UNK]
    try:
        with open(path, "rb") as f:
            for line_number, raw in enumerate(f, 1):  # bytes, as the sha256 sees the file
                digest.update(raw)
                try:  # (a byte-order mark, as some editors save UTF-8, is not a word)
                    text = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(
                        f"{path} is not UTF-8 text (invalid byte at offset {offset + e.start}); "
                        "expected a tokenized corpus with one sentence per line") from None
                if "\0" in text:
                    raise CorpusError(f"{path}, line {line_number}: NUL bytes (binary data, "
                                      "not text); expected one tokenized sentence per line")
                offset += len(raw)
                for line in text.splitlines():  # as str.splitlines splits the whole text
                    words = line.split()
                    has_text = has_text or bool(words)
                    for word in words:
                        index = lookup.get(word)
                        if index is None:
                            if grow:
                                index = vocab.add(word)
                            else:
                                index, unknown = unk, unknown + 1
                        ids.append(index)
                    ids.append(vocab.add(EOS) if grow else lookup[EOS])
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror}") from None
    if not has_text:
        raise CorpusError(f"{path} is empty; expected one tokenized sentence per line")
    return torch.frombuffer(ids, dtype=torch.int64), unknown, digest.hexdigest()


def split_paths(path):
    """The paths of the train/valid/test files in `path`, in whichever layout it uses."""
    if not os.path.isdir(path):
        raise CorpusError(
            f"corpus directory {path} does not exist; expected a directory with "
            "wiki.{train,valid,test}.tokens or {train,valid,test}.txt (see --data)")
    present = set(os.listdir(path))
    for layout in LAYOUTS:
        if any(name in present for name in layout.values()):
            missing = [name for name in layout.values() if name not in present]
            if missing:
                raise CorpusError(f"corpus directory {path} lacks {', '.join(missing)}")
            return {split: os.path.join(path, name) for split, name in layout.items()}
    raise CorpusError(
        f"corpus directory {path} holds neither wiki.{{train,valid,test}}.tokens "
        "nor {train,valid,test}.txt")


# A corpus whose training file is at least this large (WikiText-103's is 540 MB) is kept,
# once read, as token ids in <corpus>/.corpus-cache.pt; a later read checks the files'
# sha256 against it and loads the ids instead of tokenizing again.
CACHE_MIN_BYTES = 64 * 2**20
CACHE_NAME, CACHE_VERSION = ".corpus-cache.pt", 2  # (2: with the checksum of its token ids)


class Corpus:
    """The three splits of a corpus as 1-D int64 tensors of token ids.

    The vocabulary is built from the training split (plus `<unk>` if it lacks one);
    words of the validation and test splits outside it are mapped to `<unk>`, and
    how many were mapped is printed once. `sha256` maps each split to its file's digest.
    Large corpora are cached (CACHE_MIN_BYTES).
    """

    def __init__(self, path, cache_min_bytes=CACHE_MIN_BYTES):
        self.path = path
        paths = split_paths(path)
        cached = os.path.getsize(paths["train"]) >= cache_min_bytes
        if not (cached and self.load_cache(paths)):
            self.dictionary, self.sha256, self.unk_replaced = Vocabulary(), {}, {}
            for split in SPLITS:
                ids, unknown, self.sha256[split] = read_split(paths[split], self.dictionary,
                                                             grow=split == "train")
                setattr(self, split, ids)
                if split == "train":
                    self.dictionary.add(UNK)
                else:
                    self.unk_replaced[split] = unknown
            if cached:
                self.save_cache()
        replaced = {split: n for split, n in self.unk_replaced.items() if n}
        if replaced:
            counts = ", ".join(f"{n:,} in {split}" for split, n in replaced.items())
            print(f"{path}: mapped words missing from the training vocabulary to {UNK}: "
                  f"{counts}", file=sys.stderr)

    def load_cache(self, paths):
        """Take the splits from the cache when it holds these very files; False otherwise
        (no cache, another version, other files, or a damaged one)."""
        cache = os.path.join(self.path, CACHE_NAME)
        if not os.path.exists(cache):
            return False
        sha256 = {split: file_sha256(paths[split]) for split in SPLITS}
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            if saved["version"] != CACHE_VERSION or saved["sha256"] != sha256:
                return False
            if saved.get("ids_sha256") != ids_checksum(saved["train"], saved["valid"],
                                                       saved["test"]):
                print(f"note: {cache} is damaged (its token ids no longer match their "
                      "checksum); reading the corpus again", file=sys.stderr)
                return False
            self.dictionary = Vocabulary(saved["vocab"])
            self.train, self.valid, self.test = saved["train"], saved["valid"], saved["test"]
            self.unk_replaced = saved["unk_replaced"]
        except Exception:  # a damaged or foreign file: read the corpus instead
            return False
        self.sha256 = sha256
        return True

    def save_cache(self):
        cache = os.path.join(self.path, CACHE_NAME)
        remove_stale_temporaries(self.path, re.escape(CACHE_NAME + TMP_SUFFIX) + r"(\d+)$",
                                 f"of {cache}")
        contents = dict(version=CACHE_VERSION, sha256=self.sha256,
                        vocab=self.dictionary.idx2word, train=self.train, valid=self.valid,
                        test=self.test, unk_replaced=self.unk_replaced,
                        ids_sha256=ids_checksum(self.train, self.valid, self.test))
        buffer = io.BytesIO()
        torch.save(contents, buffer)
        try:
            write_atomically(cache, buffer.getvalue())
        except OSError as e:
            print(f"note: could not cache the token ids ({e}); the next read tokenizes the "
                  "corpus again", file=sys.stderr)


def ids_checksum(*splits):
    """sha256 of the token ids of the splits, which a cache stores and checks on reading."""
    digest = hashlib.sha256()
    for ids in splits:
        digest.update(ids.contiguous().numpy().tobytes())
    return digest.hexdigest()


# Batching for truncated BPTT.
#
# batchify cuts the token stream t0 t1 ... t(N-1) into `batch_size` contiguous pieces and
# lays them side by side as columns (S = N // batch_size steps; the last N % batch_size
# tokens are dropped):
#
#            column 0    column 1    ...   column B-1
#   row 0    t0          tS                t(B-1)S
#   row 1    t1          tS+1              t(B-1)S+1
#   ...      ...         ...               ...
#   row S-1  tS-1        t2S-1             tBS-1
#
# get_batch(source, i, seq_len) takes rows i .. i+seq_len-1 as input and the same rows
# shifted down by one as targets, so each column is read as one running text and the
# hidden state of a window carries over to the next window of the same column; `windows`
# walks a whole split so, training and evaluation alike.

def check_batch_size(corpus, split, batch_size, flag):
    """Refuse, naming `flag`, a batch size that would leave each column of `split` fewer
    than the 2 tokens a window needs (the rule batchify enforces), before any work."""
    tokens = len(getattr(corpus, split))
    if tokens // batch_size < 2:
        raise CorpusError(f"{flag} {batch_size} is too large for the {split} split of "
                          f"{tokens:,} tokens: each of the {batch_size} columns needs at "
                          f"least 2 tokens; use at most {tokens // 2:,}")


def batchify(data, batch_size):
    """(N,) token ids -> (N // batch_size, batch_size), each column a contiguous stream."""
    steps = data.size(0) // batch_size
    if steps < 2:
        raise CorpusError(
            f"a split of {data.size(0)} tokens is too short for batch size {batch_size}")
    return data[: steps * batch_size].view(batch_size, steps).t().contiguous()


def get_batch(source, i, seq_len):
    """Input rows i .. i+seq_len-1 and their next-token targets, both (seq_len', batch),
    where seq_len' is shortened at the end of `source`."""
    seq_len = min(seq_len, source.size(0) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len]


def windows(source, seq_len, start=0, min_len=1):
    """Yield (row, inputs, targets) for consecutive windows of `source` (steps, batch) from
    row `start`, each (length, batch) with targets one row ahead of inputs. `seq_len` is an
    int or a callable drawing each window's length just before that window is cut (the
    variable BPTT of AWD-LSTM). Stops when fewer than `min_len` targets remain."""
    row = start
    while source.size(0) - 1 - row >= min_len:
        length = seq_len() if callable(seq_len) else seq_len
        inputs, targets = get_batch(source, row, length)
        yield row, inputs, targets
        row += inputs.size(0)


def sample_seq_len(rng, bptt):
    """AWD-LSTM's variable BPTT: around bptt (p = 0.95) or bptt / 2, sd 5, at least 5."""
    base = bptt if rng.random() < 0.95 else bptt / 2
    return max(5, int(rng.normal(base, 5)))


@functools.lru_cache
def mean_seq_len(bptt, draws=20000):
    """The mean window length that sample_seq_len gives, from draws of a private generator
    (so the run's own random state is untouched): about 0.975 * bptt when bptt is large,
    more when the floor of 5 matters."""
    rng = np.random.default_rng(0)
    return sum(sample_seq_len(rng, bptt) for _ in range(draws)) / draws


def scored_targets(n_tokens, batch_size):
    """How many targets a split of `n_tokens` has once batchified: each of the batch_size
    columns of n_tokens // batch_size tokens predicts all but its first token."""
    return (n_tokens // batch_size - 1) * batch_size


@torch.no_grad()
def mean_nll(model, data, batch_size, bptt, progress=None, on_segment=None, group=None):
    """Mean negative log-likelihood per target token of `data` (1-D token ids) under `model`
    (model.py's interface), exact: every target of the batchified split is scored once,
    summed in float64 (validation, the test, evaluate.py). `on_segment`, when given, also
    receives each window's target log-probabilities (T, batch), last-layer states
    (T, batch, features) and targets (T, batch): the cache pointer reads them. Under
    torchrun (`group`, a distributed.Group) each process scores its own columns and the sums
    are added: the columns are independent streams, so the result is the one process's."""
    model.eval()
    device = next(model.parameters()).device
    columns = group.columns(batch_size) if group is not None else slice(None)
    main = group is None or group.main
    source = batchify(data, batch_size)[:, columns].contiguous().to(device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    if source.size(1) > 0:  # (a process may have no columns: test batch 1 on several)
        hidden = model.init_hidden(source.size(1))
        bar = progress_bar(windows(source, bptt), progress if main else None,
                           total=math.ceil((source.size(0) - 1) / bptt))
        for n, (row, inputs, targets) in enumerate(bar):
            out = model(inputs, hidden)
            hidden = out.hidden
            logp = model.target_log_probs(out, targets)  # (T, batch), float32
            total -= logp.double().sum()
            if on_segment is not None:
                on_segment(logp, out.raw_output, targets)
            if not bar.disable and n % 20 == 0:  # running perplexity: a sync, terminals only
                scored = (row + len(inputs)) * source.size(1)
                bar.set_postfix(ppl=f"{ppl(total.item() / scored):.2f}")
    if group is not None:
        total = group.sum(total)
    return total.item() / scored_targets(len(data), batch_size)


# WikiText-style tokenisation of free text (prompts) and its inverse (readable output).
# WikiText separates punctuation by spaces, splits clitics ("don 't", "Lee 's"), and
# marks a hyphen inside a word and the separators inside numbers with @-@, @,@ and @.@.

ABBREVIATIONS = {
    "Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "No", "vs", "Op", "Mt", "Ft", "Co", "Inc",
    "Ltd", "Bros", "Gen", "Col", "Lt", "Sgt", "Capt", "Gov", "Sen", "Rev", "Prof", "Vol",
    "pp", "ca", "c", "Jan", "Feb", "Aug", "Sept", "Oct", "Nov", "Dec",
}
CLITICS = r"'t|'s|'re|'ve|'m|'ll|'d"
ALWAYS_SPLIT = "()[]{}\",;:!?$£€#%&–—…"


def tokenize(text):
    """Free text -> WikiText tokens: "The 1,000-year-old man's dog." ->
    The 1 @,@ 000 @-@ year @-@ old man 's dog ."""
    text = re.sub(r"(?<=\d)([,.])(?=\d)", r" @\1@ ", text)
    text = re.sub(r"(?<=[\w>])-(?=[\w<])", " @-@ ", text)  # > and <: next to <unk>
    text = re.sub(rf"(?i)(?<=[\w>])({CLITICS})\b", r" \1", text)
    text = re.sub("(?<!@)([" + re.escape(ALWAYS_SPLIT) + "])(?!@)", r" \1 ", text)
    tokens = []
    for word in text.split():
        tail = []
        if len(word) > 3 and word.endswith("..."):
            word, tail = word[:-3], ["..."]
        elif len(word) > 1 and word.endswith(".") and not _is_abbreviation(word):
            word, tail = word[:-1], ["."]
        elif len(word) > 2 and word.endswith("s'"):  # plural possessive: players '
            word, tail = word[:-1], ["'"]
        tokens.append(word)
        tokens.extend(tail)
    return tokens


def _is_abbreviation(word):
    stem = word[:-1]
    return len(stem) == 1 or "." in stem or stem in ABBREVIATIONS


def detokenize(tokens):
    """WikiText tokens -> readable text; `<eos>` becomes a line break."""
    lines, words, quote_open = [], [], False
    for token in tokens:
        if token == EOS:
            lines.append(_join(words))
            words, quote_open = [], False
            continue
        if token == '"':  # alternate between an opening and a closing quote
            token = "\x01" if not quote_open else "\x02"
            quote_open = not quote_open
        words.append(token)
    if words:
        lines.append(_join(words))
    return "\n".join(lines)


def _join(words):
    text = " " + " ".join(words) + " "
    text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    text = re.sub(rf" ({CLITICS}) ", r"\1 ", text)
    text = re.sub(r" ([,.;:!?%)\]}'\x02]|\.\.\.)(?= )", r"\1", text)
    text = re.sub(r"(?<= )([(\[{$£€#\x01]) ", r"\1", text)
    return text.replace("\x01", '"').replace("\x02", '"').strip()
