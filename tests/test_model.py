"""Tests of model.py: each regulariser's defining property, tying, shapes, parameter counts,
what each part computes in under autocast."""

import pytest
import torch
import torch.nn.functional as F

from data import mean_nll
from model import (AWDLSTM, LockedDropout, LSTMModel, adaptive_log_probs, build_model,
                   count_parameters, detach_hidden, embedding_dropout)
from util import ppl


def leaves(hidden):
    """The tensors of a hidden state (nested tuples and lists)."""
    if isinstance(hidden, torch.Tensor):
        return [hidden]
    return [t for h in hidden for t in leaves(h)]


def lstm_parameters(inp, hid):
    return 4 * hid * (inp + hid) + 2 * 4 * hid


def test_awd_lstm_parameter_counts_match_the_paper():
    assert count_parameters(AWDLSTM(33278)) == 33556078  # WikiText-2
    assert count_parameters(AWDLSTM(10000)) == 24221600  # Penn Treebank


def test_baseline_parameter_count():
    ntoken = 1000
    expected = ntoken * 650 + ntoken + 2 * lstm_parameters(650, 650)  # tied: one matrix
    assert count_parameters(LSTMModel(ntoken)) == expected
    untied = LSTMModel(ntoken, emsize=200, nhid=300, nlayers=2, tied=False)
    assert count_parameters(untied) == (ntoken * 200 + 300 * ntoken + ntoken
                                        + lstm_parameters(200, 300) + lstm_parameters(300, 300))


def test_baseline_refuses_tying_unequal_sizes():
    with pytest.raises(ValueError, match="nhid == emsize"):
        LSTMModel(100, emsize=200, nhid=300, tied=True)


@pytest.mark.parametrize("kind", ["awd", "lstm"])
def test_shapes_and_hidden_state(kind):
    model = build_model(dict(model=kind, ntoken=50, emsize=8, nhid=12, nlayers=3,
                             tied=False))
    hidden = model.init_hidden(4)
    out = model(torch.randint(0, 50, (7, 4)), hidden)
    assert out.logits.shape == (7, 4, 50)
    assert out.raw_output.shape == out.dropped_output.shape == (7, 4, 12)
    flat_new = torch.cat([h.flatten() for h in leaves(out.hidden)])
    flat_old = torch.cat([h.flatten() for h in leaves(hidden)])
    assert flat_new.shape == flat_old.shape and not torch.equal(flat_new, flat_old)
    detached = detach_hidden(out.hidden)
    assert all(not h.requires_grad for h in leaves(detached))


def test_awd_layer_widths():
    model = AWDLSTM(100, emsize=10, nhid=20, nlayers=3)
    widths = [(rnn.lstm.input_size, rnn.lstm.hidden_size) for rnn in model.rnns]
    assert widths == [(10, 20), (20, 20), (20, 10)]  # the last matches the tied embedding


def test_locked_dropout_mask_is_constant_over_time_and_varies_over_batch_and_features():
    torch.manual_seed(0)
    drop = LockedDropout().train()
    x = torch.ones(30, 8, 16)
    y = drop(x, 0.5)
    assert torch.equal(y, y[:1].expand_as(y))  # same mask at every time step
    assert set(y.unique().tolist()) == {0.0, 2.0}  # dropped, or scaled by 1/(1-p)
    mask = y[0]  # (batch, features)
    assert not all(torch.equal(mask[0], mask[b]) for b in range(8))
    assert not all(torch.equal(mask[:, 0], mask[:, f]) for f in range(16))
    assert torch.equal(drop.eval()(x, 0.5), x)


def test_embedding_dropout_zeroes_whole_word_types():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(40, 6)
    tokens = torch.arange(40).repeat(5, 1)  # (5, 40): every word type five times
    out = embedding_dropout(embedding, tokens, 0.5, training=True)
    dropped = (out == 0).all(dim=-1)  # (5, 40)
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # all occurrences alike
    assert 0 < dropped[0].sum() < 40
    kept = ~dropped[0]
    assert torch.allclose(out[0][kept], 2 * embedding.weight[kept])
    assert torch.equal(embedding_dropout(embedding, tokens, 0.5, training=False),
                       embedding(tokens))


def test_tied_weights_share_one_tensor():
    for model in (AWDLSTM(30, emsize=8, nhid=12), LSTMModel(30, emsize=8, nhid=8)):
        assert model.decoder.weight is model.encoder.weight
        with torch.no_grad():
            model.encoder.weight[3, 0] = 7.0
        assert model.decoder.weight[3, 0] == 7.0


def test_awd_initialisation():
    model = AWDLSTM(500, emsize=16, nhid=24)
    assert model.encoder.weight.abs().max() <= 0.1
    assert torch.equal(model.decoder.bias, torch.zeros(500))


