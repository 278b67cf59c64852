"""Tests of checkpoint.py: atomic writes, plain-data loading, clear refusals, the provenance a
run records, the training state."""

import os
import re
from pathlib import Path

import pytest
import torch

import checkpoint
from checkpoint import CheckpointError
from data import Corpus
from model import AWDLSTM
from runfiles import RunFiles


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

    def crash(fd):
        raise KeyboardInterrupt  # Ctrl-C with the new bytes written but not yet on disk

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model_checkpoint(model, list("vwxyz")))
    assert open(path, "rb").read() == before
    assert checkpoint.load(path)["vocab"] == list("abcde")
    assert os.listdir(tmp_path) == ["m.pt"]


def test_bit_rot_inside_the_weights_is_refused_in_one_line(tmp_path):
    """torch.load does not check the archive's CRCs: 4 KiB zeroed inside a tensor's bytes
    would load as other weights, without the checksum written beside them."""
    torch.manual_seed(0)
    model = AWDLSTM(50, emsize=16, nhid=32, nlayers=2)  # a 16 KiB LSTM matrix
    path = tmp_path / "m.pt"
    checkpoint.save(str(path), model_checkpoint(model, [f"w{i}" for i in range(50)]))
    checkpoint.load(str(path))  # sound
    raw = bytearray(path.read_bytes())
    weight = model.state_dict()["rnns.0.lstm.weight_hh_l0"].numpy().tobytes()
    start = raw.find(weight[:64]) + 4096
    assert start > 4096
    raw[start:start + 4096] = bytes(4096)
    path.write_bytes(bytes(raw))
    torch.load(path, weights_only=True)  # torch itself reads it without a word
    with pytest.raises(CheckpointError) as error:
        checkpoint.load(str(path))
    assert str(error.value).startswith(f"{path} is damaged") and "\n" not in str(error.value)


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


# --- Checkpoints edited by hand, in every entry point that reads one ---------------------

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
def test_a_checkpoint_edited_by_hand_is_one_clean_error_everywhere(trained, tmp_path, tool, edit,
                                                                   fragment):
    model = trained["awd"]  # (conftest.py's tiny run)
    source = Path(RunFiles(model).state if tool == "resume" else model)
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


@pytest.mark.parametrize("part", ["optimizer", "rng", "valid_history"])
def test_a_training_state_without_one_of_its_parts_is_refused_in_one_line(trained, tmp_path,
                                                                          part):
    state = torch.load(RunFiles(trained["awd"]).state, weights_only=True)
    del state[part]
    state["args"]["save"] = str(tmp_path / "awd.pt")
    path = str(tmp_path / "awd.state.pt")
    checkpoint.save(path, state)
    message = run_entry_point("resume", path, str(tmp_path))
    assert message == f"error: {path} lacks {part}: it was changed after train.py wrote it, " \
        "or is damaged"
    assert sorted(os.listdir(tmp_path)) == ["awd.state.pt"]  # nothing else written


# --- Provenance -------------------------------------------------------------------------------

def corpus_in(make_corpus, test_text="c d\n"):
    return Corpus(make_corpus("a b c d\n", "a b\n", test_text))


def test_a_record_is_plain_data_with_every_key(tmp_path, make_corpus):
    record = checkpoint.provenance_record("python train.py", torch.device("cpu"), "2 threads",
                                          corpus_in(make_corpus))
    assert set(record) == set(checkpoint.PROVENANCE_KEYS + checkpoint.ADDED_PROVENANCE_KEYS)
    torch.save(record, tmp_path / "r.pt")  # checkpoints must load with weights_only=True
    assert torch.load(tmp_path / "r.pt", weights_only=True) == record
    assert re.fullmatch(r"none|[0-9a-f]{40}( \(with uncommitted changes\))?", record["commit"])
    assert record["torch"] == torch.__version__ and record["date"].endswith("Z")


def test_describe_names_the_start_and_each_resume(make_corpus):
    record = checkpoint.provenance_record("python train.py", torch.device("cpu"), "2 threads",
                                          corpus_in(make_corpus))
    resumed = dict(record, command="python train.py --resume s")
    lines = checkpoint.describe_provenance([record, resumed])
    assert lines[0].startswith("started ") and lines[0].endswith(": python train.py")
    assert lines[3].startswith("resumed ") and lines[3].endswith("--resume s")
    assert checkpoint.describe_provenance([])[0].startswith("no provenance recorded")


def test_other_data_are_noticed_by_their_sha256(make_corpus):
    trained = corpus_in(make_corpus)
    entries = [checkpoint.provenance_record("x", torch.device("cpu"), "2 threads", trained)]
    assert checkpoint.data_differs(entries, corpus_in(make_corpus), "test") is None
    other = corpus_in(make_corpus, test_text="d c\n")
    assert "differs" in checkpoint.data_differs(entries, other, "test")
    assert checkpoint.data_differs([], other, "test") is None  # nothing recorded to compare


# --- Files of the wrong kind (docs/faults.md) -------------------------------------------

@pytest.mark.parametrize("tool", ["generate", "evaluate", "resume"])
def test_a_directory_given_as_a_checkpoint_is_named_as_one(tmp_path, tool):
    message = run_entry_point(tool, str(tmp_path), str(tmp_path))
    assert message == (f"error: {tmp_path} is a directory; give a checkpoint file in it "
                       "(train.py writes <save>.pt and <save>.state.pt)")


def test_a_state_with_a_setting_this_code_does_not_know_resumes_with_a_warning(trained,
                                                                               tmp_path, capsys):
    state = torch.load(RunFiles(trained["awd"]).state, weights_only=True)
    state["args"].update(save=str(tmp_path / "awd.pt"), label_smoothing=0.1)
    path = str(tmp_path / "awd.state.pt")
    checkpoint.save(path, state)
    import train
    train.main(["--resume", path, "--epochs", str(state["epoch"])])  # (nothing left to train)
    assert ("holds settings this code does not know (label_smoothing: a newer version's?)"
            in capsys.readouterr().out)
