"""Tests of runfiles.py: every file of a run is named from its --save path."""

from runfiles import RunFiles


def test_a_runs_files_sit_beside_its_model_under_one_stem():
    files = RunFiles("checkpoints/awd.v2.pt")
    assert (files.model, files.state, files.metrics, files.summary, files.lock) == (
        "checkpoints/awd.v2.pt", "checkpoints/awd.v2.state.pt", "checkpoints/awd.v2.csv",
        "checkpoints/awd.v2.json", "checkpoints/awd.v2.lock")
    assert files.probe(42) == "checkpoints/awd.v2.pt.budget-probe42"
    assert RunFiles("awd").state == "awd.state.pt"  # (no extension: the stem is the name)
