"""Tests of provenance.py: what a run records about where it came from."""

import re

import torch

import provenance
from data import Corpus


def corpus_in(tmp_path, test_text="c d\n"):
    for name, text in (("train.txt", "a b c d\n"), ("valid.txt", "a b\n"),
                       ("test.txt", test_text)):
        (tmp_path / name).write_text(text)
    return Corpus(str(tmp_path))


def test_a_record_is_plain_data_with_every_key(tmp_path):
    record = provenance.record("python train.py", torch.device("cpu"), corpus_in(tmp_path))
    assert set(record) == set(provenance.KEYS + provenance.ADDED_KEYS)
    torch.save(record, tmp_path / "r.pt")  # checkpoints must load with weights_only=True
    assert torch.load(tmp_path / "r.pt", weights_only=True) == record
    assert re.fullmatch(r"none|[0-9a-f]{40}( \(with uncommitted changes\))?", record["commit"])
    assert record["torch"] == torch.__version__ and record["date"].endswith("Z")


def test_describe_names_the_start_and_each_resume(tmp_path):
    record = provenance.record("python train.py", torch.device("cpu"), corpus_in(tmp_path))
    lines = provenance.describe([record, dict(record, command="python train.py --resume s")])
    assert lines[0].startswith("started ") and lines[0].endswith(": python train.py")
    assert lines[3].startswith("resumed ") and lines[3].endswith("--resume s")
    assert provenance.describe([])[0].startswith("no provenance recorded")


def test_other_data_are_noticed_by_their_sha256(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    trained = corpus_in(tmp_path / "a")
    entries = [provenance.record("x", torch.device("cpu"), trained)]
    assert provenance.data_differs(entries, corpus_in(tmp_path / "b"), "test") is None
    other = corpus_in(tmp_path / "b", test_text="d c\n")
    assert "differs" in provenance.data_differs(entries, other, "test")
    assert provenance.data_differs([], other, "test") is None  # nothing recorded to compare
