"""Tests of train.py on tiny corpora: learning, NT-ASGD, exact resume, interruption, errors."""

import errno
import hashlib
import json
import math
import os
import pty
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoint
import runlog
import signals
import train
import trainer as trainer_module
from schedule import should_start_averaging
from util import WriteFailed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv):
    train.main([str(a) for a in argv])


def read_csv(path):
    return runlog.read_metrics(path)


def test_a_small_model_learns_a_repeating_corpus(repeating, tmp_path, tiny):
    save = tmp_path / "lstm.pt"
    run(tiny["lstm"] + ["--data", repeating, "--emsize", "24", "--nhid", "24", "--dropout", "0",
                        "--bptt", "10", "--lr", "5", "--epochs", "8", "--save", save])
    saved = checkpoint.load(str(save))
    assert saved["valid_ppl"] < 1.1
    rows = read_csv(tmp_path / "lstm.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert float(rows[-1]["valid_ppl"]) < float(rows[0]["valid_ppl"])


def test_nt_asgd_switches_on_a_corpus_that_overfits(random_text, tmp_path, capsys, tiny):
    save = tmp_path / "awd.pt"
    run(tiny["awd"] + ["--data", random_text, "--emsize", "48", "--nhid", "96", "--lr", "30",
                       "--dropouti", "0", "--dropouth", "0", "--dropout", "0", "--wdrop", "0",
                       "--dropoute", "0", "--nonmono", "2", "--epochs", "12", "--save", save])
    rows = read_csv(tmp_path / "awd.csv")
    switches = [int(r["epoch"]) for r in rows if r["event"] == "switch to ASGD"]
    assert len(switches) == 1
    k = switches[0]
    losses = [float(r["valid_loss"]) for r in rows]
    # The switch fired exactly at the first epoch where the rule holds.
    assert all(not should_start_averaging(losses[:e - 1], losses[e - 1], 2)
               for e in range(1, k))
    assert should_start_averaging(losses[:k - 1], losses[k - 1], 2)
    assert {r["mode"] for r in rows[k:]} == {"ASGD"} and rows[k - 1]["mode"] == "SGD"
    assert f"switching to ASGD at epoch {k}" in capsys.readouterr().out
    assert checkpoint.load(str(tmp_path / "awd.state.pt"))["averaged"] is not None


def final_state(path):
    state = checkpoint.load(str(path), kind="state")
    return state["model"], state["averaged"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_gives_the_same_weights_as_never_stopping(random_text, tmp_path, tiny):
    common = tiny["awd"] + ["--data", random_text, "--nonmono", "1", "--max-batches", "15"]
    run(common + ["--epochs", "4", "--save", tmp_path / "straight.pt"])
    run(common + ["--epochs", "2", "--save", tmp_path / "split.pt"])
    run(["--resume", tmp_path / "split.state.pt", "--epochs", "4", "--max-batches", "15"])
    straight, split = final_state(tmp_path / "straight.state.pt"), final_state(
        tmp_path / "split.state.pt")
    assert_same_weights(straight[0], split[0])
    assert straight[1] is not None  # averaging started, and its weights match too
    assert_same_weights(straight[1], split[1])
    def without_timings(path):  # (and p, the share of the --epochs that each run asked for)
        return [{k: v for k, v in row.items()
                 if k not in ("seconds", "tokens_per_s", "elapsed_s", "resumed", "progress")}
                for row in read_csv(path)]

    assert without_timings(tmp_path / "straight.csv") == without_timings(tmp_path / "split.csv")


def start(argv):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, os.path.join(REPO, "train.py")] + [str(a) for a in argv]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def test_sigterm_stops_saves_and_resumes_exactly(tmp_path, tiny, make_corpus):
    rng = np.random.default_rng(1)
    text = "".join(" ".join(f"w{i}" for i in rng.integers(0, 50, 10)) + "\n" for _ in range(2000))
    data = make_corpus(text, text[:2000], text[:2000])
    common = tiny["awd"] + ["--data", data, "--epochs", "2", "--log-interval", "5",
                            "--max-batches", "150"]
    run(common + ["--save", tmp_path / "straight.pt"])

    proc = start(common + ["--save", tmp_path / "stopped.pt"])
    for line in proc.stdout:  # wait for the first epoch to end, then stop mid-second
        if line.startswith("epoch    1 |"):
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "training state saved" in out and "test ppl" in out
    state = checkpoint.load(str(tmp_path / "stopped.state.pt"), kind="state")
    assert state["epoch"] == 1 and state["position"] is not None  # stopped inside epoch 2

    run(["--resume", tmp_path / "stopped.state.pt", "--max-batches", "150"])
    assert_same_weights(final_state(tmp_path / "straight.state.pt")[0],
                        final_state(tmp_path / "stopped.state.pt")[0])


def test_kills_at_random_moments_each_resumed_bare_end_as_a_run_never_killed(tmp_path, tiny,
                                                                            make_corpus):
    """SIGKILL (no handler runs: as a power cut or the out-of-memory killer) three times at
    random moments, each followed by `train.py --resume STATE` and nothing more: the state
    holds every option that changes what is computed (--max-batches, --epochs, the model's
    and the training's), so the run ends bit for bit as one never killed, whatever the
    moments were."""
    rng = np.random.default_rng(2)
    text = "".join(" ".join(f"w{i}" for i in rng.integers(0, 50, 10)) + "\n" for _ in range(1500))
    data = make_corpus(text, text[:2000], text[:2000])
    common = tiny["awd"] + ["--data", data, "--epochs", "3", "--max-batches", "60",
                            "--nonmono", "1", "--save-every", "0.002"]  # (a state each 0.1 s)
    run(common + ["--save", tmp_path / "straight.pt"])
    state = tmp_path / "killed.state.pt"

    def written():
        return state.stat().st_mtime_ns if state.exists() else None

    moments, proc = [], start(common + ["--save", tmp_path / "killed.pt"])
    for _ in range(3):
        before, deadline = written(), time.time() + 60
        while written() == before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)  # until this process trains (it has saved a state of its own)
        moments.append(round(float(np.random.default_rng().uniform(0.0, 0.5)), 3))
        time.sleep(moments[-1])
        if proc.poll() is not None:  # it finished before this kill
            break
        proc.kill()
        proc.communicate(timeout=60)
        proc = start(["--resume", state])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (moments, err)
    assert_same_weights(final_state(tmp_path / "straight.state.pt")[0],
                        final_state(state)[0])
    assert checkpoint.load(str(state), kind="state")["args"]["max_batches"] == 60


