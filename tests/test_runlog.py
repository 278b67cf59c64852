"""Tests of runlog.py: the metrics CSV is rewritten whole, atomically; the epoch line."""

import csv

from runlog import FIELDS, RunLog, metrics_path


def row(epoch, event=""):
    return dict(epoch=epoch, seconds=1.5, tokens_per_s=1000, train_loss=5.0, train_ppl=148.4,
                valid_loss=4.9, valid_ppl=134.3, lr=30.0, mode="SGD", event=event)


def test_the_csv_holds_exactly_the_rows_given(tmp_path):
    log = RunLog(str(tmp_path / "awd.pt"))
    assert log.path == str(tmp_path / "awd.csv") == metrics_path(str(tmp_path / "awd.pt"))
    log.state_saved([row(1), row(2)])
    log.state_saved([row(1), row(2), row(3)])  # a later save, as after a resume
    with open(log.path) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and list(rows[0]) == FIELDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["awd.csv"]


def test_the_epoch_line_names_the_switch(tmp_path, capsys):
    RunLog(str(tmp_path / "awd.pt")).epoch_ended(row(7, "switch to ASGD"))
    out = capsys.readouterr().out
    assert out.startswith("epoch    7 |") and "valid ppl    134.30" in out
    assert "switching to ASGD at epoch 7" in out
