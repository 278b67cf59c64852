"""Tests of lstm_layer.py: weight drop's masks, the layer's parameters never swapped or
re-packed, cuDNN's flat layout kept, and the bf16 probe over the model's own shapes."""

import warnings

import pytest
import torch

import lstm_layer
from devices import check_bf16
from lstm_layer import LSTMLayer, flat_layout, in_one_block
from model import AWDLSTM, build_model, detach_hidden
from settings import SettingsError


def weight_hh_grad_zeros(layer, x, hidden):
    layer.zero_grad()
    output, _ = layer(x, hidden)
    output.pow(2).sum().backward()
    return layer.lstm.weight_hh_l0.grad == 0



def test_weight_drop_draws_a_fresh_mask_each_training_forward():
    torch.manual_seed(0)
    layer = LSTMLayer(5, 16, weight_dropout=0.5).train()
    x, hidden = torch.randn(6, 3, 5), (torch.randn(1, 3, 16), torch.randn(1, 3, 16))
    first = weight_hh_grad_zeros(layer, x, hidden)
    second = weight_hh_grad_zeros(layer, x, hidden)
    # A dropped entry of weight_hh gets exactly zero gradient: about half of them.
    assert 0.4 < first.float().mean() < 0.6
    assert not torch.equal(first, second)  # a new mask on the next forward
    assert not torch.equal(layer(x, hidden)[0], layer(x, hidden)[0])



def test_weight_drop_is_the_identity_in_evaluation_and_patches_nothing():
    torch.manual_seed(0)
    layer = LSTMLayer(5, 16, weight_dropout=0.5)
    parameter = layer.lstm.weight_hh_l0
    x, hidden = torch.randn(6, 3, 5), (torch.zeros(1, 3, 16), torch.zeros(1, 3, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer.train()(x, hidden)
        layer.eval()
        output, _ = layer(x, hidden)
    assert caught == []
    assert layer.lstm.weight_hh_l0 is parameter
    assert [name for name, _ in layer.named_parameters()] == [
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"]
    assert torch.equal(output, layer.lstm(x, hidden)[0])
    assert not layer.lstm.weight_hh_l0.grad_fn  # still a leaf the optimizer updates
    assert (weight_hh_grad_zeros(layer.eval(), x, hidden)).float().mean() < 0.05



def test_weight_drop_never_swaps_or_reflattens_the_lstms_weights(monkeypatch):
    """functional_call swapped a dropped matrix into nn.LSTM, which then re-packed its flat
    cuDNN buffer on every call (a no-op on the CPU, three copies per step on CUDA)."""
    torch.manual_seed(0)
    model = AWDLSTM(30, emsize=8, nhid=12, nlayers=3, wdrop=0.5).train()
    calls = []
    for layer in model.rnns:
        monkeypatch.setattr(layer.lstm, "flatten_parameters", lambda: calls.append(1))
    parameters = [p for p in model.parameters()]
    hidden = model.init_hidden(2)
    for _ in range(3):
        out = model(torch.randint(0, 30, (5, 2)), hidden)
        model.loss(out, torch.randint(0, 30, (5, 2))).backward()
        hidden = detach_hidden(out.hidden)
    model.eval()(torch.randint(0, 30, (5, 2)), hidden)
    assert calls == []
    assert [p for p in model.parameters()] == parameters  # the same tensors, never replaced
    assert model.rnns[0].lstm.weight_hh_l0.grad is not None



def test_weights_in_one_block_sit_at_the_layouts_offsets_and_pass_gradients():
    weights = [torch.randn(8, 3, requires_grad=True), torch.randn(8, 2, requires_grad=True),
               torch.randn(8, requires_grad=True)]
    offsets, length = [0, 26, 42], 52  # gaps after the first and the last
    views = in_one_block(weights, (offsets, length))
    block = views[0]._base if views[0]._base is not None else views[0]
    assert block.numel() == length
    for view, weight, offset in zip(views, weights, offsets):
        assert view.storage_offset() == offset and torch.equal(view, weight)
    assert block[24:26].eq(0).all() and block[50:].eq(0).all()
    # one split of the buffer, whose backward writes one buffer-sized gradient (a slice per
    # weight would write one each)
    splits = {view.grad_fn.next_functions[0][0] for view in views}
    assert len(splits) == 1 and "Split" in type(splits.pop()).__name__
    sum(v.sum() for v in views).backward()
    assert all(torch.equal(w.grad, torch.ones_like(w)) for w in weights)
    assert in_one_block(weights, None) is weights  # no layout: unchanged



def test_the_flat_layout_is_read_off_weights_that_share_one_buffer():
    buffer = torch.zeros(52)
    shared = [buffer[0:24].view(8, 3), buffer[26:42].view(8, 2), buffer[42:50]]
    assert flat_layout(shared) == ([0, 26, 42], 52)
    apart = [torch.zeros(8, 3), torch.zeros(8, 2), torch.zeros(8)]  # as on the CPU
    assert flat_layout(apart) is None
    assert flat_layout(list(LSTMLayer(3, 4).lstm.parameters())) is None



def test_the_bf16_probe_runs_each_lstm_shape_of_the_model_and_leaves_the_generator(
        monkeypatch):
    """cuDNN picks its algorithm by an LSTM's width (tiny ones take a small-hidden one), so
    the probe runs the model's own shapes, not a tiny stand-in."""
    model = build_model(dict(model="awd", ntoken=20, emsize=8, nhid=40, nlayers=3))
    probed, original = [], lstm_layer.LSTMLayer.forward

    def record(layer, x, hidden):
        probed.append((layer.lstm.input_size, layer.lstm.hidden_size, x.size(1)))
        return original(layer, x, hidden)

    monkeypatch.setattr(lstm_layer.LSTMLayer, "forward", record)
    rng = torch.get_rng_state()
    try:
        check_bf16(torch.device("cpu"), model, 5)
    except SettingsError:
        pytest.skip("this CPU runs no bfloat16 LSTM")
    assert sorted(probed) == [(8, 40, 5), (40, 8, 5), (40, 40, 5)]
    assert torch.equal(torch.get_rng_state(), rng)

