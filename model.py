"""model.py: the two LSTM language models of this repository.

- LSTMModel: the plain baseline of the PyTorch word-language-model example
  (embedding -> dropout -> nn.LSTM layers with dropout between -> dropout -> linear decoder).
- AWDLSTM: Merity et al. (2017), "Regularizing and Optimizing LSTM Language Models":
  embedding dropout, locked (variational) dropout, weight-dropped LSTMs, tied decoder.

Both share one interface, so train.py, generate.py and evaluate.py treat them alike:
    config = model_config(settings, ntoken)      # a plain dict, kept in checkpoints
    model = build_model(config)
    hidden = model.init_hidden(batch_size)
    out = model(tokens, hidden)                  # tokens: (seq, batch) int64
    out.hidden                                   # state to feed the next window
    out.raw_output, out.dropped_output           # last layer, before/after dropout (AR/TAR)
    model.loss(out, targets)                     # mean cross-entropy, to train on
    model.target_log_probs(out, targets)         # (seq, batch) log p(target), float32
    model.scores(out)                            # (seq, batch, ntoken) log p up to a constant

Both end in a full softmax (out.logits: (seq, batch, ntoken)) or, with `cutoffs`, in
torch's adaptive softmax (Grave et al. 2017), which for a large vocabulary scores the
frequent words in a small head and the rare ones in smaller clusters, never forming all
ntoken logits in training (out.logits is then None).

Under torch.autocast (train.py --precision bf16) the LSTMs compute in the autocast dtype
(LSTMLayer), the decoder's matmuls (a full softmax's, or an adaptive one's head and
clusters) follow autocast's policy, and every log-softmax and the loss are float32.
"""

import inspect
import itertools
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lstm_layer import LSTMLayer


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (seq, batch, ntoken); None under an adaptive softmax
    hidden: object  # per model: see init_hidden
    raw_output: torch.Tensor  # (seq, batch, features) last LSTM layer's output
    dropped_output: torch.Tensor  # the same after output dropout; the decoder reads it


def map_hidden(fn, hidden):
    """Apply `fn` to every tensor of a hidden state (nested tuples and lists)."""
    if isinstance(hidden, torch.Tensor):
        return fn(hidden)
    return type(hidden)(map_hidden(fn, h) for h in hidden)


def detach_hidden(hidden):
    """Cut the graph between BPTT windows, keeping the values."""
    return map_hidden(torch.Tensor.detach, hidden)


# --- Regularisers of AWD-LSTM ------------------------------------------------------------

class LockedDropout(nn.Module):
    """Variational dropout: one mask of shape (1, batch, features) for every time step."""

    def forward(self, x, p):  # x: (seq, batch, features)
        if not self.training or p == 0:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
        return x * mask


def embedding_dropout(embedding, tokens, p, training):
    """Drop whole rows of the embedding matrix (word types), scaling survivors by 1/(1-p):
    a dropped word is zero at every position where it occurs in this forward pass."""
    embedded = F.embedding(tokens, embedding.weight)  # (seq, batch, emsize)
    if not training or p == 0:
        return embedded
    weight = embedding.weight
    mask = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)  # (ntoken, 1)
    # Masking the looked-up rows equals masking the matrix, without touching every row.
    return embedded * F.embedding(tokens, mask)


# --- The output layer ----------------------------------------------------------------------

CLUSTER_SHRINK = 4  # each tail cluster of an adaptive softmax is 4x narrower than the last


def output_layer(features, ntoken, cutoffs, tied):
    """A linear decoder (a full softmax over ntoken words), or with `cutoffs` (frequency
    ranks where the head ends and each tail cluster ends) torch's adaptive softmax. The
    adaptive softmax has no single (ntoken, features) matrix, so it cannot be tied to the
    embedding."""
    if not cutoffs:
        return nn.Linear(features, ntoken)
    if tied:
        raise ValueError("an adaptive softmax (cutoffs) has no single output matrix to tie to "
                         "the embedding; turn tying off (--no-tied)")
    if features // CLUSTER_SHRINK ** len(cutoffs) < 1:
        raise ValueError(f"the last cluster of an adaptive softmax with {len(cutoffs)} cutoffs "
                         f"would have no features ({features} // {CLUSTER_SHRINK}^"
                         f"{len(cutoffs)}); use fewer cutoffs or a wider last layer")
    return nn.AdaptiveLogSoftmaxWithLoss(features, ntoken, list(cutoffs),
                                         div_value=float(CLUSTER_SHRINK))


