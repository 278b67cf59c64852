"""Tests of checkpoint.py: atomic writes, plain-data loading, clear refusals."""

import os

import pytest
import torch

import checkpoint
from checkpoint import CheckpointError
from model import AWDLSTM


def model_checkpoint(model, vocab):
    return dict(format=checkpoint.FORMAT, version=checkpoint.VERSION, kind="model",
                config=model.config, vocab=vocab, args={"model": "awd"},
                model=model.state_dict(), epoch=1, valid_loss=1.0, valid_ppl=2.7)


def test_save_and_load_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = AWDLSTM(5, emsize=4, nhid=6, nlayers=2).eval()
    path = str(tmp_path / "m.pt")
    checkpoint.save(path, model_checkpoint(model, ["a", "b", "<eos>", "c", "<unk>"]))
    torch.load(path, weights_only=True)  # plain data only
    loaded, vocab, saved = checkpoint.load_model(path)
    assert vocab.idx2word == ["a", "b", "<eos>", "c", "<unk>"]
    tokens = torch.tensor([[0], [3]])
    assert torch.equal(loaded(tokens, loaded.init_hidden(1)).logits,
                       model(tokens, model.init_hidden(1)).logits)
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind


def test_a_crash_during_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "m.pt")
    model = AWDLSTM(5, emsize=4, nhid=6, nlayers=2)
    checkpoint.save(path, model_checkpoint(model, list("abcde")))
    before = open(path, "rb").read()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # Ctrl-C in the middle of torch.save

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model_checkpoint(model, list("vwxyz")))
    assert open(path, "rb").read() == before
    assert checkpoint.load(path)["vocab"] == list("abcde")
    assert os.listdir(tmp_path) == ["m.pt"]


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist"),
    (b"not a zip archive at all", "is not a readable checkpoint"),
    ("foreign", "is not a checkpoint of this project"),
    ("pickled", "holds pickled objects"),
])
def test_unusable_files_are_refused_with_the_path(tmp_path, content, fragment):
    path = str(tmp_path / "x.pt")
    if content == "foreign":
        torch.save({"state_dict": {}}, path)
    elif content == "pickled":  # a whole module, as older projects saved them
        torch.save(torch.nn.Linear(2, 2), path)
    elif content is not None:
        open(path, "wb").write(content)
    with pytest.raises(CheckpointError) as error:
        checkpoint.load(path)
    assert path in str(error.value) and fragment in str(error.value)


def test_a_training_state_is_not_a_model_and_vice_versa(tmp_path):
    model = AWDLSTM(5, emsize=4, nhid=6, nlayers=2)
    path = str(tmp_path / "m.pt")
    checkpoint.save(path, model_checkpoint(model, list("abcde")))
    with pytest.raises(CheckpointError, match="without training state"):
        checkpoint.load(path, kind="state")
    state = dict(checkpoint.load(path), kind="state")
    checkpoint.save(str(tmp_path / "m.state.pt"), state)
    with pytest.raises(CheckpointError, match="is a training state"):
        checkpoint.load_model(str(tmp_path / "m.state.pt"))
    assert checkpoint.state_path("checkpoints/awd.pt") == "checkpoints/awd.state.pt"