def test_finetune_writes_a_new_file_and_stops_at_the_trigger(random_text, tmp_path, tiny):
    save = tmp_path / "awd.pt"
    run(tiny["awd"] + ["--data", random_text, "--epochs", "3", "--max-batches", "10",
                       "--save", save])
    before = save.read_bytes()
    run(["--finetune", save, "--nonmono", "1", "--epochs", "50", "--max-batches", "10"])
    assert save.read_bytes() == before
    rows = read_csv(tmp_path / "awd-finetune.csv")
    assert rows[-1]["event"] == "fine-tuning done" and len(rows) < 50
    assert {r["mode"] for r in rows} == {"ASGD"}
    tuned = checkpoint.load(str(tmp_path / "awd-finetune.pt"))
    assert tuned["config"] == checkpoint.load(str(save))["config"]


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
        random_text, tmp_path, monkeypatch, tiny):
    save = tmp_path / "awd.pt"
    run(tiny["awd"] + ["--data", random_text, "--epochs", "1", "--max-batches", "5",
                       "--save", save])
    good = save.read_bytes()
    calls = []

    original = trainer_module.Objective.forward

    def poisoned(self, *args):
        loss, penalty, hidden = original(self, *args)
        calls.append(1)
        # from the fourth step on the gradients are NaN, as after a blow-up
        return loss, penalty * (float("nan") if len(calls) > 3 else 1.0), hidden

    monkeypatch.setattr(trainer_module.Objective, "forward", poisoned)
    with pytest.raises(SystemExit) as exit_:
        run(["--resume", tmp_path / "awd.state.pt", "--epochs", "3", "--max-batches", "5"])
    message = str(exit_.value.code)
    # (batch 1 is checked at its own sync point; the NaN comes from the fourth)
    assert "training diverged" in message and "loss of batches 2-5 became nan" in message
    assert str(save) in message and "awd.state.pt" in message
    assert save.read_bytes() == good
    assert checkpoint.load(str(tmp_path / "awd.state.pt"), kind="state")["epoch"] == 1


def bad_run(argv):
    with pytest.raises(SystemExit) as exit_:
        run(argv)
    message = exit_.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    return message


def test_bad_input_gives_one_clean_error_line(random_text, tmp_path):
    assert "does not exist" in bad_run(["--data", tmp_path / "nowhere"])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    assert "not a readable checkpoint" in bad_run(["--resume", corrupt])
    assert "must be positive" in bad_run(["--data", random_text, "--lr", "-1"])
    assert "applies to --model awd only" in bad_run(["--model", "lstm", "--wdrop", "0.1"])


def test_a_checkpoint_with_another_vocabulary_is_refused(random_text, repeating, tmp_path, tiny):
    save = tmp_path / "awd.pt"
    run(tiny["awd"] + ["--data", random_text, "--epochs", "1", "--max-batches", "3",
                       "--save", save])
    message = bad_run(["--resume", tmp_path / "awd.state.pt", "--data", repeating])
    assert "vocabulary" in message and "--data" in message
    assert "vocabulary" in bad_run(["--finetune", save, "--data", repeating])


def test_a_new_run_does_not_overwrite_existing_checkpoints(random_text, tmp_path, tiny):
    args = tiny["awd"] + ["--data", random_text, "--epochs", "1", "--max-batches", "3",
                          "--save", tmp_path / "awd.pt"]
    run(args)
    before = (tmp_path / "awd.pt").read_bytes()
    assert "--resume" in bad_run(args)
    assert (tmp_path / "awd.pt").read_bytes() == before
    run(args + ["--overwrite"])