class WordScores:
    """What both models compute from their last layer, for a full or an adaptive softmax.
    The adaptive softmax sorts words by frequency (its head holds the commonest), while
    vocabularies here number words in order of first appearance: an adaptive model keeps
    the buffer `word_rank` (word id -> frequency rank, set by order_words_by_frequency
    from the training split) and its checkpoints carry it."""

    @property
    def adaptive(self):
        return isinstance(self.decoder, nn.AdaptiveLogSoftmaxWithLoss)

    def order_words_by_frequency(self, counts):
        """counts: (ntoken,) occurrences of each word id in the training split."""
        order = torch.argsort(-counts.to(torch.float64), stable=True)  # rank -> word id
        self.word_rank.copy_(torch.argsort(order))  # word id -> rank

    def loss(self, out, targets):
        """Mean cross-entropy of (seq, batch) targets, in float32."""
        if self.adaptive:
            return -self.target_log_probs(out, targets).mean()
        return F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten())

    def target_log_probs(self, out, targets):
        """log p(target) at every position, (seq, batch), in float32."""
        if self.adaptive:
            ranks = self.word_rank[targets.flatten()]
            flat = out.dropped_output.flatten(0, 1)  # (seq * batch, features)
            return adaptive_log_probs(self.decoder, flat, ranks).view(targets.shape)
        return torch.log_softmax(out.logits.float(), dim=-1).gather(
            2, targets.unsqueeze(2)).squeeze(2)

    def scores(self, out):
        """(seq, batch, ntoken) log-probabilities up to a constant per position, by word id:
        the logits of a full softmax, the log-probabilities of an adaptive one."""
        if self.adaptive:
            flat = out.dropped_output.flatten(0, 1).float()
            with autocast_off(flat):
                by_rank = self.decoder.log_prob(flat)  # (seq * batch, ntoken), rank order
            return by_rank[:, self.word_rank].view(*out.dropped_output.shape[:2], -1)
        return out.logits


def adaptive_log_probs(decoder, x, ranks):
    """log p(rank) for each row of x (n, features) under torch's adaptive softmax `decoder`
    (its head scores the commonest words and one entry per tail cluster; a cluster scores
    its words given the cluster), as decoder(x, ranks).output computes it, but with every
    log-softmax in float32: under autocast (--precision bf16) the head's and the clusters'
    matmuls run in bfloat16 and the loss does not. (torch's own forward writes the head's
    and the clusters' results into one tensor, which under autocast would mix dtypes.)
    Returns (n,) float32."""
    shortlist = decoder.shortlist_size
    scored = torch.zeros(len(ranks), dtype=torch.float32, device=x.device)
    head_index = ranks.clone()  # the head's entry for each row: its word, or its cluster
    for i, (low, high) in enumerate(itertools.pairwise(decoder.cutoffs)):
        rows = ((ranks >= low) & (ranks < high)).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        head_index[rows] = shortlist + i
        within = decoder.tail[i](x.index_select(0, rows)).float().log_softmax(dim=1)
        scored = scored.index_copy(0, rows, within.gather(1, (ranks[rows] - low).unsqueeze(1))
                                   .squeeze(1))
    head = decoder.head(x).float().log_softmax(dim=1)  # (n, shortlist + clusters)
    return scored + head.gather(1, head_index.unsqueeze(1)).squeeze(1)


def autocast_off(x):
    """torch's adaptive softmax as a whole (log_prob, for sampling) runs in float32 with
    autocast off: it writes log-probabilities computed by its head and by its clusters into
    one tensor, and under autocast they would be of other dtypes."""
    return torch.autocast(x.device.type, enabled=False)


# --- Models ------------------------------------------------------------------------------

class AWDLSTM(WordScores, nn.Module):
    """AWD-LSTM. Defaults are the paper's WikiText-2 model (33.6M parameters)."""

    def __init__(self, ntoken, emsize=400, nhid=1150, nlayers=3, dropout=0.4, dropouth=0.2,
                 dropouti=0.65, dropoute=0.1, wdrop=0.5, tied=True, cutoffs=()):
        super().__init__()
        self.config = dict(model="awd", ntoken=ntoken, emsize=emsize, nhid=nhid,
                           nlayers=nlayers, dropout=dropout, dropouth=dropouth,
                           dropouti=dropouti, dropoute=dropoute, wdrop=wdrop, tied=tied,
                           cutoffs=list(cutoffs))
        self.dropout, self.dropouth, self.dropouti, self.dropoute = (
            dropout, dropouth, dropouti, dropoute)
        self.encoder = nn.Embedding(ntoken, emsize)
        # emsize -> nhid -> ... -> nhid -> last; the last layer feeds the decoder, so with
        # tied weights it must be as wide as the embedding.
        last = emsize if tied else nhid
        sizes = [emsize] + [nhid] * (nlayers - 1) + [last]
        self.rnns = nn.ModuleList(
            LSTMLayer(sizes[i], sizes[i + 1], wdrop) for i in range(nlayers))
        self.lockdrop = LockedDropout()
        self.decoder = output_layer(last, ntoken, cutoffs, tied)
        if self.adaptive:
            self.register_buffer("word_rank", torch.arange(ntoken))
        if tied:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        if not self.adaptive:  # (the adaptive softmax keeps torch's initialisation)
            if not tied:
                nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, batch_size):
        """A list with one (h, c) pair per layer, each (1, batch, layer width), zeros."""
        weight = self.encoder.weight
        return [(weight.new_zeros(1, batch_size, rnn.lstm.hidden_size),
                 weight.new_zeros(1, batch_size, rnn.lstm.hidden_size)) for rnn in self.rnns]

    def forward(self, tokens, hidden):
        x = embedding_dropout(self.encoder, tokens, self.dropoute, self.training)
        x = self.lockdrop(x, self.dropouti)  # (seq, batch, emsize)
        new_hidden = []
        for layer, rnn in enumerate(self.rnns):
            x, state = rnn(x, hidden[layer])
            new_hidden.append(state)
            if layer < len(self.rnns) - 1:
                x = self.lockdrop(x, self.dropouth)
        dropped = self.lockdrop(x, self.dropout)  # (seq, batch, last)
        logits = None if self.adaptive else self.decoder(dropped)
        return ModelOutput(logits, new_hidden, x, dropped)


