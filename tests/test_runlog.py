"""Tests of runlog.py: the metrics CSV, the summary, TensorBoard, the epoch line."""

import json
import os
import socket
import subprocess
import sys

import pytest

from runfiles import RunFiles
from runlog import FIELDS, MetricsError, RunLog, SaveLock, read_metrics
from settings import SettingsError


def row(epoch, event="", **decisions):
    """A metrics row as trainer.end_epoch writes it; `decisions`: saved, switched,
    out_of_time as "yes"."""
    return dict(epoch=epoch, seconds=1.5, tokens_per_s=1000, train_loss=5.0, train_ppl=148.4,
                valid_loss=4.9, valid_ppl=134.3, lr=30.0, mode="SGD", event=event,
                elapsed_s=2.0 * epoch, resumed="", progress=epoch / 10,
                **{name: decisions.get(name, "") for name in ("saved", "switched",
                                                              "out_of_time")})


def settings(tmp_path, **kw):
    return {"save": str(tmp_path / "awd.pt"), "epochs": 10, "finetune": None, **kw}


ORIGIN = dict(command="python train.py --model awd", date="2026-11-26T10:00:00Z", commit="abc",
              torch="2.13.0", cuda="none", device="cpu, 2 threads", host="here",
              data="/data/wt2", data_sha256={"train": "1" * 64, "valid": "2" * 64})


def test_the_csv_holds_exactly_the_rows_given(tmp_path):
    log = RunLog(settings(tmp_path))
    assert log.path == str(tmp_path / "awd.csv") == RunFiles(str(tmp_path / "awd.pt")).metrics
    log.state_saved([row(1), row(2)], [ORIGIN])
    log.state_saved([row(1), row(2), row(3)], [ORIGIN])  # a later save, as after a resume
    rows = read_metrics(log.path)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and list(rows[0]) == FIELDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["awd.csv"]


def test_the_csv_begins_with_the_provenance_of_the_start_and_each_resume(tmp_path):
    log = RunLog(settings(tmp_path))
    log.state_saved([row(1)], [ORIGIN, dict(ORIGIN, command="python train.py --resume x")])
    lines = open(log.path).read().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    assert lines[:len(comments)] == comments  # all of them first, then the header
    assert comments[0] == "# started 2026-11-26T10:00:00Z: python train.py --model awd"
    assert any(line.startswith("# resumed ") and "--resume x" in line for line in comments)
    assert any("train " + "1" * 64 in line for line in comments)
    assert lines[len(comments)].split(",") == FIELDS


def test_rows_of_older_runs_without_the_new_columns_still_write(tmp_path):
    log = RunLog(settings(tmp_path))
    old = {k: v for k, v in row(1).items() if k not in ("elapsed_s", "resumed", "saved",
                                                          "switched", "out_of_time",
                                                          "progress")}
    log.state_saved([old], [])
    assert read_metrics(log.path)[0]["elapsed_s"] == read_metrics(log.path)[0]["progress"] == ""


def test_the_epoch_line_names_the_switch_and_the_time_to_finish(tmp_path, capsys):
    RunLog(settings(tmp_path)).epoch_ended(row(7, "switch to ASGD", switched="yes"))
    out = capsys.readouterr().out
    assert out.startswith("epoch    7 |") and "valid ppl    134.30" in out
    assert "| 3 more, ~0m 00s" in out
    assert "switching to ASGD at epoch 7" in out
    RunLog(settings(tmp_path, epochs=7)).epoch_ended(row(7))
    assert "more" not in capsys.readouterr().out  # the last epoch: nothing left
    # under a budget (an epoch takes a minute here): the training time its clock leaves,
    # or, when --epochs ends it first, the epochs left, at most
    for left_s, end in ((125.0, "| training ends in ~2m 05s"),
                        (36000.0, "| at most 46 more, ~46m 00s")):
        log = RunLog(settings(tmp_path, epochs=50))
        log.started -= 60.0
        log.epoch_ended(row(4), training_left_s=left_s)
        assert capsys.readouterr().out.rstrip().endswith(end)


def test_the_epoch_line_reads_the_decisions_from_their_fields(tmp_path, capsys):
    """A budget's last epoch that also switched to ASGD: both said, no time to finish."""
    RunLog(settings(tmp_path)).epoch_ended(row(3, "out of time; switch to ASGD",
                                               switched="yes", out_of_time="yes"))
    out = capsys.readouterr().out
    assert "switching to ASGD at epoch 3" in out and "more" not in out


def test_the_summary_is_json_beside_the_checkpoint(tmp_path):
    with RunLog(settings(tmp_path)) as log:
        log.finished(dict(test_ppl=65.8, epochs=3))
    path = RunFiles(str(tmp_path / "awd.pt")).summary
    assert path == str(tmp_path / "awd.json")
    assert json.load(open(path)) == dict(test_ppl=65.8, epochs=3)