def test_the_command_line_prints_one_error_line_and_exits_non_zero(tmp_path):
    proc = start(["--data", tmp_path / "nowhere"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and "nowhere" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_one_is_a_clear_error(random_text):
    assert "no CUDA device" in bad_run(["--data", random_text, "--device", "cuda"])


def test_help_shows_the_preset_defaults(capsys):
    with pytest.raises(SystemExit):
        run(["--help"])
    out = capsys.readouterr().out
    assert "awd: 30.0, lstm: 20.0" in out and "awd: 750, lstm: 40" in out


def test_tensorboard_scalars_equal_the_csv(repeating, tmp_path, tiny):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run(tiny["lstm"] + ["--data", repeating, "--epochs", "3", "--log-interval", "5",
                        "--save", tmp_path / "lstm.pt", "--tensorboard", tmp_path / "tb"])
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    rows = read_csv(tmp_path / "lstm.csv")
    for name in ("valid_ppl", "train_loss", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(f"epoch/{name}")]
        assert logged == [(int(r["epoch"]), pytest.approx(float(r[name]))) for r in rows]
    assert len(events.Scalars("batch/loss")) >= 3
    assert any(tag.startswith("settings") for tag in events.Tags()["tensors"])


def test_the_summary_holds_the_final_numbers(repeating, tmp_path, capsys, tiny):
    run(tiny["lstm"] + ["--data", repeating, "--epochs", "2", "--save", tmp_path / "lstm.pt"])
    summary = json.load(open(tmp_path / "lstm.json"))
    out = capsys.readouterr().out
    assert f"test ppl {math.exp(summary['test_loss']):.2f}" in out  # (test_ppl: 3 decimals)
    assert summary["epochs"] == 2 and summary["stopped"] is False
    assert summary["best_valid_ppl"] == min(float(r["valid_ppl"])
                                            for r in read_csv(tmp_path / "lstm.csv"))


def test_finetuning_keeps_only_improvements_on_its_start(random_text, tmp_path, capsys, tiny):
    save = tmp_path / "awd.pt"
    run(tiny["awd"] + ["--data", random_text, "--epochs", "3", "--max-batches", "10",
                       "--save", save])
    start = checkpoint.load(str(save))["valid_loss"]
    # lr so high that every fine-tuning epoch is worse than the trained model, not so high
    # that a batch diverges; the loss is checked at every batch (--log-interval 1), so that
    # which batches a check sees does not depend on the machine's speed
    run(["--finetune", save, "--lr", "40", "--nonmono", "1", "--epochs", "3",
         "--max-batches", "10", "--log-interval", "1"])
    out = capsys.readouterr().out
    rows = read_csv(tmp_path / "awd-finetune.csv")
    assert all(float(r["valid_loss"]) > start for r in rows)
    assert not (tmp_path / "awd-finetune.pt").exists()
    assert "fine-tuning never improved" in out
    assert "test ppl" not in out.split("fine-tuning never")[1]
    state = checkpoint.load(str(tmp_path / "awd-finetune.state.pt"), kind="state")
    assert state["best_valid_loss"] == start


@pytest.mark.parametrize("change, said", [
    ("remove", "is no longer on disk: there is nothing to test"),
    ("truncate", "the best model cannot be tested: "),
    ("replace", "is not this run's best model"),
])
def test_what_the_final_test_says_of_the_best_model_is_read_from_the_disk(
        random_text, tmp_path, capsys, monkeypatch, tiny, change, said):
    """The best model removed, cut short or replaced by another run's while the run went
    on: the last lines say what is on disk now, not what the run wrote."""
    other = tmp_path / "other.pt"
    run(tiny["awd"] + ["--data", random_text, "--epochs", "1", "--max-batches", "3",
                       "--seed", "9", "--save", other])
    model = tmp_path / "m.pt"
    original = train.say_why_it_ended

    def then_changed(*args):
        if change == "remove":
            model.unlink()
        elif change == "truncate":
            model.write_bytes(model.read_bytes()[:1000])
        else:
            model.write_bytes(other.read_bytes())
        return original(*args)

    monkeypatch.setattr(train, "say_why_it_ended", then_changed)
    capsys.readouterr()
    run(tiny["awd"] + ["--data", random_text, "--epochs", "2", "--max-batches", "3",
                       "--save", model])
    out = capsys.readouterr().out
    assert said in out and "test ppl" not in out
    summary = json.load(open(tmp_path / "m.json"))
    assert summary["test_ppl"] is None and summary["model"] is None


def test_a_resumed_budget_whose_time_is_over_says_what_it_will_do_and_does_it(
        repeating, tmp_path, capsys, monkeypatch, tiny, stop_in_epoch):
    """Two states whose budget has no training time left: one saved within an epoch (the
    epoch is validated, saved and the model tested) and one after the run ended (tested
    only)."""
    stop_in_epoch(2)
    run(tiny["awd"] + ["--data", repeating, "--budget-minutes", "0.2", "--epochs", "100",
                       "--save", tmp_path / "b.pt"])
    monkeypatch.undo()
    path = str(tmp_path / "b.state.pt")
    state = checkpoint.load(path, kind="state")
    state["progress"]["clock"]["used_s"] = 60 * 0.2  # (as if its time had passed)
    del state["checksum"]
    checkpoint.save(path, state)
    capsys.readouterr()
    run(["--resume", path])
    out = capsys.readouterr().out
    assert ("its training time is over; the run validates the epoch it was in, saves it and "
            "tests the best model") in out
    rows = runlog.read_metrics(tmp_path / "b.csv")
    assert len(rows) == 2 and rows[-1]["out_of_time"] == "yes" and "test ppl" in out
    run(["--resume", path])
    out = capsys.readouterr().out
    assert "its training time is over; the run tests the best model" in out
    assert len(runlog.read_metrics(tmp_path / "b.csv")) == 2 and "test ppl" in out


def test_an_early_stop_after_overwrite_does_not_report_the_older_run(
        random_text, tmp_path, capsys, monkeypatch, tiny):
    args = tiny["awd"] + ["--data", random_text, "--epochs", "1", "--max-batches", "3",
                          "--save", tmp_path / "awd.pt"]
    run(args)
    capsys.readouterr()

    class StoppedAtOnce(signals.StopRequest):  # Ctrl-C before the first batch
        def __enter__(self):
            self.requested = True
            return super().__enter__()

    monkeypatch.setattr(signals, "StopRequest", StoppedAtOnce)
    run(args + ["--overwrite", "--seed", "4"])
    out = capsys.readouterr().out
    assert "no epoch has finished yet" in out and "test ppl" not in out
    assert json.load(open(tmp_path / "awd.json"))["test_ppl"] is None


# --- Bad input and interruptions (each refused early, nothing saved is changed) ----------

def files_of(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_settings_that_make_no_run_are_refused_before_any_file_is_written(random_text,
                                                                           tmp_path, tiny):
    out = tmp_path / "runs"
    save = ["--save", out / "awd.pt"]
    message = bad_run(["--model", "lstm", "--emsize", "20", "--nhid", "30", "--data",
                       random_text] + save)
    assert "--emsize equal to --nhid" in message and "--no-tied" in message
    assert "--seed must be in [0, 2**32)" in bad_run(["--seed", "-1"])
    message = bad_run(tiny["awd"] + ["--data", random_text, "--eval-batch-size", "1000"] + save)
    assert "--eval-batch-size 1000 is too large for the valid split" in message
    message = bad_run(tiny["awd"] + ["--data", random_text, "--test-batch-size", "5000"] + save)
    assert "--test-batch-size 5000" in message
    # a window whose output layer alone needs more memory than the machine has
    message = bad_run(tiny["awd"] + ["--data", random_text, "--bptt", "10000000000"] + save)
    assert "lower --bptt or --batch_size" in message and "GiB" in message
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "cannot write to the --save directory" in bad_run(
        tiny["awd"] + ["--data", random_text, "--save", blocker / "awd.pt"])
    assert "is a directory" in bad_run(tiny["awd"] + ["--data", random_text, "--save", tmp_path])
    assert "--tensorboard" in bad_run(tiny["awd"] + ["--data", random_text, "--tensorboard",
                                                     blocker / "tb"] + save)
    assert not out.exists() or files_of(out) == {}


def test_flags_take_dashes_or_underscores_and_help_shows_one_spelling(random_text, tmp_path,
                                                                      capsys, tiny):
    run(tiny["awd"] + ["--data", random_text, "--batch-size", "5", "--eval_batch_size", "3",
                       "--max_batches", "2", "--epochs", "1", "--save", tmp_path / "awd.pt"])
    assert "finished after 1 epoch\n" in capsys.readouterr().out
    saved = checkpoint.load(str(tmp_path / "awd.pt"))
    assert saved["args"]["batch_size"] == 5 and saved["args"]["eval_batch_size"] == 3
    with pytest.raises(SystemExit):
        run(["--help"])
    help_text = capsys.readouterr().out
    assert "--batch_size" in help_text and "--batch-size" not in help_text
    assert "--eval-batch-size" in help_text and "--eval_batch_size" not in help_text


def test_a_short_bptt_says_what_variable_bptt_makes_of_it(random_text, tmp_path, capsys, tiny):
    run(tiny["awd"] + ["--data", random_text, "--bptt", "2", "--epochs", "1", "--max-batches",
                       "2", "--save", tmp_path / "awd.pt"])
    out = capsys.readouterr().out
    assert "never below 5" in out and "--no-variable-bptt" in out


def test_a_second_run_on_the_same_save_path_refuses_while_the_first_runs(random_text,
                                                                       tmp_path, tiny):
    args = tiny["awd"] + ["--data", random_text, "--epochs", "200", "--save", tmp_path / "awd.pt"]
    first = start(args)
    lock = tmp_path / "awd.lock"
    for _ in range(600):  # wait until the first run holds the lock
        if lock.exists() and lock.stat().st_size:
            break
        time.sleep(0.05)
    holder = json.loads(lock.read_text())
    assert holder["pid"] == first.pid
    second = start(args + ["--overwrite"])
    out, err = second.communicate(timeout=60)
    assert second.returncode == 1 and err.startswith("error: another run is writing")
    assert f"pid {first.pid}" in err
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert not lock.exists()  # released on exit
    assert checkpoint.load(str(tmp_path / "awd.state.pt"), kind="state")["args"]["epochs"] == 200


def test_a_diverging_run_exits_non_zero_and_leaves_earlier_files_as_they_were(random_text,
                                                                             tmp_path, tiny):
    args = tiny["awd"] + ["--data", random_text, "--epochs", "2", "--max-batches", "5",
                          "--save", tmp_path / "awd.pt"]
    message = bad_run(args + ["--lr", "1e6"])
    assert "training diverged" in message and "no checkpoint yet" in message
    assert not (tmp_path / "awd.pt").exists()
    run(args + ["--overwrite"])  # a good run, then a diverging one over it
    before = files_of(tmp_path)
    message = bad_run(args + ["--overwrite", "--lr", "1e6"])
    assert "training diverged" in message and "--lr" in message
    assert f"{tmp_path / 'awd.pt'}, {tmp_path / 'awd.state.pt'} are kept" in message
    assert files_of(tmp_path) == before


def test_a_mid_epoch_save_resumes_like_never_stopping(random_text, tmp_path, monkeypatch, tiny):
    common = tiny["awd"] + ["--data", random_text, "--nonmono", "1", "--epochs", "3"]
    run(common + ["--save", tmp_path / "straight.pt"])
    saves = []
    real_save = train.Trainer.save_state

    def keep_mid_epoch_copies(self):
        real_save(self)
        if self.position is not None and self.epoch == 1:  # inside the second epoch
            copy = tmp_path / f"mid{len(saves)}.state.pt"
            copy.write_bytes((tmp_path / "every.state.pt").read_bytes())
            saves.append(copy)

    monkeypatch.setattr(train.Trainer, "save_state", keep_mid_epoch_copies)
    # a state every 1e-6 minutes: after every batch
    run(common + ["--save", tmp_path / "every.pt", "--save-every", "1e-6"])
    monkeypatch.undo()
    assert len(saves) > 3
    middle = saves[len(saves) // 2]
    state = checkpoint.load(str(middle), kind="state")
    assert state["epoch"] == 1 and 0 < state["position"]["batches"]
    assert_same_weights(final_state(tmp_path / "straight.state.pt")[0],
                        final_state(tmp_path / "every.state.pt")[0])
    for name in ("every.pt", "every.state.pt"):  # (the run went further: moved away, or the
        (tmp_path / name).rename(tmp_path / f"{name}.later")  # older state is refused)
    run(["--resume", middle])  # continues the run saved at every.pt
    assert_same_weights(final_state(tmp_path / "straight.state.pt")[0],
                        final_state(tmp_path / "every.state.pt")[0])


def test_checkpoints_csv_and_summary_say_where_the_run_came_from(random_text, tmp_path, tiny):
    args = tiny["awd"] + ["--data", random_text, "--max-batches", "3", "--save", tmp_path / "a.pt"]
    run(args + ["--epochs", "1"])
    run(["--resume", tmp_path / "a.state.pt", "--epochs", "2"])
    state = checkpoint.load(str(tmp_path / "a.state.pt"), kind="state")
    start_, resume = state["provenance"]
    assert start_["command"] == shlex.join(["python", "train.py"] + [str(a) for a in args]
                                           + ["--epochs", "1"])
    assert resume["command"].startswith("python train.py --resume ")
    digest = hashlib.sha256(open(os.path.join(random_text, "train.txt"), "rb").read())
    assert start_["data_sha256"]["train"] == digest.hexdigest()
    assert start_["torch"] == torch.__version__ and start_["date"].startswith("20")
    assert checkpoint.load(str(tmp_path / "a.pt"))["provenance"][0] == start_
    head = open(tmp_path / "a.csv").read().splitlines()[:6]
    assert head[0].startswith("# started ") and any(line.startswith("# resumed ") for line in head)
    assert json.load(open(tmp_path / "a.json"))["provenance"][1]["command"] == resume["command"]


def test_running_out_of_memory_says_what_to_lower(random_text, tmp_path, monkeypatch, tiny):
    def out_of_memory(*args, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer_module, "train_step", out_of_memory)
    message = bad_run(tiny["awd"] + ["--data", random_text, "--save", tmp_path / "awd.pt"])
    assert "out of memory" in message and "lower --batch_size or --bptt" in message
    assert not (tmp_path / "awd.lock").exists()


def test_out_of_memory_in_the_final_test_names_what_helps_and_a_resume_may_change_it(
        random_text, tmp_path, monkeypatch, tiny):
    """The final test runs at --test-batch-size: its out-of-memory message names that flag
    and evaluate.py (not the training flags, which do not affect the test), the trained
    files stay, and a resume with another --test-batch-size tests the model."""
    original = train.mean_nll

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(train, "mean_nll", out_of_memory)
    common = tiny["lstm"] + ["--data", random_text, "--epochs", "1", "--test-batch-size", "4"]
    message = bad_run(common + ["--save", tmp_path / "m.pt"])
    assert "out of memory in the final test" in message and "--test-batch-size" in message
    assert f"evaluate.py --checkpoint {tmp_path / 'm.pt'}" in message
    assert "lower --batch_size or --bptt" not in message  # (the training's flags)
    assert json.load(open(tmp_path / "m.json"))["test_interrupted"]
    monkeypatch.setattr(train, "mean_nll", original)
    resume = message.split("test at batch 1: ")[1]  # the command it prints
    assert resume.endswith("--test-batch-size 1") and resume.count("--test-batch-size") == 1
    run(shlex.split(resume)[2:])
    summary = json.load(open(tmp_path / "m.json"))
    assert summary["test_ppl"] is not None and summary["test_batch_size"] == 1


def test_an_older_state_is_not_resumed_over_the_runs_newer_files(random_text, tmp_path, tiny):
    """A backup of the epoch-1 state, resumed after the run went on to epoch 3, would
    replace the newer state, the CSV's rows and maybe a better model: refused, untouched."""
    common = tiny["awd"] + ["--data", random_text, "--save", tmp_path / "m.pt"]
    run(common + ["--epochs", "1"])
    backup = tmp_path / "backup.state.pt"
    backup.write_bytes((tmp_path / "m.state.pt").read_bytes())
    run(["--resume", tmp_path / "m.state.pt", "--epochs", "3"])
    files = {name: (tmp_path / name).read_bytes() for name in ("m.pt", "m.state.pt", "m.csv")}
    message = bad_run(["--resume", backup, "--epochs", "3"])
    assert f"{backup} stopped after epoch 1, but the run has gone further: " in message
    assert f"{tmp_path / 'm.state.pt'} (after epoch 3)" in message
    assert all((tmp_path / name).read_bytes() == data for name, data in files.items())
    run(["--resume", tmp_path / "m.state.pt", "--epochs", "3"])  # the run's own: goes on


def test_an_adaptive_softmax_model_trains_evaluates_and_samples(repeating, tmp_path, capsys, tiny):
    import evaluate
    import generate
    save = tmp_path / "lstm.pt"
    learns = tiny["lstm"] + ["--data", repeating, "--emsize", "24", "--nhid", "24", "--dropout",
                             "0", "--bptt", "10", "--lr", "5", "--epochs", "8", "--seed", "1111",
                             "--save", save]
    assert "add --no-tied" in bad_run(learns + ["--cutoffs", "4,8"])
    assert "below the vocabulary's 12 words" in bad_run(learns + ["--cutoffs", "4,12",
                                                                "--no-tied"])
    assert "would have no features" in bad_run(learns + ["--cutoffs", "2,4,6", "--no-tied"])
    run(learns + ["--cutoffs", "6", "--no-tied"])  # the head: 6 words, a cluster: 6 more
    saved = checkpoint.load(str(save))
    assert saved["config"]["cutoffs"] == [6] and "word_rank" in saved["model"]
    assert saved["valid_ppl"] < 1.5  # it learns the corpus, like the full softmax
    capsys.readouterr()
    evaluate.main(["--checkpoint", str(save), "--cache"])
    evaluate.main(["--checkpoint", str(save), "--dynamic", "--dyn-stat-batches", "3"])
    out = capsys.readouterr().out
    assert "cache (W" in out and "dynamic (lr" in out
    generate.main(["--checkpoint", str(save), "--words", "12", "--raw", "--prompt", "a b c",
                   "--temperature", "0"])
    assert capsys.readouterr().out.startswith("a b c d e f g h i j")


# --- Precision and recipes ------------------------------------------------------------------

def test_a_bf16_state_stopped_mid_epoch_resumes_under_fp32(random_text, tmp_path,
                                                          monkeypatch, tiny):
    original, calls = train.Trainer.train_epoch, []

    def stop_in_epoch_two(self, stop, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            stop.requested = True  # as Ctrl-C: one more batch, then the state is saved
        return original(self, stop, *args, **kwargs)

    monkeypatch.setattr(train.Trainer, "train_epoch", stop_in_epoch_two)
    run(tiny["awd"] + ["--data", random_text, "--precision", "bf16", "--epochs", "3",
                       "--max-batches", "6", "--save", tmp_path / "m.pt"])
    monkeypatch.undo()
    state = checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")
    assert state["epoch"] == 1 and state["position"] is not None
    hidden = [t for layer in state["position"]["hidden"] for t in layer]
    assert {t.dtype for t in hidden} == {torch.float32}  # saved in float32 from bf16 steps
    run(["--resume", tmp_path / "m.state.pt", "--precision", "fp32"])
    resumed = checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")
    assert resumed["epoch"] == 3 and resumed["args"]["precision"] == "fp32"


def test_the_1cycle_recipe_trains_adam_on_its_four_phases_and_prints_them(random_text,
                                                                         tmp_path, capsys,
                                                                         tiny):
    small = tiny["awd"] + ["--data", random_text, "--no-variable-bptt", "--epochs", "3",
                           "--max-batches", "10"]
    run(["--recipe", "1cycle"] + small + ["--save", tmp_path / "c.pt"])
    out = capsys.readouterr().out
    assert ("schedule 1cycle: lr 0.0005 -> 0.005 by 8.3% of the run (beta1 0.8 -> 0.7), held "
            "to 50.0%, -> 0.0005 by 91.7% (beta1 -> 0.8), a cosine to 0 at its end") in out
    state = checkpoint.load(str(tmp_path / "c.state.pt"), kind="state")
    s = state["args"]
    assert (s["recipe"], s["model"], s["optimizer"], s["schedule"]) == (
        "1cycle", "awd", "adam", "1cycle")
    assert (s["lr"], s["clip"], s["alpha"], s["beta"], s["batch_size"]) == (5e-3, 0.12, 3.0,
                                                                         1.5, 4)  # flag kept
    assert (s["dropouti"], s["dropout"], s["wdrop"], s["dropoute"], s["dropouth"]) == (
        0.6, 0.4, 0.5, 0.1, 0.2)
    assert state["averaged"] is None  # 1cycle does not average
    assert state["steps"] == 30 and state["progress"]["epochs"] == 3
    group = state["optimizer"]["param_groups"][0]  # (as the last step left it: p = 1)
    assert group["lr"] == 0.0 and group["betas"] == (0.8, 0.99)
    assert group["weight_decay"] == 1.2e-6
    assert "--recipe 1cycle trains --model awd" in bad_run(["--recipe", "1cycle"] + small
                                                            + ["--model", "lstm"])


def test_the_memory_estimate_counts_the_bytes_of_each_precision(random_text, tmp_path, tiny):
    args = tiny["awd"] + ["--data", random_text, "--bptt", "10000000000",
                          "--save", tmp_path / "m.pt"]
    gib = [float(re.search(r"about ([\d,.]+) GiB", bad_run(args + ["--precision", p]))
                 .group(1).replace(",", "")) for p in ("torch", "bf16")]
    assert gib[1] / gib[0] == pytest.approx(16 / 12, rel=1e-3)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_the_baseline_resumes_mid_epoch_with_the_same_dropout(random_text, tmp_path,
                                                              monkeypatch, device, tiny):
    """On CUDA its dropout between layers was cuDNN's, from a state no checkpoint held."""
    common = tiny["lstm"] + ["--emsize", "32", "--nhid", "32", "--nlayers", "3", "--batch_size",
                             "8", "--bptt", "16", "--device", device, "--data", random_text,
                             "--epochs", "2"]
    run(common + ["--save", tmp_path / "straight.pt"])
    original, calls = train.Trainer.train_epoch, []

    def stop_in_epoch_two(self, stop, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            stop.requested = True  # one more batch, then the state is saved mid-epoch
        return original(self, stop, *args, **kwargs)

    monkeypatch.setattr(train.Trainer, "train_epoch", stop_in_epoch_two)
    run(common + ["--save", tmp_path / "split.pt"])
    monkeypatch.undo()
    assert checkpoint.load(str(tmp_path / "split.state.pt"), kind="state")["position"]
    run(["--resume", tmp_path / "split.state.pt"])
    straight, split = (final_state(tmp_path / f"{name}.state.pt")[0]
                       for name in ("straight", "split"))
    if device == "cpu":
        assert_same_weights(straight, split)
    else:  # (cuDNN need not sum in the same order twice; other masks differ by far more)
        for name in straight:
            assert torch.allclose(straight[name], split[name], rtol=0, atol=1e-5), name


# --- The first hour -------------------------------------------------------------------------

def test_a_run_without_save_writes_where_it_runs_never_into_the_repository(random_text, tiny):
    repository = os.path.join(REPO, "checkpoints")
    before = sorted(os.listdir(repository))
    run(tiny["awd"] + ["--data", random_text, "--epochs", "1", "--max-batches", "2"])
    assert os.getcwd() != REPO and os.path.exists(os.path.join("checkpoints", "awd.pt"))
    assert sorted(os.listdir(repository)) == before


def test_the_loss_shows_after_the_first_batch_whatever_the_log_interval(random_text, tmp_path,
                                                                        tiny, monkeypatch):
    seen = []
    monkeypatch.setattr(runlog.RunLog, "progress", lambda self, step, *a: seen.append(step))
    run(tiny["awd"] + ["--data", random_text, "--epochs", "1", "--max-batches", "9",
                       "--log-interval", "50", "--save", tmp_path / "m.pt"])
    assert seen[0] == 1 and seen[-1] == 9  # the first batch, and the end of the epoch


def test_a_stop_at_the_end_of_an_epoch_saves_the_state_before_validating(random_text,
                                                                         tmp_path, tiny,
                                                                         monkeypatch):
    original = train.Trainer.train_epoch

    def stop_at_once(self, stop, *args, **kwargs):
        stop.requested = True  # seen after the epoch's one batch, its last
        return original(self, stop, *args, **kwargs)

    validations = []
    monkeypatch.setattr(train.Trainer, "train_epoch", stop_at_once)
    monkeypatch.setattr(train.Trainer, "end_epoch", lambda self, loss: validations.append(1))
    args = tiny["awd"] + ["--data", random_text, "--epochs", "2", "--max-batches", "1"]
    run(args + ["--save", tmp_path / "m.pt"])
    monkeypatch.undo()
    state = checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")
    assert validations == [] and state["epoch"] == 0 and state["position"]["batches"] == 1
    run(["--resume", tmp_path / "m.state.pt", "--max-batches", "1"])  # validates, goes on
    resumed = checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")
    run(args + ["--save", tmp_path / "straight.pt"])
    straight = checkpoint.load(str(tmp_path / "straight.state.pt"), kind="state")
    assert [r["valid_loss"] for r in resumed["metrics"]] == [
        r["valid_loss"] for r in straight["metrics"]]


def test_the_summary_of_a_run_stopped_in_its_first_epoch(random_text, tmp_path, tiny,
                                                         monkeypatch):
    original_step = trainer_module.train_step

    def slow_step(*args):
        time.sleep(0.7)
        return original_step(*args)

    original_epoch = train.Trainer.train_epoch

    def stop_at_once(self, stop, *args, **kwargs):  # Ctrl-C in the first batch
        stop.requested = True
        return original_epoch(self, stop, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", slow_step)
    monkeypatch.setattr(train.Trainer, "train_epoch", stop_at_once)
    run(tiny["awd"] + ["--data", random_text, "--save", tmp_path / "m.pt"])
    summary = json.load(open(tmp_path / "m.json"))
    assert summary["model"] is None and not (tmp_path / "m.pt").exists()  # none written
    assert summary["minutes"] >= 0.01 and summary["epochs"] == 0  # the partial epoch counts


def test_a_large_model_on_a_cpu_points_to_the_first_run(random_text, tmp_path, tiny,
                                                        monkeypatch, capsys):
    monkeypatch.setattr(train.Trainer, "n_parameters", property(lambda self: 33_556_078))
    run(tiny["awd"] + ["--data", random_text, "--epochs", "1", "--max-batches", "1",
                       "--save", tmp_path / "m.pt"])
    out = capsys.readouterr().out
    assert "training anyway" in out and train.FIRST_RUN in out


def test_a_resume_says_where_in_the_epoch_it_continues(random_text, tmp_path, tiny, capsys,
                                                       monkeypatch):
    original = train.Trainer.train_epoch

    def stop_at_once(self, stop, *args, **kwargs):
        stop.requested = True
        return original(self, stop, *args, **kwargs)

    monkeypatch.setattr(train.Trainer, "train_epoch", stop_at_once)
    run(tiny["awd"] + ["--data", random_text, "--epochs", "1", "--save", tmp_path / "m.pt"])
    monkeypatch.undo()
    capsys.readouterr()
    run(["--resume", tmp_path / "m.state.pt"])
    assert f"resuming {tmp_path / 'm.state.pt'} in epoch 1, after its batch 1" in (
        capsys.readouterr().out)


# --- Faults: full or read-only disks, signals, changed data (docs/faults.md) ----------------

def failing_fsync(monkeypatch, error, fails):
    """Make os.fsync raise OSError(`error`) for the temporary files whose path `fails`
    (a predicate), as a full or read-only disk reports a write (Linux: /proc/self/fd)."""
    real_fsync = os.fsync

    def fsync(fd):
        if fails(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(error, os.strerror(error))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def nth_state_write(n):
    """A predicate true from the n-th write of a training state on."""
    count = [0]

    def fails(path):
        count[0] += ".state.pt.tmp" in path
        return count[0] >= n

    return fails


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds paths through /proc")
def test_a_full_disk_says_what_failed_what_is_intact_and_how_to_resume(random_text, tmp_path,
                                                                        monkeypatch, tiny):
    args = tiny["awd"] + ["--data", random_text, "--epochs", "3", "--max-batches", "5",
                          "--nonmono", "1"]
    with monkeypatch.context() as m:  # at the first state write
        failing_fsync(m, errno.ENOSPC, nth_state_write(1))
        message = bad_run(args + ["--save", tmp_path / "first.pt"])
    assert f"cannot write {tmp_path / 'first.state.pt'} (No space left on device)" in message
    assert re.search(r"it needs [\d.]+ [KM]B, and the disk there has [\d,.]+ [KM]B free",
                     message)
    assert f"{tmp_path / 'first.pt'} is intact" in message and "--overwrite" in message
    assert sorted(os.listdir(tmp_path)) == ["first.pt"]  # no lock, no temporary

    with monkeypatch.context() as m:  # at a later epoch's
        failing_fsync(m, errno.ENOSPC, nth_state_write(2))
        message = bad_run(args + ["--save", tmp_path / "later.pt"])
    assert "later.state.pt (No space left on device)" in message
    assert f"{tmp_path / 'later.state.pt'}, {tmp_path / 'later.csv'} are intact" in message
    assert not (tmp_path / "later.lock").exists()
    resume = shlex.split(message.split("once the cause is mended: ")[1])
    assert resume[:3] == ["python", "train.py", "--resume"]
    run(resume[2:])  # nothing was lost: the run ends as if the disk had never filled
    run(args + ["--save", tmp_path / "straight.pt"])
    assert_same_weights(final_state(tmp_path / "straight.state.pt")[0],
                        final_state(tmp_path / "later.state.pt")[0])


def test_a_disk_full_at_the_start_or_at_the_last_metrics_row_loses_nothing(random_text, tmp_path,
                                                                          monkeypatch, tiny):
    args = tiny["awd"] + ["--data", random_text, "--epochs", "2", "--max-batches", "3",
                          "--save", tmp_path / "m.pt"]

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:  # the lock, the run's first write
        m.setattr(runlog.json, "dump", full)
        message = bad_run(args)
    assert "(No space left on device)" in message and os.listdir(tmp_path) == []
    real_state_saved = runlog.RunLog.state_saved

    def full_at_the_last_row(self, rows, entries):
        if len(rows) == 2:
            raise WriteFailed(f"cannot write {self.path} (No space left on device)")
        real_state_saved(self, rows, entries)

    with monkeypatch.context() as m:  # the same command runs; its last CSV write fails
        m.setattr(runlog.RunLog, "state_saved", full_at_the_last_row)
        message = bad_run(args)
    assert len(runlog.read_metrics(str(tmp_path / "m.csv"))) == 1
    run(shlex.split(message.split("once the cause is mended: ")[1])[2:])
    assert [row["epoch"] for row in runlog.read_metrics(str(tmp_path / "m.csv"))] == ["1", "2"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds paths through /proc")
def test_a_save_directory_turned_read_only_is_one_message_too(random_text, tmp_path,
                                                              monkeypatch, capsys, tiny):
    args = tiny["awd"] + ["--data", random_text, "--epochs", "3", "--max-batches", "5",
                          "--save", tmp_path / "m.pt"]
    real_remove = os.remove

    def remove(path):  # the lock, too, can no longer be removed
        if path.endswith(".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        real_remove(path)

    monkeypatch.setattr(os, "remove", remove)
    failing_fsync(monkeypatch, errno.EROFS, nth_state_write(2))  # from then on
    message = bad_run(args)
    assert "m.state.pt (Read-only file system)" in message and "--resume" in message
    assert "could not remove the lock" in capsys.readouterr().err


def test_data_changed_under_a_resume_is_refused_unless_asked_for(tmp_path, make_corpus, tiny,
                                                                 capsys):
    rng = np.random.default_rng(4)
    text = "".join(" ".join(f"w{i}" for i in rng.integers(0, 20, 8)) + "\n" for _ in range(80))
    data = make_corpus(text, text[:400], text[400:800])
    run(tiny["awd"] + ["--data", data, "--epochs", "1", "--max-batches", "3",
                       "--save", tmp_path / "m.pt"])
    train_file = os.path.join(data, "train.txt")
    lines = text.splitlines(keepends=True)
    with open(train_file, "w") as f:  # the same vocabulary, other lines
        f.write("".join(lines[:10] + lines[10:][::-1]))
    before = (tmp_path / "m.state.pt").read_bytes()
    message = bad_run(["--resume", tmp_path / "m.state.pt", "--epochs", "2"])
    assert "the train file of" in message and "--data-changed" in message
    assert (tmp_path / "m.state.pt").read_bytes() == before
    run(["--resume", tmp_path / "m.state.pt", "--epochs", "2", "--data-changed"])
    assert "no longer the one it was" in capsys.readouterr().out
    state = checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")
    assert state["epoch"] == 2
    assert len({record["data_sha256"]["train"] for record in state["provenance"]}) == 2


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_the_final_test_exits_130_and_keeps_the_checkpoints(
        random_text, tmp_path, monkeypatch, capsys, tiny, stop_signal):
    """Ctrl-C, or SIGTERM as schedulers (Slurm, Kubernetes) stop jobs, at any moment."""
    def signalled(*args, progress=None, **kw):
        if progress == "testing":  # the signal itself, to this process
            os.kill(os.getpid(), stop_signal)
        return real_mean_nll(*args, progress=progress, **kw)

    real_mean_nll = train.mean_nll
    monkeypatch.setattr(train, "mean_nll", signalled)
    # Python's own Ctrl-C, even when this process was started with SIGINT ignored (as bash
    # starts a background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as exit_:
            run(tiny["awd"] + ["--data", random_text, "--epochs", "1", "--max-batches", "3",
                               "--save", tmp_path / "m.pt"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert exit_.value.code == 130
    assert "aborted; checkpoints on disk are intact" in capsys.readouterr().err
    summary = json.load(open(tmp_path / "m.json"))
    assert summary["test_interrupted"] and summary["test_ppl"] is None
    assert summary["model"] == str(tmp_path / "m.pt")
    checkpoint.load_model(str(tmp_path / "m.pt"))  # intact and usable
    assert not (tmp_path / "m.lock").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # as before the run


def hang_up(tmp_path, tiny, make_corpus, reader, reader_leaves):
    """A run writing to `reader` ("terminal": a pseudo-terminal; "pipe": as into `tee`) gets
    SIGHUP in its first epoch, after the reader went away (`reader_leaves`) or not. Returns
    what the reader read after the signal (None when it left)."""
    rng = np.random.default_rng(1)
    text = "".join(" ".join(f"w{i}" for i in rng.integers(0, 50, 10)) + "\n" for _ in range(2000))
    reading, its_end = pty.openpty() if reader == "terminal" else os.pipe()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train.py")] + [str(a) for a in tiny["awd"] + [
            "--data", make_corpus(text, text[:2000], text[:2000]), "--epochs", "1",
            "--log-interval", "1", "--save", tmp_path / "m.pt"]],
        stdin=subprocess.DEVNULL, stdout=its_end, stderr=its_end, start_new_session=True)
    os.close(its_end)
    shown = b""
    while b"device: " not in shown:  # an epoch of seconds begins
        shown += os.read(reading, 4096)
    time.sleep(0.5)
    if reader_leaves:
        os.close(reading)  # from now on every write to it fails
    proc.send_signal(signal.SIGHUP)
    after = b""
    while not reader_leaves:
        try:
            chunk = os.read(reading, 4096)
        except OSError:  # (a pseudo-terminal whose writer exited)
            chunk = b""
        if not chunk:
            os.close(reading)
            break
        after += chunk
    assert proc.wait(timeout=60) == 0
    state = checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")
    assert state["epoch"] == 0 and state["position"]["batches"] > 0  # inside epoch 1
    assert json.load(open(tmp_path / "m.json"))["stopped"]  # and ended as a stop does
    assert not (tmp_path / "m.lock").exists()
    return None if reader_leaves else after.decode()


@pytest.mark.parametrize("reader", ["terminal", "pipe"])
def test_a_hang_up_saves_the_epoch_in_progress_when_the_output_has_nowhere_to_go(
        reader, tmp_path, tiny, make_corpus):
    """SIGHUP: the terminal closed or the ssh session dropped (and `| tee` with it)."""
    hang_up(tmp_path, tiny, make_corpus, reader, reader_leaves=True)


@pytest.mark.parametrize("reader", ["terminal", "pipe"])
def test_after_a_hang_up_the_output_still_reaches_a_reader_that_stays(reader, tmp_path, tiny,
                                                                      make_corpus):
    after = hang_up(tmp_path, tiny, make_corpus, reader, reader_leaves=False)
    assert "stopping after the current batch" in after and "training state saved" in after
    assert after.rstrip().endswith("no epoch has finished yet, so there is no best model to test")


def test_a_process_started_again_by_torchrun_continues_its_run(random_text, tmp_path, tiny,
                                                               monkeypatch, capsys):
    """What torchrun --max-restarts does after a lost process, on one process: the same
    command again, with TORCHELASTIC_RESTART_COUNT set (tests/test_distributed.py runs it
    under torchrun itself)."""
    args = tiny["awd"] + ["--data", random_text, "--epochs", "2", "--max-batches", "20",
                          "--save", tmp_path / "m.pt"]
    run(args[:-2] + ["--save", tmp_path / "straight.pt"])

    class Lost(BaseException):  # the process dies, in its second epoch
        pass

    steps = []
    real_step = trainer_module.train_step

    def dies_at_step_25(*step_args):
        steps.append(1)
        if len(steps) == 25:
            raise Lost
        return real_step(*step_args)

    with monkeypatch.context() as m:
        m.setattr(trainer_module, "train_step", dies_at_step_25)
        with pytest.raises(Lost):
            run(args)
    assert checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")["epoch"] == 1
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    capsys.readouterr()
    run(args)
    assert f"torchrun restart 1: continuing from {tmp_path / 'm.state.pt'}" in (
        capsys.readouterr().out)
    assert_same_weights(final_state(tmp_path / "straight.state.pt")[0],
                        final_state(tmp_path / "m.state.pt")[0])
    # lost before its first state: it starts again, over its own files
    (tmp_path / "m.state.pt").unlink()
    run(args)
    assert "no training state was saved yet; starting again" in capsys.readouterr().out
    assert checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")["epoch"] == 2