@pytest.mark.parametrize("kind", ["awd", "lstm"])
def test_evaluation_is_deterministic_and_training_is_not(kind):
    torch.manual_seed(0)
    model = build_model(dict(model=kind, ntoken=40, emsize=10, nhid=10, nlayers=2,
                             tied=True))
    tokens = torch.randint(0, 40, (9, 3))
    hidden = model.init_hidden(3)
    model.eval()
    assert torch.equal(model(tokens, hidden).logits, model(tokens, hidden).logits)
    model.train()
    assert not torch.equal(model(tokens, hidden).logits, model(tokens, hidden).logits)


def test_a_model_rebuilt_from_its_config_computes_the_same_function():
    torch.manual_seed(0)
    model = AWDLSTM(40, emsize=10, nhid=14, nlayers=3, dropouth=0.3, wdrop=0.2).eval()
    clone = build_model(model.config)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    tokens = torch.randint(0, 40, (5, 2))
    assert clone.config == model.config
    assert torch.equal(clone(tokens, clone.init_hidden(2)).logits,
                       model(tokens, model.init_hidden(2)).logits)


def test_build_model_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        build_model(dict(model="gru", ntoken=10))


# --- The adaptive softmax ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["awd", "lstm"])
def test_adaptive_softmax_is_a_distribution_over_every_word(kind):
    torch.manual_seed(0)
    model = build_model(dict(model=kind, ntoken=60, emsize=8, nhid=16, nlayers=2, tied=False,
                             cutoffs=[10, 30])).eval()
    model.order_words_by_frequency(torch.randint(0, 100, (60,)))
    tokens, targets = torch.randint(0, 60, (5, 3)), torch.randint(0, 60, (5, 3))
    out = model(tokens, model.init_hidden(3))
    assert out.logits is None
    log_probs = model.scores(out)  # (5, 3, 60), by word id
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(5, 3), atol=1e-5)
    by_hand = log_probs.gather(2, targets.unsqueeze(2)).squeeze(2)
    assert torch.allclose(model.target_log_probs(out, targets), by_hand, atol=1e-5)
    assert torch.isclose(model.loss(out, targets), -by_hand.mean(), atol=1e-5)


def test_adaptive_softmax_puts_the_commonest_words_in_its_head():
    model = LSTMModel(6, emsize=4, nhid=4, nlayers=1, tied=False, cutoffs=[2])
    model.order_words_by_frequency(torch.tensor([5, 50, 1, 30, 0, 2]))
    assert model.word_rank.tolist() == [2, 0, 4, 1, 5, 3]  # word 1 is the commonest
    assert "word_rank" in model.state_dict()  # checkpoints carry the order
    with pytest.raises(ValueError, match="no single output matrix"):
        LSTMModel(6, emsize=4, nhid=4, nlayers=1, tied=True, cutoffs=[2])
    assert "word_rank" not in LSTMModel(6, emsize=4, nhid=4).state_dict()  # full softmax
    with pytest.raises(ValueError, match="would have no features"):
        LSTMModel(60, emsize=4, nhid=4, nlayers=1, tied=False, cutoffs=[10, 30])


@pytest.mark.parametrize("kind", ["awd", "lstm"])
def test_with_every_word_in_its_head_the_adaptive_softmax_is_a_full_softmax(kind):
    # torch's class always keeps one tail cluster; a cluster of one word is certain (a
    # softmax over one word), so with the other words in the head its probabilities are a
    # full softmax's (without bias) over the head's rows: the same weights, the same
    # perplexity on a tiny corpus.
    ntoken = 40
    torch.manual_seed(0)
    config = dict(model=kind, ntoken=ntoken, emsize=8, nhid=16, nlayers=2, tied=False)
    adaptive = build_model(dict(config, cutoffs=[ntoken - 1])).eval()
    adaptive.order_words_by_frequency(torch.randint(0, 100, (ntoken,)))
    full = build_model(config).eval()
    weights = {name: value for name, value in adaptive.state_dict().items()
               if not name.startswith("decoder.") and name != "word_rank"}
    head = adaptive.decoder.head.weight  # (ntoken - 1 words + 1 cluster, features), by rank
    weights.update({"decoder.weight": head[adaptive.word_rank],
                    "decoder.bias": torch.zeros(ntoken)})
    full.load_state_dict(weights)
    text = torch.randint(0, ntoken, (600,))
    assert ppl(mean_nll(adaptive, text, 4, 10)) == pytest.approx(ppl(mean_nll(full, text, 4, 10)),
                                                                 rel=1e-5)
    assert ppl(mean_nll(full, text, 4, 10)) > 20  # untrained: a real comparison, not ~1


# --- Precision: what each part computes in under autocast ----------------------------------

