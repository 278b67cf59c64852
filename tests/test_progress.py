"""Tests of progress.py: p by the share of epochs done and by a budget's clock, a resume that
changes --epochs or reads an older state's plan, what a budget keeps for its end, and
budget runs that end on time, refuse a budget too short and resume by the clock."""

import json
import time

import pytest
import torch

import checkpoint
import progress as progress_module
import runlog
import train
import trainer as trainer_module
import util
from data import Corpus
from progress import Clock, Progress
from settings import defaults


def test_p_is_the_share_of_the_epochs_rows_done_and_1_at_the_last_step():
    progress = Progress(epochs=4, rows=100)
    assert progress.at(0, 0, 0) == 0.0
    assert progress.at(1, 50, 7) == pytest.approx(1.5 / 4)
    # an epoch ends one row short of the data when its last window would hold one target
    assert progress.at(3, 100, 12) == progress.at(3, 101, 12) == 1.0
    capped = Progress(epochs=2, rows=100, max_batches=10)  # --max-batches ends epochs first
    assert capped.at(0, 20, 5) == pytest.approx(0.25) and capped.at(1, 30, 10) == 1.0


def test_a_resume_that_changes_the_epochs_spreads_the_rest_of_p_over_them():
    progress = Progress(epochs=6, rows=100)
    before = progress.at(1, 50, 5)  # a quarter of the way
    progress.set_epochs(3, 1, 50, 5)
    assert progress.at(1, 50, 5) == pytest.approx(before)  # p goes on from where it stood
    assert progress.at(2, 75, 8) == pytest.approx(0.25 + 0.75 * 1.25 / 1.5)
    assert progress.at(2, 100, 10) == 1.0  # and ends with the new last epoch
    state = progress.state_dict()
    again = Progress(epochs=3, rows=100)
    again.load_state_dict(state)
    assert again.at(2, 75, 8) == progress.at(2, 75, 8)


def test_the_clock_counts_training_seconds_and_each_validation_takes_its_time_from_them():
    clock = Clock(budget_s=100.0)
    assert clock.start(now=0.0, reserve_s=20.0) < 80.0  # (train() began at 0)
    clock.run(0.0)
    assert clock.own_share(40.0) == pytest.approx(0.5)  # 40 s trained, 40 s left
    clock.pause(40.0)
    clock.run(60.0)  # a validation of 20 s: it is not training time
    assert clock.trained(60.0) == 40.0
    assert clock.own_share(60.0) == pytest.approx(40 / 60)  # the 20 s came off what is left
    assert not clock.late(79.9) and clock.late(80.0)
    assert clock.own_share(80.0) == 1.0
    assert clock.used(80.0) == 80.0


def test_every_process_reads_the_share_agreed_on_never_less_than_before_and_1_when_late():
    clock = Clock(budget_s=100.0)
    clock.agree(0.3, late=False)
    clock.agree(0.2, late=False)  # (a slower clock's mean at the next sync point)
    assert clock.share == 0.3
    clock.agree(0.9, late=True)
    assert clock.share == 1.0
    progress = Progress(epochs=50, rows=100, budget_s=100.0)
    progress.clock.agree(0.6, late=False)
    assert progress.at(0, 10, 1) == 0.6 and not progress.spent  # the larger of the two shares
    progress.clock.agree(1.0, late=False)
    assert progress.spent


def test_a_resumed_budget_goes_on_with_the_time_it_has_not_used():
    clock = Clock(budget_s=100.0)
    clock.start(now=1000.0, reserve_s=20.0)
    clock.run(1000.0)
    saved = dict(clock.state_dict())  # (read at time.time(): long after 1000)
    saved.update(used_s=30.0, trained_s=25.0)
    resumed = Clock(budget_s=100.0)
    resumed.load_state_dict(saved)
    left = resumed.start(now=time.time())
    assert 49.0 < left <= 50.0  # 100 - 20 kept for the end - 30 used
    assert resumed.own_share(resumed.started) == pytest.approx(25 / 75, abs=0.01)