class LSTMModel(WordScores, nn.Module):
    """The baseline. Defaults are the PyTorch example's "medium" model (650 wide, tied).

    Its layers are one nn.LSTM each (LSTMLayer), with the dropout between them drawn by
    nn.Dropout: the same model as one multi-layer nn.LSTM(dropout=...), but its masks come
    from torch's generator, whose state a checkpoint saves, where cuDNN draws the masks of a
    multi-layer LSTM from a dropout state of its own, which no checkpoint holds (a resumed
    run would draw other masks). Checkpoints of the multi-layer form load unchanged."""

    def __init__(self, ntoken, emsize=650, nhid=650, nlayers=2, dropout=0.5, tied=True,
                 cutoffs=()):
        super().__init__()
        if tied and nhid != emsize:
            raise ValueError(f"tied weights need nhid == emsize (got {nhid} and {emsize}); "
                             "set them equal or turn tying off")
        self.config = dict(model="lstm", ntoken=ntoken, emsize=emsize, nhid=nhid,
                           nlayers=nlayers, dropout=dropout, tied=tied, cutoffs=list(cutoffs))
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, emsize)
        self.rnns = nn.ModuleList(LSTMLayer(emsize if i == 0 else nhid, nhid)
                                  for i in range(nlayers))
        self.decoder = output_layer(nhid, ntoken, cutoffs, tied)
        if self.adaptive:
            self.register_buffer("word_rank", torch.arange(ntoken))
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        if tied:
            self.decoder.weight = self.encoder.weight
        if not self.adaptive:  # (the adaptive softmax keeps torch's initialisation)
            nn.init.zeros_(self.decoder.bias)
            if not tied:
                nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        self.register_load_state_dict_pre_hook(rename_multilayer_weights)

    def init_hidden(self, batch_size):
        """An (h, c) pair, each (nlayers, batch, nhid), zeros."""
        weight = self.encoder.weight
        shape = (len(self.rnns), batch_size, self.rnns[0].lstm.hidden_size)
        return (weight.new_zeros(shape), weight.new_zeros(shape))

    def forward(self, tokens, hidden):
        x = self.drop(self.encoder(tokens))
        h, c = hidden
        new_h, new_c = [], []
        for layer, rnn in enumerate(self.rnns):
            if layer > 0:
                x = self.drop(x)  # between layers, where nn.LSTM(dropout=...) drops
            x, (h_n, c_n) = rnn(x, (h[layer:layer + 1], c[layer:layer + 1]))
            new_h.append(h_n)
            new_c.append(c_n)
        dropped = self.drop(x)
        logits = None if self.adaptive else self.decoder(dropped)
        return ModelOutput(logits, (torch.cat(new_h), torch.cat(new_c)), x, dropped)


def rename_multilayer_weights(module, state_dict, prefix, *args):
    """Load weights saved from the baseline's earlier form, one multi-layer nn.LSTM
    ("rnn.weight_ih_l1"), into its layers ("rnns.1.lstm.weight_ih_l0"): the same numbers."""
    for key in [k for k in state_dict if k.startswith(prefix + "rnn.")]:
        name, layer = key[len(prefix + "rnn."):].rsplit("_l", 1)
        state_dict[f"{prefix}rnns.{layer}.lstm.{name}_l0"] = state_dict.pop(key)


MODELS = {"awd": AWDLSTM, "lstm": LSTMModel}
DROPOUTS = ("dropout", "dropouth", "dropouti", "dropoute", "wdrop")


def architecture(kind):
    """The names of model `kind`'s settings, from its constructor: ("emsize", "nhid", ...)."""
    return tuple(name for name in inspect.signature(MODELS[kind]).parameters
                 if name != "ntoken")


def model_config(settings, ntoken):
    """The configuration of the model that `settings` (training settings: "model" and any
    architecture entries, other keys ignored) describe, for a vocabulary of `ntoken`."""
    kind = settings["model"]
    return dict(model=kind, ntoken=ntoken,
                **{name: settings[name] for name in architecture(kind) if name in settings})


def without_dropout(config):
    """The same configuration with every dropout at zero."""
    return dict(config, **{name: 0.0 for name in DROPOUTS if name in config})


def build_model(config):
    """A model from its plain-dict configuration (`model.config`, as checkpoints store it)."""
    config = dict(config)
    kind = config.pop("model")
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(MODELS)}")
    return MODELS[kind](**config)


def count_parameters(model):
    """Trainable parameters, counting a tied matrix once."""
    return sum(p.numel() for p in model.parameters())
