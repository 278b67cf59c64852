"""Tests of config.py: flag types refuse what makes no run, in one line naming the flag."""

import pytest

from config import COUNT, DROPOUT, POSITIVE, PRESETS, SEED, Parser


def parse(kind, text):
    p = Parser(prog="x")
    p.add_argument("--flag", type=kind)
    return p.parse_args(["--flag", text]).flag


@pytest.mark.parametrize("kind, text, fragment", [
    (COUNT, "0", "--flag must be at least 1 (got 0)"),
    (COUNT, "2.5", "--flag must be at least 1 (got '2.5')"),
    (POSITIVE, "-1", "--flag must be positive (got -1)"),
    (POSITIVE, "nan", "--flag must be positive (got nan)"),
    (POSITIVE, "inf", "--flag must be positive (got inf)"),
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


def test_presets_share_their_keys():
    assert set(PRESETS["lstm"]) <= set(PRESETS["awd"])
