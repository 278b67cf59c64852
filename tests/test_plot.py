"""Tests of plot.py on two tiny runs trained here: a valid PNG, a table equal to the CSVs."""

import csv
import errno
import json
import os
import struct
import sys

import pytest

import plot
import runlog


@pytest.fixture
def runs(trained):
    """The metrics CSVs of the two tiny runs that conftest.py trains."""
    return [trained[kind].replace(".pt", ".csv") for kind in ("awd", "lstm")]


def png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_plot_writes_a_png_of_a_sensible_size(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    plot.main(runs + ["-o", str(out)])
    width, height = png_size(out)
    assert 800 <= width <= 3000 and 300 <= height <= 1500
    assert out.stat().st_size > 10_000  # curves, not an empty canvas


def test_the_table_equals_the_csvs_and_summaries(runs, capsys):
    table = plot.table([plot.read_run(path) for path in runs])
    assert table[0].split()[:3] == ["run", "epochs", "best"]
    for path, line in zip(runs, table[1:]):
        rows = runlog.read_metrics(path)
        summary = json.load(open(path.replace(".csv", ".json")))
        label, epochs, best, test, minutes, _ = line.split()
        assert label == path.rsplit("/", 1)[1][:-4] and int(epochs) == len(rows)
        assert float(best) == round(min(float(r["valid_ppl"]) for r in rows), 2)
        assert float(test) == round(summary["test_ppl"], 2)
        assert float(minutes) == round(float(rows[-1]["elapsed_s"]) / 60, 1)


def test_a_csv_with_extra_columns_still_reads(runs, tmp_path):
    rows = runlog.read_metrics(runs[0])
    wider = tmp_path / "wider.csv"
    with open(wider, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["grad_norm"] + list(rows[0]))
        writer.writeheader()
        writer.writerows(dict(r, grad_norm="0.5") for r in rows)
    assert plot.read_run(str(wider))["valid_ppl"] == plot.read_run(runs[0])["valid_ppl"]


def test_missing_matplotlib_is_a_message_with_the_install_command(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(SystemExit) as exit_:
        plot.main(runs + ["-o", str(tmp_path / "x.png")])
    assert "pip install" in exit_.value.code and "matplotlib" in exit_.value.code
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("content, fragment", [
    ("", "has no epochs yet"),
    ("epoch,valid_ppl\n1,50\n", "lacks the column(s) seconds"),
])
def test_files_that_are_not_runs_are_refused(tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        plot.main([str(path), "-o", str(tmp_path / "x.png")])
    assert exit_.value.code.startswith("error: ") and fragment in exit_.value.code


@pytest.mark.parametrize("damage, fragment", [
    (lambda raw: raw[:raw.rindex(b",", 0, len(raw) - 30)], "the row is cut short"),
    (lambda raw: raw + b"\x89\xff\x00junk\n", "not text"),
    (lambda raw: raw.replace(b"\n2,", b"\ntwo,"), "a value is not a number"),
])
def test_a_damaged_csv_is_one_line_with_the_file_and_the_line(runs, tmp_path, damage, fragment):
    raw = open(runs[0], "rb").read()
    damaged = tmp_path / "run.csv"
    damaged.write_bytes(damage(raw))
    line = next(n for n, (a, b) in enumerate(zip(raw.splitlines() + [b""],
                                                  damage(raw).splitlines()), 1) if a != b)
    with pytest.raises(SystemExit) as exit_:
        plot.main([str(damaged), "-o", str(tmp_path / "x.png")])
    message = exit_.value.code
    assert message.startswith(f"error: {damaged}, line {line}: ") and fragment in message
    assert "\n" not in message and not (tmp_path / "x.png").exists()


def test_an_output_that_is_no_image_or_a_broken_summary_is_refused(runs, tmp_path):
    for out in (tmp_path / "x.pt", tmp_path / "curves.csv"):
        with pytest.raises(SystemExit) as exit_:
            plot.main(runs + ["-o", str(out)])
        assert "give an image file name ending in .png" in exit_.value.code
    copy = tmp_path / "run.csv"
    copy.write_text(open(runs[0]).read())
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_:
        plot.main([str(copy), "-o", str(tmp_path / "x.png")])
    assert exit_.value.code.startswith("error: cannot read the run summary")
    assert not (tmp_path / "x.png").exists()


def test_the_switch_marker_follows_the_field_whatever_the_event_says(tmp_path):
    fields = runlog.FIELDS
    base = dict(epoch=1, seconds=1, tokens_per_s=1, train_loss=5, train_ppl=148,
                valid_loss=5, valid_ppl=148, lr=30, mode="SGD", elapsed_s=1, resumed="",
                saved="", out_of_time="")
    with open(tmp_path / "run.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerow(dict(base, event="saved", switched=""))
        writer.writerow(dict(base, epoch=2, event="out of time; switch to ASGD",
                             switched="yes", out_of_time="yes"))
    assert plot.read_run(str(tmp_path / "run.csv"))["switch"] == [1]
    # a CSV from before the field: its event's words
    with open(tmp_path / "old.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[n for n in fields if n not in (
            "saved", "switched", "out_of_time")], extrasaction="ignore")
        writer.writeheader()
        writer.writerow(dict(base, epoch=1, event="switch to ASGD"))
    assert plot.read_run(str(tmp_path / "old.csv"))["switch"] == [0]


def test_a_checkpoint_or_a_directory_given_as_a_csv_is_named_as_such(trained, tmp_path):
    for given, fragment in ((trained["awd"], "is a checkpoint (or another archive), not a "
                                             "metrics CSV; give the run's CSV"),
                            (str(tmp_path), "is a directory; give a metrics CSV")):
        with pytest.raises(SystemExit) as exit_:
            plot.main([given, "--out", str(tmp_path / "c.png")])
        assert fragment in exit_.value.code and "damaged" not in exit_.value.code


def test_a_full_disk_leaves_the_earlier_image_as_it_was(runs, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    out.write_bytes(b"an earlier image")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SystemExit) as exit_:
        plot.main(runs + ["-o", str(out)])
    assert f"cannot write {out} (No space left on device)" in exit_.value.code
    assert out.read_bytes() == b"an earlier image" and os.listdir(tmp_path) == ["curves.png"]
