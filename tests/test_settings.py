"""Tests of settings.py: the table of settings and what is made from it (flags, defaults,
a fresh, resumed or fine-tuned run's settings, the resume command); flag types that refuse
what makes no run, in one line naming the flag."""

import shlex

import pytest

import settings
from model import AWDLSTM, LSTMModel, architecture
from settings import (COUNT, DROPOUT, POSITIVE, RECIPES, RUN, SEED, SETTINGS, Parser,
                      SettingsError)


def parse(kind, text):
    p = Parser(prog="x")
    p.add_argument("--flag", type=kind)
    return p.parse_args(["--flag", text]).flag


@pytest.mark.parametrize("kind, text, fragment", [
    (COUNT, "0", "--flag must be at least 1 (got 0)"),
    (COUNT, "2.5", "--flag must be at least 1 (got '2.5')"),
    (POSITIVE, "-1", "--flag must be positive (got -1)"),
    (POSITIVE, "nan", "--flag must be a finite number (got nan)"),
    (POSITIVE, "inf", "--flag must be a finite number (got inf)"),
    (DROPOUT, "1", "--flag must be in [0, 1) (got 1)"),
    (SEED, "-1", "--flag must be in [0, 2**32) (got -1)"),
])
def test_bad_values_are_one_line_errors_naming_the_flag(kind, text, fragment):
    with pytest.raises(SystemExit) as exit_:
        parse(kind, text)
    assert exit_.value.code == f"error: {fragment}"


def test_good_values_pass_through():
    assert parse(COUNT, "3") == 3 and parse(POSITIVE, "0.5") == 0.5
    assert parse(DROPOUT, "0") == 0.0 and parse(SEED, "0") == 0


def test_other_parse_errors_are_one_line_too():
    with pytest.raises(SystemExit) as exit_:
        Parser(prog="x").parse_args(["--nope"])
    assert exit_.value.code == "error: unrecognized arguments: --nope"


def test_every_flag_takes_dashes_or_underscores():
    p = Parser(prog="x")
    p.add_argument("--batch_size", type=COUNT)
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=COUNT)
    args = p.parse_args(["--batch-size", "3", "--eval_batch_size=4"])
    assert (args.batch_size, args.eval_batch_size) == (3, 4)
    with pytest.raises(SystemExit) as exit_:
        p.parse_args(["--batch-sizes", "3"])  # a flag that exists in neither spelling
    assert "unrecognized arguments: --batch-sizes" in exit_.value.code


def args_of(argv):
    p = Parser(prog="x")
    settings.add_flags(p)
    return p.parse_args(argv)


def test_every_setting_is_a_flag_with_its_defaults_in_the_help():
    p = Parser(prog="x")
    settings.add_flags(p)
    text = p.format_help()
    for s in SETTINGS:
        assert settings.flag(s) in text
    assert "[awd: 30.0, lstm: 20.0]" in text and "[awd: 750, lstm: 40]" in text


def test_the_table_declares_exactly_the_models_arguments():
    """What builds the model is a setting of its part, and nothing else is."""
    for kind, cls in (("awd", AWDLSTM), ("lstm", LSTMModel)):
        declared = {s.name for s in SETTINGS if s.part == "model" and kind in s.models}
        assert declared - {"model"} == set(architecture(kind)), kind
        assert settings.defaults(kind)["emsize"] == {"awd": 400, "lstm": 650}[kind]


def test_a_fresh_run_takes_the_defaults_then_the_recipe_then_the_flags():
    s = settings.fresh_settings(args_of(["--recipe", "1cycle", "--lr", "0.01"]))
    assert s["model"] == "awd" and s["optimizer"] == "adam" and s["lr"] == 0.01
    assert s["clip"] == RECIPES["1cycle"]["clip"] and s["nonmono"] == 5
    assert s["save"] == "checkpoints/1cycle.pt" and s["finetune"] is None
    assert set(s) == set(settings.defaults("awd")) | {"finetune"}
    with pytest.raises(SettingsError, match="--dropouth applies to --model awd only"):
        settings.fresh_settings(args_of(["--model", "lstm", "--dropouth", "0.1"]))


def test_a_resume_keeps_the_run_but_what_a_resume_may_change():
    saved = {**settings.defaults("awd"), "model": "awd", "save": "runs/a.pt", "finetune": None}
    del saved["recipe"]  # a state from before the setting existed
    s = settings.resumed_settings(args_of(["--resume", "x", "--epochs", "9"]), saved)
    assert s["epochs"] == 9 and s["recipe"] == "paper"
    with pytest.raises(SettingsError, match="--lr cannot change when resuming"):
        settings.resumed_settings(args_of(["--resume", "x", "--lr", "3"]), saved)
    with pytest.raises(SettingsError, match="--save cannot change"):
        settings.resumed_settings(args_of(["--resume", "x", "--save", "b.pt"]), saved)


def test_fine_tuning_keeps_the_model_and_writes_beside_it():
    trained = {**settings.defaults("lstm"), "model": "lstm", "save": "runs/l.pt",
               "finetune": None}
    s = settings.finetune_settings(args_of(["--finetune", "runs/l.pt", "--lr", "5"]), trained)
    assert s["lr"] == 5 and s["save"] == "runs/l-finetune.pt" and s["finetune"] == "runs/l.pt"
    with pytest.raises(SettingsError, match="--nhid cannot change when fine-tuning"):
        settings.finetune_settings(args_of(["--finetune", "runs/l.pt", "--nhid", "9"]), trained)


def test_the_resume_command_repeats_what_a_resume_may_set_and_parses_back():
    argv = ["--model", "awd", "--max-batches", "7", "--save-every", "2.5", "--device", "cpu",
            "--log-interval", "3", "--epochs", "9", "--lr", "3", "--overwrite"]
    args = args_of(argv)
    command = settings.resume_command(args, "runs/my run.state.pt")
    assert command.startswith("python train.py --resume 'runs/my run.state.pt'")
    again = args_of(shlex.split(command)[2:])
    for s in SETTINGS:
        if s.resumable or (s.part == RUN and s.name not in ("resume", "overwrite")):
            assert getattr(again, s.name) == getattr(args, s.name), s.name
    assert again.lr is None and not again.overwrite  # the run's own, and a new run's flag


def test_the_help_of_lr_fits_every_optimizer():
    p = Parser(prog="x")
    settings.add_flags(p)
    text = " ".join(p.format_help().split())
    assert "SGD learning rate" not in text and "--lr LR learning rate (the peak" in text