def read_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    with RunLog(settings(tmp_path), tensorboard=str(tmp_path / "tb")) as log:
        log.progress(50, 5.25, 30.0, 1234.0)
        log.epoch_ended(row(1))
        log.epoch_ended(row(2))
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["epoch/valid_ppl"] == [(1, pytest.approx(134.3)), (2, pytest.approx(134.3))]
    assert scalars["batch/loss"] == [(50, 5.25)]


def test_tensorboard_missing_is_a_message_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(SettingsError, match="pip install"):
        RunLog(settings(tmp_path), tensorboard=str(tmp_path / "tb"))
    assert not (tmp_path / "tb").exists()


def test_a_save_path_is_locked_while_a_run_holds_it(tmp_path):
    model = str(tmp_path / "awd.pt")
    with SaveLock(model):
        holder = json.load(open(RunFiles(model).lock))
        assert holder["pid"] == os.getpid() and holder["host"]
        with pytest.raises(SettingsError, match=f"another run .*pid {os.getpid()}"):
            SaveLock(model).__enter__()
    assert not os.path.exists(RunFiles(model).lock)  # released on exit
    with SaveLock(model):  # and free to take again
        pass


def test_a_stale_lock_is_replaced_and_an_unreadable_one_refuses(tmp_path, capsys):
    model = str(tmp_path / "awd.pt")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    with SaveLock(model):
        pass
    json.dump(dict(pid=int(gone), host=socket.gethostname(), started="earlier"),
              open(RunFiles(model).lock, "w"))
    with SaveLock(model):
        assert json.load(open(RunFiles(model).lock))["pid"] == os.getpid()
    assert "removing the stale lock" in capsys.readouterr().err
    open(RunFiles(model).lock, "w").write("not json")
    with pytest.raises(SettingsError, match="delete .*awd.lock"):
        SaveLock(model).__enter__()
    assert open(RunFiles(model).lock).read() == "not json"  # left for the user to judge


def test_an_unwritable_save_directory_is_refused_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SettingsError, match="cannot write to the --save directory"):
        SaveLock(str(blocker / "awd.pt")).__enter__()


def dead_pid():
    """The pid of a process that has ended."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)


def test_temporaries_of_killed_writes_are_removed_by_the_next_run(tmp_path, capsys):
    gone = dead_pid()
    stale = [f"awd.state.pt.tmp{gone}", f"awd.pt.tmp{gone}", f"awd.pt.budget-probe{gone}"]
    kept = [f"awd.csv.tmp{os.getpid()}",  # a write in progress (this process runs)
            f"other.state.pt.tmp{gone}", "awd.pt", "awd.state.pt"]  # another run's; files
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x" * 1000)
    with SaveLock(str(tmp_path / "awd.pt")):
        assert sorted(os.listdir(tmp_path)) == sorted(kept + ["awd.lock"])
    err = capsys.readouterr().err
    assert "removed 3 temporary files" in err and all(name in err for name in stale)
    with SaveLock(str(tmp_path / "awd.pt")):  # nothing left to say
        pass
    assert "removed" not in capsys.readouterr().err


def test_a_lock_that_cannot_be_removed_is_a_note_not_a_traceback(tmp_path, monkeypatch, capsys):
    def read_only(path):
        raise OSError(30, "Read-only file system", path)

    lock = SaveLock(str(tmp_path / "awd.pt"))
    with lock:
        monkeypatch.setattr(os, "remove", read_only)
    assert "could not remove the lock" in capsys.readouterr().err and not lock.held


@pytest.mark.parametrize("damage, fragment", [
    (lambda text: text[:text.rindex("148.4")], "line 6: the row is cut short (5 of 16 columns)"),
    (lambda text: text.encode() + b"\x00\xff\xfe junk", "line 7: not text"),
])
def test_a_damaged_metrics_csv_names_the_file_and_the_line(tmp_path, damage, fragment):
    log = RunLog(settings(tmp_path))
    log.state_saved([row(1), row(2)], [ORIGIN])  # 3 provenance lines, the header, 2 rows
    text = open(log.path, encoding="utf-8").read()
    damaged = damage(text)
    mode = "wb" if isinstance(damaged, bytes) else "w"
    with open(log.path, mode) as f:
        f.write(damaged)
    with pytest.raises(MetricsError) as error:
        read_metrics(log.path)
    assert str(error.value).startswith(f"{log.path}, {fragment}")


def test_a_metrics_csv_saved_with_a_byte_order_mark_reads_alike(tmp_path):
    """A spreadsheet that re-saves the CSV may put a byte-order mark before its header."""
    path = tmp_path / "awd.csv"
    path.write_bytes(b"\xef\xbb\xbf# started 2026-12-03\nepoch,valid_ppl\n1,50.5\n")
    assert read_metrics(str(path)) == [{"epoch": "1", "valid_ppl": "50.5"}]
