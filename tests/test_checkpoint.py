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


# --- Checkpoints edited by hand, in every entry point that reads one ---------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run: its model checkpoint and its training state."""
    import train
    root = tmp_path_factory.mktemp("run")
    line = "a b c d e f g h i j\n"
    for name, repeat in (("train.txt", 40), ("valid.txt", 10), ("test.txt", 10)):
        (root / name).write_text(line * repeat)
    train.main(["--model", "awd", "--data", str(root), "--emsize", "8", "--nhid", "12",
                "--batch_size", "4", "--bptt", "8", "--epochs", "1", "--save",
                str(root / "awd.pt")])
    return root


def without_vocab(c):
    del c["vocab"]


def wrong_shape(c):
    c["model"]["encoder.weight"] = torch.zeros(3, 3)


def wrong_config_type(c):
    c["config"]["nhid"] = "twelve"


def nan_weights(c):  # the tied matrix, under both of its names
    nan = torch.full_like(c["model"]["encoder.weight"], float("nan"))
    c["model"]["encoder.weight"] = c["model"]["decoder.weight"] = nan


def untied(c):
    c["model"]["encoder.weight"] = c["model"]["encoder.weight"] + 1.0


EDITS = [(without_vocab, "lacks vocab"), (wrong_shape, "weights do not fit"),
         (wrong_config_type, "does not make a model"), (nan_weights, "non-finite weights"),
         (untied, "encoder.weight and decoder.weight differ")]


def run_entry_point(tool, path, root):
    import evaluate
    import generate
    import train
    argv = {"generate": ["--checkpoint", path], "evaluate": ["--checkpoint", path],
            "finetune": ["--finetune", path, "--save", os.path.join(root, "ft.pt")],
            "resume": ["--resume", path]}[tool]
    main = {"generate": generate.main, "evaluate": evaluate.main}.get(tool, train.main)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code


@pytest.mark.parametrize("edit, fragment", EDITS, ids=[e.__name__ for e, _ in EDITS])
@pytest.mark.parametrize("tool", ["generate", "evaluate", "finetune", "resume"])
def test_a_checkpoint_edited_by_hand_is_one_clean_error_everywhere(trained_run, tmp_path, tool,
                                                                   edit, fragment):
    source = trained_run / ("awd.state.pt" if tool == "resume" else "awd.pt")
    edited = torch.load(source, weights_only=True)
    edit(edited)
    path = str(tmp_path / source.name)
    edited["args"]["save"] = str(tmp_path / "awd.pt")  # a resume writes beside it
    checkpoint.save(path, edited)
    before = open(path, "rb").read()
    message = run_entry_point(tool, path, str(tmp_path))
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    assert path in message and fragment in message
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == [source.name]  # nothing else written
