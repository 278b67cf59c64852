"""lstm_layer.py: one LSTM layer as the models use it, and the mechanics of running it fast:
AWD-LSTM's weight drop (DropConnect on the hidden-to-hidden matrix), bfloat16 under
autocast, and cuDNN's flat weight layout, which a layer keeps when it hands torch's LSTM op
weights of its own. model.py builds its models from LSTMLayer and need not know the rest.

    layer = LSTMLayer(400, 1150, weight_dropout=0.5)
    output, (h, c) = layer(x, (h, c))       # x: (seq, batch, 400); h, c: (1, batch, 1150)
    pack_lstm_weights(copy.deepcopy(model)) # cuDNN's one weight block again, after a copy
    probe_bf16(device, model, 80)           # bf16 LSTMs of the model's shapes run here
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def compute_dtype(x, weight):
    """The dtype an LSTM computes in: autocast's when autocast is on for x's device, else
    that of its weights (float32)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


class LSTMLayer(nn.Module):
    """One nn.LSTM layer, optionally with DropConnect on its hidden-to-hidden matrix
    (AWD-LSTM's weight drop), that computes in the autocast dtype when autocast is on.

    Evaluation in float32, and training without weight drop, run the nn.LSTM as it is (on a
    GPU its weights stay in the one flat buffer cuDNN wants). Otherwise the layer hands
    torch's LSTM op the weights itself: a fresh elementwise mask on weight_hh_l0 each
    training forward (shared by all time steps and batch items, survivors scaled by
    1/(1-p)) and, under autocast, every weight cast to the autocast dtype, with autocast
    off. Two reasons: cuDNN's autocast wrapper runs RNNs in float16 whatever dtype autocast
    asks for, and a weight swapped into an nn.LSTM (torch.func.functional_call) makes it
    re-pack its flat buffer on every call. On a GPU the weights handed over are views of one
    new buffer in the layout of the module's own (in_one_block), so that cuDNN copies
    nothing (expected from torch's sources; no GPU has run this yet).
    The module's parameters are never replaced or patched.
    """

    def __init__(self, input_size, hidden_size, weight_dropout=0.0):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.weight_dropout = weight_dropout

    def forward(self, x, hidden):
        """x: (seq, batch, input_size); hidden: (h, c), each (1, batch, hidden_size), in any
        floating dtype (a state saved in float32 resumes under bf16 and the other way)."""
        lstm = self.lstm
        weights = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
        dtype = compute_dtype(x, weights[0])
        hidden = tuple(h.to(dtype) for h in hidden)
        drop = self.training and self.weight_dropout > 0
        if not drop and dtype == weights[0].dtype:
            return lstm(x, hidden)
        layout = flat_layout(weights)
        if drop:
            weights[1] = F.dropout(weights[1], self.weight_dropout, training=True)
        weights = in_one_block([w.to(dtype) for w in weights], layout)
        with torch.autocast(x.device.type, enabled=False):
            output, h, c = torch.lstm(x.to(dtype), hidden, weights, True, 1, 0.0, self.training,
                                      False, False)
        return output, (h, c)


def flat_layout(weights):
    """(offsets, length): where the one buffer that holds `weights` holds each of them, as
    nn.LSTM lays out its weights for cuDNN on a GPU; None when they are apart (the CPU).
    The offsets count elements, so they serve bfloat16 copies too (were cuDNN to lay those
    out otherwise, it would copy them into its layout, as without a layout)."""
    storage = weights[0].untyped_storage()
    if any(w.untyped_storage().data_ptr() != storage.data_ptr() for w in weights):
        return None
    offsets = [w.storage_offset() for w in weights]
    if offsets != sorted(offsets):
        return None
    return offsets, storage.nbytes() // weights[0].element_size()


def in_one_block(weights, layout):
    """`weights` as views of one new buffer at the offsets of `layout` (gaps zero), or
    unchanged when there is no layout. The copy is differentiable: gradients reach the
    weights (and the weight-drop mask) through it. The buffer is split once, not sliced
    per weight: the backward of each slice would write a zero gradient of the whole
    buffer, that of a split writes one."""
    if layout is None:
        return weights
    offsets, length = layout
    pieces, end, places = [], 0, []
    for w, start in zip(weights, offsets):
        if start > end:
            pieces.append(w.new_zeros(start - end))
        places.append(len(pieces))
        pieces.append(w.reshape(-1))
        end = start + w.numel()
    if length > end:
        pieces.append(weights[0].new_zeros(length - end))
    parts = torch.cat(pieces).split([piece.numel() for piece in pieces])
    return [parts[place].view_as(w) for place, w in zip(places, weights)]


def pack_lstm_weights(module):
    """Lay every LSTM's weights out as one contiguous block again, as cuDNN's fused kernel
    wants them. Module.to() does this; copy.deepcopy (as in AveragedModel) does not, and
    cuDNN would then warn and re-pack the weights on every call. A no-op on the CPU."""
    for m in module.modules():
        if isinstance(m, nn.LSTM):
            m.flatten_parameters()
    return module


def probe_bf16(device, model, batch_size):
    """Run one bfloat16 training step of an LSTM layer of each of `model`'s shapes (input
    and hidden size, `batch_size` columns, on `device`) the way LSTMLayer runs its layers
    under bf16, with the float32 math this process has chosen; a RuntimeError says why
    the device cannot. The model's own shapes, because cuDNN picks its algorithm by them:
    PyTorch sends narrow LSTMs (hidden size up to 192 forward, 128 backward) to a
    persistent small-hidden algorithm and wider ones to the standard one
    (use_rnn_persist_small_h in aten/src/ATen/native/cudnn/RNN.cpp), so a tiny probe would
    pass for the wrong one. The run's random generator is left as it was."""
    shapes = {(rnn.lstm.input_size, rnn.lstm.hidden_size) for rnn in model.rnns}
    with torch.random.fork_rng(devices=[]):
        for input_size, hidden_size in sorted(shapes):
            probe = LSTMLayer(input_size, hidden_size).to(device).train()
            zeros = torch.zeros(1, batch_size, hidden_size, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                output, _ = probe(torch.zeros(2, batch_size, input_size, device=device),
                                  (zeros, zeros))
            output.float().sum().backward()
            if output.dtype != torch.bfloat16:
                raise RuntimeError(f"the LSTM computed in {output.dtype}")