def test_a_plan_of_a_state_written_before_progress_is_read_as_p():
    """2a9ab5e kept a budget's plan in the state: 400 of its 1,000 steps done after 200 s
    (the training deadline at 550 s of a 600-s budget)."""
    plan = dict(epochs=5, batches_per_epoch=200, last_epoch_batches=200, total_steps=1000,
                average_from=750, budget_s=600.0, train_deadline_s=550.0, max_epochs=50)
    progress = Progress(epochs=5, rows=1000, budget_s=600.0)
    progress.read_plan(plan, steps=400, epochs_done=2.0, seconds=200.0)
    assert progress.epochs == 50 and progress.clock.reserve_s == 50.0
    assert progress.at(2, 0, 0) == pytest.approx(0.4)
    assert progress.clock.start(now=time.time()) == pytest.approx(350.0, abs=0.1)
    assert progress.clock.own_share(progress.clock.started) == pytest.approx(0.4)
    # a planned schedule's plan re-fitted once (at step 250, where its schedule stood at 250
    # of 1,000): the rest of the schedule spread over a new total of 590
    refitted = dict(epochs=6, batches_per_epoch=100, total_steps=590, schedule_steps=1000,
                    schedule_anchor=[250, 250], average_from=442, budget_s=None,
                    train_deadline_s=None)
    progress = Progress(epochs=6, rows=1000)
    progress.read_plan(refitted, steps=420, epochs_done=4.2, seconds=0.0)
    assert progress.start == (pytest.approx((250 + 170 * 750 // 340) / 1000), 4.2)


def tiny_trainer(corpus_path, tmp_path, **changes):
    settings = {**defaults("awd"), "emsize": 8, "nhid": 12, "batch_size": 4, "bptt": 10,
                "model": "awd", "finetune": None, "save": str(tmp_path / "m.pt"),
                "budget_minutes": 1.0, **changes}
    return trainer_module.Trainer(settings, Corpus(corpus_path), torch.device("cpu"))


def test_measuring_the_reserve_leaves_the_model_and_the_random_state_untouched(repeating,
                                                                              tmp_path):
    trainer = tiny_trainer(repeating, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    reserve = progress_module.measure_reserve(trainer)
    assert all(reserve[k] > 0 for k in ("valid_s", "test_s", "save_s"))
    assert reserve["margin_s"] == progress_module.MARGIN_MIN_S  # (2% of 1 minute is less)
    assert reserve["reserve_s"] == pytest.approx(
        reserve["valid_s"] + reserve["test_s"] + reserve["save_s"] + reserve["margin_s"])
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert list(tmp_path.iterdir()) == []  # the probe checkpoint is gone


def test_the_checkpoint_writes_are_measured_at_the_size_of_the_states_to_come(repeating,
                                                                             tmp_path):
    """Adam keeps two moments per weight, which an optimizer that has taken no step lacks;
    a run that averages keeps a second copy of the weights; the model file is written too."""
    written = {}
    for optimizer, schedule in (("sgd", "anneal"), ("adam", "anneal"), ("adam", "onecycle")):
        trainer = tiny_trainer(repeating, tmp_path, optimizer=optimizer, schedule=schedule)
        written[optimizer, schedule] = progress_module.measure_reserve(trainer)["save_bytes"]
        weights = util.tensor_bytes(trainer.model.state_dict())
    parameters = len(list(trainer.model.parameters()))
    assert written["sgd", "anneal"] >= 2 * weights  # the state, and the model file
    moments = written["adam", "anneal"] - written["sgd", "anneal"]  # (and a step count each)
    assert 2 * weights <= moments <= 2 * weights + 8 * parameters + 512  # (+ zip records)
    average = written["adam", "onecycle"] - written["adam", "anneal"]  # (and its count)
    assert weights <= average <= weights + 512


def test_a_budget_ends_on_time_annealed_with_a_tested_model(repeating, tmp_path, capsys,
                                                             tiny):
    budget_minutes = 0.15
    started = time.time()
    train.main(tiny["awd"] + ["--data", repeating, "--budget-minutes", str(budget_minutes),
                              "--schedule", "linear", "--save", str(tmp_path / "b.pt")])
    elapsed = time.time() - started
    out = capsys.readouterr().out
    assert "for the end; trains for " in out and "schedule linear: lr 30" in out
    # In-process, set-up is inside the budget. The bound leaves room for a machine whose
    # speed changes after the run measured it (the other core busy): a run that ignored its
    # budget would train for minutes (750 epochs).
    assert elapsed <= 1.5 * 60 * budget_minutes
    rows = runlog.read_metrics(tmp_path / "b.csv")
    assert [r["out_of_time"] for r in rows] == [""] * (len(rows) - 1) + ["yes"]
    # annealed: training ends at p = 1, or just short of it when the time ran out during
    # the last epoch's validation (the row gives p as training left it)
    assert float(rows[-1]["progress"]) > 0.98 and float(rows[-1]["lr"]) < 0.02 * 30
    progresses = [float(r["progress"]) for r in rows]
    assert progresses == sorted(progresses) and len(rows) >= 2
    assert "re-plan" not in out and out.count("\nepoch ") == len(rows)  # a line an epoch
    summary = json.load(open(tmp_path / "b.json"))
    assert summary["test_ppl"] is not None and 0 < summary["budget_used"] <= 1.5
    assert f"({summary['budget_used']:.1%})" in out


def test_a_budget_too_short_to_train_is_refused_in_one_line(repeating, tmp_path, tiny):
    """The margin alone is 2 s: 0.6 s of budget leaves nothing to train."""
    with pytest.raises(SystemExit) as refused:
        train.main(tiny["awd"] + ["--data", repeating, "--budget-minutes", "0.01",
                                  "--save", str(tmp_path / "b.pt")])
    message = str(refused.value.code)
    assert message.startswith("error: --budget-minutes 0.01 leaves no time to train: ")
    assert "a budget needs more than " in message and "\n" not in message
    assert not (tmp_path / "b.state.pt").exists()


def test_a_budget_stopped_and_resumed_goes_on_by_its_clock_and_ends_annealed(
        repeating, tmp_path, monkeypatch, capsys, tiny, stop_in_epoch):
    common = tiny["awd"] + ["--data", repeating, "--recipe", "1cycle", "--batch_size", "4",
                            "--budget-minutes", "0.15", "--epochs", "10000"]
    stop_in_epoch(3)
    train.main(common + ["--save", str(tmp_path / "c.pt")])
    monkeypatch.undo()
    stopped = checkpoint.load(str(tmp_path / "c.state.pt"), kind="state")
    clock = stopped["progress"]["clock"]
    assert stopped["epoch"] == 2 and stopped["position"] is not None
    assert 0 < clock["trained_s"] < clock["used_s"] < 9 and clock["reserve_s"] > 0
    capsys.readouterr()
    train.main(["--resume", str(tmp_path / "c.state.pt")])
    out = capsys.readouterr().out
    assert f"keeps {clock['reserve_s']:.1f} s (measured when the run started) for the end" in out
    rows = runlog.read_metrics(tmp_path / "c.csv")
    assert rows[2]["resumed"] == "yes" and rows[-1]["out_of_time"] == "yes"
    assert float(rows[-1]["progress"]) > 0.98 and float(rows[-1]["lr"]) < 0.02 * 5e-3
    summary = json.load(open(tmp_path / "c.json"))
    assert summary["budget_used"] <= 1.5  # both sessions together


def test_a_budget_state_written_before_progress_resumes_and_ends_annealed(
        repeating, tmp_path, monkeypatch, tiny, stop_in_epoch):
    """A state as 2a9ab5e wrote it: no "progress", a plan instead (made here from a state of
    today's, its plan half done)."""
    stop_in_epoch(2)
    train.main(tiny["awd"] + ["--data", repeating, "--recipe", "1cycle", "--batch_size", "4",
                              "--budget-minutes", "0.1", "--epochs", "10000",
                              "--save", str(tmp_path / "o.pt")])
    monkeypatch.undo()
    path = str(tmp_path / "o.state.pt")
    state = checkpoint.load(path, kind="state")
    del state["progress"], state["checksum"]
    steps = state["steps"]
    state["plan"] = dict(epochs=4, batches_per_epoch=steps, last_epoch_batches=steps,
                         total_steps=2 * steps, average_from=steps, budget_s=6.0,
                         train_deadline_s=5.0, max_epochs=750, schedule_steps=2 * steps)
    checkpoint.save(path, state)
    train.main(["--resume", path])
    rows = runlog.read_metrics(tmp_path / "o.csv")
    assert rows[-1]["out_of_time"] == "yes" and float(rows[-1]["lr"]) < 0.02 * 5e-3
    assert 0.5 <= float(rows[2]["progress"]) < float(rows[-1]["progress"]) and \
        float(rows[-1]["progress"]) > 0.98