class CudaAutocastPolicy(torch.overrides.TorchFunctionMode):
    """On the CPU, the dtypes CUDA's autocast gives where the CPU's differs: log_softmax in
    float32 (CPU autocast keeps it in bfloat16). Active only while autocast is on."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_autocast_enabled("cpu") and func in (torch.log_softmax, F.log_softmax,
                                                          torch.Tensor.log_softmax):
            args = (args[0].float(),) + tuple(args[1:])
            return func(*args, **kwargs)
        return func(*args, **kwargs)


def test_the_adaptive_softmax_computes_its_matmuls_in_bfloat16_and_its_loss_in_float32():
    torch.manual_seed(0)
    head = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 60, [10, 30], div_value=4.0)
    # what the LSTMs give it under autocast
    features, targets = torch.randn(12, 16).bfloat16(), torch.randint(0, 60, (12,))
    # The bare module fails under this policy, as it does on CUDA: its output tensor has
    # its input's dtype, the log-probabilities it writes into it are float32.
    with CudaAutocastPolicy(), torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            head(features, targets)
    model = build_model(dict(model="awd", ntoken=60, emsize=8, nhid=16, nlayers=2, tied=False,
                             cutoffs=[10, 30]))
    tokens, targets = torch.randint(0, 60, (5, 3)), torch.randint(0, 60, (5, 3))
    with CudaAutocastPolicy(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tokens, model.init_hidden(3))
        loss = model.loss(out, targets)
        logp = model.target_log_probs(out, targets)
        scores = model.scores(out)
    assert loss.dtype == logp.dtype == scores.dtype == torch.float32
    assert out.dropped_output.dtype == torch.bfloat16  # the LSTMs ran in bfloat16
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # the head's and the clusters' matmuls in bfloat16 (its rounding: 8 bits of mantissa),
    # the log-softmax in float32: close to the module's own float32 result
    by_hand = model.decoder.log_prob(out.dropped_output.detach().flatten(0, 1).float())
    ranks = model.word_rank[targets.flatten()]
    expected = by_hand.gather(1, ranks.unsqueeze(1)).squeeze(1)
    assert not torch.equal(logp.flatten(), expected)
    assert torch.allclose(logp.flatten(), expected, atol=0.05)
    # without autocast, exactly what torch's module computes
    features, ranks = torch.randn(40, 16), torch.randint(0, 60, (40,))
    assert torch.equal(adaptive_log_probs(head, features, ranks), head(features, ranks).output)


@pytest.mark.parametrize("kind", ["awd", "lstm"])
def test_under_bf16_autocast_the_lstms_compute_in_bfloat16_and_the_loss_in_float32(kind):
    torch.manual_seed(0)
    model = build_model(dict(model=kind, ntoken=30, emsize=8, nhid=8, nlayers=2)).train()
    seen = []
    for layer in model.rnns:
        layer.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype,
                                                                      out[0].dtype)))
    tokens = torch.randint(0, 30, (6, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tokens, model.init_hidden(2))
        loss = model.loss(out, tokens)
    assert [o for _, o in seen] == [torch.bfloat16] * 2
    assert seen[0][0] == torch.float32  # the embedding's output, cast by the layer
    assert loss.dtype == torch.float32
    assert all(t.dtype == torch.bfloat16 for t in leaves(out.hidden))
    loss.backward()
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters())
    # Out of autocast the same model computes in float32, from a bfloat16 state too.
    out = model(tokens, out.hidden)
    assert out.raw_output.dtype == torch.float32


def test_the_baseline_loads_and_computes_like_its_multilayer_lstm_form():
    """Earlier checkpoints hold one 2-layer nn.LSTM ("rnn.weight_ih_l1"); the layers of
    the baseline now are one nn.LSTM each."""
    torch.manual_seed(0)
    old = torch.nn.LSTM(8, 8, 2)
    model = LSTMModel(30, emsize=8, nhid=8, nlayers=2).eval()
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("rnns.")}
    weights.update({f"rnn.{k}": v for k, v in old.state_dict().items()})
    model.load_state_dict(weights)
    tokens = torch.randint(0, 30, (7, 3))
    hidden = (torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    out = model(tokens, hidden)
    expected, (h, c) = old(model.encoder(tokens), hidden)
    assert torch.allclose(out.raw_output, expected, atol=1e-6)
    assert torch.allclose(out.hidden[0], h, atol=1e-6) and torch.allclose(out.hidden[1], c,
                                                                          atol=1e-6)


def test_the_baselines_dropout_between_layers_is_drawn_from_torchs_generator():
    model = LSTMModel(30, emsize=8, nhid=8, nlayers=3, dropout=0.5).train()
    tokens = torch.randint(0, 30, (7, 3))
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(model(tokens, model.init_hidden(3)).raw_output)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], model(tokens, model.init_hidden(3)).raw_output)
